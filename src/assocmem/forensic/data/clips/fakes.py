"""Fake clips: a generator family applied to each frame on its own, or a jittering splice.

- Every family of ``families.py`` except ``splice`` turns each frame of a real clip into a fake
  *independently*: its random draws (JPEG qualities, resampling factors and kernels) are drawn
  per frame, and a learned family sees one frame at a time, so the trace flickers from frame to
  frame while a camera's fixed-pattern noise would not.
- ``splice`` pastes the same elliptical region of a donor clip (another photo of the same split,
  moving with its own camera) into every frame, but the region's centre jitters independently
  per frame (``ClipConfig.splice_jitter``): a pasted object that does not move with the scene.

Shapes: clips are (N, T, 3, P, P) uint8.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from assocmem.forensic.data.clips.config import ClipConfig
from assocmem.forensic.data.families import ellipse_mask, generate, pick_donor

__all__ = ["fake_clips", "jittered_splice"]


def jittered_splice(
    clips: np.ndarray,
    rng: np.random.Generator,
    config: ClipConfig,
    donors: np.ndarray,
    sources: np.ndarray,
    donor_sources: np.ndarray,
) -> np.ndarray:
    """Paste a donor clip's region into each clip, its centre jittering frame by frame."""
    n, t, _, size, _ = clips.shape
    s = config.images.generators
    out = np.empty_like(clips)
    for k in range(n):
        j = pick_donor(rng, donor_sources, sources[k])
        cy, cx = rng.uniform(0.3, 0.7, size=2) * size
        ry, rx = rng.uniform(*s.splice_radius, size=2) * size
        feather = rng.uniform(*s.splice_feather)
        jitter = rng.normal(0.0, config.splice_jitter, size=(t, 2))
        for f in range(t):
            mask = ellipse_mask(size, cy + jitter[f, 0], cx + jitter[f, 1], ry, rx, feather)
            mixed = mask * donors[j, f] + (1.0 - mask) * clips[k, f]
            out[k, f] = np.clip(np.round(mixed), 0, 255).astype(np.uint8)
    return out


def fake_clips(
    family: str,
    clips: np.ndarray,
    *,
    rng: np.random.Generator,
    config: ClipConfig,
    models: dict[str, nn.Module],
    donors: np.ndarray | None = None,
    sources: np.ndarray | None = None,
    donor_sources: np.ndarray | None = None,
) -> np.ndarray:
    """Fakes of ``family`` for real ``clips`` (N, T, 3, P, P) uint8 -> the same shape.

    ``splice`` needs ``donors`` (real clips) and the photo ids ``sources``/``donor_sources``;
    learned families need their fitted model in ``models``.
    """
    if clips.ndim != 5:
        raise ValueError(f"clips must be (N, T, 3, P, P), got shape {clips.shape}")
    if family == "splice":
        if donors is None or sources is None or donor_sources is None:
            raise ValueError("splice needs donors, sources and donor_sources")
        return jittered_splice(clips, rng, config, donors, sources, donor_sources)
    n, t = clips.shape[:2]
    frames = clips.reshape(n * t, *clips.shape[2:])  # one "image" per frame: per-frame draws
    fakes = generate(family, frames, rng=rng, settings=config.images.generators, models=models)
    return fakes.reshape(clips.shape)
