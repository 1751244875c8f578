"""assocmem: training as associative memory.

Every optimizer is ``read`` after ``write`` on an explicit memory of gradients, shipped as a
drop-in ``torch.optim.Optimizer``::

    from assocmem import MemoryOptimizer
    opt = MemoryOptimizer(model.parameters(), memory="delta", lr=1e-2)
"""

from assocmem import memory
from assocmem.optim import MemoryOptimizer, available_memories, get_preset, register

__version__ = "0.1.0"

__all__ = [
    "MemoryOptimizer",
    "__version__",
    "available_memories",
    "get_preset",
    "memory",
    "register",
]
