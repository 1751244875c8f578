"""Continuum Memory System (Nested Learning): gradient memories at several timescales.

``K`` key-less elementwise Hebbian memories ("levels"). Level ``k`` is written only every
``f_k`` steps, with the mean of the gradients since its last write (``accumulate=True``,
NL's chunked update: nothing between two writes is lost) or with the current gradient alone
(``accumulate=False``):

    value     v_k = (1/f_k) sum_{j=t-f_k+1..t} g_j          (or g_t)
    write     L_k <- alpha_k L_k + eta_k v_k                 when t % f_k == 0   (hebbian)
    second    s <- beta2 s + (1 - beta2) g^2                 every step (normalize=True)
    read      r_k = L_k / c_k   if debias[k],   c_k = eta_k (1 - alpha_k^n_k) / (1 - alpha_k)
              r_k = NS(r_k)     if orthogonalize, for >= 2-D tensors (Newton-Schulz, Muon)
              u   = sum_k w_k r_k
              u   = u / (sqrt(s / (1 - beta2^t)) + eps)       if normalize
    step      W <- W - lr * u

``t`` is the tensor's step count and ``n_k = floor(t / f_k)`` the number of writes level ``k``
has had. ``c_k`` is the total weight the writes gave a constant value, so a debiased level
reads a constant gradient back as itself; for the usual ``eta_k = 1 - alpha_k`` it is Adam's
``1 - alpha_k^n_k``. Every level is a separate memory with its own retention: a slow, rarely
written level keeps the gradient's long-horizon mean that a fast one forgets.

Configurations (helpers below return the hyperparameters as a dict):

- ``adam``: one level, ``f = 1``, ``debias=(True,)``, ``normalize=True``.
- ``momentum``: one level, ``eta = 1``, no debias, no normalisation.
- AdEMAMix (Pagliardini et al. 2024) = :func:`ademamix_config`: a fast bias-corrected EMA
  (``beta1``) plus ``alpha`` times a slow, not bias-corrected EMA (``beta3 = 0.9999``), over
  Adam's second moment. The paper's warmup schedules for ``alpha`` and ``beta3`` are not built
  in (set them per step through ``group["weights"]``/``group["alphas"]`` if needed).
- M3-like multi-scale Muon = :func:`m3_config`: a fast momentum written every step and a slow one
  written every ``freq`` steps with the chunk's gradients, each orthogonalised, summed.

The Newton-Schulz output is scaled by ``sqrt(max(1, rows / cols))`` as in Muon; conv weights
are orthogonalised as ``(out, in * kh * kw)`` matrices; 1-D and 0-D tensors are not
orthogonalised (as in Muon; pair them with ``normalize=True`` or give them another group).

References:
    A. Behrouz et al., "Nested Learning: The Illusion of Deep Learning Architectures",
    NeurIPS 2025 (continuum memory system, multi-scale momentum).
    M. Pagliardini, P. Ablin, D. Grangier, "The AdEMAMix Optimizer: Better, Faster, Older",
    2024. docs/theory/cms.md has the derivation.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from assocmem.memory import ElementwiseMemory, hebbian_write, read
from assocmem.optim import validate
from assocmem.optim.blocks import blocks, split_by_step
from assocmem.optim.newton_schulz import zeropower_via_newtonschulz5
from assocmem.optim.registry import Group, Hyper, Preset, State, register

PER_LEVEL = ("freqs", "etas", "weights", "debias")


def ademamix_config(
    beta1: float = 0.9,
    beta2: float = 0.999,
    beta3: float = 0.9999,
    alpha: float = 5.0,
    eps: float = 1e-8,
) -> dict[str, Any]:
    """Hyperparameters making ``cms`` AdEMAMix (without its alpha/beta3 warmup).

    ``u = (m1 / (1 - beta1^t) + alpha m2) / (sqrt(v / (1 - beta2^t)) + eps)`` with
    ``m1, m2`` EMAs of ``g`` at ``beta1, beta3`` and ``v`` the EMA of ``g^2`` at ``beta2``.

    Example:
        >>> import torch
        >>> from assocmem import MemoryOptimizer
        >>> w = torch.nn.Parameter(torch.ones(3))
        >>> opt = MemoryOptimizer([w], "cms", lr=1e-3, **ademamix_config(alpha=8.0))
    """
    return {
        "alphas": (beta1, beta3),
        "freqs": (1, 1),
        "etas": (1 - beta1, 1 - beta3),
        "weights": (1.0, alpha),
        "debias": (True, False),
        "normalize": True,
        "beta2": beta2,
        "eps": eps,
        "orthogonalize": False,
    }


def m3_config(
    beta1: float = 0.95,
    beta3: float = 0.9,
    alpha: float = 0.5,
    freq: int = 10,
    normalize: bool = False,
) -> dict[str, Any]:
    """Hyperparameters making ``cms`` a two-scale orthogonalised momentum (M3-like).

    ``u = NS(M1) + alpha NS(M2)`` with ``M1 <- beta1 M1 + g`` every step and
    ``M2 <- beta3 M2 + mean(g over the last freq steps)`` every ``freq`` steps. The scale of
    each level is irrelevant after Newton-Schulz, so levels are written with ``eta = 1`` and not
    debiased. ``normalize=True`` divides the sum by Adam's ``sqrt(v_hat) + eps`` afterwards.
    """
    return {
        "alphas": (beta1, beta3),
        "freqs": (1, freq),
        "etas": (1.0, 1.0),
        "weights": (1.0, alpha),
        "debias": (False, False),
        "normalize": normalize,
        "orthogonalize": True,
        "accumulate": True,
    }


def level_etas(group: Group) -> tuple[float, ...]:
    """Write rates per level: ``etas`` or, when it is ``None``, ``1 - alpha_k``."""
    if group["etas"] is None:
        return tuple(1 - a for a in group["alphas"])
    return tuple(group["etas"])


def debias_factor(alpha: float, eta: float, writes: int) -> float:
    """``c = eta (1 - alpha^n) / (1 - alpha)``: the weight ``n`` writes gave a constant value.

    1 when the level is still empty (``n = 0``) or never written (``eta = 0``): nothing to undo.
    """
    if writes == 0 or eta == 0:
        return 1.0
    return (1 - alpha**writes) * (eta / (1 - alpha))


def orthogonalize(update: Tensor, steps: int) -> Tensor:
    """Muon's read ``sigma(u)`` for a >= 2-D tensor (as ``(rows, rest)``), scaled like Muon."""
    matrix = update.reshape(update.shape[0], -1)
    scale = math.sqrt(max(1.0, matrix.shape[0] / matrix.shape[1]))
    return (zeropower_via_newtonschulz5(matrix, steps=steps) * scale).reshape(update.shape)


def _second_moment(lists: list[list[Tensor]], group: Group) -> list[Tensor]:
    """The ``exp_avg_sq`` list (last in the step's lists) when ``normalize``, else none."""
    return lists[-1] if group["normalize"] else []


def _uses_acc(group: Group, k: int) -> bool:
    return group["accumulate"] and group["freqs"][k] > 1


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


def _fusable(lists: list[list[Tensor]], i: int) -> bool:
    """Whether the fused kernel may take tensor ``i``: it indexes raw memory, so the parameter,
    gradient and state must be contiguous, and it is torch's CPU kernel. (Gradient and state
    always share the parameter's dtype and device: torch checks ``.grad``, and
    ``load_state_dict`` casts the state.)"""
    return lists[0][i].is_cpu and all(tensors[i].is_contiguous() for tensors in lists)


@register
class CMS(Preset):
    name = "cms"
    non_negative_state = ("exp_avg_sq",)
    hyper = {
        "alphas": Hyper(
            (0.9, 0.9), validate.sequence_of(validate.unit_interval), "retention per level"
        ),
        "freqs": Hyper(
            (1, 10), validate.sequence_of(validate.positive_int), "write period per level"
        ),
        "etas": Hyper(
            None,
            validate.optional(validate.sequence_of(validate.non_negative)),
            "write rate per level (None: 1 - alpha_k)",
        ),
        "weights": Hyper((0.5, 0.5), validate.sequence_of(validate.real), "read weight per level"),
        "debias": Hyper(
            (True, True), validate.sequence_of(validate.boolean), "bias-correct level k's read"
        ),
        "accumulate": Hyper(
            True, validate.boolean, "write the mean gradient since the last write (else g_t)"
        ),
        "normalize": Hyper(True, validate.boolean, "divide the read by Adam's sqrt(v_hat) + eps"),
        "beta2": Hyper(0.999, validate.unit_interval, "retention of the second moment"),
        "eps": Hyper(1e-8, validate.non_negative, "added to sqrt(v_hat)"),
        "orthogonalize": Hyper(
            False, validate.boolean, "Newton-Schulz each level's read (>= 2-D tensors)"
        ),
        "ns_steps": Hyper(5, validate.positive_int, "Newton-Schulz iterations"),
    }

    def check_group(self, group: Group) -> None:
        levels = len(group["alphas"])
        for name in PER_LEVEL:
            value = group[name]
            if value is not None and len(value) != levels:
                raise ValueError(
                    f"invalid {name}: must have one entry per level "
                    f"(len(alphas) = {levels}), got {len(value)}"
                )

    def init_state(self, param: Tensor, group: Group) -> State:
        zeros = torch.zeros_like(param, memory_format=torch.preserve_format)
        state: State = {}
        for k in range(len(group["alphas"])):
            state[f"level{k}"] = zeros.clone()
            if _uses_acc(group, k):
                state[f"acc{k}"] = zeros.clone()
        if group["normalize"]:
            state["exp_avg_sq"] = zeros.clone()
        return state

    def reference_step(self, param: Tensor, grad: Tensor, state: State, group: Group) -> None:
        t = int(state["step"])
        etas = level_etas(group)
        update = torch.zeros_like(param)
        for k, (alpha, freq) in enumerate(zip(group["alphas"], group["freqs"], strict=True)):
            level = ElementwiseMemory(state[f"level{k}"])
            value = grad
            if _uses_acc(group, k):
                state[f"acc{k}"].add_(grad)
                value = state[f"acc{k}"] / freq
            if t % freq == 0:
                level = hebbian_write(level, None, value, lr=etas[k], retention=alpha)
                state[f"level{k}"].copy_(level.m)
                if _uses_acc(group, k):
                    state[f"acc{k}"].zero_()
            recalled = read(level)
            if group["debias"][k]:
                recalled = recalled / debias_factor(alpha, etas[k], t // freq)
            if group["orthogonalize"] and param.dim() >= 2:
                recalled = orthogonalize(recalled, group["ns_steps"])
            update = update + group["weights"][k] * recalled
        if group["normalize"]:
            beta2 = group["beta2"]
            second = hebbian_write(
                ElementwiseMemory(state["exp_avg_sq"]),
                None,
                grad * grad,
                lr=1 - beta2,
                retention=beta2,
            )
            state["exp_avg_sq"].copy_(second.m)
            update = update / ((read(second) / (1 - beta2**t)).sqrt() + group["eps"])
        param.add_(update, alpha=-group["lr"])

    def foreach_step(
        self, params: list[Tensor], grads: list[Tensor], states: list[State], group: Group
    ) -> None:
        levels = range(len(group["alphas"]))
        acc_levels = [k for k in levels if _uses_acc(group, k)]
        lists = [params, grads]
        lists += [[s[f"level{k}"] for s in states] for k in levels]
        lists += [[s[f"acc{k}"] for s in states] for k in acc_levels]
        if group["normalize"]:
            lists.append([s["exp_avg_sq"] for s in states])
        for t, index in split_by_step([float(s["step"]) for s in states]).items():
            if group["orthogonalize"]:
                # Newton-Schulz needs whole matrices: write in blocks, read per tensor.
                for block in blocks(lists, index):
                    self._write_levels(block, int(t), group)
                self._read_whole(lists, index, int(t), group)
            else:
                base = _fused_base(group)
                fused = {i for i in index if _fusable(lists, i)} if base is not None else set()
                step = states[index[0]]["step"]  # = t; the fused kernel reads it from a tensor
                for block in blocks(lists, [i for i in index if i in fused]):
                    self._fused_step(block, int(t), group, base, step)
                for block in blocks(lists, [i for i in index if i not in fused]):
                    self._write_levels(block, int(t), group)
                    self._read_block(block, int(t), group)

    def _write_levels(
        self, block: list[list[Tensor]], t: int, group: Group, fused: int | None = None
    ) -> None:
        """Every level due at step ``t`` takes its write; accumulators collect ``g``.

        ``fused`` names the level that torch's fused Adam kernel writes (with the second
        moment), so both are left to it.
        """
        K = len(group["alphas"])
        grads, levels = block[1], block[2 : 2 + K]
        accs = iter(block[2 + K :])
        for k, (alpha, freq, eta) in enumerate(
            zip(group["alphas"], group["freqs"], level_etas(group), strict=True)
        ):
            value, scale = grads, eta
            if _uses_acc(group, k):
                value = next(accs)
                torch._foreach_add_(value, grads)
                scale = eta / freq
            if t % freq or k == fused:
                continue
            if scale == 1 - alpha:
                torch._foreach_lerp_(levels[k], value, scale)  # one pass instead of two
            else:
                torch._foreach_mul_(levels[k], alpha)
                torch._foreach_add_(levels[k], value, alpha=scale)
            if value is not grads:
                torch._foreach_zero_(value)
        if group["normalize"] and fused is None:
            beta2 = group["beta2"]
            second = _second_moment(block, group)
            torch._foreach_mul_(second, beta2)
            torch._foreach_addcmul_(second, grads, grads, 1 - beta2)

    def _debias(self, t: int, group: Group) -> list[float]:
        """Each level's debias factor ``c_k`` at step ``t`` (1 where debias is off)."""
        return [
            debias_factor(alpha, eta, t // freq) if debias else 1.0
            for alpha, freq, eta, debias in zip(
                group["alphas"], group["freqs"], level_etas(group), group["debias"], strict=True
            )
        ]

    def _scales(self, t: int, group: Group) -> list[float]:
        """Each level's read scale ``w_k / c_k`` at step ``t``."""
        return [w / c for w, c in zip(group["weights"], self._debias(t, group), strict=True)]

    def _fused_step(
        self, block: list[list[Tensor]], t: int, group: Group, base: int, step: Tensor
    ) -> None:
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
        self._write_levels(block, t, group, fused=base)
        params, grads = block[0], block[1]
        levels = block[2 : 2 + len(group["alphas"])]
        scales = self._scales(t, group)
        alpha = group["alphas"][base]
        rest = [
            (level, s / scales[base])
            for k, (level, s) in enumerate(zip(levels, scales, strict=True))
            if k != base and s != 0
        ]
        for level, ratio in rest:
            torch._foreach_add_(levels[base], level, alpha=ratio / alpha)
        torch._fused_adam_(
            params, grads, levels[base], _second_moment(block, group), [],
            [step] * len(params),
            # the kernel divides by its bias correction 1 - alpha^t: multiply it back
            lr=group["lr"] * scales[base] * (1 - alpha**t),
            beta1=alpha, beta2=group["beta2"], weight_decay=0.0, eps=group["eps"],
            amsgrad=False, maximize=False,
        )  # fmt: skip
        for level, ratio in rest:
            torch._foreach_add_(levels[base], level, alpha=-ratio)

    def _apply(
        self, params: list[Tensor], updates: list[Tensor], scale: float,
        second: list[Tensor], t: int, group: Group,
    ) -> None:  # fmt: skip
        """``W -= lr * scale * u``, through Adam's denominator (``second``) when ``normalize``.

        ``u / (sqrt(v / bc2) + eps) == sqrt(bc2) u / (sqrt(v) + eps sqrt(bc2))``: the right
        side saves a pass over ``v`` (as torch's capturable Adam does).
        """
        if not group["normalize"]:
            torch._foreach_add_(params, updates, alpha=-group["lr"] * scale)
            return
        bc2_sqrt = math.sqrt(1 - group["beta2"] ** t)
        denom = torch._foreach_sqrt(second)
        torch._foreach_add_(denom, group["eps"] * bc2_sqrt)
        torch._foreach_addcdiv_(params, updates, denom, -group["lr"] * bc2_sqrt * scale)

    def _read_block(self, block: list[list[Tensor]], t: int, group: Group) -> None:
        """``u = sum_k (w_k / c_k) L_k``, written as ``s_b (L_b + sum_k (s_k / s_b) L_k)``.

        Factoring out the first nonzero scale ``s_b`` folds it into the step size: one pass
        fewer, and a single level is read in place (so one plain level is ``momentum``'s bits).
        """
        levels = block[2 : 2 + len(group["alphas"])]
        read = [
            (level, s) for level, s in zip(levels, self._scales(t, group), strict=True) if s != 0
        ]
        if not read:
            return
        (updates, s_base), rest = read[0], read[1:]
        for i, (level, s) in enumerate(rest):
            if i == 0:  # the first sum allocates; the base level itself is never written
                updates = torch._foreach_add(updates, level, alpha=s / s_base)
            else:
                torch._foreach_add_(updates, level, alpha=s / s_base)
        self._apply(block[0], updates, s_base, _second_moment(block, group), t, group)

    def _read_whole(
        self, lists: list[list[Tensor]], index: list[int], t: int, group: Group
    ) -> None:
        whole = [[tensors[i] for i in index] for tensors in lists]
        levels = whole[2 : 2 + len(group["alphas"])]
        updates = [torch.zeros_like(p) for p in whole[0]]
        for level, weight, debias in zip(
            levels, group["weights"], self._debias(t, group), strict=True
        ):
            # Newton-Schulz of the debiased read, then the weight (which may be negative).
            reads = [
                weight * orthogonalize(m / debias, group["ns_steps"])
                if m.dim() >= 2
                else m * (weight / debias)
                for m in level
            ]
            torch._foreach_add_(updates, reads)
        self._apply(whole[0], updates, 1.0, _second_moment(whole, group), t, group)
