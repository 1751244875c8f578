import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from assocmem.forensic.masks import (
    FrequencyMasker,
    PixelMasker,
    apply_frequency_mask,
    apply_pixel_mask,
    band_indicator,
    inverse_spectrum,
    is_hermitian_symmetric,
    mirror,
    pixel_patch_mask,
    radial_band_mask,
    random_spectral_mask,
    spectrum,
)

sizes = st.tuples(st.integers(4, 20), st.integers(4, 20))
ratios = st.floats(0.0, 1.0)
seeds = st.integers(0, 2**31 - 1)


def _images(h, w, seed, n=2):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


@given(sizes, seeds)
def test_mirror_is_negated_frequency_and_an_involution(size, seed):
    h, w = size
    x = torch.rand(h, w, generator=torch.Generator().manual_seed(seed))
    m = mirror(x)
    for i in (0, h // 2, h - 1):
        for j in (0, w // 2, w - 1):
            # index i holds frequency i - h//2; its negation lives at (-(i - h//2)) + h//2 mod h
            assert m[i, j] == x[(h // 2 - (i - h // 2)) % h, (w // 2 - (j - w // 2)) % w]
    assert torch.equal(mirror(m), x)


@given(sizes, ratios, st.integers(1, 5), seeds)
def test_random_spectral_mask_is_symmetric_binary_and_honours_ratio(size, ratio, patch, seed):
    h, w = size
    m = random_spectral_mask(size, ratio, patch, torch.Generator().manual_seed(seed), n=3)
    assert m.shape == (3, h, w)
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    assert is_hermitian_symmetric(m)
    removed = 1.0 - m.mean(dim=(1, 2))
    # one priority group (a block and its mirror) is at most 2 patch^2 bins
    tol = 2 * patch * patch / (h * w) + 1e-6
    assert (removed - ratio).abs().max() <= tol


@given(sizes, ratios, st.integers(1, 5), seeds)
def test_keep_dc_never_removes_the_mean_and_keeps_ratio_and_symmetry(size, ratio, patch, seed):
    h, w = size
    m = random_spectral_mask(size, ratio, patch, torch.Generator().manual_seed(seed), 4, True)
    assert torch.all(m[:, h // 2, w // 2] == 1)
    assert is_hermitian_symmetric(m)
    removed = 1.0 - m.mean(dim=(1, 2))
    # DC set aside costs at most its one bin beyond the whole-group rounding (2 patch^2 bins)
    target = min(ratio, 1 - 1 / (h * w))
    assert (removed - target).abs().max() <= (2 * patch * patch + 1) / (h * w) + 1e-6
    # the priorities are drawn as without keep_dc (the same generator use); which whole groups
    # are cut can differ (DC set aside makes its block a group of its own), so masks may differ
    with_dc, plain = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    random_spectral_mask(size, ratio, patch, with_dc, 4, True)
    random_spectral_mask(size, ratio, patch, plain, 4)
    assert torch.equal(torch.rand(8, generator=with_dc), torch.rand(8, generator=plain))


def test_keep_dc_masker_keeps_every_images_mean_and_band_masks_refuse_it():
    x = torch.rand(64, 3, 16, 16)
    batch = FrequencyMasker(ratio=0.75, keep_dc=True)(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(batch.masked.mean(dim=(-2, -1)), x.mean(dim=(-2, -1)))
    torch.testing.assert_close(
        batch.removed.mean(dim=(-2, -1)), torch.zeros(64, 3), atol=1e-6, rtol=0
    )
    plain = FrequencyMasker(ratio=0.75)(x, torch.Generator().manual_seed(0))
    lost = (plain.mask[:, 0, 8, 8] == 0).sum()
    assert lost > 0  # without keep_dc some images lose their mean (the confound it removes)
    with pytest.raises(ValueError, match="spectral"):
        FrequencyMasker(kind="band", keep_dc=True)
    with pytest.raises(TypeError, match="keep_dc"):
        FrequencyMasker(keep_dc="yes")


@given(sizes, ratios, st.integers(1, 4), seeds)
def test_frequency_masked_image_is_real_and_split_is_exact(size, ratio, patch, seed):
    h, w = size
    x = _images(h, w, seed)
    m = random_spectral_mask(size, ratio, patch, torch.Generator().manual_seed(seed), n=2)
    complex_out = inverse_spectrum(spectrum(x) * m[:, None])
    assert complex_out.imag.abs().max() < 1e-5
    masked, removed = apply_frequency_mask(x, m)
    torch.testing.assert_close(masked, complex_out.real, atol=1e-5, rtol=0)
    torch.testing.assert_close(masked + removed, x)


@given(sizes, seeds)
def test_ratio_zero_is_identity(size, seed):
    h, w = size
    x = _images(h, w, seed)
    g = torch.Generator().manual_seed(seed)
    m = random_spectral_mask(size, 0.0, 2, g, n=2)
    assert torch.all(m == 1)
    masked, removed = apply_frequency_mask(x, m)
    torch.testing.assert_close(masked, x, atol=1e-5, rtol=0)
    assert removed.abs().max() < 1e-5
    assert torch.all(pixel_patch_mask((h - h % 2, w - w % 2), 0.0, 2, g) == 1)


@given(sizes, st.sampled_from(["low", "mid", "high"]), seeds)
def test_band_mask_only_touches_its_band(size, band, seed):
    h, w = size
    x = _images(h, w, seed)
    m = radial_band_mask(size, band)
    assert is_hermitian_symmetric(m)
    masked, _ = apply_frequency_mask(x, m)
    inside = band_indicator(size, band).bool()
    s_in, s_out = spectrum(x), spectrum(masked)
    torch.testing.assert_close(s_out[..., ~inside], s_in[..., ~inside], atol=1e-5, rtol=0)
    assert s_out[..., inside].abs().max() < 1e-5 if inside.any() else True


def test_bands_partition_the_spectrum():
    total = sum(band_indicator(32, b) for b in ("low", "mid", "high"))
    assert torch.all(total == 1)
    keep_only = radial_band_mask(32, "mid", keep=True)
    torch.testing.assert_close(keep_only, 1 - radial_band_mask(32, "mid"))
    assert radial_band_mask(32, "high")[16, 16] == 1  # DC is in the low band


def test_even_size_nyquist_row_is_self_paired():
    # a mask removing only the Nyquist row is symmetric and gives a real image
    m = torch.ones(8, 8)
    m[0, :] = 0
    m = torch.minimum(m, mirror(m))
    assert m[0].sum() == 0 and m[1:].sum() == 7 * 8
    x = _images(8, 8, 0)
    assert inverse_spectrum(spectrum(x) * m).imag.abs().max() < 1e-5


@given(st.sampled_from([(8, 8), (12, 16), (32, 32)]), ratios, st.sampled_from([2, 4]), seeds)
def test_pixel_patch_mask_ratio_is_exact(size, ratio, patch, seed):
    h, w = size
    m = pixel_patch_mask(size, ratio, patch, torch.Generator().manual_seed(seed), n=3)
    n_patches = (h // patch) * (w // patch)
    expected = round(ratio * n_patches) / n_patches
    torch.testing.assert_close(1 - m.mean(dim=(1, 2)), torch.full((3,), expected))
    # whole patches: each patch block is constant
    blocks = m.reshape(3, h // patch, patch, w // patch, patch)
    assert torch.all(blocks.amax(dim=(2, 4)) == blocks.amin(dim=(2, 4)))
    x = _images(h, w, seed, n=3)
    masked, removed = apply_pixel_mask(x, m)
    torch.testing.assert_close(masked + removed, x)


def test_masks_are_reproducible_per_generator_and_differ_per_image():
    a = random_spectral_mask(32, 0.5, 4, torch.Generator().manual_seed(1), n=4)
    b = random_spectral_mask(32, 0.5, 4, torch.Generator().manual_seed(1), n=4)
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1])


@pytest.mark.parametrize(
    "masker", [FrequencyMasker("spectral", 0.5), FrequencyMasker("band"), PixelMasker(0.75)]
)
def test_maskers_return_consistent_batches(masker):
    x = torch.rand(5, 3, 16, 16)
    batch = masker(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(batch.masked + batch.removed, x)
    assert batch.mask.shape == (5, 1, 16, 16)
    # projecting the true removed part leaves it unchanged
    torch.testing.assert_close(
        masker.project(batch.removed, batch), batch.removed, atol=1e-5, rtol=0
    )


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="ratio"):
        random_spectral_mask(8, 1.5)
    with pytest.raises(ValueError, match="band"):
        radial_band_mask(8, "ultra")
    with pytest.raises(ValueError, match="divide"):
        pixel_patch_mask(10, 0.5, 4)
    assert math.isclose(float(random_spectral_mask(8, 1.0).sum()), 0.0)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: FrequencyMasker(ratio=1.5), "ratio must be in"),
        (lambda: FrequencyMasker(ratio=math.nan), "ratio must be in"),
        (lambda: FrequencyMasker(kind="spectrum"), "kind must be"),
        (lambda: FrequencyMasker(patch=0), "patch must be an integer >= 1"),
        (lambda: FrequencyMasker(patch=2.5), "patch must be an integer >= 1"),
        (lambda: FrequencyMasker(kind="band", bands=()), "at least one band"),
        (lambda: FrequencyMasker(kind="band", bands=("ultra",)), "band must be"),
        (lambda: FrequencyMasker(kind="band", radii=(0.5, 0.25)), "radii must satisfy"),
        (lambda: PixelMasker(ratio=-0.1), "ratio must be in"),
        (lambda: PixelMasker(patch=True), "patch must be an integer >= 1"),
    ],
)
def test_a_masker_refuses_bad_settings_when_built_not_at_its_first_batch(build, match):
    # a config's bad ratio surfaced as a traceback from the first evaluation, after the data
    with pytest.raises(ValueError, match=match):
        build()


def test_a_band_with_a_nan_bound_is_refused():
    # (nan, 1.0) passed "lo > hi" (False for NaN) and removed nothing
    with pytest.raises(ValueError, match="lo <= hi"):
        FrequencyMasker("band", bands=((math.nan, 1.0),))


def test_an_asymmetric_mask_is_refused():
    # a bin removed while its mirror is kept: the real part of the inverse half-keeps both, so
    # 'removed' held half of what the mask removes, without a word
    x = torch.rand(2, 3, 8, 8)
    m = torch.ones(8, 8)
    m[1, 2] = 0.0  # its mirror in the centred frame, (7, 6), stays kept
    with pytest.raises(ValueError, match="Hermitian-symmetric"):
        apply_frequency_mask(x, m)
    m[7, 6] = 0.0
    masked, removed = apply_frequency_mask(x, m)
    torch.testing.assert_close(masked + removed, x)


def test_per_image_masks_need_a_batch_of_as_many_images():
    """A per-image mask on images without a channel axis, or a masker given one (C, H, W)
    image, broadcast silently: (4, 16, 16) images and masks gave a (4, 4, 16, 16) product,
    and a masker took an image's 3 channels for 3 images."""
    g = torch.Generator().manual_seed(0)
    masks = random_spectral_mask(16, 0.5, 4, g, n=4)
    for split in (apply_frequency_mask, apply_pixel_mask):
        with pytest.raises(ValueError, match="needs an \\(N, C, H, W\\) batch of N images"):
            split(torch.rand(4, 16, 16), masks)
        with pytest.raises(ValueError, match="batch of N images"):
            split(torch.rand(2, 3, 16, 16), masks)  # 4 masks, 2 images
        with pytest.raises(ValueError, match="differ in \\(H, W\\)"):
            split(torch.rand(4, 3, 8, 8), masks)
        masked, removed = split(torch.rand(4, 3, 16, 16), masks)  # as before
        assert masked.shape == removed.shape == (4, 3, 16, 16)
        shared, _ = split(torch.rand(5, 16, 16), masks[0])  # one (H, W) mask: any leading shape
        assert shared.shape == (5, 16, 16)
    for masker in (FrequencyMasker(), PixelMasker()):
        with pytest.raises(ValueError, match="takes an \\(N, C, H, W\\) batch"):
            masker(torch.rand(3, 16, 16))
    with pytest.raises(ValueError, match="patch must be an integer"):
        random_spectral_mask(16, 0.5, 2.5)


def test_half_precision_and_empty_batches_split_by_frequency():
    """float16/bfloat16 images failed in the FFT ("Unsupported dtype"), an empty batch in MKL
    ("DFTI ERROR"); both split now, the half ones in float32 and back."""
    images = torch.rand(2, 3, 16, 16)
    mask = random_spectral_mask(16, 0.5, 4, torch.Generator().manual_seed(0), n=2)
    exact, _ = apply_frequency_mask(images, mask)
    for dtype in (torch.float16, torch.bfloat16):
        masked, removed = apply_frequency_mask(images.to(dtype), mask)
        assert masked.dtype == removed.dtype == dtype
        # the input's rounding, then one rounding of the result: a few of dtype's ulps at 1
        eps = torch.finfo(dtype).eps
        assert (masked.float() - exact).abs().max() <= 4 * eps
        # removed = images - masked in dtype: the sum is back within a rounding of each
        assert (
            (masked.float() + removed.float()) - images.to(dtype).float()
        ).abs().max() <= 2 * eps
    batch = FrequencyMasker()(torch.rand(0, 3, 8, 8))
    masked, removed = batch.masked, batch.removed
    assert masked.shape == removed.shape == (0, 3, 8, 8)
