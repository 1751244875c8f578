"""What determines the built-in benchmark's bytes: its config (hashed into the cache key)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field

from assocmem.forensic.checks import whole_number
from assocmem.forensic.data.families import FAMILY_NAMES, GeneratorSettings
from assocmem.forensic.data.photos import PHOTO_NAMES
from assocmem.forensic.data.postprocess import PostProcessConfig

__all__ = ["FORMAT_VERSION", "REAL", "SPLITS", "BenchmarkConfig"]

FORMAT_VERSION = 1
SPLITS: tuple[str, ...] = ("train", "val", "test")
REAL = "real"  # family name of real images; family code 0
_TINY_PHOTOS = ("astronaut", "coffee", "camera", "china", "rocket")


@dataclass(frozen=True)
class BenchmarkConfig:
    """Everything that determines the benchmark's bytes (hashed into the cache key)."""

    patch_size: int = 32
    stride: int | None = None  # None: non-overlapping (stride = patch_size)
    scales: tuple[float, ...] = (1.0, 0.5)  # pyramid levels cut into patches
    photos: tuple[str, ...] | None = None  # None: every photo in photos.PHOTO_NAMES
    max_patches_per_photo: int | None = 256
    min_std: float = 4.0  # drop near-flat patches (0..255 units)
    families: tuple[str, ...] = FAMILY_NAMES
    fake_fraction: float = 0.5  # per family, this fraction of each split's reals gets a fake
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    seed: int = 0
    generators: GeneratorSettings = field(default_factory=GeneratorSettings)
    post: PostProcessConfig = field(default_factory=PostProcessConfig)

    def __post_init__(self) -> None:
        # Checked when built: each of these used to build silently (stride 0 as the patch size
        # under another key, fractions of 1.2 and -0.1), or fail deep in the build without
        # naming the field (no patches to train a generator on, numpy's negative seed).
        if not whole_number(self.patch_size, 8) or self.patch_size % 4:
            raise ValueError(f"patch_size must be a multiple of 4 and >= 8, got {self.patch_size}")
        if self.stride is not None and not whole_number(self.stride, 1):
            raise ValueError(f"stride must be a whole number >= 1 or None, got {self.stride!r}")
        if not self.scales or not all(0.0 < s <= 1.0 for s in self.scales):
            raise ValueError(f"scales must be pyramid levels in (0, 1], got {self.scales}")
        if self.photos is not None:
            unknown = [p for p in self.photos if p not in PHOTO_NAMES]
            if not self.photos or unknown or len(set(self.photos)) != len(self.photos):
                raise ValueError(
                    f"photos must be distinct names of {PHOTO_NAMES} (None: all), got {self.photos}"
                )
        if self.max_patches_per_photo is not None and not whole_number(
            self.max_patches_per_photo, 1
        ):
            raise ValueError(
                f"max_patches_per_photo must be >= 1 or None, got {self.max_patches_per_photo!r}"
            )
        if not 0.0 <= self.min_std < math.inf:
            raise ValueError(f"min_std must be a finite number >= 0, got {self.min_std}")
        unknown = [f for f in self.families if f not in FAMILY_NAMES]
        if unknown or not self.families:
            raise ValueError(
                f"families must be a non-empty subset of {FAMILY_NAMES}, got {unknown}"
            )
        if len(set(self.families)) != len(self.families):  # counted and split as one family
            raise ValueError(f"families names a family twice: {self.families}")
        fractions = self.split_fractions
        if (
            len(fractions) != 3
            or not all(0.0 < f < 1.0 for f in fractions)
            or abs(sum(fractions) - 1.0) > 1e-6
        ):
            raise ValueError(
                f"split_fractions must be 3 numbers in (0, 1) summing to 1, got {fractions}"
            )
        if not 0.0 < self.fake_fraction <= 1.0:
            raise ValueError(f"fake_fraction must be in (0, 1], got {self.fake_fraction}")
        if not whole_number(self.seed, 0):
            raise ValueError(f"seed must be a whole number >= 0, got {self.seed!r}")

    @classmethod
    def tiny(cls, **overrides: object) -> BenchmarkConfig:
        """A few photos, few patches, generators trained a handful of steps: builds in seconds,
        for tests and smoke runs. Keyword overrides replace any field."""
        base: dict[str, object] = {
            "photos": _TINY_PHOTOS,
            "scales": (1.0,),
            "max_patches_per_photo": 12,
            "fake_fraction": 1.0,
            "generators": GeneratorSettings(ae_steps=5, denoiser_steps=5),
        }
        base.update(overrides)
        return cls(**base)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    def key(self) -> str:
        """Hash of the config and the storage format: a changed config gets a new cache entry."""
        blob = json.dumps({"v": FORMAT_VERSION, **self.to_dict()}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
