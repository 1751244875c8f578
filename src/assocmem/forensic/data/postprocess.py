"""Shared post-processing, applied to real and fake patches alike (a shortcut control).

Real-world detectors see images that were resized, blurred and re-compressed after generation.
If only one class went through such a step, the step itself would become the label. Here every
patch, whatever its label, draws the same independent coin flips with the same probabilities, so
post-processing is noise, never signal. The optional ``final_jpeg_quality`` sends *every* patch
through one last JPEG encode (the "same final format" path): with it, "has JPEG blocking" cannot
tell the classes apart even though some source photos (rocket, retina, china, ...) were JPEGs.

Images are uint8 (3, P, P) arrays; PIL does the work so the codecs match what users' files see.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from assocmem.forensic.checks import check_range, whole_number

__all__ = [
    "POST_BLUR",
    "POST_FINAL_JPEG",
    "POST_JPEG",
    "POST_RESIZE",
    "PostProcessConfig",
    "jpeg",
    "postprocess",
    "processing_kinds",
]

# bit flags recorded per image, so tests and analyses can condition on what was applied
POST_RESIZE = 1
POST_BLUR = 2
POST_JPEG = 4
POST_FINAL_JPEG = 8


def processing_kinds(flags: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean masks of images by what :func:`postprocess` did to them, from their ``POST_*``
    flags: ``unprocessed`` (nothing), ``zoomed``, ``blurred``, ``JPEG`` (the shared round trip
    or the final one); an image that went through several steps is in each of their masks.
    Analyses split a detector's errors by them (a JPEG round trip is what most photos went
    through)."""
    flags = np.asarray(flags)
    return {
        "unprocessed": flags == 0,
        "zoomed": (flags & POST_RESIZE) != 0,
        "blurred": (flags & POST_BLUR) != 0,
        "JPEG": (flags & (POST_JPEG | POST_FINAL_JPEG)) != 0,
    }


@dataclass(frozen=True)
class PostProcessConfig:
    """Probabilities and parameter ranges of the shared post-processing (order: resize, blur,
    JPEG, final JPEG; JPEG last as in real pipelines)."""

    p_resize: float = 0.2
    resize_scale: tuple[float, float] = (1.1, 1.5)  # zoom in, then random crop back to P
    p_blur: float = 0.2
    blur_sigma: tuple[float, float] = (0.3, 1.0)
    p_jpeg: float = 0.3
    jpeg_quality: tuple[int, int] = (65, 95)
    final_jpeg_quality: int | None = None

    def __post_init__(self) -> None:
        for name in ("p_resize", "p_blur", "p_jpeg"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        q = self.final_jpeg_quality  # True was a quality-1 JPEG of every image, 90.5 truncated
        if q is not None and not (whole_number(q, 1) and q <= 100):
            raise ValueError(f"final_jpeg_quality must be an integer in [1, 100], got {q!r}")
        # The ranges each step draws from (every draw is made, whatever its probability: a
        # reversed range failed at the first batch even with p = 0): a zoom below 1 cropped
        # past the image (black borders in both classes), a quality outside [1, 100] was
        # clamped by Pillow, a negative sigma blurred anyway.
        check_range("resize_scale", self.resize_scale, 1.0, math.inf)
        check_range("blur_sigma", self.blur_sigma, 0.0, math.inf)
        check_range("jpeg_quality", self.jpeg_quality, 1, 100, whole=True)

    @classmethod
    def none(cls) -> PostProcessConfig:
        """No post-processing at all (for tests that compare a fake with its source)."""
        return cls(p_resize=0.0, p_blur=0.0, p_jpeg=0.0)


def _to_pil(chw: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(chw.transpose(1, 2, 0)))


def _from_pil(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("RGB")).transpose(2, 0, 1).copy()


def jpeg(chw: np.ndarray, quality: int) -> np.ndarray:
    """One JPEG encode/decode round trip of a (3, P, P) uint8 image (4:2:0, libjpeg default)."""
    buf = io.BytesIO()
    _to_pil(chw).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        return _from_pil(im)


def _zoom_crop(chw: np.ndarray, scale: float, offset: np.ndarray) -> np.ndarray:
    """Bicubic zoom by ``scale`` and crop back; ``offset`` in [0, 1)^2 places the crop."""
    size = chw.shape[-1]
    big = round(size * scale)
    im = _to_pil(chw).resize((big, big), Image.Resampling.BICUBIC)
    i, j = (offset * (big - size + 1)).astype(int)
    return _from_pil(im.crop((int(j), int(i), int(j) + size, int(i) + size)))


def postprocess(
    images: np.ndarray, config: PostProcessConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Post-process a (N, 3, P, P) uint8 batch; returns (images, flags) with POST_* bit flags.

    The coin flips are drawn for all N images up front, independently of anything else about the
    image, so the label cannot influence which images are processed.
    """
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        raise TypeError(
            "postprocess takes a (N, 3, P, P) uint8 array, got "
            + (f"{images.dtype} of shape {images.shape}" if isinstance(images, np.ndarray)
               else type(images).__name__)
        )  # fmt: skip
    n = len(images)
    u = rng.random((n, 3))
    scales = rng.uniform(*config.resize_scale, size=n)
    offsets = rng.random((n, 2))
    sigmas = rng.uniform(*config.blur_sigma, size=n)
    qualities = rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1, size=n)
    out = images.copy()
    flags = np.zeros(n, np.int64)
    for k in range(n):
        img = out[k]
        if u[k, 0] < config.p_resize:
            img = _zoom_crop(img, float(scales[k]), offsets[k])
            flags[k] |= POST_RESIZE
        if u[k, 1] < config.p_blur:
            img = _from_pil(_to_pil(img).filter(ImageFilter.GaussianBlur(float(sigmas[k]))))
            flags[k] |= POST_BLUR
        if u[k, 2] < config.p_jpeg:
            img = jpeg(img, int(qualities[k]))
            flags[k] |= POST_JPEG
        if config.final_jpeg_quality is not None:
            img = jpeg(img, config.final_jpeg_quality)
            flags[k] |= POST_FINAL_JPEG
        out[k] = img
    return out, flags
