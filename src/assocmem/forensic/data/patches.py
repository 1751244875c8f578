"""Cut photos into square patches (a pyramid of scales, a flatness filter, a per-photo cap).

Shapes: a photo is (H, W, 3) uint8; patches are (N, 3, P, P) uint8 (channels first, as torch).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

__all__ = ["as_float_images", "cut_patches", "rescale"]


def as_float_images(images: Tensor | np.ndarray) -> Tensor:
    """Patches as float32 in [0, 1]: uint8 divided by 255, anything else read as already in
    [0, 1] (what the features and models that take either convention see)."""
    x = torch.as_tensor(images)
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def rescale(pixels: np.ndarray, scale: float) -> np.ndarray:
    """Downscale an (H, W, 3) uint8 photo with Lanczos (antialiased, so no aliasing trace).

    A pyramid level gives more patches per photo and content at another frequency scale; since
    fakes are made from the patches after rescaling, the level itself is never a label cue.
    """
    if scale == 1.0:
        return pixels
    h, w = pixels.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS))


def cut_patches(
    pixels: np.ndarray,
    patch_size: int,
    stride: int,
    *,
    scales: Sequence[float] = (1.0,),
    min_std: float = 0.0,
    max_patches: int | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """All ``patch_size`` windows at ``stride`` over each pyramid level, as (N, 3, P, P) uint8.

    ``min_std`` (in 0..255 units) drops near-flat windows (retina's black border, hubble's sky):
    a flat patch is unchanged by most generators, so it would be a real and a fake at once.
    ``max_patches`` keeps a seeded random subset so one large photo cannot dominate a split.
    """
    if patch_size <= 0 or stride <= 0:
        raise ValueError(f"patch_size and stride must be positive, got {patch_size}, {stride}")
    out = []
    for scale in scales:
        level = rescale(pixels, scale)
        h, w = level.shape[:2]
        if h < patch_size or w < patch_size:
            continue
        # (nh, nw, 3, P, P) view of every window, then keep those on the stride grid
        win = np.lib.stride_tricks.sliding_window_view(level, (patch_size, patch_size), axis=(0, 1))
        out.append(win[::stride, ::stride].reshape(-1, 3, patch_size, patch_size))
    if not out:
        return np.zeros((0, 3, patch_size, patch_size), np.uint8)
    patches = np.concatenate(out)
    if min_std > 0:
        patches = patches[patches.reshape(len(patches), -1).std(axis=1) >= min_std]
    if max_patches is not None and len(patches) > max_patches:
        rng = rng if rng is not None else np.random.default_rng(0)
        keep = np.sort(rng.choice(len(patches), size=max_patches, replace=False))
        patches = patches[keep]
    return np.ascontiguousarray(patches)
