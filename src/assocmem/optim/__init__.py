"""Optimizers built from associative memories."""

from assocmem.optim import presets  # noqa: F401  (registers the built-in presets)
from assocmem.optim.optimizer import MemoryOptimizer
from assocmem.optim.registry import Hyper, Preset, available_memories, get_preset, register
from assocmem.optim.split import param_groups, param_roles

__all__ = [
    "Hyper",
    "MemoryOptimizer",
    "Preset",
    "available_memories",
    "get_preset",
    "param_groups",
    "param_roles",
    "register",
]
