"""LogitEnsemble: the mean of its members' logits, a module like any other."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from assocmem.forensic.models.ensemble import LogitEnsemble
from assocmem.forensic.models.npr import NPR


class Affine(nn.Module):
    """A member whose logit is ``a * mean(x) + b``: its output is known in closed form."""

    def __init__(self, a: float, b: float) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a))
        self.b = nn.Parameter(torch.tensor(b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * x.mean(dim=(1, 2, 3)) + self.b


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.floats(-3, 3), st.floats(-3, 3)), min_size=1, max_size=5))
def test_the_logit_is_the_mean_of_the_members_logits(coefficients):
    x = torch.rand(4, 3, 8, 8, dtype=torch.float64)
    members = [Affine(a, b).double() for a, b in coefficients]
    expected = torch.stack([m(x) for m in members]).mean(0)
    # the mean of K fp64 numbers of size <= 6: exact to a few ulps of 6
    torch.testing.assert_close(LogitEnsemble(members)(x), expected, rtol=0, atol=1e-13)


def test_one_member_is_that_member_and_state_mode_and_device_reach_every_member():
    torch.manual_seed(0)
    member = NPR(norm="batch").eval()
    x = torch.rand(3, 3, 32, 32)
    alone = LogitEnsemble([member])
    assert torch.equal(alone(x), member(x))  # a mean of one value is that value, bit for bit
    pair = LogitEnsemble([NPR(norm="batch"), NPR(norm="batch")])
    pair.eval()
    assert all(not m.training for m in pair.members)
    keys = pair.state_dict().keys()
    assert any(k.startswith("members.0.") for k in keys)
    assert any(k.startswith("members.1.") for k in keys)
    assert len(keys) == 2 * len(member.state_dict())


def test_bad_ensembles_are_refused():
    with pytest.raises(ValueError, match="at least one member"):
        LogitEnsemble([])

    class Wide(nn.Module):
        def forward(self, x):
            return torch.zeros(len(x), 2)

    with pytest.raises(ValueError, match="differ in shape"):
        LogitEnsemble([Affine(1.0, 0.0), Wide()])(torch.rand(2, 3, 4, 4))


def test_the_checkpoint_format_builds_an_ensemble_and_refuses_malformed_members():
    from assocmem.forensic.checkpoint import build_model

    npr_bn = {"architecture": "npr", "arch_kwargs": {"norm": "batch"}}
    built = build_model("ensemble", {"members": [npr_bn, npr_bn, npr_bn]})
    assert isinstance(built, LogitEnsemble) and len(built.members) == 3
    assert all(isinstance(m, NPR) for m in built.members)
    for members, match in [
        ([], "non-empty list"),
        ("npr", "non-empty list"),
        ([{"architecture": "npr"}], "member 0 must be"),
        ([npr_bn, {"architecture": "ensemble", "arch_kwargs": {}}], "member 1 is itself"),
        ([{"architecture": "nope", "arch_kwargs": {}}], "unknown architecture"),
    ]:
        with pytest.raises(ValueError, match=match):
            build_model("ensemble", {"members": members})
