"""Delta-rule momentum (Nested Learning): momentum that erases before it writes.

Momentum is a key-less Hebbian memory of gradients (``m <- beta m + g``). Read the momentum
buffer ``m`` instead as a linear map ``M = m^T: R^d -> R`` (per tensor, or one map per row) and
give it the inner objective

    L(m) = -eta <m, g>  +  gamma/2 <m, g_hat>^2,          g_hat = g / ||g||

the Hebbian term (store the new gradient) plus a delta-rule regression of key ``g_hat`` onto
value 0 (what the memory already holds along the current gradient is "surprise" to be
removed). One gradient step on ``L`` with retention ``alpha`` is

    write   m <- alpha m - gamma g_hat <g_hat, m> + eta g
             = (alpha I - gamma g_hat g_hat^T) m + eta g
    read    u = m
    step    W <- W - lr * u

Sign convention: the write stores ``+ eta g`` and the step subtracts the read,
``W - lr m`` (writing ``- eta g`` and adding the read is the same optimizer with the sign moved),
so that ``gamma = 0, alpha = beta, eta = 1`` is exactly the ``momentum`` preset. Along the
current gradient the old memory is kept with factor ``alpha - gamma``,
orthogonally to it with ``alpha``: ``<g_hat, m_new> = (alpha - gamma) <g_hat, m> + eta ||g||``.
Since ``alpha in [0, 1)`` and ``gamma in [0, 1]``, the write map has spectral radius
``max(alpha, |alpha - gamma|) < 1``, so the memory stays bounded for bounded gradients.

``erase="tensor"`` normalises ``g`` over the whole tensor (one memory ``M: R^numel -> R``);
``erase="row"`` normalises each row (first dim; ``W[i]`` flattened) separately, one memory
per output unit, as in a matrix memory over the tensor's rows. 1-D and 0-D tensors are one row.
A zero gradient (or row) has no direction: nothing is erased. ``g_hat`` and the overlap
``<g, m> / ||g||^2`` are computed without overflow or underflow for any finite gradient (rows
scaled by their largest entry before squaring), so a gradient of 1e16 or 1e-25 in fp32 is
erased along as exactly as one of 1.

References:
    A. Behrouz, M. Razaviyayn, P. Zhong, V. Mirrokni, "Nested Learning: The Illusion of Deep
    Learning Architectures", NeurIPS 2025 (momentum as an associative memory, delta-rule
    momentum). docs/theory/delta.md has the derivation.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

from assocmem.memory import MatrixMemory, delta_write, hebbian_write
from assocmem.optim import fused, grad_norms, sharded, sync_free, validate
from assocmem.optim.compiled import compiled
from assocmem.optim.registry import Group, Hyper, Preset, State, register
from assocmem.optim.stacks import stack_groups


def as_rows(x: Tensor, erase: str) -> Tensor:
    """View ``x`` as ``(rows, d)``: one row for ``erase="tensor"`` or tensors of dim <= 1."""
    if erase == "tensor" or x.dim() <= 1:
        return x.reshape(1, -1)
    return x.reshape(x.shape[0], math.prod(x.shape[1:]))  # not -1: (rows, 0) is valid


def _max_abs(rows: Tensor) -> Tensor:
    """``max |x|`` per row, keepdim; 0 for an all-zero or empty row."""
    if rows.shape[-1] == 0:
        return rows.new_zeros(*rows.shape[:-1], 1)
    return rows.abs().amax(dim=-1, keepdim=True)


def _scaled(rows: Tensor) -> tuple[Tensor, Tensor]:
    """``(rows / s, s)`` with ``s`` the max-abs of each row (1 where a row is zero): entries of
    at most 1, so their squares neither overflow nor, for the largest, underflow."""
    scale = _max_abs(rows)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return rows / scale, scale


def unit_rows(g: Tensor) -> Tensor:
    """Each row of ``g`` scaled to unit norm; an all-zero row stays zero (no direction)."""
    g, _ = _scaled(g)  # ||g||^2 of the raw row overflows fp32 from |g| ~ 1e19 / sqrt(d)
    norm = torch.linalg.vector_norm(g, dim=-1, keepdim=True)
    return torch.where(norm > 0, g / norm, torch.zeros_like(g))


def delta_momentum_write(
    m: Tensor, g: Tensor, *, alpha: float, gamma: float, eta: float, erase: str
) -> Tensor:
    """The new memory ``(alpha I - gamma g_hat g_hat^T) m + eta g`` (pure; same shape as ``m``).

    Written as two explicit memory writes on ``M = m^T`` (one ``1 x d`` map per row): a delta
    write of key ``g_hat``, value 0 at rate ``gamma`` with retention ``alpha`` (erase what the
    memory recalls for the current gradient direction), then a Hebbian write of key ``g``,
    value 1 at rate ``eta`` (store the gradient, as momentum does).
    """
    rows = as_rows(m, erase)
    n, d = rows.shape
    memory = MatrixMemory(rows.reshape(n, 1, d))  # n independent maps R^d -> R
    key = unit_rows(as_rows(g, erase)).reshape(n, 1, d)
    zero = m.new_zeros(n, 1, 1)
    one = m.new_ones(n, 1, 1)
    memory = delta_write(memory, key, zero, lr=gamma, retention=alpha)
    memory = hebbian_write(memory, as_rows(g, erase).reshape(n, 1, d), one, lr=eta)
    return memory.M.reshape(m.shape)


@register
class Delta(Preset):
    name = "delta"
    hyper = {
        "alpha": Hyper(0.9, validate.unit_interval, "retention of the momentum memory"),
        "gamma": Hyper(
            0.5,
            validate.closed_unit_interval,
            "erase strength: retention along the current gradient is alpha - gamma",
        ),
        "eta": Hyper(1.0, validate.non_negative, "write rate of the gradient"),
        "erase": Hyper(
            "tensor", validate.one_of("tensor", "row"), "normalise g per tensor or per row"
        ),
    }

    def init_state(self, param: Tensor, group: Group) -> State:
        return {"momentum": torch.zeros_like(param, memory_format=torch.preserve_format)}

    def shards_locally(self, group: Group) -> bool:
        return True  # the overlaps' sums are all-reduced (tensor_rates, row_rates)

    def reads_state_on_host(self, param: Tensor, group: Group) -> bool:
        return False  # no step count; the overflow fallback is selected on the device

    def squares_grads(self, group: Group) -> bool:
        # the whole-tensor erase rate reads ||g||^2 (plain_sums); rows sum their own squares
        return group["gamma"] != 0 and group["erase"] == "tensor"

    def fuses(self, group: Group) -> bool:
        # gamma = 0 erases nothing: the write is momentum's, through its kernel
        return group["gamma"] == 0 and fused.momentum_fuses(group, group["alpha"])

    def fused_step(
        self,
        params: list[Tensor],
        grads: list[Tensor],
        states: list[State],
        group: Group,
        found_inf: dict[Any, Tensor] | None,
    ) -> None:
        buffers = [s["momentum"] for s in states]
        fused.momentum_sgd_(
            params, grads, buffers, group, found_inf,
            momentum=group["alpha"], write_rate=group["eta"], lr=group["lr"],
        )  # fmt: skip

    def reference_step(self, param: Tensor, grad: Tensor, state: State, group: Group) -> None:
        m = delta_momentum_write(
            state["momentum"],
            grad,
            alpha=group["alpha"],
            gamma=group["gamma"],
            eta=group["eta"],
            erase=group["erase"],
        )
        state["momentum"].copy_(m)
        param.add_(state["momentum"], alpha=-group["lr"])

    def compiled_step(
        self, params: list[Tensor], grads: list[Tensor], states: list[State], group: Group
    ) -> None:
        # torch.compile fuses the two sums of the overlaps into one read of g and m per tensor
        # (eagerly: a dot product and a norm), and the write and the step into one loop per
        # tensor that reads W, g, m once and writes W, m once (eagerly: three passes).
        if group["gamma"] == 0 or group["erase"] != "tensor" or sharded.active():
            self.foreach_step(params, grads, states, group)
            return
        bufs = [s["momentum"] for s in states]
        stacked, _, unfit = tensor_rates(grads, bufs, group["eta"], group["gamma"], compile=True)
        rates = list(stacked.unbind())
        safe = None
        if unfit is None:  # sync_free: every tensor's scaled write, selected where unfit
            hyper = _write_hyper(group)
            safe = [scaled_write(g, m, **hyper) for g, m in zip(grads, bufs, strict=True)]
        elif unfit:
            self.foreach_step(params, grads, states, group)  # rare: a gradient ~1e-37 of m
            return
        compiled(write_and_step)(
            params, grads, bufs, rates, safe, alpha=group["alpha"],
            # a tensor, so that a changing lr (a scheduler) is data, not a recompile
            lr=torch.tensor(group["lr"], dtype=torch.float64),
        )  # fmt: skip

    def foreach_step(
        self, params: list[Tensor], grads: list[Tensor], states: list[State], group: Group
    ) -> None:
        # m <- alpha m + (eta - gamma c) g,  c = <g, m> / ||g||^2 per tensor or per row: the
        # erase along g_hat folded into the gradient's write rate, so m is read twice (the
        # dot products) and written once.
        alpha, gamma, eta, erase = group["alpha"], group["gamma"], group["eta"], group["erase"]
        bufs = [s["momentum"] for s in states]
        if gamma != 0 and erase == "tensor" and not sharded.active():
            # Many small tensors of one shape: stacked, a few calls for all of them (on any
            # device; sharded, each tensor's sums must be completed across ranks).
            stacked, alone = stack_groups(params, STACK_MIN)
            for index in stacked:
                _stacked_step(*([x[i] for i in index] for x in (params, grads, bufs)), group)
            if not alone:
                return
            if stacked:
                params, grads, bufs = ([x[i] for i in alone] for x in (params, grads, bufs))
        if gamma != 0 and erase == "tensor" and takes_host_rates(params, grads, bufs, alpha):
            # On the CPU a host read costs nothing: the tensors the fused kernel takes step
            # on the host path; any others (non-contiguous) take the device-rate path below.
            on_host = fused.fusable_indices(params, (grads, bufs))
            if len(on_host) == len(params):  # the usual case: every tensor
                _host_step(params, grads, bufs, group)
                return
            _host_step(*([x[i] for i in on_host] for x in (params, grads, bufs)), group)
            taken = set(on_host)
            rest = [i for i in range(len(params)) if i not in taken]
            params, grads, bufs = ([x[i] for i in rest] for x in (params, grads, bufs))
        if gamma == 0:
            torch._foreach_mul_(bufs, alpha)
            torch._foreach_add_(bufs, grads, alpha=eta)
        else:
            delta_write_(bufs, grads, alpha=alpha, gamma=gamma, eta=eta, erase=erase)
        torch._foreach_add_(params, bufs, alpha=-group["lr"])


# From this many small tensors of one shape (assocmem.optim.stacks) the step takes them
# stacked. Measured against the CPU host path: the stacked step costs ~120 us of calls plus
# ~10 us per tensor (copies in and out), one by one a tensor costs ~17 us (one large and k
# 8 x 8 tensors, one-off, interleaved: k = 12 398 against 341 us, 16 432 / 409, 32 589 / 684).
# Off the CPU (not measured: no accelerator yet) the same threshold, conservatively.
STACK_MIN = 24


def _host_step(params: list[Tensor], grads: list[Tensor], bufs: list[Tensor], group: Group) -> None:
    """The CPU host path: each tensor's write and step in one pass of torch's fused SGD
    kernel, its dampening ``1 - r`` (``m <- alpha m + r g``) with ``r`` taken in double
    precision from the sums read back. Contiguous CPU tensors."""
    if not params:
        return
    rates = host_rates(grads, bufs, group["eta"], group["gamma"])
    for p, g, m, r in zip(params, grads, bufs, rates, strict=True):
        if not _host_fits(r, m.dtype):  # rare: a gradient ~1e-37 of the memory's size
            m.copy_(scaled_write(g, m, **_write_hyper(group)))
            p.add_(m, alpha=-group["lr"])
            continue
        fused.sgd_(
            [p], [g], [m], weight_decay=0.0, momentum=group["alpha"], lr=group["lr"],
            dampening=1.0 - r, nesterov=False, maximize=False, is_first_step=False,
        )  # fmt: skip


def _stacked_step(
    params: list[Tensor], grads: list[Tensor], bufs: list[Tensor], group: Group
) -> None:
    """The write and step of small tensors of one shape, stacked: each tensor is a row of
    one ``(n, numel)`` stack, so the per-tensor erase is :func:`row_rates`' per-row one
    (its overflow fallback included), then ``m <- alpha m + r g`` and ``W <- W - lr m`` once
    for all, and the rows copied back. The same equations as the fused kernel's per-tensor
    step, rounded differently (float rounding: the sums along rows, the rate in the
    tensors' dtype)."""
    p, g, m = (torch.stack(x) for x in (params, grads, bufs))
    n = len(params)
    # the stacks are new contiguous tensors: their (n, numel) views are written in place,
    # with delta_write_'s per-row rates and its fallback where a row's rate does not fit
    delta_write_(
        [m.view(n, -1)], [g.view(n, -1)],
        alpha=group["alpha"], gamma=group["gamma"], eta=group["eta"], erase="row",
    )  # fmt: skip
    p.add_(m, alpha=-group["lr"])
    torch._foreach_copy_(params, list(p.unbind(0)))
    torch._foreach_copy_(bufs, list(m.unbind(0)))


def takes_host_rates(
    params: list[Tensor], grads: list[Tensor], bufs: list[Tensor], alpha: float
) -> bool:
    """Whether the foreach step may read the write rates on the host and hand the tensors the
    fused SGD kernel takes (contiguous ones, :func:`fused.fusable` per tensor) to it: CPU
    tensors (a host read waits for nothing), not while a step must decide on the device or is
    traced, unsharded, and ``alpha > 0`` (with momentum 0 the kernel leaves the buffer
    unwritten)."""
    tensors = [*params, *grads, *bufs]
    return (
        alpha > 0
        and not sync_free.active()
        and not sharded.active()
        and not torch.compiler.is_compiling()
        and not sync_free.on_accelerator(tensors)
    )


def host_rates(grads: list[Tensor], bufs: list[Tensor], eta: float, gamma: float) -> list[float]:
    """The write rates ``eta - gamma <g, m> / ||g||^2`` per tensor as host numbers.

    The sums of :func:`plain_sums`, read in one go, then the overflow check and the overlap of
    :func:`tensor_rates` in Python floats (a few host operations where the device path
    launches a dozen small kernels), its scaled fallback only where a sum cannot be trusted.
    """
    dots, norms2 = torch.stack(plain_sums(grads, bufs)).tolist()
    rates = []
    for g, m, dot, norm2 in zip(grads, bufs, dots, norms2, strict=True):
        floor = g.numel() * _underflow_floor(g.dtype)  # as _out_of_range
        if math.isfinite(dot) and math.isfinite(norm2) and norm2 >= floor:
            c = dot / norm2
        else:  # overflowed, underflowed or zero: the scaled form (0 for a zero gradient)
            c = float(_scaled_overlap(g.reshape(1, -1), m.reshape(1, -1), whole=True)[0])
        rates.append(eta - gamma * c)
    return rates


def write_and_step(
    params: list[Tensor],
    grads: list[Tensor],
    bufs: list[Tensor],
    rates: list[Tensor],
    safe: list[Tensor] | None = None,
    *,
    alpha: float,
    lr: float | Tensor,
) -> None:
    """``m <- alpha m + r g`` and ``W <- W - lr m`` per tensor, in place (``r = eta - gamma c``,
    the erase folded into the write rate as in the foreach path): the body of ``compile=True``.
    ``safe``: each tensor's :func:`scaled_write`, taken where its rate does not fit (decided
    on the device)."""
    for i, (p, g, m, r) in enumerate(zip(params, grads, bufs, rates, strict=True)):
        written = m * alpha + r * g
        if safe is not None:
            written = torch.where(_fits(r), written, safe[i])
        m.copy_(written)
        p.sub_(lr * m)


def plain_sums(grads: list[Tensor], bufs: list[Tensor]) -> tuple[Tensor, Tensor]:
    """``(<g, m>, ||g||^2)`` per tensor, stacked: two dot products per tensor.

    ``torch.dot(g, g)`` rather than ``torch._foreach_norm``: on the CPU it reads ``g`` at twice
    the speed (0.31 against 0.70 ms for the 6M parameters of ``experiments.bench_step``), and
    where the CPU non-finite check already computed it this step it is not read again
    (:mod:`assocmem.optim.grad_norms`).
    """
    dots = torch.stack(
        [torch.dot(g.reshape(-1), m.reshape(-1)) for g, m in zip(grads, bufs, strict=True)]
    )
    return dots, torch.stack([grad_norms.squared_norm(g) for g in grads])


def fused_sums(grads: list[Tensor], bufs: list[Tensor]) -> tuple[Tensor, Tensor]:
    """:func:`plain_sums` as one reduction over ``g`` and ``m`` per tensor (the body that
    ``compile=True`` compiles: each tensor is read once for both sums)."""
    dots = torch.stack([(g * m).sum() for g, m in zip(grads, bufs, strict=True)])
    return dots, torch.stack([(g * g).sum() for g in grads])


def tensor_rates(
    grads: list[Tensor],
    bufs: list[Tensor],
    eta: float,
    gamma: float,
    *,
    compile: bool = False,
    scaled: Tensor | None = None,
) -> tuple[Tensor, Tensor, set[int] | None]:
    """The write rates ``eta - gamma c`` per tensor (``c = <g, m> / ||g||^2``, 0 for a zero
    gradient: it has no direction), where each fits (:func:`_fits`), and the indices of those
    that do not: a set read on the host (one read per step), or ``None`` under ``sync_free``,
    where the caller selects on the device.

    Sharded by FSDP2, each rank sums its rows and one all-reduce of three floats per tensor
    (the two sums and the element count) completes every tensor's sums at once
    (:mod:`assocmem.optim.sharded`); unsharded it is the identity. ``compile``: the sums by
    :func:`fused_sums` compiled (the same sums, summed in another order). ``scaled``: the
    tensors' :func:`_scaled_overlap` where the caller has them (``sync_free`` only).
    """
    dots, norms2 = (compiled(fused_sums) if compile else plain_sums)(grads, bufs)
    floors = [_underflow_floor(g.dtype) for g in grads]  # per element of the tensor
    # host numbers made device vectors without a blocking copy (sync_free.host_constants)
    if sharded.active():
        counts = sync_free.host_constants([g.numel() for g in grads], dots)
        dots, norms2, counts = sharded.all_sum(torch.stack([dots, norms2, counts])).unbind(0)
        floor = counts * sync_free.host_constants(floors, dots)
    else:
        per_tensor = [g.numel() * f for g, f in zip(grads, floors, strict=True)]
        floor = sync_free.host_constants(per_tensor, dots)
    c = _overlap(dots, norms2)
    bad = _out_of_range(dots, norms2, floor)
    if sync_free.active():  # no host read: the safe form of every tensor, selected where bad
        if scaled is None:
            scaled = torch.stack(
                [
                    _scaled_overlap(g.reshape(1, -1), m.reshape(1, -1), whole=True)[0]
                    for g, m in zip(grads, bufs, strict=True)
                ]
            )
        rates = eta - gamma * torch.where(bad, scaled, c)
        return rates, _fits(rates), None
    rates = eta - gamma * c
    fits = _fits(rates)
    unfit: set[int] = set()
    suspect = bad | ~fits
    if bool(suspect.any()):  # one host read per step; the indices only when rare
        for i in suspect.nonzero().flatten().tolist():
            rows = grads[i].reshape(1, -1), bufs[i].reshape(1, -1)
            rates[i] = eta - gamma * _scaled_overlap(*rows, whole=True)[0]
            if not _host_fits(float(rates[i]), rates.dtype):
                unfit.add(i)
        fits = _fits(rates)
    return rates, fits, unfit


def _overlap(dots: Tensor, norms2: Tensor) -> Tensor:
    """``dots / norms2``, and 0 where the gradient is zero (it has no direction to erase)."""
    return torch.where(norms2 > 0, dots / norms2, torch.zeros_like(dots))


def _underflow_floor(dtype: torch.dtype) -> float:
    """``tiny / eps``: per summed square, the ``||g||^2`` below which flushed subnormals could
    have lost more than a rounding of it (see :func:`_out_of_range`)."""
    info = torch.finfo(dtype)
    return info.tiny / info.eps


def _out_of_range(dots: Tensor, norms2: Tensor, floor: Tensor) -> Tensor:
    """Where the plain sums cannot be trusted: a sum overflowed, or ``||g||^2`` is so small
    that squares flushed to subnormals could have lost more than a rounding of it.

    ``n`` squares below ``tiny`` lose at most ``n * tiny`` in all; that is within one rounding
    (``eps * ||g||^2``) when ``||g||^2 >= n * tiny / eps`` (``floor``, from the whole tensor's
    ``n``, so every rank of a sharded tensor decides alike). For gradients of any usual scale
    both hold, and the one extra pass of :func:`_scaled_overlap` is never taken.
    """
    return ~(torch.isfinite(dots) & torch.isfinite(norms2)) | (norms2 < floor)


class _Scaled(NamedTuple):
    """Rows of ``g`` and ``m`` read without overflow or underflow: ``u = g / s_g`` per row
    (``s`` a row's max-abs, 1 where the row is zero) and ``ratio = <u, m / s_m> / ||u||^2``
    (0 for a zero gradient row: it has no direction), so ``<g, m> / ||g||^2`` is
    ``ratio s_m / s_g`` and the erase ``c g`` is ``ratio s_m u``. Per-row vectors."""

    u: Tensor
    scale_g: Tensor
    scale_m: Tensor
    ratio: Tensor


def _scaled_rows(rows_g: Tensor, rows_m: Tensor, *, whole: bool) -> _Scaled:
    """:class:`_Scaled` of ``(rows, d)`` inputs. ``whole``: the rows are pieces of rows sharded
    across ranks (a whole tensor read as one row), so the max-abs and the sums are completed
    across them (no-ops when unsharded)."""
    scale_g, scale_m = _max_abs(rows_g), _max_abs(rows_m)
    if whole:
        scale_g, scale_m = sharded.all_max(torch.stack([scale_g, scale_m])).unbind(0)
    moves = scale_g > 0
    scale_g = torch.where(moves, scale_g, torch.ones_like(scale_g))
    scale_m = torch.where(scale_m > 0, scale_m, torch.ones_like(scale_m))
    u = rows_g / scale_g
    sums = torch.stack([torch.linalg.vecdot(u, rows_m / scale_m), torch.linalg.vecdot(u, u)])
    if whole:
        sums = sharded.all_sum(sums)
    ratio = sums[0] / sums[1]
    ratio = torch.where(moves.squeeze(-1), ratio, torch.zeros_like(ratio))
    return _Scaled(u, scale_g.squeeze(-1), scale_m.squeeze(-1), ratio)


def _scaled_overlap(rows_g: Tensor, rows_m: Tensor, *, whole: bool) -> Tensor:
    """``<g_i, m_i> / ||g_i||^2`` per row of ``(rows, d)`` inputs, without overflow or underflow
    (:func:`_scaled_rows`); ``inf`` only where the overlap itself exceeds the dtype."""
    parts = _scaled_rows(rows_g, rows_m, whole=whole)
    # (ratio * s_m) / s_g, not ratio * (s_m / s_g): for a memory of 0 and a gradient of 1e-45
    # the quotient of the scales overflows fp32 and 0 * inf made every parameter NaN
    return parts.ratio * parts.scale_m / parts.scale_g


def delta_write_(
    bufs: list[Tensor],
    grads: list[Tensor],
    *,
    alpha: float,
    gamma: float,
    eta: float,
    erase: str,
) -> None:
    """``m <- alpha m + (eta - gamma c) g`` for every tensor, in place (``c`` the overlap
    ``<g, m> / ||g||^2`` per tensor or per row: the erase along ``g_hat`` folded into the
    gradient's write rate, so ``m`` is read twice, by the sums, and written once).

    A rate fits where it is finite and within half the dtype's range (:func:`_fits`); it does
    not when the gradient is ~1e-37 of the memory's size or less (a subnormal gradient under
    a memory of order 1: ``c`` ~ ``|m| / |g|`` overflows although ``c g`` is of ``|m|``'s size),
    and such a tensor (or row) takes :func:`scaled_write`, the same write computed on
    ``g / max|g|``. Decided with one host read for all tensors, or on the device under
    ``sync_free`` (:func:`_select_write_`).
    """
    if sync_free.active():
        _select_write_(bufs, grads, alpha=alpha, gamma=gamma, eta=eta, erase=erase)
        return
    hyper = {"alpha": alpha, "gamma": gamma, "eta": eta, "erase": erase}
    if erase == "tensor":
        # the rates stay on the device (a .tolist() here waited for it every step)
        stacked, _, unfit = tensor_rates(grads, bufs, eta, gamma)
        rates = list(stacked.unbind())
    else:
        rated = [row_rates(g, m, eta, gamma) for g, m in zip(grads, bufs, strict=True)]
        rates, unfit = [r for r, _, _ in rated], {i for i, r in enumerate(rated) if r[2]}
    for i in unfit:
        bufs[i].copy_(scaled_write(grads[i], bufs[i], **hyper))
    keep = [i for i in range(len(bufs)) if i not in unfit]
    if not keep:
        return
    if len(keep) < len(bufs):
        bufs, grads, rates = ([x[i] for i in keep] for x in (bufs, grads, rates))
    torch._foreach_mul_(bufs, alpha)
    torch._foreach_addcmul_(bufs, grads, rates)


def _select_write_(
    bufs: list[Tensor],
    grads: list[Tensor],
    *,
    alpha: float,
    gamma: float,
    eta: float,
    erase: str,
) -> None:
    """:func:`delta_write_` decided on the device (``sync_free``): every tensor's scaled parts
    (:func:`_scaled_rows`, the overflow fallback of its overlap, computed here anyway) also
    give its scaled write's rate of ``u``, and ``m <- alpha m + r' g + k' u`` with ``r'`` the
    folded rate where it fits (else 0) and ``k'`` the rate of ``u`` where it does not (else 0):
    one pass more than the folded write, the same bits where every rate fits."""
    whole = [erase == "tensor" or g.dim() <= 1 for g in grads]
    parts = [
        _scaled_rows(as_rows(g, erase), as_rows(m, erase), whole=w)
        for g, m, w in zip(grads, bufs, whole, strict=True)
    ]
    safe = [p.ratio * p.scale_m / p.scale_g for p in parts]  # as _scaled_overlap
    if erase == "tensor":
        stacked, fitting, _ = tensor_rates(grads, bufs, eta, gamma, scaled=torch.cat(safe))
        rated = list(zip(stacked.unbind(), fitting.unbind(), strict=True))
    else:
        rated = [
            row_rates(g, m, eta, gamma, scaled=c)[:2]
            for g, m, c in zip(grads, bufs, safe, strict=True)
        ]
    folded = [torch.where(f, r, 0) for r, f in rated]
    torch._foreach_mul_(bufs, alpha)
    torch._foreach_addcmul_(bufs, grads, folded)
    for m, part, (_, f) in zip(bufs, parts, rated, strict=True):
        k = torch.where(f.reshape(-1), 0, _rate_of_u(part, eta, gamma))
        m.add_((part.u * k[..., None]).reshape(m.shape))


def _fits(rates: Tensor) -> Tensor:
    """Where a folded write rate ``r`` can be used: finite and at most half the dtype's range,
    so that ``r g`` (about ``|m|`` at most) and the fused kernel's dampening ``1 - r`` are too."""
    return torch.isfinite(rates) & (rates.abs() <= torch.finfo(rates.dtype).max / 2)


def _host_fits(rate: float, dtype: torch.dtype) -> bool:
    """:func:`_fits` of a rate read back to the host (a Python float, double precision)."""
    return math.isfinite(rate) and abs(rate) <= torch.finfo(dtype).max / 2


def _write_hyper(group: Group) -> dict[str, Any]:
    return {k: group[k] for k in ("alpha", "gamma", "eta", "erase")}


def scaled_write(
    g: Tensor, m: Tensor, *, alpha: float, gamma: float, eta: float, erase: str
) -> Tensor:
    """The write ``(alpha I - gamma g_hat g_hat^T) m + eta g`` (pure), computed on
    ``u = g / max|g|`` per row (:func:`_scaled_rows`): ``alpha m + (eta s_g - gamma ratio s_m) u``.
    Every factor stays within the range of ``g``, ``m`` and 1 (``||u|| >= 1``), so it is
    finite for any finite ``g`` and ``m``, where the folded rate ``eta - gamma c`` overflows
    for a gradient ~1e-37 of the memory's size. Sharded rows (a whole tensor, or a 1-D one)
    have their max-abs and sums completed across ranks, as :func:`tensor_rates`.
    """
    rows_g, rows_m = as_rows(g, erase), as_rows(m, erase)
    parts = _scaled_rows(rows_g, rows_m, whole=erase == "tensor" or g.dim() <= 1)
    return (rows_m * alpha + parts.u * _rate_of_u(parts, eta, gamma)[..., None]).reshape(m.shape)


def _rate_of_u(parts: _Scaled, eta: float, gamma: float) -> Tensor:
    """The write rate of ``u`` per row: ``(eta - gamma c) s_g = eta s_g - gamma ratio s_m``."""
    return eta * parts.scale_g - gamma * parts.ratio * parts.scale_m


def row_rates(
    g: Tensor, m: Tensor, eta: float, gamma: float, *, scaled: Tensor | None = None
) -> tuple[Tensor, Tensor, bool]:
    """The write rates ``eta - gamma c_i`` per row (``c_i = <g_i, m_i> / ||g_i||^2``), shaped to
    broadcast against ``g``, where each fits (:func:`_fits`), and whether any row does not
    (read on the host; ``False`` under ``sync_free``, where the caller selects).

    FSDP2 shards rows, so a matrix's rows are whole on their rank; a 1-D tensor is one row
    split across ranks, whose sums (and length) are all-reduced as in :func:`tensor_rates`.
    """
    whole = g.dim() <= 1
    rows_g, rows_m = as_rows(g, "row"), as_rows(m, "row")
    dots = torch.linalg.vecdot(rows_g, rows_m)
    norms2 = torch.linalg.vecdot(rows_g, rows_g)
    n = torch.full_like(dots, rows_g.shape[-1])
    if whole:
        dots, norms2, n = sharded.all_sum(torch.stack([dots, norms2, n])).unbind(0)
    c = _overlap(dots, norms2)
    bad = _out_of_range(dots, norms2, n * _underflow_floor(g.dtype))
    rates = eta - gamma * c
    unfit = False
    if sync_free.active():  # on the device: always computed, selected
        if scaled is None:
            scaled = _scaled_overlap(rows_g, rows_m, whole=whole)
        rates = eta - gamma * torch.where(bad, scaled, c)
        fits = _fits(rates)
    else:
        fits = _fits(rates)
        if bool((bad | ~fits).any()):  # one host read per tensor; rare past it
            scaled = _scaled_overlap(rows_g, rows_m, whole=whole)
            rates = eta - gamma * torch.where(bad, scaled, c)
            fits = _fits(rates)
            unfit = not bool(fits.all())
    shape = (-1,) + (1,) * (g.dim() - 1) if g.dim() > 1 else ()
    return rates.reshape(shape), fits.reshape(shape), unfit
