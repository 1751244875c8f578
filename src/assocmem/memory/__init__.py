"""Associative memories: explicit state, pure ``write`` and ``read``.

``write(state, key, value, *, lr, retention) -> state`` and ``read(state, key) -> value``.
"""

import torch

from assocmem.memory.deep import (
    DeepMemory,
    deep_memory,
    deep_read,
    deep_write,
    inner_grad,
    inner_loss,
    per_key_grads,
)
from assocmem.memory.delta import delta_write, surprise
from assocmem.memory.hebbian import hebbian_write
from assocmem.memory.linear import (
    ElementwiseMemory,
    LinearMemory,
    MatrixMemory,
    elementwise_memory,
    matrix_memory,
    read,
)

# torch.load reads only allow-listed types by default (weights_only=True): a memory saved
# with torch.save could not be loaded back. These are tuples of tensors, nothing executable.
torch.serialization.add_safe_globals([ElementwiseMemory, MatrixMemory, DeepMemory])

__all__ = [
    "DeepMemory",
    "deep_memory",
    "deep_read",
    "deep_write",
    "inner_grad",
    "inner_loss",
    "per_key_grads",
    "ElementwiseMemory",
    "LinearMemory",
    "MatrixMemory",
    "delta_write",
    "elementwise_memory",
    "hebbian_write",
    "matrix_memory",
    "read",
    "surprise",
]
