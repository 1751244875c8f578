"""The fast path of ``landscape``'s weak form (:mod:`assocmem.optim.presets.landscape` has the
equations: :func:`~assocmem.optim.presets.landscape.weak_secant_write` and
:func:`~assocmem.optim.presets.landscape.weak_read`).

The reference writes the memory as a matrix memory ``B: R^n -> R`` (a ``1 x n`` matrix): a
matrix product, an outer product, a scaled copy, a subtraction, a whole-tensor finite check and
a select, each a pass over (and mostly a new copy of) the tensor, about 20 per step. Here the
same write is three dot products and one ``addcmul``, since a rank-one delta write into a row
memory is ``B + c k`` with the scalar ``c = -rho (<B, k> - v) / <k, k>``; the key is built in
``d``'s buffer (the read overwrites ``d`` anyway), the per-tensor scalars of each dtype are
one small vector each, and nothing reads a scalar on the host: 14 passes over parameter-sized
arrays per step, one new parameter-sized buffer (``y``). Many small tensors of one shape (a
deep model's biases and norms) are stepped stacked, one tensor per kind, where a call per
tensor would cost more than the copies in and out.

Same equations, different rounding (the sums are dot products, summed in another order than
the reference's matrix products): tests hold it to the reference
within float64 rounding at every step. One difference by design: the reference rejects a write
whose *written memory* holds a non-finite value (a whole-tensor check); here a write is rejected
when its coefficient ``c`` is non-finite or beyond half the dtype's range, so that ``B + c k``
(``0 <= k <= 1``) can only overflow where ``|B|`` already exceeds half the range. A rejected
write adds ``0 * k``, which leaves ``B`` as it was unless ``d`` itself is non-finite: that takes
a non-finite momentum (``nonfinite="ignore"`` lets one in, and it never leaves ``m``), and then
``B`` turns NaN a step after ``m`` and ``W`` have, where the reference would keep it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from assocmem.optim.compiled import compiled
from assocmem.optim.fused import by_device_and_dtype
from assocmem.optim.presets.landscape import average_rates, momentum_decay
from assocmem.optim.registry import Group, State
from assocmem.optim.stacks import SMALL, stack_groups


def weak_step(
    params: list[Tensor], grads: list[Tensor], states: list[State], group: Group,
    *, compile: bool = False,
) -> None:  # fmt: skip
    """One weak-secant write, read and step for every tensor of the group, in place: eagerly
    as below, or (``compile=True``) as :func:`weak_secant_step` fused by torch.compile."""
    if compile:
        # rates as tensors even off sync_free: a float that changes every step would recompile
        rates = average_rates(states, params, momentum_decay(group), on_device=True)
        compiled(weak_secant_step)(
            params, grads,
            [st["momentum"] for st in states],
            [st["direction"] for st in states],
            [st["hessian"] for st in states],
            rates,
            # a tensor, so that a changing lr (a scheduler) is data, not a recompile
            lr=torch.tensor(group["lr"], dtype=torch.float64),
            rho=group["rho"], sigma=group["sigma"],
        )  # fmt: skip
        return
    for index in by_device_and_dtype(params):
        _weak_step_bucket(
            [params[i] for i in index], [grads[i] for i in index], [states[i] for i in index],
            group,
        )  # fmt: skip


def weak_secant_step(
    params: list[Tensor], grads: list[Tensor], momenta: list[Tensor], directions: list[Tensor],
    memories: list[Tensor], rates: list[Tensor], *, lr: Tensor, rho: float, sigma: float,
) -> None:  # fmt: skip
    """The weak form's write, read and step per tensor, in place, as elementwise operations and
    whole-tensor sums: the body of the ``compile=True`` path, which inductor fuses into a pass
    for ``max|d|`` and ``y``, one for the three sums and one for the write, read and step."""
    for p, g, m, d, B, rate in zip(
        params, grads, momenta, directions, memories, rates, strict=True
    ):
        y = rate * (g - m)
        m.add_(y)
        scale, ok = _usable_scale(d.abs().amax())
        u = d / scale
        key = u * u
        c = _coefficient((u * y).sum(), (key * key).sum(), (B * key).sum(), scale, ok, rho)
        B.add_(c * key)
        d.copy_(m / B.abs().clamp(min=sigma))
        p.sub_(lr * d)


def _weak_step_bucket(
    params: list[Tensor], grads: list[Tensor], states: list[State], group: Group
) -> None:
    """:func:`weak_step` for tensors of one device and dtype: many small tensors of one shape
    as one stacked tensor per kind (:func:`_stacked_step`, :mod:`assocmem.optim.stacks`), the
    others one by one with their per-tensor scalars computed as one small vector each
    (:func:`_per_tensor_step`)."""
    groups, alone = stack_groups(params, STACK_MIN)
    for index in groups:
        _stacked_step(*([x[i] for i in index] for x in (params, grads, states)), group)
    if alone:
        _per_tensor_step(*([x[i] for i in alone] for x in (params, grads, states)), group)


def _stacked_step(
    params: list[Tensor], grads: list[Tensor], states: list[State], group: Group
) -> None:
    """The step of tensors of one small shape, each kind stacked into one tensor (copied in,
    stepped with the per-tensor step's operations along a leading axis, copied back): a few
    dozen calls whatever the number of tensors, where one by one each tensor costs a dozen.
    The same elementwise operations; the three sums are sums along the stack's rows instead
    of dot products, so they round differently (to float rounding, as the per-tensor path
    against the reference)."""
    momenta = [st["momentum"] for st in states]
    directions = [st["direction"] for st in states]
    memories = [st["hessian"] for st in states]
    p, g, m, d, b = (torch.stack(x) for x in (params, grads, momenta, directions, memories))
    rates = average_rates(states, momenta, momentum_decay(group))  # floats, or 0-d tensors
    rate = (
        torch.stack(rates)
        if isinstance(rates[0], Tensor)
        else torch.tensor(rates, dtype=p.dtype, device=p.device)
    )
    n = len(params)
    per_row = (n,) + (1,) * (p.dim() - 1)  # a per-tensor scalar against its stacked slice

    y = (g - m) * rate.view(per_row)
    m.add_(y)
    scale, ok = _usable_scale(d.reshape(n, -1).abs().amax(1))
    u = d.div_(scale.view(per_row))
    uy = (u * y).reshape(n, -1).sum(1)
    key = u.mul_(u)
    kk = (key * key).reshape(n, -1).sum(1)
    bk = (b * key).reshape(n, -1).sum(1)
    c = _coefficient(uy, kk, bk, scale, ok, group["rho"])
    b.addcmul_(key, c.view(per_row))
    torch.div(m, b.abs().clamp_min_(group["sigma"]), out=d)
    p.add_(d, alpha=-group["lr"])
    for stacked, tensors in ((p, params), (m, momenta), (d, directions), (b, memories)):
        torch._foreach_copy_(tensors, list(stacked.unbind(0)))


def _per_tensor_step(
    params: list[Tensor], grads: list[Tensor], states: list[State], group: Group
) -> None:
    """The step tensor by tensor, the per-tensor scalars computed as one small vector each."""
    momenta = [st["momentum"] for st in states]
    directions = [st["direction"] for st in states]  # d, the last step's direction
    memories = [st["hessian"] for st in states]  # B
    rates = average_rates(states, momenta, momentum_decay(group))  # floats, or 0-d tensors

    # y = rate (g - m), m's change; m <- m + y. (As m.add_(g - m, alpha=rate) instead,
    # torch.compile(opt.step) in torch 2.13 gave wrong momenta from step 3 on, where the
    # rate first changes between compiled calls; a list of rates is data to it.)
    y = torch._foreach_sub(grads, momenta)
    torch._foreach_mul_(y, rates)
    torch._foreach_add_(momenta, y)

    # The key k = u * u with u = d / max|d| (so k <= 1 and sum k^2 >= 1: no overflow), built
    # in d's own buffer: the read below overwrites d anyway.
    scale, ok = _usable_scale(_max_abs(directions))
    torch._foreach_div_(directions, list(scale.unbind()))
    u = directions
    # Flat views made once per tensor (they alias d's buffer, so they hold the key after
    # the square below): torch.dot takes vectors, and with many small tensors a reshape per
    # dot product cost as much as the dot itself.
    vectors = [_vector(x) for x in u]
    uy = torch.stack([_dot(ui, yi) for ui, yi in zip(vectors, y, strict=True)])
    del y
    torch._foreach_mul_(u, u)
    keys = u
    kk = torch.stack([_dot(k, k) for k in vectors])
    bk = torch.stack([_dot(B, k) for B, k in zip(memories, vectors, strict=True)])

    c = _coefficient(uy, kk, bk, scale, ok, group["rho"])
    torch._foreach_addcmul_(memories, keys, list(c.unbind()))
    _read_into(directions, momenta, memories, group["sigma"])
    torch._foreach_add_(params, directions, alpha=-group["lr"])


# From this many small tensors of one shape they are stepped stacked. The stacked step costs
# ~100 us of calls plus ~12 us per tensor (the copies in and out), one by one a tensor costs
# ~25 us: one large and k 8 x 8 tensors stepped, one-off, interleaved: k = 8 607 against
# 583 us, 12 654 / 690, 16 698 / 788, 32 992 / 1327.
STACK_MIN = 12


def _vector(x: Tensor) -> Tensor:
    """A contiguous tensor's flat view; a strided one as it is (``_dot`` copies it flat)."""
    return x.view(-1) if x.is_contiguous() else x


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return torch.dot(a if a.dim() == 1 else a.reshape(-1), b if b.dim() == 1 else b.reshape(-1))


def _max_abs(directions: list[Tensor]) -> Tensor:
    """``max|d|`` per tensor, as one vector: from ``aminmax`` (one pass, where an inf-norm or
    ``abs().amax()`` costs 5-20x more here) for large tensors, from one foreach ``abs`` and
    ``max`` for all the small ones (under ``stacks.SMALL`` elements a pass is dispatch, not
    memory traffic: with 300 tiny tensors half of a step was calls per tensor). Exact either
    way, NaN included."""
    out: list[Tensor | None] = [None] * len(directions)
    small = [i for i, d in enumerate(directions) if d.numel() < SMALL and d.numel() > 0]
    if small:
        peaks = torch._foreach_max(torch._foreach_abs([directions[i] for i in small]))
        for i, peak in zip(small, peaks, strict=True):
            out[i] = peak
    for i, d in enumerate(directions):
        if out[i] is None:
            low, high = torch.aminmax(d)
            out[i] = torch.maximum(-low, high)
    return torch.stack(out)


def _read_into(
    directions: list[Tensor], momenta: list[Tensor], memories: list[Tensor], sigma: float
) -> None:
    """``d <- m / max(|B|, sigma)`` in place: into ``d`` per large tensor (three passes, no
    temporary), through foreach temporaries for the small ones (the same ops, so the same
    bits)."""
    small = [i for i, d in enumerate(directions) if d.numel() < SMALL]
    if small:
        denominators = torch._foreach_abs([memories[i] for i in small])
        torch._foreach_clamp_min_(denominators, sigma)
        reads = torch._foreach_div([momenta[i] for i in small], denominators)
        torch._foreach_copy_([directions[i] for i in small], reads)
    chosen = set(small)
    for i, (B, m, d) in enumerate(zip(memories, momenta, directions, strict=True)):
        if i not in chosen:
            torch.abs(B, out=d)
            d.clamp_min_(sigma)
            torch.div(m, d, out=d)


def _usable_scale(max_abs: Tensor) -> tuple[Tensor, Tensor]:
    """``max|d|`` as the key's scale and whether ``d`` can be written along (non-zero and
    finite: the first step's zero direction writes nothing); 1 where it cannot, so the
    division stays finite."""
    ok = (max_abs > 0) & torch.isfinite(max_abs)
    return torch.where(ok, max_abs, 1), ok


def _coefficient(
    uy: Tensor, kk: Tensor, bk: Tensor, scale: Tensor, ok: Tensor, rho: float
) -> Tensor:
    """The write ``B <- B + c k``'s ``c = -rho (<B, k> - v) / <k, k>`` with the value
    ``v = -<u, y> / max|d|``, from the sums ``uy = <u, y>``, ``kk = <k, k>``, ``bk = <B, k>``;
    0 (the write rejected) where ``d`` cannot be written along or ``c`` is non-finite or beyond
    half the dtype's range. Elementwise: one tensor's 0-d sums or a vector of them."""
    c = -(rho / kk) * (bk + uy / scale)
    keep = ok & torch.isfinite(c) & (c.abs() <= torch.finfo(c.dtype).max / 2)
    return torch.where(keep, c, 0)
