"""The fast path of ``landscape``'s diagonal form (:mod:`assocmem.optim.presets.landscape`
has the equations).

A write step takes the secant write of every tensor of the group either in cache-sized
blocks of eager passes (:func:`_diagonal_write_block`, a few cheap passes instead of the
reference's ~20 ops) or, with ``compile=True``, as :func:`secant_step` (the reference's own
functions) fused by ``torch.compile`` into one pass per tensor. Steps between writes only read
``H``: one or two passes. Tests hold both equal to the reference at every step.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from assocmem.optim import counts, sync_free
from assocmem.optim.blocks import indexed_blocks, named_blocks, select
from assocmem.optim.compiled import compiled
from assocmem.optim.presets.landscape import (
    diagonal_write,
    due,
    has_prev,
    momentum_decay,
    secant_mask,
)
from assocmem.optim.registry import Group, State


class Buffers(NamedTuple):
    """Every tensor a diagonal step touches, one list per kind (one entry per parameter)."""

    params: list[Tensor]
    grads: list[Tensor]
    curvature: list[Tensor]  # H
    prev_grad: list[Tensor]  # g at the start of the pair
    prev_param: list[Tensor]  # W at the start of the pair
    momentum: list[Tensor] | None  # m, when beta > 0


def diagonal_step(
    params: list[Tensor], grads: list[Tensor], states: list[State], group: Group,
    *, compile: bool,
) -> None:  # fmt: skip
    """Write steps run the secant write in cache-sized blocks of eager passes, or as
    :func:`secant_step` fused by torch.compile; the other steps are one or two passes."""
    every = Buffers(
        params,
        grads,
        [st["curvature"] for st in states],
        [st["prev_grad"] for st in states],
        [st["prev_param"] for st in states],
        [st["momentum"] for st in states] if momentum_decay(group) > 0 else None,
    )
    if sync_free.active() and not compile:
        _diagonal_step_on_device(every, states, group)
        return
    is_due = [due(st, group) for st in states]
    # has_prev is t > 1 (step 1 is always due): read from the host count, not the flag
    write = [i for i, d in enumerate(is_due) if d and has_prev(states[i])]
    first = [i for i, d in enumerate(is_due) if d and not has_prev(states[i])]
    between = [i for i, d in enumerate(is_due) if not d]
    if compile and write:
        chosen = select(every, write)
        compiled(secant_step)(
            chosen.params, chosen.grads, chosen.curvature, chosen.prev_grad, chosen.prev_param,
            chosen.momentum,
            # a tensor, so that a changing lr (a scheduler) is data, not a recompile
            lr=torch.tensor(group["lr"], dtype=torch.float64),
            beta=momentum_decay(group),
            **{k: group[k] for k in ("rho", "h_min", "h_max", "y_tol")},
        )  # fmt: skip
        write = []
    for index, kind in ((write, "write"), (first, "remember"), (between, "read")):
        for b in named_blocks(every, index):
            if kind == "write":
                _diagonal_write_block(b, group)
            if kind != "read":
                torch._foreach_copy_(b.prev_grad + b.prev_param, b.grads + b.params)
            _read_block(b, group)
    for i in first:
        states[i]["has_prev"].fill_(1)


def _diagonal_step_on_device(every: Buffers, states: list[State], group: Group) -> None:
    """:func:`diagonal_step` without reading the step count or ``has_prev`` on the host
    (``sync_free``): every tensor takes the secant write, gated per tensor by "due and not the
    first step" (``t > 1``, which is what ``has_prev`` records: step 1 is always due) as a 0/1
    factor on the write's final ``lerp`` weight, which returns ``H`` bit for bit where it is 0;
    the pair's start is remembered where due (a select), and every tensor reads. The same
    blocks and passes per tensor as the host's path, so the same bits; the write's passes are
    spent on every step, not only on write steps."""
    t = counts.as_counts([st["step"] for st in states])
    is_due = counts.due(t, group["period"], offset=1)
    gates = [(d & (c > 1)).to(H.dtype) for d, c, H in zip(is_due, t, every.curvature, strict=True)]
    lists = [every.params, every.grads, every.curvature, every.prev_grad, every.prev_param]
    if every.momentum is not None:
        lists.append(every.momentum)
    for index, pieces in indexed_blocks(lists):
        b = Buffers(*pieces[:5], pieces[5] if every.momentum is not None else None)
        _diagonal_write_block(b, group, gate=[gates[i] for i in index])
        for i, g, p, g_prev, p_prev in zip(
            index, b.grads, b.params, b.prev_grad, b.prev_param, strict=True
        ):
            torch.where(is_due[i], g, g_prev, out=g_prev)
            torch.where(is_due[i], p, p_prev, out=p_prev)
        _read_block(b, group)
    for st, d in zip(states, is_due, strict=True):
        flag = st["has_prev"]
        torch.where(d, torch.ones_like(flag), flag, out=flag)


def _read_block(block: Buffers, group: Group) -> None:
    """The read and step ``W <- W - lr H d``, ``d`` the gradient or its momentum (written
    here, ``m <- lerp(m, g, 1 - beta)``, when ``beta > 0``)."""
    directions = block.grads
    if block.momentum is not None:
        directions = block.momentum
        torch._foreach_lerp_(directions, block.grads, 1 - momentum_decay(group))
    torch._foreach_addcmul_(block.params, block.curvature, directions, value=-group["lr"])


def secant_step(
    params: list[Tensor], grads: list[Tensor], curvatures: list[Tensor],
    prev_grads: list[Tensor], prev_params: list[Tensor], momenta: list[Tensor] | None,
    *, lr: float | Tensor, beta: float, rho: float, h_min: float, h_max: float, y_tol: float,
) -> None:  # fmt: skip
    """One diagonal write and step per tensor, in place, as the reference writes it.

    The body of the ``compile=True`` path: inductor fuses these ~20 ops into one pass per
    tensor, where eager PyTorch makes a pass per op.
    """
    for i, (p, g, H, g_prev, p_prev) in enumerate(
        zip(params, grads, curvatures, prev_grads, prev_params, strict=True)
    ):
        s, y = p - p_prev, g - g_prev
        mask = secant_mask(s, y, g, g_prev, y_tol)
        H.copy_(diagonal_write(H, s, y, mask, rho=rho, h_min=h_min, h_max=h_max))
        g_prev.copy_(g)
        # p_prev <- p, as a select: torch 2.13's inductor miscompiles a plain copy_ here (it
        # stores the *updated* p, because it aliases the copy to p, which is mutated below).
        p_prev.copy_(torch.where(mask | ~mask, p, p))
        d = g if momenta is None else momenta[i].lerp_(g, 1 - beta)
        p.sub_(lr * H * d)


def _diagonal_write_block(block: Buffers, group: Group, gate: list[Tensor] | None = None) -> None:
    """:func:`diagonal_write` under :func:`secant_mask`, in a few cheap passes.

    With ``rate = rho / y^2`` the delta write is ``H + rho (s / y - H)``: a step toward the
    per-coordinate secant ``q = s / y``. ``s y > 0`` is ``q > 0``, and since
    ``max(|a|, |b|) = (|a + b| + |a - b|) / 2`` the noise test ``|y| > y_tol max(|g|, |g'|)``
    is ``|y| > c |g + g'|`` with ``c = y_tol / (2 - y_tol)``. Both tests are the sign of
    ``min(q, |y| - floor)``, turned into a 0/1 weight by ``clamp(sign(.), 0)``: ``lerp`` with
    weight exactly 0 or 1 returns ``H`` or the clamped secant bit for bit. (``torch.where``
    would be the obvious select, but on CPU it is much slower than these passes.) ``gate``
    (``sync_free``: a 0-d 0/1 per tensor) multiplies that weight, so a tensor gated off keeps
    ``H`` bit for bit.
    """
    p, g, H = block.params, block.grads, block.curvature
    p_prev, g_prev = block.prev_param, block.prev_grad
    y_tol = group["y_tol"]
    if y_tol >= 2:  # |y| <= 2 max(|g|, |g'|): no coordinate can pass the noise test
        return
    n = len(p)
    sy = torch._foreach_sub(p + g, p_prev + g_prev)  # one call for both differences
    s, y = sy[:n], sy[n:]
    q = torch._foreach_div(s, y)
    for qi in q:  # y = 0 gives +-inf or NaN; the noise test below rejects those coordinates
        torch.nan_to_num_(qi, nan=0.0)
    floor = torch._foreach_add(g, g_prev)
    torch._foreach_abs_(floor)
    torch._foreach_mul_(floor, y_tol / (2 - y_tol))
    # and |y| above float underflow, like the reference's y^2 > tiny
    torch._foreach_clamp_min_(floor, [math.sqrt(torch.finfo(t.dtype).tiny) for t in floor])
    written = y  # |y| - floor, in place: y itself is not needed after q
    torch._foreach_abs_(written)
    torch._foreach_sub_(written, floor)
    torch._foreach_minimum_(written, q)
    torch._foreach_sign_(written)
    torch._foreach_clamp_min_(written, 0.0)
    if gate is not None:
        torch._foreach_mul_(written, gate)
    if group["rho"] != 1:
        q = torch._foreach_lerp(H, q, group["rho"])
    if len(q) == 1:  # a slice of a large tensor: one pass for both bounds
        q[0].clamp_(group["h_min"], group["h_max"])
    else:
        torch._foreach_clamp_min_(q, group["h_min"])
        torch._foreach_clamp_max_(q, group["h_max"])
    torch._foreach_lerp_(H, q, written)
