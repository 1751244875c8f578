"""Reads that several presets share, as pure functions (the equation is in each docstring).

- momentum read (``momentum``, ``muon``): ``u = m`` or, Nesterov, ``u = g + beta m``;
- orthogonalised read (``muon``, ``cms``): ``u = s O`` with ``O = NS(m)`` and ``s`` its scale;
- Adam's denominator (``adam``, ``cms``, the learned memory's features): the bias-corrected
  second moment ``v_hat = v / (1 - beta2^t)`` under ``sqrt(v_hat) + eps``, and the value
  ``(1 - beta2) g^2`` that second moment is written with.

The memories they read are written with :mod:`assocmem.memory` (momentum is a key-less
Hebbian write, ``m <- beta m + g``). Fast paths write the same equations as foreach passes;
where a preset must match torch to the bit (``adam``) or fuses the bias correction into its
step size (``cms``), it keeps its own pass order, and tests hold it equal to these references.
"""

from __future__ import annotations

import torch
from torch import Tensor

from assocmem.memory import ElementwiseMemory, read
from assocmem.optim.indices import grouped
from assocmem.optim.newton_schulz import zeropower_via_newtonschulz5
from assocmem.optim.polar_express import LOWER

SCALES = ("spectral", "rms")


def momentum_read(
    memory: ElementwiseMemory, grad: Tensor, *, beta: float, nesterov: bool
) -> Tensor:
    """``u = g + beta m`` (Nesterov: the read looks one write ahead) or ``u = m``.

    Args:
        memory: the momentum ``m`` *after* this step's write ``m <- beta m + g``.
        grad: this step's gradient ``g``.
        beta: the momentum's retention.
        nesterov: read ``g + beta m`` instead of ``m``.
    """
    m = read(memory)
    return grad + beta * m if nesterov else m


def foreach_momentum_(
    buffers: list[Tensor], grads: list[Tensor], *, beta: float, nesterov: bool,
    saturate: bool = False,
) -> list[Tensor]:  # fmt: skip
    """The fast path of ``m <- beta m + g`` (in place on ``buffers``) then :func:`momentum_read`.

    torch's ``SGD(momentum=beta)`` operation order, so ``momentum`` equals it to the bit.
    Returns the reads (the buffers themselves when not Nesterov). ``saturate``: the written
    buffers are clamped into the dtype's finite range before the read
    (:func:`saturate_`).
    """
    torch._foreach_mul_(buffers, beta)
    torch._foreach_add_(buffers, grads)
    if saturate:
        saturate_(buffers)
    return torch._foreach_add(grads, buffers, alpha=beta) if nesterov else buffers


def saturate_(buffers: list[Tensor]) -> list[Tensor]:
    """Each buffer clamped into its dtype's finite range, in place: a sum ``beta m + g`` that
    settles near ``g / (1 - beta)`` overflows for gradients 1 / (1 - beta) below the largest
    float; held at the top of the range, the memory stays finite (a checkpoint of it loads)
    and decays from there. Its bits elsewhere."""
    for top in {torch.finfo(b.dtype).max for b in buffers}:
        same = [b for b in buffers if torch.finfo(b.dtype).max == top]
        torch._foreach_clamp_max_(same, top)
        torch._foreach_clamp_min_(same, -top)
    return buffers


def as_matrix(t: Tensor) -> Tensor:
    """``(out, *rest)`` viewed as ``(out, prod(rest))``: conv kernels become matrices."""
    return t.reshape(t.shape[0], -1)


def spectral_scale(rows: int, cols: int, scale: str = "spectral") -> float:
    """The multiplier ``s`` of the orthogonalised read of a ``rows x cols`` matrix.

    - ``"spectral"`` (Keller Jordan's Muon): ``s = max(1, rows / cols) ** 0.5``, so the update's
      spectral norm per unit input RMS is the same for tall and wide layers;
    - ``"rms"`` (Moonshot's Muon, Liu et al. 2025): ``s = 0.2 sqrt(max(rows, cols))``, which gives
      the update the RMS (~0.2) of a typical AdamW update.
    """
    if scale == "spectral":
        return max(1.0, rows / cols) ** 0.5
    return 0.2 * max(rows, cols) ** 0.5


def orthogonal_read(
    update: Tensor,
    *,
    steps: int,
    scale: str = "spectral",
    coefficients: str = "jordan",
    lower: float = LOWER,
    dtype: torch.dtype | None = None,
) -> tuple[Tensor, float]:
    """``u = s O`` with ``O = NS(m) ~ U V^T`` for ``m = U S V^T`` read as ``(rows, cols)``.

    Every singular direction of ``m`` moves by the same amount: the steepest-descent direction
    under the spectral norm (Bernstein & Newhouse 2024), computed by ``steps`` Newton-Schulz
    iterations (:func:`assocmem.optim.newton_schulz.zeropower_via_newtonschulz5`).

    Args:
        update: the tensor ``m`` to orthogonalise (``dim >= 2``; conv kernels as matrices).
        steps: Newton-Schulz iterations.
        scale: :func:`spectral_scale`'s rule.
        coefficients, lower: the Newton-Schulz schedule
            (:func:`assocmem.optim.newton_schulz.schedule`).
        dtype: the dtype Newton-Schulz runs in (``None``: at least fp32; ``torch.bfloat16``).

    Returns:
        ``(O, s)``: ``O`` shaped like ``update`` and the scale ``s``, apart, so that a caller can
        fold ``s`` into its step size (muon) or its level weight (cms).
    """
    rows, cols = as_matrix(update).shape
    ortho = zeropower_via_newtonschulz5(
        as_matrix(update), steps=steps, coefficients=coefficients, lower=lower, dtype=dtype
    )
    return ortho.view_as(update), spectral_scale(rows, cols, scale)


def orthogonal_reads(
    updates: list[Tensor],
    *,
    steps: int,
    scale: str = "spectral",
    coefficients: str = "jordan",
    lower: float = LOWER,
    dtype: torch.dtype | None = None,
) -> list[tuple[list[int], list[Tensor], float]]:
    """:func:`orthogonal_read` of many tensors, one batched Newton-Schulz per matrix shape.

    Stacking the matrices of one shape turns many small matmuls into one ``bmm``. Returns, per
    shape, ``(indices into updates, their O, s)``.
    """
    by_shape = grouped(tuple(as_matrix(u).shape) for u in updates)
    reads = []
    for (rows, cols), index in by_shape.items():
        stacked = torch.stack([as_matrix(updates[i]) for i in index])
        ortho = zeropower_via_newtonschulz5(
            stacked, steps=steps, coefficients=coefficients, lower=lower, dtype=dtype
        )
        pieces = [o.view_as(updates[i]) for o, i in zip(ortho.unbind(0), index, strict=True)]
        reads.append((index, pieces, spectral_scale(rows, cols, scale)))
    return reads


def bias_corrected(memory: Tensor, retention: float, t: float | Tensor) -> Tensor:
    """``x_hat = x / (1 - alpha^t)``: an EMA ``x <- alpha x + (1 - alpha) y`` started at zero,
    after ``t`` writes, with the weight it has not yet given its values divided back out.

    ``t`` is a Python number, or a 0-d float64 tensor (a step count kept on the device,
    :mod:`assocmem.optim.counts`): then ``1 - alpha^t`` is computed as the host computes it
    and cast to the memory's dtype, as the host's float is, so both give the same bits.
    """
    correction = 1 - retention**t
    if isinstance(correction, Tensor):
        correction = correction.to(memory.dtype)
    return memory / correction


def second_moment_value(grad: Tensor, rate: float) -> Tensor:
    """``rate g^2``: the value Adam's second moment ``v <- beta2 v + (1 - beta2) g^2`` is
    written with (``rate = 1 - beta2``, the write then at rate 1).

    The order of the products matters at the top of the range. ``rate (g g)`` squares first,
    and ``g g`` overflows from ``|g| = sqrt(max)`` (1.8e19 in float32); torch's Adam kernels
    (for-loop, foreach, fused: the fast paths) scale first, ``(rate g) g``, finite up to
    ``|g| = sqrt(max / rate)`` (5.8e20 at ``beta2 = 0.999``). An infinite ``v`` stops its
    coordinate for good (``m / inf = 0``). So where ``g g`` overflows the value is taken in
    torch's order, which overflows exactly where torch's does; elsewhere it is ``rate (g g)``,
    the bits the references have always had (torch's order would round a third of the entries
    differently, by an ulp).
    """
    square = grad * grad
    return torch.where(torch.isinf(square), (grad * rate).mul_(grad), square.mul_(rate))


def adam_denominator(second_moment: Tensor, beta2: float, t: float | Tensor, eps: float) -> Tensor:
    """``sqrt(v_hat) + eps`` with ``v_hat = v / (1 - beta2^t)``: Adam's per-coordinate scale.

    ``v <- beta2 v + (1 - beta2) g^2`` is a key-less Hebbian memory of the squared gradient;
    dividing a read by this makes it invariant to the gradient's scale per coordinate.

    ``v / (1 - beta2^t)`` overflows where a finite ``v`` is within a factor ``1 - beta2^t``
    of the largest float (a gradient above ~1e19 in float32 in the first steps), while its
    root does not: there the root is taken first, ``sqrt(v) / sqrt(1 - beta2^t)``, as torch's
    Adam kernels take it; elsewhere ``sqrt(v_hat)``, the equation's order and bits.
    """
    correction = 1 - beta2**t  # as bias_corrected takes it
    if isinstance(correction, Tensor):
        correction = correction.to(second_moment.dtype)
    return corrected_root(second_moment, correction).add_(eps)


def corrected_root(memory: Tensor, correction: float | Tensor) -> Tensor:
    """``sqrt(memory / correction)`` (a bias-corrected second moment's root: Adam's ``v``,
    ``deep``'s ``r``). The quotient overflows where a finite ``memory`` is within a factor
    ``correction`` of the largest float while its root does not: there the root is taken
    first, ``sqrt(memory) / sqrt(correction)``; elsewhere the equation's order and bits
    (where ``memory`` is infinite itself, both are)."""
    root = (memory / correction).sqrt()
    return torch.where(torch.isinf(root), memory.sqrt() / correction**0.5, root)
