"""Statistics pooling: the mean pool unchanged, the spread pool's values and gradients, and the
detectors built with it (including from a checkpoint's header)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from assocmem.forensic.checkpoint import build_model
from assocmem.forensic.models.cnn import CNNEncoder
from assocmem.forensic.models.npr import NPRWithDCT
from assocmem.forensic.models.pooling import VARIANCE_FLOOR, pooled_dim, spatial_pool


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 2**31 - 1),
    st.integers(1, 3),
    st.integers(1, 5),
    st.integers(1, 4),
    st.integers(1, 4),
)
def test_mean_std_pool_is_each_channels_mean_then_its_spread(seed, n, c, h, w):
    """Checked against a float64 computation of the textbook formulas (the population variance
    about the mean, plus the floor): agreement to float32 rounding of sums of at most 16 terms."""
    fmap = torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))
    pooled = spatial_pool(fmap, "mean_std")
    assert pooled.shape == (n, pooled_dim(c, "mean_std")) == (n, 2 * c)
    flat = fmap.double().reshape(n, c, -1)
    mean = flat.sum(-1) / (h * w)
    spread = (((flat - mean[..., None]) ** 2).sum(-1) / (h * w) + VARIANCE_FLOOR).sqrt()
    torch.testing.assert_close(pooled.double(), torch.cat([mean, spread], -1), rtol=1e-5, atol=1e-6)
    assert torch.equal(spatial_pool(fmap, "mean"), fmap.mean(dim=(-2, -1)))


def test_the_spread_sees_one_position_that_disagrees_and_keeps_finite_gradients():
    flat = torch.full((1, 2, 4, 4), 0.5, requires_grad=True)
    pooled = spatial_pool(flat, "mean_std")
    assert torch.allclose(pooled[0, 2:], torch.full((2,), VARIANCE_FLOOR**0.5))
    pooled.sum().backward()  # a constant map: sqrt at the floor, not at 0
    assert torch.isfinite(flat.grad).all()
    spliced = flat.detach().clone()
    spliced[0, 0, 1, 2] = 2.0  # one position of channel 0 disagrees; channel 1 stays flat
    out = spatial_pool(spliced, "mean_std")[0]
    assert out[2] > 0.3 and out[3] == pooled[0, 3]
    with pytest.raises(ValueError, match="pool must be one of"):
        spatial_pool(flat, "max")
    with pytest.raises(ValueError, match="pool must be one of"):
        CNNEncoder((4,), pool="median")


def test_the_mean_pool_is_the_detector_as_before_and_the_spread_widens_only_the_head():
    """``pool="mean"`` (the default) builds the same parameters in the same order from the same
    seed, so checkpoints without the argument load as before; ``"mean_std"`` changes only the
    widths of the layers that read embeddings (the head, and NPR's own unused linear layer)."""
    kw = dict(widths=(4, 8), hidden=8, embed=4, feature_dropout=0.5, head="one_class")
    torch.manual_seed(0)
    default = NPRWithDCT(**kw)
    torch.manual_seed(0)
    mean = NPRWithDCT(**kw, pool="mean")
    torch.manual_seed(0)
    spread = NPRWithDCT(**kw, pool="mean_std")
    for (a, x), (b, y) in zip(default.state_dict().items(), mean.state_dict().items(), strict=True):
        assert a == b and torch.equal(x, y)
    assert spread.fc.in_features == 2 * default.fc.in_features == 2 * (8 + 4)
    widened = {
        k for k, v in default.state_dict().items() if spread.state_dict()[k].shape != v.shape
    }
    assert widened == {"fc.weight", "residual.fc.weight"}
    x = torch.rand(3, 3, 16, 24)
    spread.eval()
    assert spread(x).shape == (3,) and spread.embed(x).shape == (3, 24)
    rebuilt = build_model("npr_dct", {**kw, "widths": [4, 8], "pool": "mean_std"})
    assert rebuilt.fc.in_features == 24
    with pytest.raises(ValueError, match="cannot be built"):
        build_model("npr_dct", {**kw, "pool": "attention"})
