"""Associative memories: explicit state, pure ``write`` and ``read``.

``write(state, key, value, *, lr, retention) -> state`` and ``read(state, key) -> value``.
"""

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
