"""Test-time views: the eight dihedral views and the averaged logit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from assocmem.forensic.views import dihedral, view_logits


def test_dihedral_gives_eight_distinct_views_closed_under_the_group():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    views = dihedral(x)
    assert len(views) == 8 and torch.equal(views[0], x)
    flat = {tuple(v.flatten().tolist()) for v in views}
    assert len(flat) == 8  # an asymmetric image has eight different views
    # the set is a group: every view of a view is again one of the eight
    assert all(tuple(w.flatten().tolist()) in flat for v in views for w in dihedral(v))


class Linear(nn.Module):
    """Logit = <w, x>: its D4 mean is <mean of the views of w, x>, computable by hand."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.w).flatten(1).sum(1)


def test_view_logits_is_the_mean_logit_over_the_views():
    torch.manual_seed(0)
    w, x = torch.randn(3, 8, 8), torch.randn(5, 3, 8, 8)
    model = Linear(w)
    one = view_logits(model, x, "one")
    torch.testing.assert_close(one, (x * w).flatten(1).sum(1))
    expected = torch.stack([(v * w).flatten(1).sum(1) for v in dihedral(x)]).mean(0)
    torch.testing.assert_close(view_logits(model, x, "d4", batch_size=2), expected)
    # a D4-symmetric weight makes every view score the same: the mean is the plain logit
    sym = torch.stack(dihedral(w)).mean(0)
    torch.testing.assert_close(view_logits(Linear(sym), x, "d4"), view_logits(Linear(sym), x))
    with pytest.raises(ValueError, match="views must be one of"):
        view_logits(model, x, "d8")
