"""Deep associative memory: an MLP ``M_phi`` written by inner gradient steps.

    read              M_phi(k) = W2 act(W1 k + b1) + b2 + S k          (S: optional linear skip)
    inner objective   l(phi; k, v) = 1/2 ||M_phi(k) - v||^2, mean over the pairs
    write             phi <- alpha * phi - eta * grad_phi l                     (toward zero)
                      phi <- phi0 + alpha * (phi - phi0) - eta * grad_phi l     (toward an anchor)

The linear memories are the special case ``M_phi(k) = S k``: with the L2 objective the write is
then the delta rule, at ``eta / n`` for ``n`` pairs (the objective is the mean over the pairs,
:func:`~assocmem.memory.delta_write` steps on their sum; one pair is exactly it). The MLP
stores a non-linear map at the same cost per write, which is what Titans and Nested Learning's
deep momentum use. The gradient is taken with
:func:`torch.func.grad` over the parameters as a dict of tensors, so the write is a pure
function that also runs under ``torch.no_grad`` and composes with ``vmap``.

Shapes legend: ``n`` pairs written at once, ``k`` key dim, ``h`` hidden width, ``v`` value dim.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from assocmem.memory.linear import check_fit, rates_fit

Activation = str | Callable[[Tensor], Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "tanh": torch.tanh,
    "silu": F.silu,
    "gelu": F.gelu,
    "relu": F.relu,
}


class DeepMemory(NamedTuple):
    """Parameters ``phi`` of a 2-layer MLP memory ``R^k -> R^v`` (``skip`` may be ``None``)."""

    w1: Tensor  # (h, k)
    b1: Tensor  # (h,)
    w2: Tensor  # (v, h)
    b2: Tensor  # (v,)
    skip: Tensor | None  # (v, k)


def deep_memory(
    d_key: int,
    d_value: int,
    hidden: int,
    *,
    skip: bool = True,
    skip_init: Tensor | None = None,
    zero_output: bool = False,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> DeepMemory:
    """A fresh MLP memory.

    ``W1 ~ N(0, 1/d_key)`` (unit-variance pre-activations for unit-variance keys), ``b1 = 0``,
    ``W2 ~ N(0, 1/hidden)`` or zero with ``zero_output=True`` (then the MLP branch reads zero
    until the first write, and the memory starts as its skip path), ``b2 = 0``, and the skip
    ``S`` zero unless ``skip_init`` gives it (e.g. a projection that makes the fresh memory an
    identity or a known linear map); ``skip=False`` builds no skip path, so it refuses a
    ``skip_init``. Pass ``generator`` or ``seed`` for a reproducible draw.
    """
    for name, dim in (("d_key", d_key), ("d_value", d_value), ("hidden", hidden)):
        # a zero width failed as "0.0 cannot be raised to a negative power" in the init's std
        if not isinstance(dim, numbers.Integral) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {dim!r}")
    if not skip and skip_init is not None:  # it built the skip that skip=False turned off
        raise ValueError("skip=False builds no skip path, so it cannot take a skip_init")
    if generator is None and seed is not None:
        generator = torch.Generator().manual_seed(seed)

    def normal(*shape: int, std: float) -> Tensor:
        # Drawn on the CPU so a seed gives the same memory on every device.
        return (torch.randn(*shape, generator=generator) * std).to(dtype=dtype, device=device)

    def zeros(*shape: int) -> Tensor:
        return torch.zeros(*shape, dtype=dtype, device=device)

    w2 = zeros(d_value, hidden) if zero_output else normal(d_value, hidden, std=hidden**-0.5)
    if skip_init is not None:
        if tuple(skip_init.shape) != (d_value, d_key):
            raise ValueError(
                f"skip_init must have shape {(d_value, d_key)}, got {tuple(skip_init.shape)}"
            )
        S = skip_init.to(dtype=dtype, device=device).clone()
    else:
        S = zeros(d_value, d_key) if skip else None
    return DeepMemory(normal(hidden, d_key, std=d_key**-0.5), zeros(hidden), w2, zeros(d_value), S)


def _activation(activation: Activation) -> Callable[[Tensor], Tensor]:
    if callable(activation):
        return activation
    try:
        return ACTIVATIONS[activation]
    except KeyError:
        raise ValueError(
            f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}"
        ) from None


def _params(state: DeepMemory) -> dict[str, Tensor]:
    # torch.func transforms take tensors only; an absent skip is simply not a parameter.
    if not isinstance(state, DeepMemory):  # a MatrixMemory failed with KeyError: 'w2'
        raise TypeError(f"expected a DeepMemory, got {type(state).__name__}")
    return {name: t for name, t in state._asdict().items() if t is not None}


def _forward(params: dict[str, Tensor], keys: Tensor, act: Callable[[Tensor], Tensor]) -> Tensor:
    # Every read, loss and write passes here: keys that do not fit the memory are refused as
    # the linear memories refuse them, not by an unnamed matmul error. Values are left to the
    # loss (the L2 one checks their shape; a custom one may take values of any dtype).
    check_fit((params["w2"].shape[-2], params["w1"].shape[-1]), params["w1"].dtype, keys)
    hidden = act(keys @ params["w1"].mT + params["b1"])
    out = hidden @ params["w2"].mT + params["b2"]
    if "skip" in params:
        out = out + keys @ params["skip"].mT
    return out


def _l2(pred: Tensor, values: Tensor) -> Tensor:
    if pred.shape != values.shape:  # a (1, v) or (n, 1) value would broadcast silently
        raise ValueError(
            f"values of shape {tuple(values.shape)} do not match the memory's recall "
            f"{tuple(pred.shape)} of those keys"
        )
    return 0.5 * (pred - values).pow(2).sum(-1).mean()


def deep_read(state: DeepMemory, keys: Tensor, *, activation: Activation = "tanh") -> Tensor:
    """Recall ``M_phi(k)`` for a key ``(k,)`` or a batch ``(..., n, k)``; returns ``(..., v)``."""
    return _forward(_params(state), keys, _activation(activation))


def inner_loss(
    state: DeepMemory,
    keys: Tensor,
    values: Tensor,
    *,
    activation: Activation = "tanh",
    loss: LossFn | None = None,
) -> Tensor:
    """The inner objective ``l(phi; k, v)``, default ``1/2 ||M_phi(k) - v||^2`` averaged over pairs.

    ``loss(pred, values) -> scalar`` replaces the L2 objective (any differentiable function).
    """
    return _loss(_params(state), keys, values, _activation(activation), loss or _l2)


def _loss(
    params: dict[str, Tensor],
    keys: Tensor,
    values: Tensor,
    act: Callable[[Tensor], Tensor],
    loss: LossFn,
) -> Tensor:
    return loss(_forward(params, keys, act), values)


def inner_grad(
    state: DeepMemory,
    keys: Tensor,
    values: Tensor,
    *,
    activation: Activation = "tanh",
    loss: LossFn | None = None,
) -> DeepMemory:
    """``grad_phi l`` of the batch objective, as a :class:`DeepMemory` (the "surprise")."""
    grads = torch.func.grad(_loss)(
        _params(state), keys, values, _activation(activation), loss or _l2
    )
    return DeepMemory(**{name: grads.get(name) for name in DeepMemory._fields})


def per_key_grads(
    state: DeepMemory,
    keys: Tensor,
    values: Tensor,
    *,
    activation: Activation = "tanh",
    loss: LossFn | None = None,
) -> DeepMemory:
    """``grad_phi l(phi; k_i, v_i)`` for each pair of ``(n, k), (n, v)``: ``vmap(grad)``.

    Each field gains a leading ``n`` dim; their mean over ``n`` is :func:`inner_grad` for the
    default (mean-reduced) objective. Per-pair surprises are what data-dependent write rates
    (Titans) weigh.
    """
    act, fn = _activation(activation), loss or _l2
    # vmap maps the first dim: (b, n, k) keys gave one grad per batch (its n keys averaged),
    # one pair (k,) mapped over coordinates, an empty batch failed inside vmap
    if keys.dim() != 2 or values.dim() != 2 or len(keys) != len(values) or len(keys) == 0:
        raise ValueError(
            "per_key_grads takes a non-empty batch of pairs (n, k), (n, v); got keys "
            f"{tuple(keys.shape)} and values {tuple(values.shape)}"
        )

    def one(k: Tensor, v: Tensor) -> dict[str, Tensor]:
        return torch.func.grad(_loss)(_params(state), k[None], v[None], act, fn)

    grads = torch.func.vmap(one)(keys, values)
    return DeepMemory(**{name: grads.get(name) for name in DeepMemory._fields})


def retain_and_step(
    state: DeepMemory,
    grads: DeepMemory,
    *,
    lr: float,
    retention: float,
    anchor: DeepMemory | None = None,
) -> DeepMemory:
    """``phi <- alpha phi - eta g`` or, with an anchor, ``phi0 + alpha (phi - phi0) - eta g``."""
    new = {}
    for name in DeepMemory._fields:
        p, g = getattr(state, name), getattr(grads, name)
        if p is None:
            new[name] = None
            continue
        rates_fit(p.shape, f"the memory's {name!r}", lr=lr, retention=retention)
        if anchor is None:
            kept = p * retention
        else:
            p0 = getattr(anchor, name)
            # an anchor of another shape broadcast silently (every row of w1 decayed toward one
            # anchor row), a float64 one promoted the memory; a missing skip was a TypeError
            if p0 is None or p0.shape != p.shape or p0.dtype != p.dtype:
                found = None if p0 is None else f"{p0.dtype} {tuple(p0.shape)}"
                raise ValueError(
                    f"the anchor's {name!r} must match the memory's ({p.dtype} "
                    f"{tuple(p.shape)}), got {found}"
                )
            kept = p0 + retention * (p - p0)
        new[name] = kept - lr * g
        # a tensor lr or retention of another shape or a wider dtype grew or promoted every
        # field silently (the linear memories refuse both: linear.kept)
        if new[name].shape != p.shape or new[name].dtype != p.dtype:
            raise ValueError(
                f"the write would turn the memory's {name!r} ({p.dtype} {tuple(p.shape)}) into "
                f"{new[name].dtype} {tuple(new[name].shape)}: lr and retention must be floats or "
                "tensors that keep its shape and dtype"
            )
    return DeepMemory(**new)


def deep_write(
    state: DeepMemory,
    keys: Tensor,
    values: Tensor,
    *,
    lr: float = 1e-2,
    retention: float = 1.0,
    anchor: DeepMemory | None = None,
    activation: Activation = "tanh",
    loss: LossFn | None = None,
) -> DeepMemory:
    """Return the memory after one inner gradient step on the pairs ``(keys, values)``.

    Args:
        state: the memory before the write.
        keys: ``(n, k)`` (or ``(k,)`` for one pair).
        values: ``(n, v)`` (or ``(v,)``).
        lr: write rate ``eta``.
        retention: ``alpha``; 1 keeps everything.
        anchor: if given, retention decays toward these weights (e.g. the initial memory)
            instead of toward zero.
        activation: hidden non-linearity, a name in ``ACTIVATIONS`` or a callable.
        loss: ``loss(pred, values) -> scalar`` replacing the L2 inner objective.

    Example:
        >>> import torch
        >>> from assocmem.memory import deep_memory, deep_write, inner_loss
        >>> M = deep_memory(3, 2, 16, seed=0)
        >>> k, v = torch.randn(8, 3), torch.randn(8, 2)
        >>> before = inner_loss(M, k, v)
        >>> for _ in range(50):
        ...     M = deep_write(M, k, v, lr=0.1)
        >>> bool(inner_loss(M, k, v) < before)
        True
    """
    grads = inner_grad(state, keys, values, activation=activation, loss=loss)
    return retain_and_step(state, grads, lr=lr, retention=retention, anchor=anchor)
