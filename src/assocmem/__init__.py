"""assocmem: training as associative memory.

Every optimizer is ``read`` after ``write`` on an explicit memory of gradients, shipped as a
drop-in ``torch.optim.Optimizer``::

    from assocmem import MemoryOptimizer
    opt = MemoryOptimizer(model.parameters(), memory="delta", lr=1e-2)

The package root composes its parts: it imports :mod:`assocmem.meta`, which registers the
``learned`` preset (:mod:`assocmem.optim` itself imports nothing of ``meta``).
"""

from assocmem import memory, meta
from assocmem.optim import MemoryOptimizer, available_memories, get_preset, register

__version__ = "0.1.0"

__all__ = [
    "MemoryOptimizer",
    "__version__",
    "available_memories",
    "get_preset",
    "memory",
    "meta",
    "register",
]
