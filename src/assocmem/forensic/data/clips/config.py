"""What determines the clip benchmark's bytes: its config (hashed into the cache key).

A clip benchmark is made *from* an image benchmark: it reuses that benchmark's photos, its split
of photo groups (so a photo is never in two splits, in either benchmark), its fitted generator
families and its post-processing, all named by ``ClipConfig.images``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from assocmem.forensic.checks import whole_number
from assocmem.forensic.data.config import FORMAT_VERSION, BenchmarkConfig

__all__ = ["CLIP_FORMAT_VERSION", "ClipConfig"]

CLIP_FORMAT_VERSION = 1


def _number(value: object) -> bool:
    """A real number that is finite (not a bool, a string, NaN or an infinity)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _integer(name: str, value: object, low: int) -> None:
    if not whole_number(value, low):
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _range(name: str, value: tuple[float, float], low: float) -> None:
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or len(value) != 2
        or not all(_number(v) for v in value)
        or not low <= value[0] <= value[1]
    ):
        raise ValueError(
            f"{name} must be a (low, high) pair of finite numbers with {low} <= low <= high, "
            f"got {value!r}"
        )


@dataclass(frozen=True)
class ClipConfig:
    """Everything that determines the clip benchmark (hashed into the cache key).

    Lengths are in pixels of the photo's pyramid level unless stated; noise in 0..255 units.
    """

    FORMAT_VERSION: ClassVar[int] = CLIP_FORMAT_VERSION

    images: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    frames: int = 8
    clips_per_photo: int = 48
    # Window side over the patch size. >= 1, so a real frame is only ever *down*-scaled
    # (antialiased Lanczos): an up-scaled real would carry the resample family's trace.
    zoom: tuple[float, float] = (1.0, 1.5)
    zoom_change: float = 0.15  # the window side changes by a factor in [1/(1+z), 1+z] per clip
    pan: float = 0.5  # largest displacement over a clip, in patch sizes (16 px at P = 32)
    shake: float = 0.3  # per-frame camera jitter, std in pixels (small: frames still overlap)
    noise_std: tuple[float, float] = (1.0, 3.0)  # temporal sensor noise, fresh every frame
    pattern_std: tuple[float, float] = (0.5, 2.0)  # fixed-pattern noise, the same every frame
    splice_jitter: float = 1.5  # per-frame jitter of a pasted region's centre, std in pixels
    fake_fraction: float = 0.5  # per family, this fraction of each split's real clips
    seed: int = 0

    def __post_init__(self) -> None:
        # every field checked here, not when the benchmark is built: frames=2.5, pan=nan or
        # shake=inf used to be accepted and fail (or build garbage) later
        if not isinstance(self.images, BenchmarkConfig):
            raise ValueError(f"images must be a BenchmarkConfig, got {self.images!r}")
        _integer("frames", self.frames, 2)  # a clip moves
        _integer("clips_per_photo", self.clips_per_photo, 1)
        _integer("seed", self.seed, 0)
        _range("zoom", self.zoom, 1.0)
        _range("noise_std", self.noise_std, 0.0)
        _range("pattern_std", self.pattern_std, 0.0)
        for name in ("zoom_change", "pan", "shake", "splice_jitter"):
            value = getattr(self, name)
            if not (_number(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        # upper bounds: a region jittered by ~P/4 per frame leaves the patch, and its "fake"
        # clips came out byte-identical to their real parents (1e6: 18 of 18); noise of 64
        # grey levels and more clips most pixels to 0 or 255
        if self.splice_jitter > self.images.patch_size / 4:
            raise ValueError(
                f"splice_jitter must be at most a quarter of the patch "
                f"({self.images.patch_size / 4:g} px), got {self.splice_jitter!r}"
            )
        for name in ("noise_std", "pattern_std"):
            if getattr(self, name)[1] > 64:
                raise ValueError(
                    f"{name} must stay within 64 grey levels, got {getattr(self, name)}"
                )
        if not (_number(self.fake_fraction) and 0.0 < self.fake_fraction <= 1.0):
            raise ValueError(f"fake_fraction must be in (0, 1], got {self.fake_fraction!r}")
        # Equal configs, one cache key and one hash: numpy integers, ints given for floats and
        # lists for pairs are stored as the plain types (np.int64(8) was hashed as the string
        # "8", 1 as "1" not "1.0", and a list made the frozen config unhashable).
        plain: dict[str, object] = {
            "frames": int(self.frames),
            "clips_per_photo": int(self.clips_per_photo),
            "seed": int(self.seed),
            "fake_fraction": float(self.fake_fraction),
        }
        for name in ("zoom", "noise_std", "pattern_std"):
            plain[name] = tuple(float(v) for v in getattr(self, name))
        for name in ("zoom_change", "pan", "shake", "splice_jitter"):
            plain[name] = float(getattr(self, name))
        for name, value in plain.items():
            object.__setattr__(self, name, value)

    @property
    def families(self) -> tuple[str, ...]:
        """The generator families: the image benchmark's (their fitted models are reused)."""
        return self.images.families

    @property
    def patch_size(self) -> int:
        return self.images.patch_size

    @classmethod
    def tiny(cls, **overrides: object) -> ClipConfig:
        """On the tiny image benchmark, a few clips per photo: builds in seconds, for tests and
        smoke runs. Keyword overrides replace any field."""
        base: dict[str, object] = {
            "images": BenchmarkConfig.tiny(),
            "clips_per_photo": 6,
            "fake_fraction": 1.0,
        }
        base.update(overrides)
        return cls(**base)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    def key(self) -> str:
        """Hash of the config (the image benchmark's included) and both storage formats: the
        clips are cut from the image benchmark's split with its generators, so its format's
        version is part of what they are."""
        versions = {"v": CLIP_FORMAT_VERSION, "image_v": FORMAT_VERSION}
        blob = json.dumps({**versions, **self.to_dict()}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
