"""Hebbian write: the memory ascends the inner objective ``<M k, v>``.

    inner objective   L(M; k, v) = -<M k, v>
    write             M <- alpha * M + eta * v k^T        (matrix)
                      m <- alpha * m + eta * v * k        (elementwise; k = 1 if key-less)

``alpha`` is the retention (how much of the old memory survives a write), ``eta`` the write
rate. A batch of pairs is written at once as the sum of their outer products, so a read of key
``k_i`` returns ``sum_j (k_i . k_j) v_j``: the crosstalk the delta rule removes.
Momentum is the key-less elementwise case with ``alpha = beta, eta = 1``.
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
    same_shape,
)


def hebbian_write(
    state: LinearMemory,
    key: Tensor | None,
    value: Tensor,
    *,
    lr: float | Tensor = 1.0,
    retention: float | Tensor = 1.0,
) -> LinearMemory:
    """Return the memory after a Hebbian write of ``(key, value)``.

    Args:
        state: the memory before the write.
        key: elementwise: ``None`` or a tensor shaped like the memory; matrix: ``(k,)`` or
            ``(..., n, k)``.
        value: elementwise: shaped like the memory; matrix: ``(v,)`` or ``(..., n, v)``.
        lr: write rate ``eta``; a float, or a tensor that broadcasts against the memory (one
            rate per coordinate or per stacked memory).
        retention: ``alpha``; 1 keeps everything, 0 forgets all but this write (a float or a
            broadcasting tensor, like ``lr``).

    Example:
        >>> import torch
        >>> from assocmem.memory import elementwise_memory, hebbian_write, read
        >>> empty = elementwise_memory(torch.zeros(3))
        >>> m = hebbian_write(empty, None, torch.ones(3), retention=0.9)
        >>> read(m).tolist()
        [1.0, 1.0, 1.0]
    """
    rates_fit(memory_tensor(state).shape, "the memory", lr=lr, retention=retention)
    if isinstance(state, ElementwiseMemory):
        # named here: value * key of unbroadcastable shapes was torch's unnamed size error
        same_shape(state.m, value, "value")
        if key is not None:
            same_shape(state.m, key, "key")
        signal = value if key is None else value * key
        return ElementwiseMemory(kept(state, state.m * retention + lr * signal))
    if key is None:
        raise ValueError("a matrix memory needs a key to write")
    keys, values = as_pairs(state, key, value)
    # lr times the update: "lr * V^T @ K" groups as (lr * V^T) @ K, which put a per-coordinate
    # rate on the values (wrong where the shapes fit, a matmul error where they did not)
    return MatrixMemory(kept(state, state.M * retention + lr * (values.mT @ keys)))
