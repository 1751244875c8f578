"""Frequency masking as a training augmentation: the drawn fraction of bins goes, the mean
colour and a gray image's grayness stay, a fraction ``p`` of the images is touched, and the
same generator state gives the same images."""

import numpy as np
import pytest
import torch

from assocmem.forensic.data.spectral_augment import checked_spectral_mask, mask_spectra


def noise(n, seed=0, gray=False):
    # mid-range values: removing a quarter of the bins rarely pushes a pixel out of [0, 255]
    rng = np.random.default_rng(seed)
    x = rng.integers(64, 192, size=(n, 1 if gray else 3, 32, 32)).astype(np.uint8)
    return np.repeat(x, 3, axis=1) if gray else x


@pytest.mark.parametrize("ratio", [0.15, 0.25, 0.5])
def test_the_drawn_fraction_of_bins_is_removed_and_the_rest_kept(ratio):
    """A bin's amplitude on white noise is ~37 (ortho FFT, std of U[64, 192)); the rounding to
    8 bits adds ~0.3 to every bin. So a removed bin reads below 3 and a kept one, unless it
    was already tiny, stays within 3 of its input: the removed fraction is the mask's, to the
    two bins of a Hermitian pair plus the few input bins that were tiny to begin with."""
    x = noise(8)
    out = mask_spectra(x, 1.0, ratio, np.random.default_rng(1))
    f_in = torch.fft.fft2(torch.from_numpy(x).double(), norm="ortho").abs()
    f_out = torch.fft.fft2(torch.from_numpy(out).double(), norm="ortho").abs()
    removed = (f_out < 3) & (f_in > 6)
    # per image, channel 0, among the bins that were not tiny (about 97 % of them)
    fraction = removed[:, 0].sum(dim=(-2, -1)) / (f_in[:, 0] > 6).sum(dim=(-2, -1))
    assert (fraction - ratio).abs().max() <= 2 / 1024 + 0.01
    kept = ~removed & (f_in > 6)
    assert ((f_out - f_in).abs()[kept] < 3).all()
    # the same bins in every channel (where every channel's input bin was not tiny)
    sure = (f_in > 6).all(dim=1)
    low = f_out < 3
    assert all(torch.equal(low[:, 0][sure], low[:, c][sure]) for c in (1, 2))


def test_the_mean_colour_and_a_gray_image_are_kept():
    gray = noise(6, seed=2, gray=True)
    out = mask_spectra(gray, 1.0, 0.3, np.random.default_rng(0))
    assert not np.array_equal(out, gray)
    assert np.array_equal(out[:, 0], out[:, 1]) and np.array_equal(out[:, 1], out[:, 2])
    # DC is never removed: the mean moves only by the rounding and the rare clipped pixel
    means = np.abs(out.mean(axis=(-2, -1)) - gray.mean(axis=(-2, -1)))
    assert means.max() < 0.5
    flat = np.full((2, 3, 32, 32), 100, np.uint8)  # all its energy in DC: nothing to remove
    assert np.array_equal(mask_spectra(flat, 1.0, 0.5, np.random.default_rng(0)), flat)


def test_a_fraction_p_of_the_images_is_masked_the_rest_copied():
    """400 images at p = 0.3: the count of masked ones within 5 binomial standard deviations
    (sqrt(400 * 0.3 * 0.7) ~ 9.2); the others are their input, byte for byte, in a new array."""
    x = noise(400, seed=3)
    out = mask_spectra(x, 0.3, 0.15, np.random.default_rng(4))
    changed = (out != x).reshape(400, -1).any(axis=1)
    assert abs(int(changed.sum()) - 120) <= 46
    assert out is not x and np.array_equal(out[~changed], x[~changed])
    none = mask_spectra(x[:1], 1e-9, 0.15, np.random.default_rng(4))
    assert np.array_equal(none, x[:1])


def test_the_same_generator_state_gives_the_same_images():
    x = noise(10, seed=5)
    a = mask_spectra(x, 0.5, 0.2, np.random.default_rng(9))
    b = mask_spectra(x, 0.5, 0.2, np.random.default_rng(9))
    c = mask_spectra(x, 0.5, 0.2, np.random.default_rng(10))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize(
    "bad", [(0.0, 0.15), (1.5, 0.15), (0.5, 0.0), (0.5, 1.0), (float("nan"), 0.1), (0.5,)]
)
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError, match="spectral_mask"):
        checked_spectral_mask(bad)


def test_images_of_another_layout_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        mask_spectra(np.zeros((2, 3, 8, 8), np.float32), 1.0, 0.1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="uint8"):
        mask_spectra(np.zeros((3, 8, 8), np.uint8), 1.0, 0.1, np.random.default_rng(0))
