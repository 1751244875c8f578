"""Frequency and pixel masks for masked image modelling.

Conventions
    spectrum   ``X = fftshift(fft2(x, norm="ortho"))``: centred, DC at index ``(H // 2, W // 2)``;
               index ``i`` holds frequency ``f = i - n // 2``, so an even size runs
               ``-n/2 .. n/2 - 1`` (the Nyquist row/column sits at index 0).
    keep mask  ``m[u, v] in [0, 1]``: 1 keeps a frequency (or pixel), 0 removes it.
    split      ``x = masked + removed`` with ``masked = F^-1(m X)``, ``removed = F^-1((1 - m) X)``.

Why Hermitian symmetry: a real image has ``X[-f] = conj(X[f])``. If ``m[f] = m[-f]`` the product
``m X`` keeps that symmetry, so its inverse transform is real and the masked image is an image.
In the centred frame the mirror of index ``i`` is ``(2 (n // 2) - i) mod n``: a plain flip for odd
``n``; for even ``n`` the Nyquist index 0 is its own mirror (``-n/2 = n/2 mod n``) and the rest
flips around the DC. :func:`mirror` implements exactly that, and every mask here is built to be
invariant under it.

The pixel-patch mask (MAE, He et al. 2022) removes whole spatial patches: the semantic baseline
against which the frequency masks (which remove a forgery trace's likely home, the high band, or
random blocks of frequencies) are compared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor

Size = int | tuple[int, int]
Band = Literal["low", "mid", "high"] | tuple[float, float]

DEFAULT_RADII = (0.25, 0.5)


def _hw(size: Size) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else size
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size}")
    return int(h), int(w)


def _check_ratio(ratio: float) -> None:
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")


def _check_patch(patch: int) -> None:
    # whether it divides an image's size is known only with the image (pixel_patch_mask)
    if isinstance(patch, bool) or not isinstance(patch, int) or patch < 1:
        raise ValueError(f"patch must be an integer >= 1, got {patch!r}")


def _check_batch(images: Tensor) -> None:
    # a masker draws one mask per image of an (N, C, H, W) batch: a single (C, H, W) image was
    # taken for C images, and its masked output was (C, C, H, W)
    if images.dim() != 4:
        raise ValueError(
            f"a masker takes an (N, C, H, W) batch, got {tuple(images.shape)} (one image: "
            "images[None])"
        )


# ---------------------------------------------------------------- spectrum and symmetry


def spectrum(images: Tensor) -> Tensor:
    """Centred orthonormal 2-D spectrum over the last two dims (Parseval: ``||X|| = ||x||``)."""
    return torch.fft.fftshift(torch.fft.fft2(images, norm="ortho"), dim=(-2, -1))


def inverse_spectrum(spec: Tensor) -> Tensor:
    """Inverse of :func:`spectrum`; complex (its imaginary part is ~0 for symmetric spectra)."""
    return torch.fft.ifft2(torch.fft.ifftshift(spec, dim=(-2, -1)), norm="ortho")


def mirror(mask: Tensor) -> Tensor:
    """``mask[-u, -v]`` in the centred frame (last two dims): ``i -> (2 (n // 2) - i) mod n``."""
    out = mask.flip(-2, -1)
    h, w = mask.shape[-2:]
    # flip sends i -> n - 1 - i; even sizes need n - i, i.e. one more step (Nyquist stays put).
    return torch.roll(out, shifts=((h + 1) % 2, (w + 1) % 2), dims=(-2, -1))


def is_hermitian_symmetric(mask: Tensor, atol: float = 0.0) -> bool:
    """Whether ``mask[u, v] == mask[-u, -v]`` (centred frame) within ``atol``."""
    return bool(torch.allclose(mask, mirror(mask), atol=atol, rtol=0.0))


def radial_frequency(size: Size) -> Tensor:
    """Normalised radius ``rho = sqrt((f_u / (H/2))^2 + (f_v / (W/2))^2)`` of each centred bin.

    ``rho = 0`` at DC and ``rho = 1`` at the Nyquist frequency on an axis (``sqrt 2`` in the
    corners). ``|f| = |-f|`` for every bin, so any mask that is a function of ``rho`` is
    Hermitian-symmetric by construction.
    """
    h, w = _hw(size)
    fu = torch.arange(h, dtype=torch.float32) - h // 2
    fv = torch.arange(w, dtype=torch.float32) - w // 2
    return torch.sqrt((fu[:, None] / (h / 2)) ** 2 + (fv[None, :] / (w / 2)) ** 2)


# ---------------------------------------------------------------- masks


def band_limits(band: Band, radii: tuple[float, float] = DEFAULT_RADII) -> tuple[float, float]:
    """``[lo, hi)`` in normalised radius for a named band (``radii = (r_low, r_high)``)."""
    r1, r2 = radii
    if not 0.0 <= r1 <= r2:
        raise ValueError(f"radii must satisfy 0 <= r_low <= r_high, got {radii}")
    if isinstance(band, tuple):
        lo, hi = band
        if not lo <= hi:  # NaN too: (nan, 1.0) removed nothing
            raise ValueError(f"band must satisfy lo <= hi, got {band}")
        return float(lo), float(hi)
    limits = {"low": (0.0, r1), "mid": (r1, r2), "high": (r2, math.inf)}
    if band not in limits:
        raise ValueError(f"band must be 'low', 'mid', 'high' or (lo, hi), got {band!r}")
    return limits[band]


def band_indicator(size: Size, band: Band, radii: tuple[float, float] = DEFAULT_RADII) -> Tensor:
    """1 on the bins with ``lo <= rho < hi``, 0 elsewhere; shape (H, W), float32."""
    lo, hi = band_limits(band, radii)
    rho = radial_frequency(size)
    return ((rho >= lo) & (rho < hi)).float()


def radial_band_mask(
    size: Size,
    band: Band,
    radii: tuple[float, float] = DEFAULT_RADII,
    *,
    keep: bool = False,
) -> Tensor:
    """Keep mask that removes one radial band (``keep=False``) or keeps only it (``keep=True``).

    Bands in normalised radius (see :func:`radial_frequency`): low ``[0, r_low)``, mid
    ``[r_low, r_high)``, high ``[r_high, inf)``; or an explicit ``(lo, hi)``. Default radii
    (1/4, 1/2 of Nyquist) cover ~5 %, ~15 % and ~80 % of the bins: generator upsampling traces
    (checkerboards, aliasing) live mostly in the high band.

    Example:
        >>> m = radial_band_mask(32, "high")
        >>> bool(m[16, 16] == 1) and bool(m[0, 0] == 0)   # DC kept, corner (Nyquist) removed
        True
    """
    ind = band_indicator(size, band, radii)
    return ind if keep else 1.0 - ind


def random_spectral_mask(
    size: Size,
    ratio: float,
    patch: int = 4,
    generator: torch.Generator | None = None,
    n: int | None = None,
    keep_dc: bool = False,
) -> Tensor:
    """Keep mask removing random ``patch x patch`` blocks of frequencies, in symmetric pairs.

    Each block ``b`` of the centred spectrum draws a priority ``u_b ~ U(0, 1)``; a bin's priority
    is ``min(u_{block(f)}, u_{block(-f)})``, which is symmetric under ``f -> -f``. The bins with
    the lowest priorities are removed, cutting only between priority groups (a block together with
    its mirror image, at most ``2 patch^2`` bins) so symmetry is exact. The removed fraction is
    the achievable one closest to ``ratio``: ``|removed / (H W) - ratio| <= 2 patch^2 / (H W)``.

    Args:
        size: ``H`` or ``(H, W)``.
        ratio: target fraction of removed bins, in [0, 1].
        patch: block side in bins (the last row/column of blocks may be cropped).
        generator: torch.Generator for reproducible masks.
        n: number of independent masks; ``None`` returns one (H, W) mask, else (n, H, W).
        keep_dc: never remove the DC bin (the image's mean colour). DC is its own mirror, so it
            draws one priority where the other bins take the minimum of two, and is removed from
            about 30 % of the images at ``ratio=0.5``; its removed energy then dominates a pixel
            reconstruction target (content, not generation traces). With ``keep_dc`` the
            priorities are drawn as without it (the same generator use); the bins that rank
            lowest after DC is set aside are removed, and ``ratio`` still counts over all
            ``H W`` bins (at most ``H W - 1`` removed).

    Returns:
        float32 keep mask(s) with values in {0, 1}.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> m = random_spectral_mask(8, 0.9, 2, g, n=100, keep_dc=True)
        >>> bool((m[:, 4, 4] == 1).all()), bool(is_hermitian_symmetric(m))
        (True, True)
    """
    _check_ratio(ratio)
    _check_patch(patch)  # 2.5 or True failed inside repeat_interleave
    h, w = _hw(size)
    count = 1 if n is None else n
    bh, bw = math.ceil(h / patch), math.ceil(w / patch)
    u = torch.rand(count, bh, bw, generator=generator)
    prio = u.repeat_interleave(patch, dim=1).repeat_interleave(patch, dim=2)[:, :h, :w]
    prio = torch.minimum(prio, mirror(prio))
    if keep_dc:  # above every drawn priority: its own group, removed last (never, by the cap)
        prio[:, h // 2, w // 2] = 2.0
    prio = prio.reshape(count, h * w)
    target = min(ratio * h * w, h * w - 1) if keep_dc else ratio * h * w
    k = round(target)
    if k == 0:
        keep = torch.ones(count, h * w)
    else:
        kth = prio.sort(dim=1).values[:, k - 1 : k]
        n_le = (prio <= kth).sum(dim=1, keepdim=True)
        n_lt = (prio < kth).sum(dim=1, keepdim=True)
        # Whole groups only: pick the cut (<= kth or < kth) whose count is closer to the target.
        use_le = (n_le - target).abs() <= (target - n_lt).abs()
        removed = torch.where(use_le, prio <= kth, prio < kth)
        keep = (~removed).float()
    keep = keep.reshape(count, h, w)
    return keep[0] if n is None else keep


def pixel_patch_mask(
    size: Size,
    ratio: float,
    patch: int = 4,
    generator: torch.Generator | None = None,
    n: int | None = None,
) -> Tensor:
    """MAE keep mask: exactly ``round(ratio * L)`` of the ``L`` pixel patches set to 0.

    Returns float32 (H, W) if ``n is None`` else (n, H, W); ``H`` and ``W`` must be multiples of
    ``patch`` so that the removed fraction is exactly ``round(ratio L) / L``.
    """
    _check_ratio(ratio)
    h, w = _hw(size)
    if patch < 1 or h % patch or w % patch:
        raise ValueError(f"patch {patch} must be >= 1 and divide the size {(h, w)}")
    count = 1 if n is None else n
    gh, gw = h // patch, w // patch
    num = gh * gw
    k = round(ratio * num)
    rank = torch.rand(count, num, generator=generator).argsort(dim=1).argsort(dim=1)
    keep = (rank >= k).float().reshape(count, gh, gw)
    keep = keep.repeat_interleave(patch, dim=1).repeat_interleave(patch, dim=2)
    return keep[0] if n is None else keep


# ---------------------------------------------------------------- applying masks


def _broadcastable(mask: Tensor, images: Tensor) -> Tensor:
    """``mask`` shaped to multiply ``images``: (H, W) shared by images of any leading shape;
    (N, H, W) and (N, 1|C, H, W) one per image of an (N, C, H, W) batch. Anything else is
    refused: a per-image mask on images without a channel axis, or on a single (C, H, W)
    image, broadcast to an (N, N, H, W) or (C, C, H, W) product without a word."""
    if mask.shape[-2:] != images.shape[-2:]:
        raise ValueError(
            f"mask {tuple(mask.shape)} and images {tuple(images.shape)} differ in (H, W)"
        )
    if mask.dim() in (3, 4):
        fits = (
            images.dim() == 4
            and mask.shape[0] == images.shape[0]
            and (mask.dim() == 3 or mask.shape[1] in (1, images.shape[1]))
        )
        if not fits:
            raise ValueError(
                f"a per-image mask {tuple(mask.shape)} needs an (N, C, H, W) batch of N "
                f"images, got {tuple(images.shape)} (a mask shared by all images is (H, W))"
            )
        if mask.dim() == 3:
            mask = mask[:, None]
    elif mask.dim() != 2:
        raise ValueError(
            f"mask must be (H, W), (N, H, W) or (N, 1|C, H, W), got {tuple(mask.shape)}"
        )
    return mask.to(device=images.device, dtype=images.dtype).clamp(0.0, 1.0)


def apply_frequency_mask(
    images: Tensor, mask: Tensor, *, clip: bool = False
) -> tuple[Tensor, Tensor]:
    """Split images into ``(masked, removed)`` with ``masked = Re F^-1(m X)``.

    ``removed = images - masked``, so the two always sum back to the input. The mask is clipped to
    [0, 1]. ``clip=True`` clamps ``masked`` to the valid pixel range [0, 1] (``removed`` then
    absorbs the clipped part, so it is no longer band-limited); the default keeps the exact
    spectral split, which is what reconstruction targets need.

    Args:
        images: (..., H, W) real tensor, e.g. (N, C, H, W); an (N, C, H, W) batch of as many
            images as the mask has when the mask is per image.
        mask: keep mask (H, W), (N, H, W) or (N, 1, H, W), Hermitian-symmetric (refused
            otherwise: ``masked`` is the real part, so a bin kept without its mirror was half
            kept, and ``removed`` was not what the mask removes).
    """
    if not is_hermitian_symmetric(mask.float(), atol=1e-6):
        raise ValueError(
            "mask must be Hermitian-symmetric (mask[u, v] == mask[-u, -v] in the centred "
            "frame), as the masks of this module are: see mirror()"
        )
    return _split_by_frequency(images, mask, clip=clip)


def _split_by_frequency(
    images: Tensor, mask: Tensor, *, clip: bool = False
) -> tuple[Tensor, Tensor]:
    """:func:`apply_frequency_mask` of a mask known to be symmetric (built here)."""
    # Shift the (real, one-channel) mask to the uncentred FFT layout rather than shifting the
    # complex spectra: same product, a fraction of the memory traffic.
    if images.dtype in (torch.float16, torch.bfloat16):  # no half FFT on the CPU: in float32
        masked, _ = _split_by_frequency(images.float(), mask, clip=clip)
        masked = masked.to(images.dtype)
        return masked, images - masked
    m = torch.fft.ifftshift(_broadcastable(mask, images), dim=(-2, -1))
    if images.numel() == 0:  # MKL refuses a transform of no images ("DFTI ERROR")
        return images.clone(), torch.zeros_like(images)
    masked = torch.fft.ifft2(torch.fft.fft2(images, norm="ortho") * m, norm="ortho").real
    if clip:
        masked = masked.clamp(0.0, 1.0)
    return masked, images - masked


def apply_pixel_mask(images: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """MAE split: ``masked = m * x`` (removed patches zeroed), ``removed = (1 - m) * x``."""
    m = _broadcastable(mask, images)
    return images * m, images * (1.0 - m)


# ---------------------------------------------------------------- maskers for pretraining


class MaskedBatch(NamedTuple):
    """A masked batch and where its reconstruction loss counts.

    ``pixel_weight`` (N, 1, H, W) and ``freq_weight`` (N, 1, H, W, centred spectrum) are 1 where a
    reconstruction error is penalised: the removed patches for a pixel mask (MAE's loss on masked
    patches only), the removed frequencies for a frequency mask.
    """

    masked: Tensor
    removed: Tensor
    mask: Tensor
    pixel_weight: Tensor
    freq_weight: Tensor


@dataclass
class FrequencyMasker:
    """Per-image random frequency masks: ``kind="spectral"`` (random symmetric blocks at
    ``ratio``) or ``kind="band"`` (each image loses one band drawn uniformly from ``bands``)."""

    kind: Literal["spectral", "band"] = "spectral"
    ratio: float = 0.5
    patch: int = 4
    bands: tuple[Band, ...] = ("low", "mid", "high")
    radii: tuple[float, float] = DEFAULT_RADII
    keep_dc: bool = False  # spectral only: never remove the mean colour (random_spectral_mask)

    def __post_init__(self) -> None:
        # checked when built (a config is read), not at the first batch: a bad ratio used to
        # surface as a traceback from the first evaluation, after the data was built
        if self.kind not in ("spectral", "band"):
            raise ValueError(f"kind must be 'spectral' or 'band', got {self.kind!r}")
        _check_ratio(self.ratio)
        _check_patch(self.patch)
        if not isinstance(self.keep_dc, bool):
            raise TypeError(f"keep_dc must be a bool, got {self.keep_dc!r}")
        if self.kind == "band":
            if self.keep_dc:  # a band mask is fixed by its radii; it keeps DC unless it is "low"
                raise ValueError("keep_dc applies to kind='spectral' masks, not to band masks")
            if not self.bands:
                raise ValueError("bands must name at least one band")
            for band in self.bands:
                band_limits(band, self.radii)

    def masks(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        n, (h, w) = images.shape[0], images.shape[-2:]
        if self.kind == "spectral":
            return random_spectral_mask(
                (h, w), self.ratio, self.patch, generator, n=n, keep_dc=self.keep_dc
            )
        if self.kind == "band":
            table = torch.stack([radial_band_mask((h, w), b, self.radii) for b in self.bands])
            return table[torch.randint(len(self.bands), (n,), generator=generator)]
        raise ValueError(f"kind must be 'spectral' or 'band', got {self.kind!r}")

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> MaskedBatch:
        _check_batch(images)
        mask = self.masks(images, generator).to(images.device)[:, None]
        masked, removed = _split_by_frequency(images, mask)  # symmetric by construction
        return MaskedBatch(masked, removed, mask, torch.ones_like(mask), 1.0 - mask)

    def project(self, prediction: Tensor, batch: MaskedBatch) -> Tensor:
        """Keep only the removed frequencies of a prediction (the loss-on-masked-only analogue)."""
        return _split_by_frequency(prediction, batch.mask)[1]


@dataclass
class PixelMasker:
    """Per-image MAE masks: ``ratio`` of the ``patch x patch`` pixel patches removed."""

    ratio: float = 0.75
    patch: int = 4

    def __post_init__(self) -> None:
        _check_ratio(self.ratio)
        _check_patch(self.patch)

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> MaskedBatch:
        _check_batch(images)
        n, (h, w) = images.shape[0], images.shape[-2:]
        mask = pixel_patch_mask((h, w), self.ratio, self.patch, generator, n=n)
        mask = mask.to(images.device)[:, None]
        masked, removed = apply_pixel_mask(images, mask)
        return MaskedBatch(masked, removed, mask, 1.0 - mask, torch.ones_like(mask))

    def project(self, prediction: Tensor, batch: MaskedBatch) -> Tensor:
        """Zero the prediction on visible patches: only the removed pixels are reconstructed."""
        return prediction * (1.0 - batch.mask)


Masker = FrequencyMasker | PixelMasker
