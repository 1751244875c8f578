"""Generator families: ways to turn a real patch into a fake that looks like it.

Each family maps clean real patches (N, 3, P, P) uint8 to fakes of the same shape, so a fake and
its parent real share content and differ only by the family's trace:

- ``ae_transconv``, ``ae_nearest``, ``ae_bilinear``, ``ae_pixelshuffle``: the autoencoders of
  ``autoencoders.py``, identical but for the upsampler (learned, trained on train-split reals);
- ``double_jpeg``: two JPEG round trips at two different qualities (first lower, then higher);
- ``resample``: downscale by 0.5-0.8 then back up, kernels drawn per image (interpolation trace);
- ``splice``: an elliptical region of a *donor* real patch from another photo of the same split,
  pasted with a feathered (soft) mask: the composite's boundary and mismatched noise are the
  trace. Donors are real patches, not autoencoded copies, so this family shares no trace with
  the ``ae_*`` families and stays a clean held-out family;
- ``denoiser``: a tiny CNN trained to remove Gaussian noise, applied to clean patches, leaving
  the over-smoothing of learned restoration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from assocmem.forensic.checks import check_range, whole_number
from assocmem.forensic.data.autoencoders import apply_model, make_generator, train_autoencoder
from assocmem.forensic.data.postprocess import jpeg

__all__ = [
    "FAMILY_NAMES",
    "LEARNED_FAMILIES",
    "GeneratorSettings",
    "ellipse_mask",
    "fit_generator",
    "generate",
]

LEARNED_FAMILIES: dict[str, str] = {
    "ae_transconv": "transconv",
    "ae_nearest": "nearest",
    "ae_bilinear": "bilinear",
    "ae_pixelshuffle": "pixelshuffle",
    "denoiser": "denoiser",
}
FAMILY_NAMES: tuple[str, ...] = (
    "ae_transconv",
    "ae_nearest",
    "ae_bilinear",
    "ae_pixelshuffle",
    "double_jpeg",
    "resample",
    "splice",
    "denoiser",
)


@dataclass(frozen=True)
class GeneratorSettings:
    """Knobs of the families (all part of the cache key)."""

    ae_steps: int = 300
    ae_width: int = 16
    ae_crop: int | None = 16
    denoiser_steps: int = 200
    denoiser_noise: float = 0.08
    jpeg_first_quality: tuple[int, int] = (50, 80)
    jpeg_second_quality: tuple[int, int] = (85, 95)
    resample_scale: tuple[float, float] = (0.5, 0.8)
    splice_radius: tuple[float, float] = (0.2, 0.45)  # ellipse semi-axes, fraction of P
    splice_feather: tuple[float, float] = (1.0, 3.0)  # soft-edge width in pixels

    def __post_init__(self) -> None:
        # checked when built: a reversed JPEG range failed after every generator was fitted
        # (minutes), others built silently (an upscaling "resample", a negative noise)
        for name, least in (("ae_steps", 0), ("ae_width", 1), ("denoiser_steps", 0)):
            if not whole_number(getattr(self, name), least):
                raise ValueError(
                    f"{name} must be a whole number >= {least}, got {getattr(self, name)!r}"
                )
        if self.ae_crop is not None and not whole_number(self.ae_crop, 1):
            raise ValueError(f"ae_crop must be a whole number >= 1 or None, got {self.ae_crop!r}")
        if not 0.0 <= self.denoiser_noise < float("inf"):
            raise ValueError(
                f"denoiser_noise must be a finite number >= 0, got {self.denoiser_noise}"
            )
        # qualities are integers (50.5 was truncated by the draw, under another cache key);
        # a feather of 0 divided by zero in every splice's mask
        check_range("jpeg_first_quality", self.jpeg_first_quality, 1, 100, whole=True)
        check_range("jpeg_second_quality", self.jpeg_second_quality, 1, 100, whole=True)
        check_range("resample_scale", self.resample_scale, 0.0, 1.0, above_low=True)
        check_range("splice_radius", self.splice_radius, 0.0, 1.0, above_low=True)
        check_range("splice_feather", self.splice_feather, 0.0, float("inf"), above_low=True)
        if self.resample_scale[1] >= 1.0:
            raise ValueError(f"resample_scale must downscale (high < 1), got {self.resample_scale}")


def _to_float(patches: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(patches).float().div_(255.0)


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    return images.mul(255.0).round_().clamp_(0, 255).to(torch.uint8).numpy()


def fit_generator(
    family: str, train_reals: np.ndarray, settings: GeneratorSettings, seed: int
) -> nn.Module:
    """Train the learned generator of ``family`` on train-split real patches (uint8)."""
    kind = LEARNED_FAMILIES[family]
    model = make_generator(kind, seed, settings.ae_width)
    images = _to_float(train_reals)
    if kind == "denoiser":
        steps, noise, crop = settings.denoiser_steps, settings.denoiser_noise, settings.ae_crop
    else:
        steps, noise, crop = settings.ae_steps, 0.0, settings.ae_crop
    return train_autoencoder(model, images, steps=steps, seed=seed, noise_std=noise, crop=crop)


def _double_jpeg(patches: np.ndarray, rng: np.random.Generator, s: GeneratorSettings) -> np.ndarray:
    q1 = rng.integers(s.jpeg_first_quality[0], s.jpeg_first_quality[1] + 1, size=len(patches))
    q2 = rng.integers(s.jpeg_second_quality[0], s.jpeg_second_quality[1] + 1, size=len(patches))
    out = np.empty_like(patches)  # no patches: no fakes (np.stack of none raised)
    for k, (p, a, b) in enumerate(zip(patches, q1, q2, strict=True)):
        out[k] = jpeg(jpeg(p, int(a)), int(b))
    return out


_DOWN = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC, Image.Resampling.LANCZOS)
_UP = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)


def _resample(patches: np.ndarray, rng: np.random.Generator, s: GeneratorSettings) -> np.ndarray:
    n, size = len(patches), patches.shape[-1]
    factors = rng.uniform(*s.resample_scale, size=n)
    downs = rng.integers(len(_DOWN), size=n)
    ups = rng.integers(len(_UP), size=n)
    out = np.empty_like(patches)
    for k in range(n):
        small = max(2, round(size * factors[k]))
        im = Image.fromarray(np.ascontiguousarray(patches[k].transpose(1, 2, 0)))
        im = im.resize((small, small), _DOWN[downs[k]]).resize((size, size), _UP[ups[k]])
        out[k] = np.asarray(im).transpose(2, 0, 1)
    return out


def ellipse_mask(
    size: int, cy: float, cx: float, ry: float, rx: float, feather: float
) -> np.ndarray:
    """A soft elliptical mask (size, size) float64: 1 inside the ellipse of centre (cy, cx) and
    semi-axes (ry, rx) in pixels, 0 outside, a logistic edge about ``feather`` pixels wide."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    dist = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    return 1.0 / (1.0 + np.exp((dist - 1.0) * min(ry, rx) / feather))


def pick_donor(rng: np.random.Generator, donor_sources: np.ndarray, source: int) -> int:
    """A splice donor's row, preferably from another photo than ``source``: a few random tries,
    then any (a split with one photo has no other)."""
    j = int(rng.integers(len(donor_sources)))
    for _ in range(8):
        if donor_sources[j] != source:
            break
        j = int(rng.integers(len(donor_sources)))
    return j


def _splice(
    patches: np.ndarray,
    rng: np.random.Generator,
    s: GeneratorSettings,
    donors: np.ndarray,
    sources: np.ndarray,
    donor_sources: np.ndarray,
) -> np.ndarray:
    n, size = len(patches), patches.shape[-1]
    out = np.empty_like(patches)
    for k in range(n):
        j = pick_donor(rng, donor_sources, sources[k])
        cy, cx = rng.uniform(0.3, 0.7, size=2) * size
        ry, rx = rng.uniform(*s.splice_radius, size=2) * size
        feather = rng.uniform(*s.splice_feather)
        mask = ellipse_mask(size, cy, cx, ry, rx, feather)
        mixed = mask * donors[j] + (1.0 - mask) * patches[k]
        out[k] = np.clip(np.round(mixed), 0, 255).astype(np.uint8)
    return out


def generate(
    family: str,
    patches: np.ndarray,
    *,
    rng: np.random.Generator,
    settings: GeneratorSettings,
    models: dict[str, nn.Module],
    donors: np.ndarray | None = None,
    sources: np.ndarray | None = None,
    donor_sources: np.ndarray | None = None,
) -> np.ndarray:
    """Fakes of ``family`` for clean real ``patches`` (N, 3, P, P) uint8 -> same shape uint8.

    Learned families need their model in ``models`` (from ``fit_generator``); ``splice`` needs
    ``donors`` (real patches) and the photo ids ``sources`` / ``donor_sources``.
    """
    if family in LEARNED_FAMILIES:
        if family not in models:
            raise KeyError(f"family {family!r} needs a model from fit_generator")
        return _to_uint8(apply_model(models[family], _to_float(patches)))
    simple: dict[str, Callable[[np.ndarray, np.random.Generator, GeneratorSettings], np.ndarray]]
    simple = {"double_jpeg": _double_jpeg, "resample": _resample}
    if family in simple:
        return simple[family](patches, rng, settings)
    if family == "splice":
        if donors is None or sources is None or donor_sources is None:
            raise ValueError("splice needs donors, sources and donor_sources")
        return _splice(patches, rng, settings, donors, sources, donor_sources)
    raise ValueError(f"unknown family {family!r}; expected one of {FAMILY_NAMES}")
