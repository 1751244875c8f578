"""Branch dropout: at most one branch of an example dropped, never all; the rate it says; the
detector unchanged without it and in evaluation; built from a checkpoint's header."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from assocmem.forensic.checkpoint import build_model
from assocmem.forensic.models.branch_dropout import check_branch_dropout, drop_branches
from assocmem.forensic.models.npr import NPRWithDCT


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(2, 4), st.integers(1, 40), st.floats(0.0, 0.95))
def test_an_example_loses_at_most_one_branch_and_keeps_the_rest_unchanged(seed, branches, n, p):
    g = torch.Generator().manual_seed(seed)
    # strictly positive entries, so a zero row can only be a dropped one
    embeddings = [torch.rand(n, 3 + b, generator=g) + 0.1 for b in range(branches)]
    out = drop_branches(embeddings, p, generator=g)
    assert [o.shape for o in out] == [e.shape for e in embeddings]
    zeroed = torch.stack([(o == 0).all(dim=1) for o in out], dim=1)  # (n, branches)
    assert (zeroed.sum(dim=1) <= 1).all()
    for o, e, z in zip(out, embeddings, zeroed.T, strict=True):
        assert torch.equal(o[~z], e[~z])  # kept rows are untouched: no rescaling


def test_the_rate_is_p_and_the_dropped_branch_is_uniform():
    """n = 40 000 examples at p = 0.5 and three branches: the dropped fraction is Binomial(n, p)
    / n with standard deviation sqrt(p (1 - p) / n) = 0.0025, each branch's Binomial(n, p / 3)
    / n with 0.0020; 6 standard deviations bound a seeded draw with room on any machine (the
    draws are torch's CPU generator, the same bits everywhere)."""
    n, p, branches = 40_000, 0.5, 3
    ones = [torch.ones(n, 2) for _ in range(branches)]
    out = drop_branches(ones, p, generator=torch.Generator().manual_seed(0))
    zeroed = torch.stack([(o == 0).all(dim=1) for o in out], dim=1).double()
    assert abs(zeroed.sum(1).mean().item() - p) < 6 * math.sqrt(p * (1 - p) / n)
    q = p / branches
    for b in range(branches):
        assert abs(zeroed[:, b].mean().item() - q) < 6 * math.sqrt(q * (1 - q) / n)


def test_nothing_dropped_at_zero_or_with_one_branch_and_bad_rates_refused():
    e = [torch.rand(5, 2), torch.rand(5, 3)]
    assert all(a is b for a, b in zip(drop_branches(e, 0.0), e, strict=True))
    assert drop_branches(e[:1], 0.9)[0] is e[0]
    for bad in (-0.1, 1.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="branch_dropout must be in"):
            check_branch_dropout(bad)
    with pytest.raises(ValueError, match="cannot be built"):
        build_model("npr_dct", {"branch_dropout": 1.0})


def test_a_dropped_branch_gets_no_gradient_from_that_example():
    a = torch.rand(64, 3, requires_grad=True)
    b = torch.rand(64, 2, requires_grad=True)
    da, db = drop_branches([a, b], 0.5, generator=torch.Generator().manual_seed(1))
    (da.sum() + db.sum()).backward()
    dropped_a = (da == 0).all(1)
    assert dropped_a.any() and (a.grad[dropped_a] == 0).all() and (a.grad[~dropped_a] == 1).all()


def test_the_detector_is_unchanged_without_it_and_in_evaluation():
    """``branch_dropout=0`` (the default) draws no random numbers, so a network trained without
    it trains as before; in evaluation no branch is ever dropped, so the logits are those of
    the same weights without the option."""
    kw = dict(widths=(4, 8), hidden=8, embed=4, feature_dropout=0.0, head="one_class")
    torch.manual_seed(0)
    plain = NPRWithDCT(**kw)
    torch.manual_seed(0)
    dropped = NPRWithDCT(**kw, branch_dropout=0.5)
    pairs = zip(plain.state_dict().items(), dropped.state_dict().items(), strict=True)
    assert all(k == j and torch.equal(x, y) for (k, x), (j, y) in pairs)
    x = torch.rand(32, 3, 16, 16)
    plain.eval(), dropped.eval()
    assert torch.equal(plain(x), dropped(x))
    dropped.train()
    torch.manual_seed(3)
    embedding = dropped.embed(x)
    width = dropped.residual.encoder.embed_dim
    npr_off = (embedding[:, :width] == 0).all(1)
    dct_off = (embedding[:, width:] == 0).all(1)
    assert (npr_off | dct_off).any() and not (npr_off & dct_off).any()
    plain.train()
    torch.manual_seed(3)
    assert not torch.equal(plain.embed(x), embedding)
    rebuilt = build_model("npr_dct", {**kw, "widths": [4, 8], "branch_dropout": 0.5})
    assert rebuilt.branch_dropout == 0.5
