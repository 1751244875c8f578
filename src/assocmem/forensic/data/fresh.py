"""The fresh test split: the benchmark's recipe applied to photos no study had looked at.

The detector studies in docs/results.md chose recipes, priors and ensembles with the test
split's numbers in view, again and again, so that split no longer measures a choice cleanly.
The fresh split stood in for it once (2026-12-06, docs/results.md ``detector-prior-fresh``,
under a plan fixed before the run; a choice made after it and scored here is no clean claim
either): the camera-made images shipped in the PyWavelets and mahotas wheels
(``photos.FRESH_PHOTO_NAMES``, never part of ``PHOTO_NAMES``), cut into patches, made fake and
post-processed exactly as the built benchmark's splits are (the same fitted generator models,
the same post-processing config), with random draws of their own (those of a fourth split
after train, val and test).

:func:`with_fresh_test` returns the benchmark with its ``test`` split replaced by the fresh one;
train and validation are untouched, so everything chosen on them (early stopping, thresholds,
priors, weights) is chosen exactly as before, and every caller of the zero-shot protocol scores
on the fresh photos without a change. The split is small (four photos, about 900 reals) and
builds in seconds, deterministically, so it is not cached.
"""

from __future__ import annotations

import numpy as np

from assocmem.forensic.data.cache import fitted_generators
from assocmem.forensic.data.config import SPLITS, BenchmarkConfig
from assocmem.forensic.data.photos import FRESH_PHOTO_NAMES, load_fresh_photos
from assocmem.forensic.data.pipeline import make_split, photo_patches
from assocmem.forensic.data.splits import ForensicBenchmark, SplitArrays

__all__ = ["FRESH_SPLIT_INDEX", "fresh_test_split", "with_fresh_test"]

FRESH_SPLIT_INDEX = len(SPLITS)  # its draws are those of a split after train, val and test


def fresh_test_split(bench: ForensicBenchmark) -> SplitArrays:
    """The fresh photos as a test split of ``bench``'s recipe. Source codes continue
    ``bench.source_names`` (``len(bench.source_names) + j`` for the j-th fresh photo)."""
    config = bench.config
    if not isinstance(config, BenchmarkConfig):  # a ClipConfig: its images are clips
        raise ValueError("the fresh test split is made for the image benchmark, not the clip one")
    taken = sorted(set(FRESH_PHOTO_NAMES) & set(bench.source_names))
    if taken:
        raise ValueError(f"fresh photos {taken} are already sources of this benchmark")
    photos = load_fresh_photos()
    first = len(bench.source_names)
    seed = config.seed
    patches = [
        photo_patches(config, ph, np.random.default_rng([seed, 1, FRESH_SPLIT_INDEX, j]))
        for j, ph in enumerate(photos)
    ]
    imgs = np.concatenate(patches)
    src = np.concatenate([np.full(len(p), first + j, np.int64) for j, p in enumerate(patches)])
    is_gray = np.concatenate(
        [np.full(len(p), ph.gray) for ph, p in zip(photos, patches, strict=True)]
    )
    models = fitted_generators(bench)
    return make_split(config, FRESH_SPLIT_INDEX, imgs, src, is_gray, models, name="fresh")


def with_fresh_test(bench: ForensicBenchmark) -> ForensicBenchmark:
    """``bench`` with its ``test`` split replaced by :func:`fresh_test_split`: the train and
    validation arrays are the same objects, the source names gain the fresh photos, and
    ``meta["test_photos"]`` says ``"fresh"`` (with the photo names in ``meta["fresh_photos"]``)."""
    return bench.with_test(
        fresh_test_split(bench),
        "fresh",
        sources=FRESH_PHOTO_NAMES,
        fresh_photos=list(FRESH_PHOTO_NAMES),
    )
