"""Frequency masking as a training augmentation: random frequency bins removed from a batch.

Doloriel and Cheung ("Frequency Masking for Universal Deepfake Detection", ICASSP 2024) train
a detector on images of which, with probability ``p``, a random fraction of the Fourier
coefficients is zeroed, reals and fakes alike, and report better detection of generators never
trained on: a detector that cannot count on any one band must take its evidence from many. Here
the removed bins come in Hermitian pairs (:func:`assocmem.forensic.masks.random_spectral_mask`
with ``patch=1``), so the masked image is real without discarding an imaginary part, and the
DC bin is never removed (removing the mean colour would clip most of a patch to black). The
result is rounded back to 8 bits, as any image the detector meets.

The augmentation never looks at labels: which images are masked and which bins they lose are
drawn from a generator of its own, the same for reals and fakes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from assocmem.forensic.masks import apply_frequency_mask, random_spectral_mask

__all__ = ["checked_spectral_mask", "mask_spectra"]


def checked_spectral_mask(spectral_mask: Sequence[float]) -> tuple[float, float]:
    """``(probability, ratio)`` as floats, or a ``ValueError`` unless ``0 < probability <= 1``
    and ``0 < ratio < 1``."""
    if len(spectral_mask) != 2:
        raise ValueError(f"spectral_mask must be (probability, ratio), got {spectral_mask}")
    p, ratio = (float(v) for v in spectral_mask)
    if not (0.0 < p <= 1.0 and 0.0 < ratio < 1.0):  # NaN fails both
        raise ValueError(
            "spectral_mask must be (probability, ratio) with 0 < probability <= 1 and "
            f"0 < ratio < 1, got {spectral_mask}"
        )
    return p, ratio


def mask_spectra(
    images: np.ndarray, probability: float, ratio: float, rng: np.random.Generator
) -> np.ndarray:
    """``images`` (uint8, ``(N, C, H, W)``) with, per image with ``probability``, a fraction
    ``ratio`` of its ``H W`` frequency bins removed (the same bins in every channel, so a gray
    image stays gray; Hermitian pairs; DC kept), rounded and clipped back to uint8. A new array;
    the others are copied unchanged. Draws from ``rng`` only: the same ``rng`` state gives the
    same images."""
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(
            f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    chosen = rng.random(len(images)) < probability
    seed = int(rng.integers(2**63))  # drawn whatever was chosen: one draw per batch
    out = images.copy()
    if not chosen.any():
        return out
    generator = torch.Generator().manual_seed(seed)
    h, w = images.shape[-2:]
    masks = random_spectral_mask(
        (h, w), ratio, patch=1, generator=generator, n=int(chosen.sum()), keep_dc=True
    )
    # float64: the round trip through the FFT leaves an unmasked bin within 1e-12 of itself,
    # so an image whose removed bins were all zero comes back to the same bytes
    x = torch.from_numpy(images[chosen]).double()
    masked, _ = apply_frequency_mask(x, masks)
    out[chosen] = masked.round().clamp(0, 255).to(torch.uint8).numpy()
    return out
