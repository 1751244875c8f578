"""Linear associative memories: explicit state plus pure ``read``.

Two shapes of state (see docs/theory.md, "Memories"):

- ``ElementwiseMemory``: one scalar memory per coordinate of a tensor. Keys are per-coordinate
  scalars (a tensor of the same shape) or ``None`` for a key-less memory (key = 1 everywhere),
  which is what momentum is.
- ``MatrixMemory``: a matrix ``M`` of shape ``(..., d_value, d_key)`` that maps keys ``k`` of
  dimension ``d_key`` to values ``M k``. Leading dims, if any, are independent memories.

Writes live in ``hebbian.py`` and ``delta.py``; both return a new state and never mutate.

Shapes legend: ``n`` pairs written at once, ``k`` key dim, ``v`` value dim.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class ElementwiseMemory(NamedTuple):
    """One scalar memory per coordinate; ``m`` has the shape of the tensor it serves."""

    m: Tensor


class MatrixMemory(NamedTuple):
    """A linear map ``M: R^d_key -> R^d_value`` (``M`` has shape ``(..., d_value, d_key)``)."""

    M: Tensor


LinearMemory = ElementwiseMemory | MatrixMemory


def elementwise_memory(like: Tensor) -> ElementwiseMemory:
    """An empty elementwise memory with the shape, dtype and device of ``like``."""
    return ElementwiseMemory(torch.zeros_like(like))


def matrix_memory(
    d_key: int,
    d_value: int,
    *,
    batch_shape: tuple[int, ...] = (),
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> MatrixMemory:
    """An empty matrix memory mapping ``d_key``-dim keys to ``d_value``-dim values."""
    return MatrixMemory(torch.zeros(*batch_shape, d_value, d_key, dtype=dtype, device=device))


def check_fit(
    shape: tuple[int, ...],
    dtype: torch.dtype,
    key: Tensor,
    value: Tensor | None = None,
    batch: tuple[int, ...] = (),
) -> None:
    """Refuse a key (and value) that a map of ``shape`` ``(d_value, d_key)`` and ``dtype`` cannot
    take, named: torch's matmul errors name neither the memory nor what did not fit. Reads,
    writes and the deep memory's key all pass through here, so all refuse alike. ``batch``: the
    memory's batch shape, which the leading dimensions of a key ``(..., n, d_key)`` must
    broadcast with."""
    if len(shape) != 2:  # a vector M was Python's "not enough values to unpack"
        raise ValueError(
            f"a matrix memory's M has shape (..., d_value, d_key), got {tuple(shape)}: an "
            "elementwise memory is ElementwiseMemory"
        )
    d_value, d_key = shape
    taken = f"keys {tuple(key.shape)}" + (
        "" if value is None else f" and values {tuple(value.shape)}"
    )
    if (
        key.dim() == 0
        or key.shape[-1] != d_key
        or (value is not None and (value.dim() == 0 or value.shape[-1] != d_value))
    ):
        raise ValueError(f"a memory mapping {d_key} -> {d_value} cannot take {taken}")
    if batch and key.dim() > 2:
        try:
            torch.broadcast_shapes(batch, key.shape[:-2])
        except RuntimeError:
            raise ValueError(
                f"a memory of batch shape {tuple(batch)} cannot take {taken}: their leading "
                f"(batch) dimensions {tuple(key.shape[:-2])} do not broadcast with it"
            ) from None
    if key.dtype != dtype or (value is not None and value.dtype != dtype):
        kinds = f"{key.dtype} keys" + ("" if value is None else f" and {value.dtype} values")
        raise ValueError(f"a {dtype} memory cannot take {kinds}")


def as_pairs(state: MatrixMemory, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
    """``(key, value)`` as the batch of pairs ``state`` takes: a single pair ``(k,), (v,)`` viewed
    as a batch of one ``(1, k), (1, v)``. Keys and values that do not fit ``state``'s map
    ``(d_value, d_key)`` or its dtype are refused (:func:`check_fit`)."""
    memory_tensor(state)  # a memory of another kind, or complex, refused by name
    if key.dim() == 1:
        key = key.unsqueeze(0)
    if value.dim() == 1:
        value = value.unsqueeze(0)
    if key.shape[:-1] != value.shape[:-1]:
        raise ValueError(
            f"key and value must hold the same number of pairs, got {tuple(key.shape)} "
            f"and {tuple(value.shape)}"
        )
    check_fit(state.M.shape[-2:], state.M.dtype, key, value, state.M.shape[:-2])
    return key, value


def unpromoted(held: Tensor, new: Tensor, made: str, fix: str) -> Tensor:
    """``new``, what a write or a read ``made`` of the memory ``held``, if it keeps ``held``'s
    dtype: a key or value of a wider dtype promotes the result (a float16 memory read with a
    float64 key recalled float64), which a memory never does silently."""
    if new.dtype != held.dtype:
        raise ValueError(
            f"{made} of a {held.dtype} memory would be {new.dtype}: {fix} must match its dtype"
        )
    return new


def rates_fit(shape: torch.Size, what: str, **rates: float | Tensor) -> None:
    """A ``ValueError`` naming the rate (``lr``, ``retention``) that is a tensor which does not
    broadcast to ``shape`` unchanged: one that cannot broadcast at all failed in torch with its
    unnamed size error, before :func:`kept` could name it."""
    for name, rate in rates.items():
        if not isinstance(rate, Tensor):
            continue
        try:
            fits = torch.broadcast_shapes(rate.shape, shape) == shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(
                f"{name} of shape {tuple(rate.shape)} does not broadcast to {what} of shape "
                f"{tuple(shape)}: a float, or a tensor that keeps that shape"
            )


def kept(state: LinearMemory, new: Tensor) -> Tensor:
    """``new``, the written state, if it has ``state``'s shape and dtype: a write never grows a
    memory by broadcasting a key, value or rate of another shape, nor promotes its dtype."""
    old = memory_tensor(state)
    if new.shape != old.shape:
        raise ValueError(
            f"the write would turn a memory of shape {tuple(old.shape)} into one of shape "
            f"{tuple(new.shape)}: key, value, lr and retention must match it"
        )
    return unpromoted(old, new, "the write", "key, value, lr and retention")


def memory_tensor(state: LinearMemory) -> Tensor:
    """The tensor a linear memory holds; a ``TypeError`` for anything else (a deep memory or a
    bare tensor failed with an ``AttributeError`` naming a field), and a ``ValueError`` for a
    complex one: the writes are real-valued gradient steps (``k^T``, not ``k^H``), so a complex
    memory did not recall what it stored; step the real view (``torch.view_as_real``), as the
    optimizers do."""
    if isinstance(state, ElementwiseMemory):
        tensor = state.m
    elif isinstance(state, MatrixMemory):
        tensor = state.M
    else:
        raise TypeError(
            f"expected an ElementwiseMemory or a MatrixMemory, got {type(state).__name__}"
        )
    if tensor.is_complex():
        raise ValueError(
            f"a {tensor.dtype} memory is not supported: its writes are real gradient steps; "
            "use the real view (torch.view_as_real)"
        )
    return tensor


def same_shape(held: Tensor, x: Tensor, name: str) -> None:
    """Refuse ``x`` (a key or value of an elementwise memory) if it and ``held`` (the memory,
    or what it recalls) broadcast to a shape that is neither's: a (4, 1) key read a (4,) memory
    as (4, 4) without a word. A 0-d memory reading a whole tensor (``landscape``'s scalar form,
    ``h k``) and a scalar key are their own shapes broadcast, and read."""
    if x.shape == held.shape:
        return
    try:
        shape = torch.broadcast_shapes(held.shape, x.shape)
    except RuntimeError:  # torch's "Attempting to broadcast a dimension" named neither
        shape = None
    if shape is None or (shape != held.shape and shape != x.shape):
        together = "do not broadcast" if shape is None else f"broadcast to {tuple(shape)}"
        raise ValueError(
            f"an elementwise memory of shape {tuple(held.shape)} cannot take a {name} of "
            f"shape {tuple(x.shape)}: together they {together}"
        )


def read(state: LinearMemory, key: Tensor | None = None) -> Tensor:
    """Recall the value stored under ``key``.

    Elementwise: ``m * k`` (``m`` itself for a key-less read), shaped like ``m`` or ``k``: a
    scalar key, or a 0-d memory read with a whole tensor, broadcast; a key that would grow both
    (a (4, 1) key on a (4,) memory) or promote the recall out of the memory's dtype is refused.
    Matrix: ``M k`` for a key of shape ``(k,)`` or a batch ``(..., n, k)``, returning ``(..., v)``
    or ``(..., n, v)``; a key of another size or dtype is refused. A read refuses what a write
    with the same key refuses, by the same checks.
    """
    memory = memory_tensor(state)
    if isinstance(state, ElementwiseMemory):
        if key is None:
            return memory
        same_shape(memory, key, "key")
        return unpromoted(memory, memory * key, "the recall", "the key")
    if key is None:
        raise ValueError("a matrix memory needs a key to read")
    check_fit(state.M.shape[-2:], state.M.dtype, key, batch=state.M.shape[:-2])
    return state.M @ key if key.dim() == 1 else key @ state.M.mT
