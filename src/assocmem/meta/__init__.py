"""Meta-learned memories: features, the per-coordinate network, checkpoints, meta-training.

The optimizer-facing preset is ``MemoryOptimizer(params, memory="learned")``
(:mod:`assocmem.optim.presets.learned`); this package holds the pure functional core it runs,
the meta-training that produced its shipped checkpoint, and the task distribution.
docs/theory/learned.md has the maths.
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

__all__ = [
    "DEFAULT_CHECKPOINT",
    "FORMAT_VERSION",
    "Checkpoint",
    "LearnedConfig",
    "features",
    "init_memory",
    "init_meta_params",
    "learned_update",
    "load_checkpoint",
    "num_meta_params",
    "save_checkpoint",
    "write",
]
