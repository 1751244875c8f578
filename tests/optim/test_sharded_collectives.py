"""The order of the optimizer's own collectives across meshes (``assocmem.optim.sharded``)."""

from __future__ import annotations

import torch

from assocmem.optim import sharded


class FakeMesh:
    """A mesh whose hash is chosen: a set of two iterated in the order the hashes give, as
    DeviceMesh's string hashes do (randomised per process by Python)."""

    def __init__(self, name: str, hash_: int) -> None:
        self.name, self.ndim, self._hash = name, 1, hash_

    def __hash__(self) -> int:
        return self._hash

    def get_group(self, dim: int) -> str:
        return self.name


class FakeShard(torch.Tensor):
    pass


def test_flags_are_all_reduced_over_meshes_in_the_order_the_tensors_name_them(monkeypatch):
    # Two meshes with different process groups (experts on one, the rest on another): ranks
    # that all-reduced them in different orders waited on each other until the timeout (4
    # launches in 10). The order is the tensors' first appearance, the same on every rank,
    # whatever the meshes' hashes.
    for hashes in ((1, 2), (2, 1), (10**9, 3)):
        ep, dp = FakeMesh("ep", hashes[0]), FakeMesh("dp", hashes[1])
        tensors = []
        for mesh in (dp, ep, dp):
            t = torch.zeros(1).as_subclass(FakeShard)
            t.device_mesh = mesh
            tensors.append(t)
        order: list[str] = []
        monkeypatch.setattr(sharded, "plain", lambda ts: False)
        monkeypatch.setattr(sharded, "is_sharded", lambda t: isinstance(t, FakeShard))
        monkeypatch.setattr(
            sharded.dist, "all_reduce", lambda flag, op=None, group=None, o=order: o.append(group)
        )
        sharded.any_flag(torch.zeros(1), tensors)
        assert order == ["dp", "ep"]
