"""Random crops of one split's photos, the way the training stream draws them.

A crop is taken from a random photo of the split, at a random level of the benchmark's pyramid
(``config.scales``; levels smaller than the crop left out), at a random position, redrawn while
it is near-flat (``config.min_std``, as the cached sets filter), then flipped and turned by a
multiple of 90 degrees at random. Only the split's photos are ever opened.

``TrainStream`` draws its ``patch_size`` crops of the train photos this way; the image-level
evaluation (``assocmem.forensic.image_level``) draws larger crops of the test photos (of the
fresh test photos for a benchmark from ``fresh.with_fresh_test``).
"""

from __future__ import annotations

import numpy as np

from assocmem.forensic.data.config import SPLITS
from assocmem.forensic.data.patches import rescale
from assocmem.forensic.data.photos import load_fresh_photos, load_photos
from assocmem.forensic.data.splits import ForensicBenchmark

__all__ = ["PhotoCrops", "augment"]

# Redraws allowed for a near-flat crop before the flat one is kept (retina's black border and
# hubble's sky are mostly flat; a bounded loop keeps a batch's cost bounded).
_FLAT_RETRIES = 20


def augment(crop: np.ndarray, flip: bool, quarter_turns: int) -> np.ndarray:
    """Horizontal flip then ``quarter_turns`` rotations by 90 degrees of a (3, P, P) crop: the
    eight symmetries of the square, none of which resamples a pixel (so no new trace)."""
    if flip:
        crop = crop[:, :, ::-1]
    return np.ascontiguousarray(np.rot90(crop, quarter_turns, axes=(1, 2)))


class PhotoCrops:
    """Random ``size`` x ``size`` crops of ``bench``'s ``split`` photos (module docstring).

    Attributes: ``photo_names`` (the split's photos, in the order :meth:`crop` numbers them),
    ``levels`` (each photo's pyramid levels large enough for one crop), ``gray`` (which photos
    are gray, by number).

    Raises:
        ValueError: an unknown split, a benchmark without its photo split, a size below 1, or
            a split none of whose photos holds one crop of ``size``.
    """

    def __init__(self, bench: ForensicBenchmark, split: str, size: int | None = None) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        split_of_group = bench.meta.get("split_of_group")
        if not split_of_group:
            raise ValueError("the benchmark has no photo split (meta['split_of_group'])")
        self.config = bench.config
        self.size = self.config.patch_size if size is None else int(size)
        if self.size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if split == "test" and bench.meta.get("test_photos") == "validation":
            split = "val"  # validation_test.with_validation_test: its test split is val's
        if split == "test" and bench.meta.get("test_photos") == "fresh":  # fresh.with_fresh_test
            photos = load_fresh_photos()
        else:
            wanted = load_photos(self.config.photos)
            photos = [p for p in wanted if split_of_group[p.group] == split]
        self.levels: list[list[np.ndarray]] = []
        for photo in photos:
            levels = [rescale(photo.pixels, s) for s in self.config.scales]
            self.levels.append([lv for lv in levels if min(lv.shape[:2]) >= self.size])
        keep = [k for k, levels in enumerate(self.levels) if levels]
        if not keep:
            raise ValueError(f"no {split} photo holds a {self.size} x {self.size} crop")
        self.levels = [self.levels[k] for k in keep]
        self.photo_names = tuple(photos[k].name for k in keep)
        self.gray = np.array([photos[k].gray for k in keep], dtype=bool)

    def crop(self, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """One crop (3, size, size) uint8 and the number of the photo it came from."""
        size = self.size
        crop, photo = None, 0
        for _ in range(_FLAT_RETRIES):
            photo = int(rng.integers(len(self.levels)))
            levels = self.levels[photo]
            level = levels[int(rng.integers(len(levels)))]
            i = int(rng.integers(level.shape[0] - size + 1))
            j = int(rng.integers(level.shape[1] - size + 1))
            crop = level[i : i + size, j : j + size].transpose(2, 0, 1)
            if crop.std() >= self.config.min_std:
                break
        crop = augment(crop, bool(rng.integers(2)), int(rng.integers(4)))
        return crop, photo
