"""Continuum Memory System (Nested Learning): gradient memories at several timescales.

``K`` key-less elementwise Hebbian memories ("levels"). Level ``k`` is written only every
``f_k`` steps, with the mean of the gradients since its last write (``accumulate=True``,
NL's chunked update: nothing between two writes is lost) or with the current gradient alone
(``accumulate=False``):

    value     v_k = (1/f_k) sum_{j=t-f_k+1..t} g_j          (or g_t)
    write     L_k <- alpha_k L_k + eta_k v_k                 when t % f_k == 0   (hebbian)
    second    s <- beta2 s + (1 - beta2) g^2                 every step (normalize=True)
    read      r_k = L_k / c_k   if debias[k],   c_k = eta_k (1 - alpha_k^n_k) / (1 - alpha_k)
              r_k = NS(r_k)     if orthogonalize, for >= 2-D tensors (Newton-Schulz, Muon;
                                ns_coefficients="polar_express": Polar Express)
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

``normalize`` is applied after Newton-Schulz, and it is on by default: ``orthogonalize=True``
alone divides the orthogonalised read (entries ~``1 / sqrt(max(rows, cols))`` whatever the
gradient's scale) by ``sqrt(v_hat)`` (the gradient's scale ``|g|`` per coordinate), so the
step grows as ``lr / |g|`` instead of being scale-free as Muon's and Adam's are (measured in
docs/theory/cms.md: first-step max ``|dW|`` 1.1 at ``|g| ~ 1``, 1e2 at 1e-2, 9e3 at 1e-4 on a
32 x 32 matrix at ``lr = 1e-2``). ``m3_config()`` sets ``normalize=False``.

This file is the preset and its reference step, written from the equations above
(docs/theory/cms.md); ``cms_fast.py`` is the fast path and ``cms_compiled.py`` the
``compile=True`` one, each held equal to it at every step.

References:
    A. Behrouz et al., "Nested Learning: The Illusion of Deep Learning Architectures",
    NeurIPS 2025 (continuum memory system, multi-scale momentum).
    M. Pagliardini, P. Ablin, D. Grangier, "The AdEMAMix Optimizer: Better, Faster, Older",
    2024. docs/theory/cms.md has the derivation.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from assocmem.memory import ElementwiseMemory, hebbian_write, read
from assocmem.optim import fused, validate
from assocmem.optim.newton_schulz import COEFFICIENTS
from assocmem.optim.polar_express import LOWER
from assocmem.optim.reads import adam_denominator, orthogonal_read, second_moment_value
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
    debiased. ``normalize=True`` divides the sum by Adam's ``sqrt(v_hat) + eps`` afterwards:
    the step is then no longer scale-free but ``~ lr / |g|`` per coordinate (docs/theory/cms.md),
    so ``lr`` must follow the gradients' scale.
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


def orthogonalize(update: Tensor, group: Group) -> Tensor:
    """Muon's read ``s NS(u)`` for a >= 2-D tensor (as ``(rows, rest)``), spectral scale ``s``,
    with the group's Newton-Schulz steps and coefficient schedule."""
    ortho, scale = orthogonal_read(
        update,
        steps=group["ns_steps"],
        coefficients=group["ns_coefficients"],
        lower=group["ns_lower"],
    )
    return ortho * scale


def accumulates(group: Group, k: int) -> bool:
    """Whether level ``k`` is written with the mean of the gradients since its last write
    (it keeps an accumulator ``acc{k}``), rather than with ``g_t``."""
    return group["accumulate"] and group["freqs"][k] > 1


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
        "normalize": Hyper(
            True,
            validate.boolean,
            "divide the read by Adam's sqrt(v_hat) + eps (after NS too: the step then ~ lr / |g|)",
        ),
        "beta2": Hyper(0.999, validate.unit_interval, "retention of the second moment"),
        "eps": Hyper(1e-8, validate.non_negative, "added to sqrt(v_hat)"),
        "orthogonalize": Hyper(
            False,
            validate.boolean,
            "Newton-Schulz each level's read (>= 2-D tensors); Muon's scale-free step needs "
            "normalize=False (m3_config)",
        ),
        "ns_steps": Hyper(5, validate.positive_int, "Newton-Schulz iterations"),
        "ns_coefficients": Hyper(
            "jordan", validate.one_of(*COEFFICIENTS), "NS: one quintic repeated, or one per step"
        ),
        "ns_lower": Hyper(
            LOWER, validate.open_unit_interval, "polar_express: smallest relative s.v. lifted"
        ),
    }

    def counts_on_device(self, param: Tensor, group: Group) -> bool:
        # The fast path's per-step constants and write periods come from the counter on the
        # device under sync_free (cms_fast._step_on_device); the reference path reads it.
        return group["foreach"] is not False

    def shards_locally(self, group: Group) -> bool:
        return not group["orthogonalize"]  # elementwise unless Newton-Schulz reads a level

    def check_group(self, group: Group) -> None:
        levels = len(group["alphas"])
        for name in PER_LEVEL:
            value = group[name]
            if value is not None and len(value) != levels:
                raise ValueError(
                    f"invalid {name}: must have one entry per level "
                    f"(len(alphas) = {levels}), got {len(value)}"
                )
        if group["compile"] and group["orthogonalize"]:
            raise ValueError(
                "invalid compile: cms compiles its elementwise configurations only "
                "(orthogonalize=False); Newton-Schulz reads whole matrices"
            )

    def init_state(self, param: Tensor, group: Group) -> State:
        zeros = torch.zeros_like(param, memory_format=torch.preserve_format)
        state: State = {}
        for k in range(len(group["alphas"])):
            state[f"level{k}"] = zeros.clone()
            if accumulates(group, k):
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
            if accumulates(group, k):
                state[f"acc{k}"].add_(grad)
                value = state[f"acc{k}"] / freq
            if t % freq == 0:
                level = hebbian_write(level, None, value, lr=etas[k], retention=alpha)
                state[f"level{k}"].copy_(level.m)
                if accumulates(group, k):
                    state[f"acc{k}"].zero_()
            recalled = read(level)
            if group["debias"][k]:
                recalled = recalled / debias_factor(alpha, etas[k], t // freq)
            if group["orthogonalize"] and param.dim() >= 2:
                recalled = orthogonalize(recalled, group)
            update = update + group["weights"][k] * recalled
        if group["normalize"]:
            beta2 = group["beta2"]
            # the write's rate in its value, (1 - beta2) g^2 taken in torch's order where g^2
            # alone overflows (reads.second_moment_value): s overflows where torch's Adam does
            second = hebbian_write(
                ElementwiseMemory(state["exp_avg_sq"]),
                None,
                second_moment_value(grad, 1 - beta2),
                lr=1.0,
                retention=beta2,
            )
            state["exp_avg_sq"].copy_(second.m)
            update = update / adam_denominator(read(second), beta2, t, group["eps"])
        param.add_(update, alpha=-group["lr"])

    def fuses(self, group: Group) -> bool:
        # One plain level (written every step with g, read as it is) is momentum: its kernel.
        plain = (
            len(group["alphas"]) == 1
            and group["freqs"][0] == 1
            and not group["debias"][0]
            and not group["normalize"]
            and not group["orthogonalize"]
        )
        return plain and fused.momentum_fuses(group, group["alphas"][0])

    def fused_step(
        self,
        params: list[Tensor],
        grads: list[Tensor],
        states: list[State],
        group: Group,
        found_inf: dict[Any, Tensor] | None,
    ) -> None:
        fused.momentum_sgd_(
            params, grads, [s["level0"] for s in states], group, found_inf,
            momentum=group["alphas"][0], write_rate=level_etas(group)[0],
            lr=group["lr"] * group["weights"][0],
        )  # fmt: skip

    def compiled_step(
        self, params: list[Tensor], grads: list[Tensor], states: list[State], group: Group
    ) -> None:
        # The reference's equations fused by torch.compile into one pass per tensor.
        from assocmem.optim.presets.cms_compiled import compiled_step

        compiled_step(params, grads, states, group)

    def foreach_step(
        self, params: list[Tensor], grads: list[Tensor], states: list[State], group: Group
    ) -> None:
        # The fast path builds on this file's equations, so it is imported when first run.
        from assocmem.optim.presets.cms_fast import foreach_step

        foreach_step(params, grads, states, group)
