"""The fast path of ``cms`` (:mod:`assocmem.optim.presets.cms` has the equations).

The same writes and read as the reference, over every tensor of a group at once, on
cache-sized blocks (:mod:`assocmem.optim.blocks`), with three savings the tests hold equal to
the reference at every step:

- a level whose write scale is ``1 - alpha`` is written with one ``lerp`` instead of two passes;
- the read ``sum_k (w_k / c_k) L_k`` factors out its first nonzero scale, folded into the step
  size (so a single plain level is read in place: one level is ``momentum``'s bits);
- with Adam's denominator and an Adam-like level, torch's fused Adam kernel writes that level
  and the second moment and takes the step in one pass, the other levels riding along in it.

Newton-Schulz needs whole matrices, so ``orthogonalize=True`` writes in blocks and reads per
tensor.

Under :func:`assocmem.optim.sync_free.active` the step count is not read on the host
(:func:`_step_on_device`): a level written every ``f > 1`` steps computes its write every step
and keeps it where ``t % f == 0`` (a select on the device), and every per-step constant (debias
factors, read ratios, Adam's ``sqrt(1 - beta2^t)``, the fused kernel's step size) is a 0-d
tensor computed from the counter by the host's float64 operations
(:mod:`assocmem.optim.counts`), entering each pass where the host passes a Python number: the
same passes, the same roundings.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from assocmem.optim import counts, fused, sync_free
from assocmem.optim.blocks import indexed_named_blocks, named_blocks, select, split_by_step
from assocmem.optim.presets.cms import accumulates, debias_factor, level_etas, orthogonalize
from assocmem.optim.registry import Group, State


class Buffers(NamedTuple):
    """Every tensor a step touches, one list per kind (one entry per parameter)."""

    params: list[Tensor]
    grads: list[Tensor]
    levels: tuple[list[Tensor], ...]  # levels[k]: the memory L_k
    accs: tuple[list[Tensor] | None, ...]  # accs[k]: gradients since L_k's last write, or None
    second: list[Tensor] | None  # Adam's second moment s, when normalize


def buffers(
    params: list[Tensor], grads: list[Tensor], states: list[State], group: Group
) -> Buffers:
    levels = range(len(group["alphas"]))
    return Buffers(
        params,
        grads,
        tuple([s[f"level{k}"] for s in states] for k in levels),
        tuple([s[f"acc{k}"] for s in states] if accumulates(group, k) else None for k in levels),
        [s["exp_avg_sq"] for s in states] if group["normalize"] else None,
    )


def foreach_step(
    params: list[Tensor], grads: list[Tensor], states: list[State], group: Group
) -> None:
    """One ``cms`` step of every tensor of the group, in place."""
    every = buffers(params, grads, states, group)
    if sync_free.active():
        _step_on_device(every, states, group)
        return
    for t, index in split_by_step([float(s["step"]) for s in states]).items():
        if group["orthogonalize"]:
            for block in named_blocks(every, index):
                _write_levels(block, int(t), group)
            _read_whole(select(every, index), int(t), group)
        else:
            base = _fused_base(group)
            fused = set(_fusable(every, index)) if base is not None else set()
            step = states[index[0]]["step"]  # = t; the fused kernel reads it from a tensor
            for block in named_blocks(every, [i for i in index if i in fused]):
                _fused_step(block, int(t), group, base, step)
            for block in named_blocks(every, [i for i in index if i not in fused]):
                _write_levels(block, int(t), group)
                _read_block(block, int(t), group)


def _fused_base(group: Group) -> int | None:
    """The level torch's fused Adam kernel can write and read together with ``v``, if any.

    It must be an Adam first moment: written every step as ``lerp(L, g, 1 - alpha)``, read
    with a nonzero weight through Adam's denominator (``normalize``, no Newton-Schulz), and
    keep some of its past (``alpha > 0``) so that it can carry the other levels' reads.
    """
    if not group["normalize"] or group["orthogonalize"]:
        return None
    levels = zip(group["alphas"], group["freqs"], level_etas(group), group["weights"], strict=True)
    for k, (alpha, freq, eta, weight) in enumerate(levels):
        if freq == 1 and eta == 1 - alpha and weight != 0 and alpha > 0:
            return k
    return None


def _fusable(every: Buffers, index: list[int]) -> list[int]:
    """The tensors of ``index`` the fused kernel may take (:func:`fused.fusable_indices`: the
    parameter, gradient and state contiguous), on the CPU only: the fused path is written for
    torch's CPU kernel."""
    kinds = [every.grads, *every.levels, *(acc for acc in every.accs if acc is not None)]
    kinds += [every.second] if every.second is not None else []
    params = [every.params[i] for i in index]
    taken = fused.fusable_indices(params, [[kind[i] for i in index] for kind in kinds])
    return [index[j] for j in taken if params[j].is_cpu]


def _write_levels(block: Buffers, t: int, group: Group, fused: int | None = None) -> None:
    """Every level due at step ``t`` takes its write; accumulators collect ``g``.

    ``fused`` names the level that torch's fused Adam kernel writes (with the second
    moment), so both are left to it.
    """
    grads = block.grads
    for k, (alpha, freq, eta) in enumerate(
        zip(group["alphas"], group["freqs"], level_etas(group), strict=True)
    ):
        level, value, scale = block.levels[k], grads, eta
        if block.accs[k] is not None:
            value = block.accs[k]
            torch._foreach_add_(value, grads)
            scale = eta / freq
        if t % freq or k == fused:
            continue
        if scale == 1 - alpha:
            torch._foreach_lerp_(level, value, scale)  # one pass instead of two
        else:
            torch._foreach_mul_(level, alpha)
            torch._foreach_add_(level, value, alpha=scale)
        if value is not grads:
            torch._foreach_zero_(value)
    if block.second is not None and fused is None:
        beta2 = group["beta2"]
        torch._foreach_mul_(block.second, beta2)
        torch._foreach_addcmul_(block.second, grads, grads, 1 - beta2)


def _debias(t: int, group: Group) -> list[float]:
    """Each level's debias factor ``c_k`` at step ``t`` (1 where debias is off)."""
    return [
        debias_factor(alpha, eta, t // freq) if debias else 1.0
        for alpha, freq, eta, debias in zip(
            group["alphas"], group["freqs"], level_etas(group), group["debias"], strict=True
        )
    ]


def level_read_scales(t: int, group: Group) -> list[float]:
    """Each level's read scale ``w_k / c_k`` at step ``t``."""
    return [w / c for w, c in zip(group["weights"], _debias(t, group), strict=True)]


def _fused_step(block: Buffers, t: int, group: Group, base: int, step: Tensor) -> None:
    """One step in which torch's fused Adam kernel writes the ``base`` level and takes the step.

    The base level is an EMA written every step, ``L_b <- alpha L_b + (1 - alpha) g``, read
    through Adam's denominator: with the second moment, that is one Adam step with
    ``beta1 = alpha``, which the kernel does in one pass over memory instead of five. The
    other levels ride along: for the kernel's step to be the whole read
    ``s_b (L_b + sum_k r_k L_k)`` (``r_k = s_k / s_b``), ``L_b`` holds
    ``L_b + sum_k (r_k / alpha) L_k`` going in, which the kernel's write turns into
    ``L_b' + sum_k r_k L_k``; subtracting ``r_k L_k`` afterwards leaves ``L_b'`` to float
    rounding (an error the size of the rounding of the read itself). Two passes per
    other level instead of the three passes of a separate read.
    """
    _write_levels(block, t, group, fused=base)
    scales = level_read_scales(t, group)
    alpha = group["alphas"][base]
    carried = block.levels[base]
    rest = [
        (level, s / scales[base])
        for k, (level, s) in enumerate(zip(block.levels, scales, strict=True))
        if k != base and s != 0
    ]
    for level, ratio in rest:
        torch._foreach_add_(carried, level, alpha=ratio / alpha)
    fused.adam_(
        False, block.params, block.grads, carried, block.second, [],
        [step] * len(block.params),
        # the kernel divides by its bias correction 1 - alpha^t: multiply it back
        lr=group["lr"] * scales[base] * (1 - alpha**t),
        beta1=alpha, beta2=group["beta2"], weight_decay=0.0, eps=group["eps"],
        amsgrad=False, maximize=False,
    )  # fmt: skip
    for level, ratio in rest:
        torch._foreach_add_(carried, level, alpha=-ratio)


def _apply(
    params: list[Tensor], updates: list[Tensor], scale: float,
    second: list[Tensor] | None, t: int, group: Group,
) -> None:  # fmt: skip
    """``W -= lr * scale * u``, through Adam's denominator (``second``) when ``normalize``.

    ``u / (sqrt(v / bc2) + eps) == sqrt(bc2) u / (sqrt(v) + eps sqrt(bc2))``: the right
    side saves a pass over ``v`` (as torch's capturable Adam does).
    """
    if second is None:
        torch._foreach_add_(params, updates, alpha=-group["lr"] * scale)
        return
    bc2_sqrt = math.sqrt(1 - group["beta2"] ** t)
    denom = torch._foreach_sqrt(second)
    torch._foreach_add_(denom, group["eps"] * bc2_sqrt)
    torch._foreach_addcdiv_(params, updates, denom, -group["lr"] * bc2_sqrt * scale)


def _read_block(block: Buffers, t: int, group: Group) -> None:
    """``u = sum_k (w_k / c_k) L_k``, written as ``s_b (L_b + sum_k (s_k / s_b) L_k)``.

    Factoring out the first nonzero scale ``s_b`` folds it into the step size: one pass
    fewer, and a single level is read in place (so one plain level is ``momentum``'s bits).
    """
    read = [
        (level, s)
        for level, s in zip(block.levels, level_read_scales(t, group), strict=True)
        if s != 0
    ]
    if not read:
        return
    (updates, s_base), rest = read[0], read[1:]
    for i, (level, s) in enumerate(rest):
        if i == 0:  # the first sum allocates; the base level itself is never written
            updates = torch._foreach_add(updates, level, alpha=s / s_base)
        else:
            torch._foreach_add_(updates, level, alpha=s / s_base)
    _apply(block.params, updates, s_base, block.second, t, group)


def _read_whole(whole: Buffers, t: int, group: Group) -> None:
    """The read of whole tensors, for Newton-Schulz (``s NS(L_k / c_k)`` for matrices)."""
    updates = [torch.zeros_like(p) for p in whole.params]
    for level, weight, debias in zip(
        whole.levels, group["weights"], _debias(t, group), strict=True
    ):
        # Newton-Schulz of the debiased read, then the weight (which may be negative).
        reads = [
            weight * orthogonalize(m / debias, group) if m.dim() >= 2 else m * (weight / debias)
            for m in level
        ]
        torch._foreach_add_(updates, reads)
    _apply(whole.params, updates, 1.0, whole.second, t, group)


# --- sync_free: the same step with the count kept on the device -------------------------------
# Per-tensor lists of 0-d tensors stand where the host path has one Python float per step
# count. Each is computed in float64 by the host's operations (assocmem.optim.counts) and cast
# to the parameter's dtype where it meets a tensor, as a Python float is. ``add(x, y,
# alpha=a)`` becomes ``addcmul(x, y, a)`` and ``addcdiv(p, u, d, value=v)`` becomes
# ``addcdiv(p, v u, d)``: the same roundings (the first fused, the second ``(v u) / d`` both
# ways; tested to the bit against the host path). On CUDA torch divides by a Python number as a
# multiplication by its reciprocal, by a tensor truly: there the Newton-Schulz input
# ``L / c`` of a debiased level may differ from the host path's by an ulp.

Scales = list[Tensor]  # one 0-d tensor per parameter


def _step_on_device(every: Buffers, states: list[State], group: Group) -> None:
    """:func:`foreach_step` without reading the step counts on the host."""
    t = counts.as_counts([s["step"] for s in states])
    due = [counts.due(t, freq) if freq > 1 else None for freq in group["freqs"]]
    debias = _device_debias(t, group)

    def at(values: list[Tensor] | None, index: list[int]) -> list[Tensor] | None:
        return None if values is None else [values[i] for i in index]

    if group["orthogonalize"]:
        for index, block in indexed_named_blocks(every):
            _write_levels_on_device(block, [at(d, index) for d in due], group)
        _read_whole_on_device(every, t, debias, group)
        return
    scales = [counts.quotients(w, c) for w, c in zip(group["weights"], debias, strict=True)]
    base = _fused_base(group)
    everything = range(len(every.params))
    fused_index = _fusable(every, list(everything)) if base is not None else []
    for index, block in indexed_named_blocks(every, fused_index):
        _write_levels_on_device(block, [at(d, index) for d in due], group, fused=base)
        _fused_step_on_device(
            block, [at(s, index) for s in scales], [states[i]["step"] for i in index],
            [t[i] for i in index], group, base,
        )  # fmt: skip
    for index, block in indexed_named_blocks(
        every, [i for i in everything if i not in fused_index]
    ):
        _write_levels_on_device(block, [at(d, index) for d in due], group)
        _read_block_on_device(block, [at(s, index) for s in scales], [t[i] for i in index], group)


def _device_debias(t: list[Tensor], group: Group) -> list[Scales]:
    """Each level's ``c_k`` per tensor (:func:`debias_factor` as tensor ops): ``(1 -
    alpha^n) (eta / (1 - alpha))`` with ``n = t // f``, and 1 where ``n = 0``, where debias is
    off or ``eta = 0``."""
    out = []
    for alpha, freq, eta, debias in zip(
        group["alphas"], group["freqs"], level_etas(group), group["debias"], strict=True
    ):
        if not debias or eta == 0:
            out.append([torch.ones_like(c) for c in t])
            continue
        writes = counts.floor_divide(t, freq)
        corr = torch._foreach_mul(counts.corrections(alpha, writes), eta / (1 - alpha))
        out.append(
            [torch.where(n == 0, torch.ones_like(c), c) for n, c in zip(writes, corr, strict=True)]
        )
    return out


def _ratios(
    numerators: Scales, denominators: Scales, like: list[Tensor], *,
    divisor: float | None = None, negate: bool = False,
) -> Scales:  # fmt: skip
    """``n / d`` per tensor (then ``/ divisor``, or negated, as the host's ``ratio / alpha``
    and ``-ratio``), cast to each tensor's dtype: the host's ``alpha=`` argument."""
    out = torch._foreach_div(list(numerators), list(denominators))
    if divisor is not None:
        torch._foreach_div_(out, divisor)
    if negate:
        torch._foreach_neg_(out)
    return counts.like(out, like)


def _write_levels_on_device(
    block: Buffers, due: list[list[Tensor] | None], group: Group, fused: int | None = None
) -> None:
    """:func:`_write_levels` with a level of period ``f > 1`` written where ``t % f == 0``:
    the write computed out of place, then selected (its bits where due, the old level
    elsewhere), and its accumulator emptied there. Levels written every step (``due`` None)
    take the host's passes."""
    grads = block.grads
    for k, (alpha, freq, eta) in enumerate(
        zip(group["alphas"], group["freqs"], level_etas(group), strict=True)
    ):
        level, value, scale = block.levels[k], grads, eta
        if block.accs[k] is not None:
            value = block.accs[k]
            torch._foreach_add_(value, grads)
            scale = eta / freq
        if k == fused:
            continue
        mask = due[k]
        if scale == 1 - alpha:
            written = torch._foreach_lerp(level, value, scale) if mask else level
            if not mask:
                torch._foreach_lerp_(level, value, scale)
        else:
            written = torch._foreach_mul(level, alpha) if mask else level
            if not mask:
                torch._foreach_mul_(level, alpha)
            torch._foreach_add_(written, value, alpha=scale)
        if mask:
            for m, new, d in zip(level, written, mask, strict=True):
                torch.where(d, new, m, out=m)
        if value is not grads:
            if mask:
                for acc, d in zip(value, mask, strict=True):
                    acc.masked_fill_(d, 0.0)
            else:
                torch._foreach_zero_(value)
    if block.second is not None and fused is None:
        beta2 = group["beta2"]
        torch._foreach_mul_(block.second, beta2)
        torch._foreach_addcmul_(block.second, grads, grads, 1 - beta2)


def _read_block_on_device(
    block: Buffers, scales: list[Scales], t: list[Tensor], group: Group
) -> None:
    """:func:`_read_block` with per-tensor scales. A level is read where its weight is
    nonzero: ``w_k / c_k`` is zero exactly when ``w_k`` is (``c_k`` is finite and nonzero)."""
    read = [
        (level, s)
        for level, s, w in zip(block.levels, scales, group["weights"], strict=True)
        if w != 0
    ]
    if not read:
        return
    (updates, s_base), rest = read[0], read[1:]
    for i, (level, s) in enumerate(rest):
        ratio = _ratios(s, s_base, level)
        if i == 0:  # the first sum allocates; the base level itself is never written
            updates = torch._foreach_addcmul(updates, level, ratio)
        else:
            torch._foreach_addcmul_(updates, level, ratio)
    _apply_on_device(block.params, updates, s_base, block.second, t, group)


def _apply_on_device(
    params: list[Tensor], updates: list[Tensor], scale: Scales,
    second: list[Tensor] | None, t: list[Tensor], group: Group,
) -> None:  # fmt: skip
    """:func:`_apply` with a per-tensor ``scale`` and ``sqrt(1 - beta2^t)``."""
    lr = group["lr"]
    if second is None:
        steps = counts.like(torch._foreach_mul(list(scale), -lr), params)
        torch._foreach_addcmul_(params, updates, steps)
        return
    bc2_sqrt = torch._foreach_sqrt(counts.corrections(group["beta2"], t))
    denom = torch._foreach_sqrt(second)
    torch._foreach_add_(denom, counts.like(torch._foreach_mul(bc2_sqrt, group["eps"]), params))
    value = torch._foreach_mul(torch._foreach_mul(bc2_sqrt, -lr), list(scale))
    scaled = torch._foreach_mul(updates, counts.like(value, params))
    torch._foreach_addcdiv_(params, scaled, denom)


def _fused_step_on_device(
    block: Buffers, scales: list[Scales], steps: list[Tensor], t: list[Tensor],
    group: Group, base: int,
) -> None:  # fmt: skip
    """:func:`_fused_step` with per-tensor constants: the kernel once per tensor, its step
    size a float64 tensor (which the kernel takes as the host's Python float). CPU only, as
    the kernel."""
    alpha = group["alphas"][base]
    carried = block.levels[base]
    s_base = scales[base]
    rest = [
        (level, s)
        for k, (level, s, w) in enumerate(zip(block.levels, scales, group["weights"], strict=True))
        if k != base and w != 0
    ]
    for level, s in rest:
        torch._foreach_addcmul_(carried, level, _ratios(s, s_base, level, divisor=alpha))
    lrs = torch._foreach_mul(list(s_base), group["lr"])
    torch._foreach_mul_(lrs, counts.corrections(alpha, t))
    assert block.second is not None  # a fused base needs normalize
    for j in range(len(block.params)):
        fused.adam_(
            False, [block.params[j]], [block.grads[j]], [carried[j]], [block.second[j]], [],
            [steps[j]], lr=lrs[j], beta1=alpha, beta2=group["beta2"], weight_decay=0.0,
            eps=group["eps"], amsgrad=False, maximize=False,
        )  # fmt: skip
    for level, s in rest:
        torch._foreach_addcmul_(carried, level, _ratios(s, s_base, level, negate=True))


def _read_whole_on_device(
    whole: Buffers, t: list[Tensor], debias: list[Scales], group: Group
) -> None:
    """:func:`_read_whole` with per-tensor debias factors."""
    updates = [torch.zeros_like(p) for p in whole.params]
    for level, weight, c in zip(whole.levels, group["weights"], debias, strict=True):
        divisors = counts.like(c, level)
        factors = counts.like(counts.quotients(weight, c), level)
        reads = [
            weight * orthogonalize(m / ci, group) if m.dim() >= 2 else m * wc
            for m, ci, wc in zip(level, divisors, factors, strict=True)
        ]
        torch._foreach_add_(updates, reads)
    ones = [torch.ones_like(x) for x in t]
    _apply_on_device(whole.params, updates, ones, whole.second, t, group)
