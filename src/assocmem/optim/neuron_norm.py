"""Per-neuron (per-row) normalisation of an orthogonalised update (NorMuon's second moment).

Newton-Schulz makes the update ``O`` orthogonal as a whole, but its rows (one per output
neuron of a ``(out, in)`` weight) need not move by the same amount: a tall matrix's rows have
norms that vary around ``sqrt(cols / rows)``, and an imperfect iteration leaves each singular
value somewhere in a band. NorMuon (Li et al. 2025) keeps, per row ``i``, a key-less Hebbian
memory of the row's mean square and divides the row by its root, then restores the update's
Frobenius norm, so that only the split of the step between neurons changes, not its size:

    write   v_i <- beta2 v_i + (1 - beta2) mean_j O_ij^2      (retention beta2, rate 1 - beta2)
    read    R_ij = O_ij / sqrt(v_i)
    step    O'  = R ||O||_F / ||R||_F

No bias correction is needed: ``v`` starts at zero, so ``v_i`` is the EMA times the same
``1 - beta2^t`` for every row, and the Frobenius rescale divides any common factor back out.
``v_i >= (1 - beta2) mean_j O_ij^2`` after the write, so ``|R_ij| <= sqrt(cols / (1 - beta2))``
for any row that moves; a row that has never moved (``v_i = 0``, an all-zero row) stays zero.

References:
    Z. Li et al., "NorMuon: Making Muon more efficient and scalable", arXiv:2510.05491 (2025);
    the modded-nanogpt / nanochat NorMuon step (per-row or per-column second moment, then the
    Frobenius rescale).
"""

from __future__ import annotations

import torch
from torch import Tensor

from assocmem.memory import ElementwiseMemory, hebbian_write, read


def row_mean_squares(ortho: Tensor) -> Tensor:
    """``mean_j O_ij^2`` per row ``i`` of ``O`` read as ``(rows, prod(rest))``."""
    return ortho.reshape(ortho.shape[0], -1).square().mean(dim=1)


def _rescaled(ortho: Tensor, v: Tensor) -> Tensor:
    """``R = O / sqrt(v)`` (rows), then ``R ||O||_F / ||R||_F`` (0 where ``O`` is 0)."""
    rows = ortho.reshape(ortho.shape[0], -1)
    # v_i = 0 only for a row that has never moved (then O_i = 0): any positive floor keeps it 0.
    r = rows * v.clamp_min(torch.finfo(v.dtype).tiny).rsqrt().unsqueeze(1)
    old, new = torch.linalg.matrix_norm(rows), torch.linalg.matrix_norm(r)
    factor = torch.where(new > 0, old / new, torch.zeros_like(new))
    return (r * factor).view_as(ortho)


def row_normalized(ortho: Tensor, row_sq: Tensor, *, beta2: float) -> tuple[Tensor, Tensor]:
    """The reference: write ``v`` (a Hebbian memory of the rows' mean squares), then read
    ``O'`` as in the module docstring. Pure: returns ``(O', v_new)``.

    Args:
        ortho: the orthogonalised update ``O`` (``dim >= 2``; rows = first dim).
        row_sq: the memory ``v``, shape ``(rows,)``.
        beta2: its retention.
    """
    memory = hebbian_write(
        ElementwiseMemory(row_sq), None, row_mean_squares(ortho), lr=1 - beta2, retention=beta2
    )
    v = read(memory)
    return _rescaled(ortho, v), v


def foreach_row_normalize_(
    orthos: list[Tensor], row_sqs: list[Tensor], *, beta2: float
) -> list[Tensor]:
    """The fast path of :func:`row_normalized` over many tensors: the memories ``row_sqs`` are
    written in place with foreach passes (the reference's operation order, so the two agree
    to rounding); returns the ``O'``."""
    means = [row_mean_squares(o) for o in orthos]
    torch._foreach_mul_(row_sqs, beta2)
    torch._foreach_add_(row_sqs, means, alpha=1 - beta2)
    return [_rescaled(o, v) for o, v in zip(orthos, row_sqs, strict=True)]
