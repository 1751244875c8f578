"""Deep momentum (DMGD, Nested Learning): the momentum is an MLP memory trained online.

One small MLP ``M_phi: R^2 -> R`` per parameter tensor, shared by all its coordinates, maps a
coordinate's context to a forecast of its next (normalised) gradient. Per step ``t``:

    scale     r <- rho r + (1 - rho) mean(g^2);   s = sqrt(r / (1 - rho^t)) + eps
              (overflow-safe: see "Choices and why")
              g_hat = g / s                                    (per-tensor, scale-free units)
    context   m <- beta m + (1 - beta) g_hat;     m_hat = m / (1 - beta^t)
              u_t = [m_hat_t, g_hat_t]                         (one key per coordinate)
    write     phi <- phi0 + alpha (phi - phi0) - eta_t grad_phi l,   for t >= 2
              l(phi) = 1/2 mean_i (M_phi(u_{t-1,i}) - g_hat_{t,i})^2
              eta_t = inner_lr / mean_i(||u_{t-1,i}||^2 + 1)  (normalised LMS)
    read      d = M_phi(u_t)                                   (forecast of the next g_hat)
    step      W <- W - lr * d

The write is the memory's own inner objective: it learns, from the pair (yesterday's context,
today's gradient), to predict the incoming gradient; the read asks for tomorrow's with today's
context. ``M_phi(u) = w2 tanh(W1 u + b1) + b2 + S u``. It starts as normalised momentum: the
skip ``S = [1, 0]`` picks ``m_hat`` and the MLP's output layer is zero, so step 1 is safe and
the memory then learns corrections. What it can learn: shrinkage of ``m_hat`` when gradients
are noise (the read becomes a Wiener filter, the step falls with the gradient SNR), negative
weight on ``g_hat`` when gradients oscillate (a damped, curvature-aware step), and non-linear
maps of the two (e.g. trusting agreeing signs more).

Choices and why:

- Normalising by a per-tensor RMS makes keys and values O(1) whatever the loss scale, so one
  ``inner_lr`` works for every tensor, and makes ``lr`` an Adam-like step size.
- No finite gradient makes the RMS infinite: ``mean(g^2)`` is taken of ``g / max|g|`` where
  its squares or their sum could overflow (:func:`_mean_square_values`; the plain mean's bits
  elsewhere), the bias-corrected root as ``sqrt(r) / sqrt(1 - rho^t)`` where ``r / (1 - rho^t)``
  would overflow, and ``r`` saturates at the dtype's largest float (an RMS above ~1.8e20 in
  float32). An infinite ``r`` once made ``g_hat = 0`` for good after a single spike (the tensor
  never moved again); now the spike is remembered as Adam's ``v`` remembers one: ordinary
  gradients read ~0 until ``r`` has decayed, about ``ln(r_spike / r_before) / (1 - rho)`` steps
  (~9000 after a 1e20 spike at ``rho = 0.99``; Adam at ``beta2 = 0.999`` takes ~10x longer),
  while the momentum carries the normalised spike meanwhile. The spike's own ``g_hat`` is
  taken in units of ``a = max|g|`` where the gradient was scaled, ``(g / a) / (sqrt(r' /
  (1 - rho^t)) + eps / a)`` with ``r' = rho r / a^2 + (1 - rho) mean((g / a)^2)``, so it is
  the equation's O(1) value even where ``r`` itself saturates (a saturated ``r`` divided
  ``g`` by a root too small: a 1e30 gradient read ~5e10 and moved a weight by ~1e8).
- The inner write rate is divided by the mean squared key (+1 for the bias input): that bounds
  the linear part's inner curvature, so a gradient spike cannot blow the memory up (NLMS).
- Retention pulls ``phi`` toward its initial weights (``retention_target="init"``), i.e.
  toward plain normalised momentum, so stale corrections fade on a ``1 / (1 - alpha)`` horizon;
  ``"zero"`` is the Nested Learning/Titans form ``phi <- alpha phi - eta grad``.
- The MLP is drawn from a generator seeded by ``seed`` and the parameter's shape: two fresh
  optimizers are identical, and the whole memory lives in the state dict (``mlp_*``; its
  anchor ``mlp0_*``), so save/load resumes bit-exactly.
- ``state["inner_loss"]`` holds the objective of the latest write (before it), 0 at step 1
  where there is no context yet and nothing is written.

The reference path writes with :func:`assocmem.memory.deep_write` (``torch.func.grad``); the
fast path uses the closed-form gradient of the 2-layer MLP (no autograd); tests hold them equal.
Cost: about ``10 * hidden`` flops and ``hidden`` floats of scratch per coordinate per step, and
two param-sized buffers of state (like Adam). Tensors of one size (a deep model's repeated
layers) step as one batch of MLPs, a few batched products per size instead of a dozen ops per
tensor: the host's cost per tensor is what a step of many small tensors pays.

Reference: Behrouz et al., "Nested Learning: The Illusion of Deep Learning Architectures"
(NeurIPS 2025), deep momentum gradient descent; Behrouz et al., "Titans" (2024).
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import torch
from torch import Tensor

from assocmem.memory import (
    DeepMemory,
    ElementwiseMemory,
    deep_memory,
    deep_read,
    deep_write,
    hebbian_write,
    inner_loss,
    read,
)
from assocmem.optim import counts, sharded, sync_free, validate
from assocmem.optim.indices import grouped
from assocmem.optim.reads import corrected_root
from assocmem.optim.registry import Group, Hyper, Preset, State, register

_FIELDS = DeepMemory._fields  # w1 (h, 2), b1 (h,), w2 (1, h), b2 (1,), skip (1, 2)
D_KEY = 2


def _seed(seed: int, shape: torch.Size) -> int:
    # crc32 of the shape: deterministic across processes (unlike hash() of a str).
    return (seed * 1_000_003 + zlib.crc32(repr(tuple(shape)).encode())) % (2**63)


def _memory(state: State, prefix: str = "mlp_") -> DeepMemory:
    return DeepMemory(*(state[prefix + f] for f in _FIELDS))


# A step count: a Python number (the host reads it), or, under sync_free, the 0-d float64
# count on the parameter's device (assocmem.optim.counts), never read on the host.
Count = float | Tensor


def _correction(retention: float, t: Count, like: Tensor) -> float | Tensor:
    """``1 - retention^t``: a number, or from a device count the same float64 operations cast
    to ``like``'s dtype, as the host's number is cast when it meets ``like`` (same bits)."""
    if not isinstance(t, Tensor):
        return 1 - retention**t
    return counts.like(counts.corrections(retention, [t]), [like])[0]


def _rms(r: Tensor, t: Count, group: Group, scale: Tensor) -> Tensor:
    """The root that divides ``g / scale`` (``r`` in units of ``scale^2``, see
    :func:`_in_gradient_units`): ``sqrt(r / (1 - rho^t)) + eps / scale``."""
    return corrected_root(r, _correction(group["rms_beta"], t, r)) + group["eps"] / scale


def _in_gradient_units(kept: Tensor, value: Tensor, scale: Tensor, written: Tensor) -> Tensor:
    """The RMS memory after this write in units of ``scale^2`` (``scale = max|g|`` where the
    gradient was scaled to square it, else 1): ``kept / scale / scale + value``, with ``kept``
    the retained ``rho r`` and ``value`` the scaled write ``(1 - rho) mean((g / scale)^2)``.
    Where the gradient was not scaled, ``written`` itself (its bits). Finite where ``written``
    saturated: the step's ``g_hat`` is read from it, not from the clipped memory."""
    return torch.where(scale > 1, kept / scale / scale + value, written)


def _mean_square_values(
    grads: list[Tensor], sizes: list[int], rate: float, *, over_shards: bool
) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """``rate mean(g^2)`` of each gradient: the value the RMS memory ``r`` is written with
    (``rate = 1 - rho``, the write then at rate 1); and its parts, ``rate mean((g / a)^2)``
    and ``a`` (1 unless scaled, below), from which the step reads its ``g_hat``.

    ``mean(g^2)`` overflows long before the RMS does: its squares from ``|g| = sqrt(max)``
    (1.8e19 in float32), its sum over ``n`` coordinates from ``sqrt(max / n)`` (1.8e16 for a
    million), and an infinite ``r`` would divide every later gradient to 0 (the tensor never
    moves again). So where ``n max|g|^2`` could pass half the largest float (``n`` the
    largest tensor's size), the gradient is divided by ``a = max|g|`` before squaring (its
    squares at most 1) and ``a`` put back after the rate, ``((rate mean((g / a)^2)) a) a``:
    infinite only where the value itself is (an RMS above ``sqrt(max / rate)``, 1.8e20 in
    float32 at ``rho = 0.99``; :func:`_saturate_` then keeps ``r`` finite). Elsewhere
    ``a = 1``: the plain mean's bits.

    ``sizes``: each whole tensor's element count (the reference passes one tensor, the fast
    path a list: the bound may differ, the values only by rounding). ``over_shards``: means
    and maxima over the whole tensor under FSDP2 (the fast path; :func:`sharded.means`).
    """
    # (norm(inf) is slow on CPU, _foreach_max a graph break under torch.compile; a rank's
    # rows of a sharded tensor may be none)
    maxima = [x.amax() if x.numel() else x.new_zeros(()) for x in torch._foreach_abs(grads)]
    if over_shards and sharded.active():
        dtype = maxima[0].dtype
        whole = sharded.all_max(torch.stack([m.to(dtype) for m in maxima])).unbind()
        maxima = [m.to(g.dtype) for m, g in zip(whole, grads, strict=True)]
    # One bound for the list, the largest tensor's (4e14 in float32 for 1e9 coordinates, far
    # above ordinary gradients); float32 or float64: fp16/bf16 parameters step through an
    # fp32 master copy. An infinite g (nonfinite="ignore") is divided by the largest float.
    n = max(*sizes, 1)

    def scale(m: Tensor) -> Tensor:
        top = torch.finfo(m.dtype).max
        return torch.where(m > math.sqrt(top / (2 * n)), m, 1.0).clamp_(max=top)

    one_kind = len({(m.dtype, m.device) for m in maxima}) == 1  # the usual: a few ops in all
    scales = list(scale(torch.stack(maxima)).unbind()) if one_kind else list(map(scale, maxima))
    squares = torch._foreach_div(grads, scales)
    torch._foreach_pow_(squares, 2)
    means = sharded.means(squares) if over_shards else [x.mean() for x in squares]
    if one_kind:
        scaled = torch.stack(means) * rate
        values = (scaled * torch.stack(scales) * torch.stack(scales)).unbind()  # ((rate mean) a) a
        return list(values), list(scaled.unbind()), scales
    scaled = [mean * rate for mean in means]
    return [w * a * a for w, a in zip(scaled, scales, strict=True)], scaled, scales


def _saturate_(r: list[Tensor]) -> None:
    """Each RMS memory at most its dtype's largest float, in place: a finite spike whose
    write overflows (an RMS above ~1.8e20 in float32) leaves ``r`` at the top of the range,
    from where it decays, rather than infinite for good. A no-op below it (its bits)."""
    torch._foreach_clamp_max_(r, [torch.finfo(x.dtype).max for x in r])


def _keys(momentum: Tensor, grad_hat: Tensor, t: Count, beta: float) -> Tensor:
    """Per-coordinate keys ``(n, 2) = [m_hat, g_hat]`` (``m`` bias-corrected at step ``t``)."""
    m_hat = momentum.reshape(-1) / _correction(beta, t, momentum)
    return torch.stack([m_hat, grad_hat.reshape(-1)], -1)


def _count(state: State) -> Count:
    """The step count as the step takes it: on the device under sync_free, else a number."""
    return counts.as_counts([state["step"]])[0] if sync_free.active() else float(state["step"])


def _keep_first_step_(written: list[Tensor], saved: list[Tensor], t: Tensor) -> None:
    """Where ``t`` is the first step (no context yet: the host path writes nothing), put the
    saved values back (a select: it copies bits, even over the NaN the write made from the
    empty context's ``0 / 0``)."""
    first = t <= 1
    for x, old in zip(written, saved, strict=True):
        torch.where(first, old, x, out=x)


def _write_rate(keys: Tensor, inner_lr: float) -> Tensor:
    return inner_lr / (keys.pow(2).sum(-1).mean() + 1)


@register
class Deep(Preset):
    name = "deep"
    non_negative_state = ("grad_sq",)
    hyper = {
        "beta": Hyper(0.9, validate.unit_interval, "retention of the momentum key feature"),
        "rms_beta": Hyper(0.99, validate.unit_interval, "retention of the gradient RMS"),
        "eps": Hyper(1e-8, validate.non_negative, "added to the gradient RMS"),
        "hidden": Hyper(8, validate.positive_int, "hidden width of the MLP memory"),
        "inner_lr": Hyper(0.5, validate.non_negative, "write rate (before NLMS scaling)"),
        "retention": Hyper(0.999, validate.closed_unit_interval, "retention of the MLP"),
        "retention_target": Hyper("init", validate.one_of("init", "zero"), "decay toward"),
        "seed": Hyper(0, validate.non_negative_int, "seeds the MLP init (with the param shape)"),
    }

    def init_state(self, param: Tensor, group: Group) -> State:
        like = {"dtype": param.dtype, "device": param.device}
        mlp = deep_memory(
            D_KEY,
            1,
            group["hidden"],
            skip_init=torch.tensor([[1.0, 0.0]]),
            zero_output=True,
            seed=_seed(int(group["seed"]), param.shape),
            **like,
        )
        state = {
            "momentum": torch.zeros_like(param, memory_format=torch.preserve_format),
            "prev_grad": torch.zeros_like(param, memory_format=torch.preserve_format),
            "grad_sq": torch.zeros((), **like),
            "inner_loss": torch.zeros((), **like),
        }
        for f, t in zip(_FIELDS, mlp, strict=True):
            state["mlp_" + f] = t
            state["mlp0_" + f] = t.clone()
        return state

    def shards_locally(self, group: Group) -> bool:
        return True  # the fast path's per-tensor sums are all-reduced

    def counts_on_device(self, param: Tensor, group: Group) -> bool:
        # bias corrections from the count on the device; the first step's "no write" selected
        return True

    def reference_step(self, param: Tensor, grad: Tensor, state: State, group: Group) -> None:
        beta, rho, t = group["beta"], group["rms_beta"], _count(state)
        # the write's rate in its value: (1 - rho) mean(g^2), computed without overflow
        ((value,), (scaled,), (a,)) = _mean_square_values(
            [grad], [grad.numel()], 1 - rho, over_shards=False
        )
        r = hebbian_write(ElementwiseMemory(state["grad_sq"]), None, value, lr=1.0, retention=rho)
        _saturate_([r.m])
        units = _in_gradient_units(state["grad_sq"] * rho, scaled, a, read(r))
        grad_hat = grad / a / _rms(units, t, group, a)
        mlp = _memory(state)
        on_device = isinstance(t, Tensor)
        if on_device or t > 1:
            keys = _keys(state["momentum"], state["prev_grad"], t - 1, beta)
            values = grad_hat.reshape(-1, 1)
            # under sync_free: the pre-write memory (deep_write returns new tensors, so the
            # state's are it) and inner loss, put back at step 1
            saved = [state["inner_loss"].clone(), *mlp] if on_device else []
            state["inner_loss"].copy_(inner_loss(mlp, keys, values))
            mlp = deep_write(
                mlp,
                keys,
                values,
                lr=_write_rate(keys, group["inner_lr"]),
                retention=group["retention"],
                anchor=_memory(state, "mlp0_") if group["retention_target"] == "init" else None,
            )
            if on_device:
                _keep_first_step_([state["inner_loss"], *mlp], saved, t)
        m = hebbian_write(
            ElementwiseMemory(state["momentum"]), None, grad_hat, lr=1 - beta, retention=beta
        )
        direction = deep_read(mlp, _keys(read(m), grad_hat, t, beta))
        param.add_(direction.view_as(param), alpha=-group["lr"])
        state["grad_sq"].copy_(read(r))
        state["momentum"].copy_(read(m))
        state["prev_grad"].copy_(grad_hat)
        for f, new in zip(_FIELDS, mlp, strict=True):
            state["mlp_" + f].copy_(new)

    def foreach_step(
        self, params: list[Tensor], grads: list[Tensor], states: list[State], group: Group
    ) -> None:
        beta, rho = group["beta"], group["rms_beta"]
        grad_sq = [s["grad_sq"] for s in states]
        torch._foreach_mul_(grad_sq, rho)
        sizes = [sharded.whole_numel(p) for p in params]
        # over the whole tensor if sharded
        values, scaled, scales = _mean_square_values(grads, sizes, 1 - rho, over_shards=True)
        kept = [x.clone() for x in grad_sq]
        torch._foreach_add_(grad_sq, values)
        _saturate_(grad_sq)
        units = list(map(_in_gradient_units, kept, scaled, scales, grad_sq))
        alone = list(range(len(params)))
        if not sharded.active():
            # Tensors of one size at one step count (a deep model's repeated layers) step as
            # one batch of MLPs: a few batched products instead of a dozen ops per tensor.
            alone = []
            for index in _same_size_and_count(params, states):
                if len(index) == 1:
                    alone += index
                    continue
                lists = (params, grads, states, units, scales)
                _batched_step(*([xs[i] for i in index] for xs in lists), group)
        for i in alone:
            p, g, s, a = params[i], grads[i], states[i], scales[i]
            t = _count(s)
            grad_hat = g / a / _rms(units[i], t, group, a)
            if isinstance(t, Tensor):  # sync_free: write, then keep the old memory at step 1
                written = [s["inner_loss"], *(s["mlp_" + f] for f in _FIELDS)]
                saved = [x.clone() for x in written]
                keys = _keys_t(s["momentum"], s["prev_grad"], t - 1, beta)
                _closed_form_write(s, keys, grad_hat.reshape(1, -1), group)
                _keep_first_step_(written, saved, t)
            elif t > 1:
                keys = _keys_t(s["momentum"], s["prev_grad"], t - 1, beta)
                _closed_form_write(s, keys, grad_hat.reshape(1, -1), group)
            s["momentum"].lerp_(grad_hat, 1 - beta)
            keys = _keys_t(s["momentum"], grad_hat, t, beta)
            hidden = _tanh(torch.addmm(s["mlp_b1"][:, None], s["mlp_w1"], keys))
            direction = torch.addmm(s["mlp_b2"][:, None], s["mlp_w2"], hidden)
            direction.addmm_(s["mlp_skip"], keys)
            p.add_(direction.view_as(p), alpha=-group["lr"])
            s["prev_grad"].copy_(grad_hat)


def _same_size_and_count(params: list[Tensor], states: list[State]) -> list[list[int]]:
    """Indices grouped by element count, dtype, device and MLP shape, and by step count where
    the host reads it (under ``sync_free`` the counts stay on the device and a batch may mix
    them), in order of first appearance: the tensors one batched step takes together."""
    host = not sync_free.active()

    def key(i: int, p: Tensor, s: State) -> Any:
        flat = all(x.is_contiguous() for x in (p, s["momentum"], s["prev_grad"]))
        size = (p.numel(), p.dtype, p.device, s["mlp_w1"].shape)
        # a tensor that is not contiguous has no flat view to write through: alone
        return (*size, float(s["step"]) if host else None) if flat else i

    keys = (key(i, p, s) for i, (p, s) in enumerate(zip(params, states, strict=True)))
    return list(grouped(keys).values())


def _batched_step(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[State],
    units: list[Tensor],
    scales: list[Tensor],
    group: Group,
) -> None:
    """:meth:`Deep.foreach_step`'s per-tensor step for ``B`` tensors of one size at once:
    keys ``(B, 2, n)``, the MLPs' weights stacked along ``B``, ``bmm`` for ``addmm``. The same
    sums over each tensor's coordinates, so the same numbers to rounding. With the counts on
    the device (``sync_free``) the write always runs and step 1's is undone by a select, as
    in the per-tensor path; corrections are then per tensor, ``(B, 1)``. ``units``, ``scales``:
    each RMS memory in units of its ``scales^2`` (:func:`_in_gradient_units`)."""
    beta = group["beta"]
    ts = [_count(s) for s in states]
    grad_sq = torch.stack(units)
    a = torch.stack(scales)
    root = corrected_root(grad_sq, _corrections(group["rms_beta"], ts, grad_sq))
    scale = root.add_(group["eps"] / a)
    grad_hat = torch.stack([g.reshape(-1) for g in grads]).div_(a[:, None])
    grad_hat.div_(scale[:, None])  # (B, n)
    momentum = [s["momentum"].view(-1) for s in states]
    prev = [s["prev_grad"].view(-1) for s in states]
    mlp = {f: torch.stack([s["mlp_" + f] for s in states]) for f in _FIELDS}
    on_device = isinstance(ts[0], Tensor)
    if on_device or ts[0] > 1:
        before = [ts_ - 1 for ts_ in ts] if on_device else [ts[0] - 1]
        m_hat = torch.stack(momentum) / _rows(_corrections(beta, before, grad_sq))
        keys = torch.stack([m_hat, torch.stack(prev)], 1)
        saved = {f: x.clone() for f, x in mlp.items()} if on_device else {}
        losses = _batched_write(mlp, keys, grad_hat[:, None, :], states, group)
        if on_device:  # step 1 has no context: keep the old memory and inner loss
            first = torch.stack([t <= 1 for t in ts])
            for f, x in mlp.items():
                torch.where(first.view(-1, *[1] * (x.dim() - 1)), saved[f], x, out=x)
            losses = torch.where(first, torch.stack([s["inner_loss"] for s in states]), losses)
        torch._foreach_copy_([s["inner_loss"] for s in states], list(losses.unbind()))
    torch._foreach_lerp_(momentum, list(grad_hat.unbind()), 1 - beta)
    m_hat = torch.stack(momentum) / _rows(_corrections(beta, ts, grad_sq))
    keys = torch.stack([m_hat, grad_hat], 1)  # (B, 2, n)
    hidden = _tanh(torch.baddbmm(mlp["b1"][..., None], mlp["w1"], keys))
    direction = torch.baddbmm(mlp["b2"][..., None], mlp["w2"], hidden)
    direction.baddbmm_(mlp["skip"], keys)
    torch._foreach_add_(
        params, [d.view_as(p) for d, p in zip(direction.unbind(), params, strict=True)],
        alpha=-group["lr"],
    )  # fmt: skip
    torch._foreach_copy_(prev, list(grad_hat.unbind()))
    for f in _FIELDS:
        torch._foreach_copy_([s["mlp_" + f] for s in states], list(mlp[f].unbind()))


def _rows(c: Tensor | float) -> Tensor | float:
    """A per-tensor ``(B,)`` constant as a column, to divide ``(B, n)`` rows; a number as is."""
    return c[:, None] if isinstance(c, Tensor) else c


def _corrections(retention: float, ts: list[Count], like: Tensor) -> Tensor | float:
    """``1 - retention^t``: one number for a batch at one host count, else ``(B,)`` from the
    device counts, cast to ``like``'s dtype as :func:`_correction` casts them (same bits)."""
    if not isinstance(ts[0], Tensor):
        return 1 - retention ** ts[0]
    return torch.stack(counts.like(counts.corrections(retention, ts), [like] * len(ts)))


def _batched_write(
    mlp: dict[str, Tensor], keys: Tensor, values: Tensor, states: list[State], group: Group
) -> Tensor:
    """:func:`_closed_form_write` for a batch (``keys (B, 2, n)``, ``values (B, 1, n)``), on
    the stacked weights ``mlp`` in place; returns each tensor's inner loss (before the write)."""
    hidden = _tanh(torch.baddbmm(mlp["b1"][..., None], mlp["w1"], keys))  # (B, h, n)
    error = torch.baddbmm(mlp["b2"][..., None], mlp["w2"], hidden)
    error = error.baddbmm_(mlp["skip"], keys).sub_(values)  # (B, 1, n)
    d_pre = (hidden * hidden).neg_().add_(1).mul_(mlp["w2"].mT).mul_(error)  # (B, h, n)
    n = keys.shape[-1]
    grads = {
        "w1": d_pre @ keys.mT / n,
        "b1": d_pre.sum(-1) / n,
        "w2": error @ hidden.mT / n,
        "b2": error.sum(-1) / n,
        "skip": error @ keys.mT / n,
    }
    eta = group["inner_lr"] / (keys.pow(2).sum((1, 2)) / n + 1)  # (B,)
    alpha = group["retention"]
    for f in _FIELDS:
        phi = mlp[f]
        if group["retention_target"] == "init":
            anchor = torch.stack([s["mlp0_" + f] for s in states])
            phi.sub_(anchor).mul_(alpha).add_(anchor)
        else:
            phi.mul_(alpha)
        phi.sub_(eta.view(-1, *[1] * (phi.dim() - 1)) * grads[f])
    return 0.5 * error.pow(2).sum((1, 2)) / n


# The fast path keeps coordinates last, ``(2, n)`` keys and ``(h, n)`` hidden units: skinny
# ``(h, 2) @ (2, n)`` products run faster than ``(n, 2) @ (2, h)`` on CPU.
def _keys_t(momentum: Tensor, grad_hat: Tensor, t: Count, beta: float) -> Tensor:
    return torch.stack(
        [momentum.reshape(-1) / _correction(beta, t, momentum), grad_hat.reshape(-1)]
    )


def _tanh(x: Tensor) -> Tensor:
    # tanh(x) = 2 sigmoid(2x) - 1: CPU sigmoid is vectorised, tanh ~2-3x slower here.
    return torch.sigmoid(x * 2).mul_(2).sub_(1)


def _closed_form_write(state: State, keys: Tensor, values: Tensor, group: Group) -> None:
    """One inner step of the tanh MLP on ``1/2 mean (M(u) - v)^2`` by hand-derived backprop.

    ``keys (2, n)``, ``values (1, n)``; the gradients are taken at the pre-write weights.
    """
    w1, b1, w2, b2, skip = (state["mlp_" + f] for f in _FIELDS)
    hidden = _tanh(torch.addmm(b1[:, None], w1, keys))  # (h, n)
    error = torch.addmm(b2[:, None], w2, hidden).addmm_(skip, keys).sub_(values)  # (1, n)
    # d/d pre = w2^T error * tanh'(pre), tanh' = 1 - tanh^2 (the mean's 1/n applied below)
    d_pre = (hidden * hidden).neg_().add_(1).mul_(w2.T).mul_(error)  # (h, n)
    sums = (d_pre @ keys.T, d_pre.sum(1), error @ hidden.T, error.sum(1), error @ keys.T)
    # Every quantity of the write is a sum over the coordinates. FSDP2-sharded, each rank sums
    # its rows and one all-reduce of 4h + 6 floats completes them (identity unsharded).
    counts = torch.stack([keys.new_full((), keys.shape[1]), keys.pow(2).sum(), error.pow(2).sum()])
    total = sharded.all_sum(torch.cat([counts, *(x.reshape(-1) for x in sums)]))
    n, keys_sq, error_sq = total[:3].unbind()
    grads = [
        x.view_as(like) / n
        for x, like in zip(total[3:].split([x.numel() for x in sums]), sums, strict=True)
    ]
    state["inner_loss"].copy_(0.5 * error_sq / n)
    eta = group["inner_lr"] / (keys_sq / n + 1)
    alpha = group["retention"]
    for f, g in zip(_FIELDS, grads, strict=True):
        phi = state["mlp_" + f]
        if group["retention_target"] == "init":
            phi.sub_(state["mlp0_" + f]).mul_(alpha).add_(state["mlp0_" + f])
        else:
            phi.mul_(alpha)
        phi.sub_(eta * g)
