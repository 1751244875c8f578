"""Real clips: a crop window moving smoothly over a photo, seen through a noisy sensor.

A camera path is ``T`` windows ``(top, left, side)`` over a photo (one pyramid level): the
window's centre drifts along a straight line (pan), its side changes linearly (zoom), and each
frame adds a small independent offset (shake). Each window is resampled to ``P x P`` with
Lanczos; since the side is never below ``P`` this only ever *down*-scales (antialiased), so no
real frame carries an up-sampling trace. Consecutive windows overlap almost entirely (the drift
per frame is ``pan * P / (T - 1)`` pixels at most).

Sensor noise is consistent over a clip: a fixed pattern (one draw per clip, the same in every
frame, in sensor coordinates, like photo-response non-uniformity) plus temporal noise (a fresh
draw per frame) of one standard deviation per clip. Gray photos get gray noise, so a gray clip
stays gray.

Shapes: a photo level is (H, W, 3) uint8; a clip is (T, 3, P, P) uint8.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from assocmem.forensic.data.clips.config import ClipConfig

__all__ = ["camera_path", "min_level_side", "real_clip", "render_frames", "sensor_noise"]


def min_level_side(config: ClipConfig) -> float:
    """The smallest photo side on which every camera path of ``config`` fits (with room for
    the shake's tail at six standard deviations)."""
    p = config.patch_size
    return p * config.zoom[1] + p * config.pan + 12 * config.shake + 2


def camera_path(
    rng: np.random.Generator, height: int, width: int, config: ClipConfig
) -> np.ndarray:
    """``(T, 3)`` float windows ``(top, left, side)`` inside an ``height x width`` photo.

    Raises ``ValueError`` if the photo is too small for the path (see :func:`min_level_side`).
    """
    p, frames = config.patch_size, config.frames
    t = np.linspace(0.0, 1.0, frames)
    lo_side, hi_side = p * config.zoom[0], p * config.zoom[1]
    side0 = rng.uniform(lo_side, hi_side)
    factor = np.exp(rng.uniform(-1.0, 1.0) * np.log1p(config.zoom_change))
    side = side0 + (np.clip(side0 * factor, lo_side, hi_side) - side0) * t
    angle = rng.uniform(0.0, 2.0 * np.pi)
    distance = rng.uniform(0.0, config.pan * p)
    drift = distance * t[:, None] * np.array([np.sin(angle), np.cos(angle)])
    offset = drift + rng.normal(0.0, config.shake, size=(frames, 2))  # (T, (dy, dx))
    half = side[:, None] / 2.0
    size = np.array([height, width], dtype=np.float64)
    # the first centre's range for which every window stays inside the photo
    lo = (half - offset).max(axis=0)
    hi = (size - half - offset).min(axis=0)
    if (hi < lo).any():
        raise ValueError(f"a {height}x{width} photo is too small for this camera path")
    centre = rng.uniform(lo, hi) + offset
    return np.column_stack([centre - half, side])


def render_frames(level: np.ndarray, path: np.ndarray, patch: int) -> np.ndarray:
    """Each window of ``path`` over ``level`` (H, W, 3) uint8, Lanczos-resampled to
    ``patch x patch``: (T, 3, P, P) uint8."""
    im = Image.fromarray(level)
    frames = []
    for top, left, side in path:
        box = (float(left), float(top), float(left + side), float(top + side))
        frame = im.resize((patch, patch), Image.Resampling.LANCZOS, box=box)
        frames.append(np.asarray(frame).transpose(2, 0, 1))
    return np.stack(frames)


def sensor_noise(
    frames: np.ndarray, rng: np.random.Generator, config: ClipConfig, gray: bool
) -> np.ndarray:
    """``frames`` (T, 3, P, P) uint8 plus a fixed pattern and fresh temporal noise, each with a
    standard deviation drawn once per clip; gray noise for a gray photo."""
    t, _, h, w = frames.shape
    channels = 1 if gray else 3
    pattern = rng.normal(0.0, rng.uniform(*config.pattern_std), size=(1, channels, h, w))
    temporal = rng.normal(0.0, rng.uniform(*config.noise_std), size=(t, channels, h, w))
    noisy = frames.astype(np.float64) + pattern + temporal
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def real_clip(
    levels: list[np.ndarray], rng: np.random.Generator, config: ClipConfig, gray: bool
) -> tuple[np.ndarray, np.ndarray]:
    """One real clip from a random pyramid level of a photo: ``(frames (T, 3, P, P) uint8,
    path (T, 3))``. A near-flat first frame (``config.images.min_std``) is redrawn a bounded
    number of times, as the image benchmark's patches are filtered."""
    for _ in range(20):
        level = levels[int(rng.integers(len(levels)))]
        path = camera_path(rng, level.shape[0], level.shape[1], config)
        frames = render_frames(level, path, config.patch_size)
        if frames[0].std() >= config.images.min_std:
            break
    return sensor_noise(frames, rng, config, gray), path
