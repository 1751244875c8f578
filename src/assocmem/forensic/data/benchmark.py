"""The built-in offline benchmark: build from a seed, cache on disk, hand out per-split subsets.

One name for four files: ``config.py`` (what determines the bytes), ``pipeline.py`` (the build),
``splits.py`` (the built data), ``cache.py`` (on disk).

Pipeline (every random choice comes from a numpy/torch generator derived from ``config.seed``,
never from global state):

1. load the wheel-bundled photos (``photos.py``), cut them into patches (``patches.py``);
2. assign photo *groups* to train/val/test so no scene is in two splits, balancing patch counts;
3. fit the learned generator families on train-split real patches only;
4. per split and family, turn a seeded ``fake_fraction`` of the clean reals into fakes (``parent``
   records which real); fakes of grayscale photos are projected back to gray;
5. post-process every patch, real or fake, with the same coin flips (``postprocess.py``).

Cache layout: ``<cache_dir>/forensic/<key>/{arrays.npz,meta.json}`` where ``key`` hashes the full
config and ``FORMAT_VERSION``; images are stored as uint8 and served as float32 in [0, 1].
"""

from __future__ import annotations

from assocmem.forensic.data.cache import build_benchmark, default_cache_dir, fitted_generators
from assocmem.forensic.data.config import FORMAT_VERSION, REAL, SPLITS, BenchmarkConfig
from assocmem.forensic.data.splits import ForensicBenchmark, ForensicSubset, SplitArrays

__all__ = [
    "FORMAT_VERSION",
    "REAL",
    "SPLITS",
    "BenchmarkConfig",
    "ForensicBenchmark",
    "ForensicSubset",
    "SplitArrays",
    "build_benchmark",
    "default_cache_dir",
    "fitted_generators",
]
