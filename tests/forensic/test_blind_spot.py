"""The blind-spot predictor: its prediction never sees the pixel it predicts, and fit on real
textures it finds smoothed copies more predictable than the reals."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from assocmem.forensic.models.blind_spot import (
    MIN_SCALE,
    BlindSpotPredictor,
    coding_surprise,
    fit_blind_spot,
)


@settings(max_examples=20, deadline=None)
@given(i=st.integers(2, 9), j=st.integers(2, 9), channel=st.integers(0, 2), seed=st.integers(0, 99))
def test_a_pixel_never_enters_its_own_prediction(i, j, channel, seed):
    # Changing one pixel (in any channel) may move its neighbours' predictions, never its own:
    # the centre tap is masked for every channel and the later layers are 1 x 1.
    torch.manual_seed(seed)
    model = BlindSpotPredictor(width=8, kernel=5)
    x = torch.rand(1, 3, 12, 12)
    y = x.clone()
    y[0, channel, i, j] += 0.5
    (mu_x, b_x), (mu_y, b_y) = model(x), model(y)
    r = model.kernel // 2
    assert torch.equal(mu_x[..., i - r, j - r], mu_y[..., i - r, j - r])
    assert torch.equal(b_x[..., i - r, j - r], b_y[..., i - r, j - r])
    assert not torch.equal(mu_x, mu_y)  # it is seen by its neighbours


def test_the_scale_stays_above_half_a_quantisation_step():
    model = BlindSpotPredictor(width=4)
    with torch.no_grad():
        model.head[-1].bias.fill_(-50.0)  # softplus(-50) underflows towards 0
    _, b = model(torch.rand(2, 3, 8, 8))
    assert (b >= MIN_SCALE).all()


def _textures(n: int, seed: int) -> torch.Tensor:
    # noise-rich "photos": smooth shading plus per-pixel noise (a camera's grain)
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=gen)
    shade = torch.nn.functional.interpolate(coarse, size=16, mode="bilinear", align_corners=False)
    return (0.8 * shade + 0.1 * torch.rand(n, 3, 16, 16, generator=gen)).clamp(0, 1)


def test_fit_on_reals_smoothed_copies_are_more_predictable_and_the_fit_is_deterministic():
    reals = _textures(256, seed=0)
    model = fit_blind_spot(reals, steps=150, batch_size=32, lr=3e-3, width=8, seed=0)
    again = fit_blind_spot(reals, steps=150, batch_size=32, lr=3e-3, width=8, seed=0)
    for p, q in zip(model.parameters(), again.parameters(), strict=True):
        assert torch.equal(p, q)
    held = _textures(64, seed=1)
    blurred = torch.nn.functional.avg_pool2d(held, 3, stride=1, padding=1, count_include_pad=False)
    s_real, s_blur = coding_surprise(model, held), coding_surprise(model, blurred)
    assert s_real.dtype == np.float64 and s_real.shape == (64,)
    # the fit is at its optimum when the reals' mean |x - mu| / b is 1; 150 steps get near it
    assert 0.6 < s_real.mean() < 1.4
    # averaging 9 pixels cuts the grain's spread by 3 (the shading's own prediction error
    # stays): each blurred copy scores below its own real (ratios 0.5-0.7 measured, so 0.85
    # leaves a margin for another CPU's rounding of the fit)
    assert (s_blur < 0.85 * s_real).all()
    # uint8 input is read as /255
    as_uint8 = (held * 255).round().to(torch.uint8)
    assert np.allclose(coding_surprise(model, as_uint8), s_real, atol=0.05)


def test_bad_shapes_and_settings_are_refused():
    with pytest.raises(ValueError, match="odd"):
        BlindSpotPredictor(kernel=4)
    with pytest.raises(ValueError, match="width"):
        BlindSpotPredictor(width=0)
    model = BlindSpotPredictor(width=4)
    with pytest.raises(ValueError, match="interior"):
        model(torch.rand(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        model(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="zero images"):
        fit_blind_spot(torch.rand(0, 3, 8, 8))
    with pytest.raises(ValueError, match="positive"):
        fit_blind_spot(torch.rand(4, 3, 8, 8), steps=0)
