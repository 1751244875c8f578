"""Delta (Widrow-Hoff) write: one gradient step on the regression objective.

    inner objective   L(M; k, v) = 1/2 ||M k - v||^2
    write             M <- alpha * M - eta * (M k - v) k^T       (matrix)
                      m <- alpha * m - eta * (m k - v) * k       (elementwise)

Unlike the Hebbian write, the delta write first reads what the memory already says for ``k``
and stores only the error ("surprise") ``v - M k``. With ``alpha = 1`` and
``eta = 1 / ||k||^2`` one write makes ``read(k) == v`` exactly, and keys orthogonal to ``k``
are untouched. A batch of pairs is written simultaneously (one step on the summed objective).
"""

from __future__ import annotations

from torch import Tensor

from assocmem.memory.linear import (
    ElementwiseMemory,
    LinearMemory,
    MatrixMemory,
    as_pairs,
    kept,
    memory_tensor,
    rates_fit,
    read,
    same_shape,
)


def surprise(state: LinearMemory, key: Tensor | None, value: Tensor) -> Tensor:
    """The prediction error ``M k - v`` the delta rule writes back (the inner gradient's factor),
    shaped as ``read(state, key) - value``: ``(v,)`` for one pair ``(k,), (v,)``."""
    if isinstance(state, ElementwiseMemory):
        recalled = read(state, key)
        same_shape(recalled, value, "value")
        return recalled - value
    if key is None:
        raise ValueError("a matrix memory needs a key to read")
    as_pairs(state, key, value)  # refuses, named, the pairs a write refuses
    # the pair itself, not as_pairs' batch of one: that gave one pair's error as (1, v)
    return read(state, key) - value


def delta_write(
    state: LinearMemory,
    key: Tensor | None,
    value: Tensor,
    *,
    lr: float | Tensor = 1.0,
    retention: float | Tensor = 1.0,
) -> LinearMemory:
    """Return the memory after a delta-rule write of ``(key, value)``.

    Args and shapes as in :func:`assocmem.memory.hebbian_write`.

    Example:
        >>> import torch
        >>> from assocmem.memory import matrix_memory, delta_write, read
        >>> k, v = torch.tensor([3.0, 4.0]), torch.tensor([1.0, -2.0, 0.5])
        >>> M = delta_write(matrix_memory(2, 3), k, v, lr=1 / k.dot(k).item())
        >>> torch.allclose(read(M, k), v)
        True
    """
    rates_fit(memory_tensor(state).shape, "the memory", lr=lr, retention=retention)
    if isinstance(state, ElementwiseMemory):
        error = surprise(state, key, value)
        grad = error if key is None else error * key
        return ElementwiseMemory(kept(state, state.m * retention - lr * grad))
    if key is None:
        raise ValueError("a matrix memory needs a key to write")
    keys, values = as_pairs(state, key, value)
    error = surprise(state, keys, values)  # (..., n, v): one pair per row of the outer products
    return MatrixMemory(kept(state, state.M * retention - lr * (error.mT @ keys)))  # as hebbian
