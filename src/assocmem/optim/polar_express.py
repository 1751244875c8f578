"""Polar Express: a different, optimal quintic for every Newton-Schulz iteration.

Newton-Schulz applies an odd polynomial ``p(s) = a s + b s^3 + c s^5`` to every singular value
(``p(G) = U p(S) V^T``). Keller Jordan's Muon repeats one fixed quintic. Amsel et al. (2025)
instead track the interval ``[l, u]`` the singular values are known to lie in and, at each
iteration, pick the quintic that approximates ``sign`` best on it (minimax: the largest
``|p(s) - 1|`` over ``[l, u]`` as small as possible, found by the Remez exchange algorithm).
Early iterations (tiny ``l``) get steep polynomials that lift small singular values fast
(slope 8.2 at zero for the first one, vs 3.4 for Jordan's); late ones converge toward 1. The
composition is the best any sequence of quintics can do on ``[l0, 1]``: the interval after
``k`` iterations shrinks around 1 faster than a fixed quintic's (docs/results.md,
"Newton-Schulz orthogonality").

Two practical tweaks from the paper, kept here:

- ``cushion``: the first polynomials are optimised on ``[max(l, cushion u), u]`` and then
  rescaled to be centred on ``[l, u]``, which stops their slope from blowing up for tiny ``l``
  (an unbounded slope amplifies rounding);
- ``safety``: every polynomial but the last is divided as ``p(s / (1 + safety)) (1 + safety)``
  would be (``a / f, b / f^3, c / f^5``), and the input is normalised by ``(1 + safety)
  ||G||_F``: rounding that pushes a singular value slightly past the design interval then
  stays inside it instead of being sent far away by a steep polynomial.

:data:`PUBLISHED` is the 5-step table that modded-nanogpt's ``train_gpt.py`` ships (its comment:
"Computed for num_iters=5, safety_factor=2e-2, cushion=2"; the table is what the paper's
generator returns for ``l0 = 1e-3``, ``safety = 2e-2``, ``cushion = 0.02``);
:func:`polar_express_coefficients` is our implementation of that generator (written from the
paper's description), tested to reproduce :data:`PUBLISHED`, so that other step counts and
lower bounds get their own optimal tables.

References:
    N. Amsel, D. Persson, C. Musco, R. M. Gower, "The Polar Express: Optimal Matrix Sign
    Methods and Their Application to the Muon Algorithm", arXiv:2505.16932 (2025);
    github.com/NoahAmsel/PolarExpress; github.com/KellerJordan/modded-nanogpt (train_gpt.py).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

Quintic = tuple[float, float, float]

# The design of PUBLISHED: singular values down to 1e-3 of the (safety-inflated) Frobenius norm
# are lifted in 5 steps.
LOWER = 1e-3
SAFETY = 2e-2
CUSHION = 2e-2

# modded-nanogpt, train_gpt.py (KellerJordan/modded-nanogpt, 2025), per-iteration (a, b, c).
PUBLISHED: tuple[Quintic, ...] = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)


def quintic(coefficients: Quintic, s: float) -> float:
    """``p(s) = a s + b s^3 + c s^5``."""
    a, b, c = coefficients
    return a * s + b * s**3 + c * s**5


def _critical_points(coefficients: Quintic) -> list[float]:
    """The ``s > 0`` with ``p'(s) = a + 3 b s^2 + 5 c s^4 = 0`` (a quadratic in ``s^2``)."""
    a, b, c = coefficients
    if c == 0:
        return [math.sqrt(-a / (3 * b))] if b != 0 and -a / (3 * b) > 0 else []
    disc = 9 * b * b - 20 * a * c
    if disc < 0:
        return []
    roots = ((-3 * b - math.sqrt(disc)) / (10 * c), (-3 * b + math.sqrt(disc)) / (10 * c))
    return sorted(math.sqrt(r) for r in roots if r > 0)


def optimal_quintic(lo: float, hi: float, *, max_iter: int = 100) -> Quintic:
    """The odd quintic minimising ``max |p(s) - 1|`` over ``[lo, hi]`` (``0 <= lo <= hi``).

    Remez exchange: the optimum equioscillates, ``p(s) - 1 = +-E`` with alternating signs at
    ``lo``, its two interior extrema ``q < r`` and ``hi``; solve the 4x4 linear system for
    ``(a, b, c, E)`` at the current points, move ``q, r`` to the new ``p``'s critical points,
    repeat until ``E`` stops changing. For ``lo -> hi`` the answer tends to the classic
    Newton-Schulz quintic ``(15 s - 10 s^3 + 3 s^5) / 8`` (rescaled to ``hi``), used directly
    when the interval is too narrow for the solve to be well conditioned.
    """
    if not 0 <= lo <= hi or hi <= 0:
        raise ValueError(f"need 0 <= lo <= hi, hi > 0; got lo={lo}, hi={hi}")
    if lo / hi >= 1 - 5e-6:
        return 15 / 8 / hi, -10 / 8 / hi**3, 3 / 8 / hi**5
    q, r = (3 * lo + hi) / 4, (lo + 3 * hi) / 4  # exact as lo -> hi
    error, previous = math.inf, None
    for _ in range(max_iter):
        points = (lo, q, r, hi)
        system = torch.tensor(
            [[s, s**3, s**5, (-1.0) ** i] for i, s in enumerate(points)], dtype=torch.float64
        )
        a, b, c, error = torch.linalg.solve(system, torch.ones(4, dtype=torch.float64)).tolist()
        if previous is not None and abs(previous - error) <= 1e-15:
            break
        previous = error
        q, r = _critical_points((a, b, c))
    return a, b, c


@functools.lru_cache(maxsize=64)
def polar_express_coefficients(
    steps: int, lower: float = LOWER, safety: float = SAFETY, cushion: float = CUSHION
) -> tuple[Quintic, ...]:
    """The Polar Express table: one optimal quintic per iteration for singular values in
    ``[lower, 1]`` (relative to the normaliser ``(1 + safety) ||G||_F``).

    Iteration ``k`` takes the interval ``[l, u]`` the previous ones mapped ``[lower, 1]`` into,
    fits :func:`optimal_quintic` on ``[max(l, cushion u), u]``, re-centres it on ``[l, u]``
    (``p(l) + p(u) = 2``), divides it by the safety factor unless it is the last, and maps the
    interval on (``l <- p(l)``, ``u <- 2 - l``: the error equioscillates about 1).

    Example:
        >>> table = polar_express_coefficients(5)
        >>> max(abs(x - y) for p, q in zip(table, PUBLISHED) for x, y in zip(p, q)) < 1e-10
        True
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0 < lower < 1:
        raise ValueError(f"lower must be in (0, 1), got {lower}")
    factor = 1 + safety
    lo, hi = lower, 1.0
    table = []
    for k in range(steps):
        p = optimal_quintic(max(lo, cushion * hi), hi)
        if cushion * hi > lo:
            rescale = 2 / (quintic(p, lo) + quintic(p, hi))
            p = tuple(x * rescale for x in p)
        if k < steps - 1:
            p = (p[0] / factor, p[1] / factor**3, p[2] / factor**5)
        table.append(p)
        lo = quintic(p, lo)
        hi = 2 - lo
    return tuple(table)


def singular_value_band(
    coefficients: Sequence[Quintic], lo: float, hi: float = 1.0
) -> tuple[float, float]:
    """Where the iterations send singular values in ``[lo, hi]``: the exact image of the
    interval under the composed polynomials (in exact arithmetic).

    A continuous map sends an interval to an interval, so the image of a composition is the
    composition of images, and each quintic's image of ``[l, u]`` is spanned by its values at
    ``l``, ``u`` and its critical points inside: no sampling, no slack.

    Example:
        >>> lo, hi = singular_value_band(polar_express_coefficients(5), 1e-3)
        >>> 0.85 < lo < 1 < hi < 1.15
        True
    """
    for p in coefficients:
        inside = [s for s in _critical_points(p) if lo < s < hi]
        values = [quintic(p, s) for s in (lo, hi, *inside)]
        lo, hi = min(values), max(values)
    return lo, hi
