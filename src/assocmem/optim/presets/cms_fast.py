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
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from assocmem.optim import fused
from assocmem.optim.blocks import named_blocks, select, split_by_step
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
    for t, index in split_by_step([float(s["step"]) for s in states]).items():
        if group["orthogonalize"]:
            for block in named_blocks(every, index):
                _write_levels(block, int(t), group)
            _read_whole(select(every, index), int(t), group)
        else:
            base = _fused_base(group)
            fused = {i for i in index if _fusable(every, i)} if base is not None else set()
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


def _fusable(every: Buffers, i: int) -> bool:
    """Whether the fused kernel may take tensor ``i``: it indexes raw memory, so the parameter,
    gradient and state must be contiguous, and it is torch's CPU kernel. (Gradient and state
    always share the parameter's dtype and device: torch checks ``.grad``, and
    ``load_state_dict`` casts the state.)"""
    tensors = [every.params[i], every.grads[i], *(level[i] for level in every.levels)]
    tensors += [acc[i] for acc in every.accs if acc is not None]
    tensors += [every.second[i]] if every.second is not None else []
    return every.params[i].is_cpu and all(t.is_contiguous() for t in tensors)


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


def _scales(t: int, group: Group) -> list[float]:
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
    scales = _scales(t, group)
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
    read = [(level, s) for level, s in zip(block.levels, _scales(t, group), strict=True) if s != 0]
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
