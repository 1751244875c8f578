"""Newton-Schulz orthogonalisation: the read map ``sigma`` of the ``muon`` preset.

For ``G = U S V^T`` the "zeroth power" is ``U V^T``: every singular value set to one, the
nearest semi-orthogonal matrix to ``G`` (the steepest-descent direction under the spectral
norm, Bernstein & Newhouse 2024). Computing it with an SVD is slow; an odd polynomial
``p(X) = a X + b (X X^T) X + c (X X^T)^2 X`` acts on the singular values only
(``p(G) = U p(S) V^T``), so iterating it pushes them all toward one with matmuls alone.

Two coefficient schedules (``coefficients=``): ``"jordan"`` repeats Keller Jordan's quintic;
``"polar_express"`` uses a different, optimal quintic at every iteration
(:mod:`assocmem.optim.polar_express`), which reaches a tighter band around 1 in fewer steps.

Shapes legend: ``... r c`` a batch of ``r x c`` matrices.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from assocmem.optim import polar_express

# Keller Jordan's quintic coefficients (Muon, 2024). The scalar map acting on each singular
# value is
#   p(s) = a s + b s^3 + c s^5.
# ``a = 3.4445`` is the slope at zero: a large slope inflates small singular values fast, which
# is what a cheap 5-step iteration needs after Frobenius normalisation (all s in (0, 1]); after
# 5 steps anything above ~1% of ||G||_F (a^5 ~ 480) has been lifted. ``b, c`` were tuned so
# that p does not converge to one but maps the band [0.68, 1.2] into itself (p(1) = 0.701,
# max p = 1.20 at s = 0.55): the singular values end up roughly in [0.68, 1.2] instead of at 1.
# A map with p(1) = 1, p'(1) = 0 converges but needs many more steps from small s; the band
# is harmless for training (the direction U V^T is what matters) and buys speed.
NS_COEFFS = (3.4445, -4.7750, 2.0315)

COEFFICIENTS = ("jordan", "polar_express")


def schedule(
    coefficients: str, steps: int, lower: float = polar_express.LOWER
) -> tuple[tuple[polar_express.Quintic, ...], float]:
    """The per-iteration quintics and the normaliser's factor ``f`` (``X0 = G / (f ||G||_F)``).

    ``"jordan"``: :data:`NS_COEFFS` ``steps`` times, ``f = 1``. ``"polar_express"``: the optimal
    table for ``steps`` iterations and singular values down to ``lower`` (relative to
    ``f ||G||_F``), ``f = 1 + safety``
    (:func:`assocmem.optim.polar_express.polar_express_coefficients`).
    """
    if coefficients == "jordan":
        return (NS_COEFFS,) * steps, 1.0
    if coefficients == "polar_express":
        return polar_express.polar_express_coefficients(steps, lower), 1 + polar_express.SAFETY
    raise ValueError(f"coefficients must be one of {COEFFICIENTS}, got {coefficients!r}")


def zeropower_via_newtonschulz5(
    G: Tensor,
    steps: int = 5,
    eps: float = 1e-7,
    *,
    coefficients: str = "jordan",
    lower: float = polar_express.LOWER,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Approximately orthogonalise ``G`` (``U S V^T -> U S' V^T`` with ``S' ~ 1``).

    ``X <- a X + (b A + c A^2) X`` with ``A = X X^T``, started from
    ``X = G / (f ||G||_F + eps)`` (``f = 1``, or ``1 + safety`` for ``"polar_express"``) so that
    every singular value is at most one (the region where the quintics are designed to work).
    Computed in fp32 for lower-precision inputs (bf16 is slow on CPU and the iteration
    amplifies rounding) and in fp64 for fp64 inputs, so that float64 tests check the algorithm
    rather than fp32 rounding; the result is cast back to ``G.dtype``. Tall matrices are
    transposed so that ``A`` is the smaller Gram matrix (``min(r, c)`` squared).

    Args:
        G: a matrix ``(r, c)`` or a batch ``(..., r, c)``; leading dims are independent.
        steps: number of quintic iterations (5 puts singular values above ~1% of ``||G||_F``
            into about [0.68, 1.2]).
        eps: guards the normalisation of an all-zero ``G`` (which maps to zero).
        coefficients: ``"jordan"`` (one quintic repeated) or ``"polar_express"`` (an optimal
            quintic per iteration: 5 steps put singular values above ~1e-3 of ``||G||_F`` into
            about [0.86, 1.14]); :func:`schedule`.
        lower: the smallest relative singular value the ``"polar_express"`` table is designed
            to lift (with fewer steps a larger ``lower`` gives a much tighter band above it).
        dtype: the dtype the iterations run in; ``None``: ``G``'s promoted to at least fp32
            (above). ``torch.bfloat16`` is what Keller Jordan's Muon and ``torch.optim.Muon``
            do: on an accelerator several times faster, on a CPU far slower.

    Returns:
        a tensor of ``G``'s shape and dtype with singular values close to one.

    Example:
        >>> import torch
        >>> O = zeropower_via_newtonschulz5(torch.randn(4, 6))
        >>> s = torch.linalg.svdvals(O)
        >>> bool(((s > 0.5) & (s < 1.5)).all())
        True

    References:
        K. Jordan et al., "Muon: An optimizer for hidden layers in neural networks" (2024).
        J. Bernstein, L. Newhouse, "Old optimizer, new norm: an anthology" (2024).
    """
    if G.dim() < 2:
        raise ValueError(f"G must have at least 2 dims, got shape {tuple(G.shape)}")
    quintics, factor = schedule(coefficients, steps, lower)
    X = G.to(torch.promote_types(G.dtype, torch.float32) if dtype is None else dtype)
    transposed = X.size(-2) > X.size(-1)
    if transposed:
        X = X.mT
    X = _in_range(X)
    norm = torch.linalg.matrix_norm(X, keepdim=True)
    # factor 1 (jordan) skips the multiply, so the default stays bit-identical to before
    X = X / ((norm if factor == 1.0 else norm * factor) + eps)
    for a, b, c in quintics:
        A = X @ X.mT
        if X.dtype == torch.bfloat16 and X.dim() in (2, 3):
            # torch.optim.Muon's form: each line one fused product, one bf16 rounding
            mm = torch.addmm if X.dim() == 2 else torch.baddbmm
            B = mm(A, A, A, beta=b, alpha=c)
            X = mm(X, B, X, beta=a)
            continue
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    if transposed:
        X = X.mT
    return X.to(G.dtype)


def _in_range(X: Tensor) -> Tensor:
    """``X`` scaled so that its Frobenius norm cannot overflow; the map is scale-free, so the
    result is the same up to ``eps``'s share. A sum of squares overflows from entries near
    ``sqrt(max / n)`` (1.8e19 / sqrt(n) in float32): its norm was inf and the step 0, or NaN
    where an entry was itself inf (a momentum read ``g + beta m`` past float32's range). So
    infinities are read as the largest float, and where the largest entry could overflow the
    sum the matrix is divided by it first. Elsewhere ``X`` itself (its bits): two selects and
    a maximum, cheap beside the iteration's matrix products."""
    if X.numel() == 0:
        return X
    top_float = torch.finfo(X.dtype).max
    X = X.clamp(-top_float, top_float)
    top = X.abs().amax(dim=(-2, -1), keepdim=True)
    bound = math.sqrt(top_float / (2 * X.size(-2) * X.size(-1)))
    return X / torch.where(top > bound, top, 1.0)
