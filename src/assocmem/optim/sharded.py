"""Parameters sharded by FSDP2 (``DTensor``): each rank steps its shard; whole-tensor sums are
all-reduced.

``torch.distributed.fsdp.fully_shard`` turns every parameter into a ``DTensor`` whose rank-local
piece is a slice of rows (``Shard(0)``, uneven when rows do not divide by the world size, even
empty). ``MemoryOptimizer`` steps such a tensor in one of two ways:

- **local** (the fast path of a preset whose :meth:`Preset.shards_locally` says so): the preset
  gets the local pieces of parameter, gradient and state. Elementwise updates need nothing
  else. A quantity over the whole tensor (a norm, a dot product, a mean, an MLP memory's inner
  gradient) is computed as the rank's partial sum and completed by :func:`all_sum` (one
  ``all_reduce`` of a few floats per tensor, or per group of tensors), so every rank holds the
  same value and takes the same branch. Outside a sharded step :func:`all_sum` is the identity.
- **gather** (the reference path, and presets whose memory needs the whole matrix, such as
  Newton-Schulz): parameter, gradient and every sharded state tensor are all-gathered
  (``full_tensor()``), the step runs on the whole tensors on every rank (the same numbers as
  one process), and each rank keeps its own slice. It moves ``(2 + k) x numel`` elements per
  tensor per step (``k`` sharded state buffers) and needs one whole tensor's memory at a time.

Only the layouts FSDP2 makes by default are stepped locally: every mesh dimension ``Shard(0)``
or ``Replicate`` (HSDP); any other placement (tensor parallel ``Shard(1)``, say) is gathered.
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from assocmem.optim.indices import grouped

# ``torch.distributed.tensor`` costs about a second to import; a DTensor cannot exist before
# something (FSDP2, the user) imported it, so until then nothing is sharded and the optimizer
# does not pay that second (``import assocmem`` stays fast for everyone who never shards).
_DTENSOR_MODULE = "torch.distributed.tensor"
# Exactly these types are never a DTensor (a DTensor parameter's type is DTensor itself).
_PLAIN = (torch.Tensor, torch.nn.Parameter)
_PLAIN_SET = frozenset(_PLAIN)

# Per thread, the sharded step in progress: ``groups``, the process groups a local step reduces
# over (one per sharded mesh dimension; empty outside), and ``rows``, the whole tensor's row
# count of each local piece being stepped, by id of the piece. A threading.local, not a
# ContextVar: torch.compile traces reads of the former, while ContextVar.get broke the graph of
# every preset step that asks whether it is sharded.
_STEP = threading.local()


def _groups() -> tuple[Any, ...]:
    return getattr(_STEP, "groups", ())


def _rows() -> dict[int, int]:
    return getattr(_STEP, "rows", {})


def is_sharded(t: Any) -> bool:
    """Whether ``t`` is a ``DTensor`` (a parameter or state tensor that FSDP2 distributes)."""
    if type(t) in _PLAIN:  # asked a few times per tensor per step: the common answer first
        return False
    module = sys.modules.get(_DTENSOR_MODULE)
    return module is not None and isinstance(t, module.DTensor)


def plain(tensors: Sequence[Any]) -> bool:
    """Whether none of ``tensors`` can be a DTensor: each exactly a ``Tensor`` or ``Parameter``,
    asked once for a whole step's tensors (an unsharded model's answer) so that the per-tensor
    questions below need not be asked one by one (~6 us for 300 tensors)."""
    return set(map(type, tensors)) <= _PLAIN_SET


def local(t: Any) -> Any:
    """The rank's own piece of a ``DTensor`` (a view: in-place writes reach the parameter);
    anything else as it is."""
    return t.to_local() if is_sharded(t) else t


def layout(t: Tensor) -> tuple[Any, ...] | None:
    """What decides how ``t`` is stepped: ``(mesh, placements)``, or None for a plain tensor."""
    if not is_sharded(t):
        return None
    return (t.device_mesh, tuple(t.placements))


def by_layout(tensors: Sequence[Tensor]) -> list[tuple[tuple[Any, ...] | None, list[int]]]:
    """Indices of ``tensors`` grouped by :func:`layout`, in order of first appearance (the same
    order on every rank, so the collectives of the groups' steps line up)."""
    if tensors and plain(tensors):
        return [(None, list(range(len(tensors))))]
    return list(grouped(layout(t) for t in tensors).items())


def steps_locally(key: tuple[Any, ...]) -> bool:
    """Whether a layout keeps whole rows on each rank: every placement ``Shard(0)`` or
    ``Replicate``, so the shard is a row slice and elementwise maths needs no communication."""
    _, placements = key
    return all(p.is_replicate() or (p.is_shard() and p.dim == 0) for p in placements)


def row_mesh_dims(key: tuple[Any, ...]) -> int:
    """Over how many mesh dimensions a layout shards its tensors' rows."""
    _, placements = key
    return sum(1 for p in placements if p.is_shard())


def _shard_groups(key: tuple[Any, ...]) -> tuple[Any, ...]:
    mesh, placements = key
    return tuple(mesh.get_group(i) for i, p in enumerate(placements) if p.is_shard())


@contextlib.contextmanager
def reducing(key: tuple[Any, ...], pieces: Sequence[tuple[Tensor, Tensor]] = ()) -> Iterator[None]:
    """Inside, :func:`all_sum` and :func:`all_max` complete partial results over the shards of
    ``key``'s layout, and :func:`gather_rows` knows the whole row count of each ``(local,
    dtensor)`` piece in ``pieces``."""
    outer = _groups(), _rows()
    _STEP.groups = _shard_groups(key)
    _STEP.rows = {id(piece): whole.shape[0] for piece, whole in pieces}
    try:
        yield
    finally:
        _STEP.groups, _STEP.rows = outer


def active() -> bool:
    """Whether a sharded tensor is being stepped from its local rows (inside :func:`reducing`)."""
    return bool(_groups())


def means(xs: Sequence[Tensor]) -> list[Tensor]:
    """The mean of each ``x`` over its whole tensor: ``x.mean()`` unsharded; sharded, each
    rank's sum and element count, all-reduced together for every ``x`` (one all-reduce)."""
    if not active():
        return [x.mean() for x in xs]
    dtype = xs[0].dtype
    partial = torch.stack([torch.stack([x.sum(), x.new_full((), x.numel())]) for x in xs])
    total = all_sum(partial.to(dtype))
    return [(s / n).to(x.dtype) for (s, n), x in zip(total.unbind(0), xs, strict=True)]


def whole_numel(local_param: Tensor) -> int:
    """The element count of the whole tensor whose rows ``local_param`` holds (its own outside
    a sharded step): a rank's piece may be empty where the tensor is not."""
    rows = _rows().get(id(local_param))
    if rows is None or local_param.dim() == 0:
        return local_param.numel()
    return rows * math.prod(local_param.shape[1:])


def _row_layout(local_param: Tensor) -> tuple[Any, int, int, int]:
    """``(group, rank, world, chunk)`` of a sharded parameter's rows: FSDP2 (like
    ``torch.chunk``) gives rank ``r`` rows ``[r c, min((r + 1) c, n))``, ``c = ceil(n / W)``."""
    groups = _groups()
    if len(groups) != 1:
        raise NotImplementedError(f"rows sharded over {len(groups)} mesh dimensions")
    group = groups[0]
    world = dist.get_world_size(group)
    rows = _rows()[id(local_param)]
    return group, dist.get_rank(group), world, -(-rows // world)


def gather_rows(x: Tensor, local_param: Tensor) -> Tensor:
    """The whole tensor of which ``x`` holds this rank's rows, on every rank (sharded like
    ``local_param``, the local piece of a parameter being stepped).

    One all-gather of ``W x ceil(n / W)`` rows: each piece padded to the largest, so uneven and
    empty pieces gather alike; the rows then are the first ``n``.
    """
    group, _, world, chunk = _row_layout(local_param)
    rows = _rows()[id(local_param)]
    padded = _padded(x, chunk)
    pieces = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(pieces, padded.contiguous(), group=group)
    return torch.cat(pieces)[:rows]


def shard_world(local_param: Tensor) -> int:
    """How many ranks share the rows of the parameter whose local piece is ``local_param``."""
    return _row_layout(local_param)[2]


def gather_rows_to(x: Tensor, local_param: Tensor, owner: int) -> Tensor | None:
    """:func:`gather_rows` onto one rank: the whole tensor on rank ``owner`` of the shard group,
    ``None`` on the others. One gather of ``W x ceil(n / W)`` rows (padded as there), so each
    rank sends its rows once and only the owner receives: ``(W - 1) ceil(n / W)`` rows in all,
    against ``W (W - 1) ceil(n / W)`` for the all-gather."""
    group, rank, world, chunk = _row_layout(local_param)
    rows = whole_rows(local_param)
    padded = _padded(x, chunk)
    pieces = [torch.empty_like(padded) for _ in range(world)] if rank == owner else None
    dist.gather(padded.contiguous(), pieces, group=group, group_dst=owner)
    return None if pieces is None else torch.cat(pieces)[:rows]


def scatter_rows(whole: Tensor | None, local_param: Tensor, owner: int, like: Tensor) -> Tensor:
    """This rank's rows of ``whole``, which rank ``owner`` holds (``None`` elsewhere): one
    scatter of ``W x ceil(n / W)`` padded rows, the inverse of :func:`gather_rows_to`. ``like``
    is this rank's piece of a tensor shaped as ``whole`` (its dtype, device and trailing
    dimensions)."""
    group, rank, world, chunk = _row_layout(local_param)
    rows = whole_rows(local_param)
    out = like.new_empty(chunk, *like.shape[1:])
    pieces = None
    if rank == owner:
        assert whole is not None
        pieces = list(_padded(whole, world * chunk).split(chunk))
    dist.scatter(out, pieces, group=group, group_src=owner)
    return out[: max(0, min(chunk, rows - rank * chunk))]


def whole_rows(local_param: Tensor) -> int:
    """The whole row count of the parameter whose local piece is ``local_param``."""
    return _rows()[id(local_param)]


def _padded(x: Tensor, rows: int) -> Tensor:
    """``x`` with zero rows appended up to ``rows`` (the equal pieces gloo's collectives need)."""
    padded = x.new_zeros(rows, *x.shape[1:])
    padded[: x.shape[0]] = x
    return padded


def own_rows(whole: Tensor, local_param: Tensor) -> Tensor:
    """This rank's rows of ``whole`` (a view), sharded like ``local_param``."""
    _, rank, _, chunk = _row_layout(local_param)
    return whole[min(rank * chunk, whole.shape[0]) : (rank + 1) * chunk]


def _all_reduce(x: Tensor, op: Any) -> Tensor:
    """``x`` reduced by ``op`` over every group of the sharded step in progress (a new tensor;
    ``x`` itself outside a sharded step)."""
    groups = _groups()
    if not groups:
        return x
    x = x.clone()
    for group in groups:
        dist.all_reduce(x, op=op, group=group)
    return x


def all_sum(x: Tensor) -> Tensor:
    """``x`` summed over the shards of the tensors being stepped (a new tensor; ``x`` itself
    outside a sharded step). ``x`` holds this rank's partial sums, e.g. of squares."""
    return _all_reduce(x, dist.ReduceOp.SUM)


def all_max(x: Tensor) -> Tensor:
    """``x``'s elementwise maximum over the shards (``x`` itself outside a sharded step)."""
    return _all_reduce(x, dist.ReduceOp.MAX)


def any_flag(flag: Tensor, tensors: Sequence[Tensor]) -> Tensor:
    """A float flag (``> 0``: some rank saw a non-finite value) made the same on every rank of
    every mesh that shards one of ``tensors``, so all ranks skip or step together."""
    if plain(tensors):
        return flag
    # in first-appearance order, the same on every rank: a set's order follows the meshes'
    # string hashes, which Python randomises per process, and ranks that all-reduced over two
    # meshes' groups in different orders hung (4 launches in 10)
    meshes = dict.fromkeys(t.device_mesh for t in tensors if is_sharded(t))
    for mesh in meshes:
        for i in range(mesh.ndim):
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=mesh.get_group(i))
    return flag


def any_rank(failed: bool, tensors: Sequence[Tensor]) -> bool:
    """Whether ``failed`` holds on some rank of the meshes that shard ``tensors`` (``failed``
    itself where none is sharded): a decision every rank must take together, such as
    refusing a state dict of which each rank checked its own shards."""
    if plain(tensors) or not any(is_sharded(t) for t in tensors):
        return failed
    device = next(local(t).device for t in tensors if is_sharded(t))
    return bool(any_flag(torch.tensor(float(failed), device=device), tensors) > 0)


def sharded_like(value: Tensor, like: Any) -> Tensor:
    """A whole state tensor ``value`` (a one-process checkpoint, the same on every rank) as a
    ``DTensor`` laid out as ``like``; each rank keeps its own slice (no communication)."""
    from torch.distributed.tensor import distribute_tensor  # loaded: like is a DTensor

    return distribute_tensor(value, like.device_mesh, like.placements, src_data_rank=None)


def gathered_state(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with every ``DTensor`` all-gathered into a whole plain tensor."""
    return {k: v.full_tensor() if is_sharded(v) else v for k, v in state.items()}


def keep_shard(target: Tensor, whole: Tensor) -> None:
    """Copy this rank's slice of ``whole`` into the ``DTensor`` ``target`` (no communication:
    every rank computed the same ``whole``)."""
    target.to_local().copy_(sharded_like(whole, target).to_local())


def local_state(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with every ``DTensor`` replaced by its local piece (views: writes persist)."""
    return {k: local(v) for k, v in state.items()}
