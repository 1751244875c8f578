"""Meta-learned memories: features, the per-coordinate network, checkpoints, meta-training.

Importing this package registers the ``learned`` preset (:mod:`assocmem.meta.preset`), so
``MemoryOptimizer(params, memory="learned")`` works after ``import assocmem``. The package
holds the pure functional core the preset runs (:func:`learned_step`), the meta-training that
produced its shipped checkpoint, and the task distribution. docs/theory/learned.md has the
maths.
"""

from assocmem.meta.checkpoint import (
    DEFAULT_CHECKPOINT,
    FORMAT_VERSION,
    Checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from assocmem.meta.config import LearnedConfig
from assocmem.meta.features import features, init_memory, write
from assocmem.meta.network import init_meta_params, learned_update, num_meta_params
from assocmem.meta.preset import Learned
from assocmem.meta.step import learned_step

__all__ = [
    "DEFAULT_CHECKPOINT",
    "FORMAT_VERSION",
    "Checkpoint",
    "Learned",
    "LearnedConfig",
    "features",
    "init_memory",
    "init_meta_params",
    "learned_step",
    "learned_update",
    "load_checkpoint",
    "num_meta_params",
    "save_checkpoint",
    "write",
]
