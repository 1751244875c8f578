"""NPR and its spectral branch: the fixed operations they read and the models' contracts."""

from __future__ import annotations

import pytest
import torch
from trace_support import auc_after_training

from assocmem.forensic.models.npr import (
    NPRWithSpectrum,
    high_pass_amplitude,
    neighbouring_pixel_residual,
)


def test_residual_is_zero_on_nearest_upsampled_images():
    small = torch.rand(2, 3, 8, 8)
    up = torch.nn.functional.interpolate(small, scale_factor=2.0, mode="nearest")
    assert torch.equal(neighbouring_pixel_residual(up), torch.zeros_like(up))
    assert neighbouring_pixel_residual(torch.rand(1, 3, 16, 16)).abs().sum() > 0


def test_high_pass_amplitude_is_zero_on_flat_images_and_peaks_on_a_jpeg_grid():
    flat = torch.full((1, 3, 32, 32), 0.4)
    # log1p of |FFT| of a box-filter residual of a constant: float rounding only (~1e-7).
    assert high_pass_amplitude(flat).abs().max() < 1e-5
    # A pattern of period 8 along the width (as an 8 x 8 block grid): its energy sits at
    # multiples of 32 / 8 = 4 in the rfft's width axis, on the zero-frequency row.
    col = torch.arange(32) % 8 == 0
    grid = flat + 0.2 * col.float().view(1, 1, 1, 32)
    amp = high_pass_amplitude(grid)[0, 0]
    assert amp.shape == (32, 17)
    peaks = amp[0].clone()
    assert set(peaks.topk(4).indices.tolist()) <= {4, 8, 12, 16}
    assert amp[1:].abs().max() < 1e-5  # nothing varies along the height


def test_spectrum_detector_scores_a_batch_and_refuses_other_sizes():
    torch.manual_seed(0)
    model = NPRWithSpectrum(image_size=32)
    out = model(torch.rand(4, 3, 32, 32))
    assert out.shape == (4,) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="32 x 32"):
        model(torch.rand(4, 3, 64, 64))


def test_spectrum_detector_learns_a_periodic_trace_in_a_few_steps():
    # Fakes carry a faint 8-periodic grid (as a JPEG blocking trace) on random textures: the
    # spectral branch sees it at fixed frequencies. 60 Adam steps must separate the classes
    # on fresh data (AUC > 0.9; chance is 0.5), which the untrained model does not do.
    g = torch.Generator().manual_seed(0)

    def batch(n: int):
        x = torch.rand(n, 3, 32, 32, generator=g) * 0.5 + 0.25
        y = (torch.rand(n, generator=g) < 0.5).float()
        grid = (torch.arange(32) % 8 == 0).float()
        x = x + 0.05 * y.view(-1, 1, 1, 1) * grid.view(1, 1, 1, 32)
        return x, y

    torch.manual_seed(0)
    model = NPRWithSpectrum(image_size=32)
    assert auc_after_training(model, batch, steps=60, batch_size=64, eval_size=256) > 0.9
