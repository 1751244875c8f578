"""The LR grid's extension rule: an optimum on the grid's edge is not an optimum.

A best final loss at the smallest (largest) learning rate tried says only that a smaller
(larger) one may be better still. The comparison then runs one more tuning run beyond that
edge, one grid step further (the ratio of the two outermost factors on that side, so a
geometric grid stays geometric), and repeats while the best is on an edge, at most
``max_extensions`` times. The rule and its bound are the same for every optimizer, so every
optimizer gets the same extra budget; a best that is still on an edge after the last extension
is reported as such.

Diverged runs count as an infinite loss. When every run diverged, the only way out is down:
the grid is extended on the low side.
"""

from __future__ import annotations

import math
from collections.abc import Mapping


def best_factor(results: Mapping[float, float]) -> float | None:
    """The factor with the lowest finite loss (ties: the smaller factor); ``None`` if none."""
    finite = sorted((loss, factor) for factor, loss in results.items() if math.isfinite(loss))
    return finite[0][1] if finite else None


def edge_side(results: Mapping[float, float]) -> str | None:
    """``"low"``/``"high"`` when the best factor is the smallest/largest one tried (``"low"``
    when every run diverged), else ``None``."""
    if not results:
        raise ValueError("no tuning results")
    best = best_factor(results)
    factors = sorted(results)
    if best is None or (best == factors[0] and len(factors) > 1):
        return "low"
    if best == factors[-1]:
        return "high"
    return None


def next_factor(
    results: Mapping[float, float], extensions_done: int, max_extensions: int
) -> float | None:
    """The factor to try next under the extension rule, or ``None`` to stop.

    Args:
        results: factor (of the optimizer's default lr) -> final validation loss on the tuning
            seed, ``inf`` (or NaN) for a diverged run; the grid and every extension so far.
        extensions_done: extensions already run for this optimizer and task.
        max_extensions: the bound, the same for every optimizer.

    Raises:
        ValueError: fewer than two factors while an extension is allowed (a one-point grid has
            no spacing to repeat), a factor that is not a finite number > 0, or a negative
            count.

    Example:
        >>> next_factor({0.1: 3.0, 0.3: 2.0, 1.0: 1.0}, 0, 2)  # best at the high edge
        3.333...
        >>> next_factor({0.1: 3.0, 0.3: 1.0, 1.0: 2.0}, 0, 2) is None  # interior: done
        True
    """
    if extensions_done < 0 or max_extensions < 0:
        raise ValueError(
            f"extension counts must be >= 0, got {extensions_done} done of {max_extensions}"
        )
    factors = sorted(results)
    if any(not (math.isfinite(f) and f > 0) for f in factors):
        raise ValueError(f"LR factors must be finite numbers > 0, got {factors}")
    if extensions_done >= max_extensions:
        return None  # a one-point grid with no extension allowed ends here (nothing to extend)
    if len(factors) < 2:
        raise ValueError(f"the LR grid needs at least two factors to extend, got {factors}")
    side = edge_side(results)
    if side == "low":
        return factors[0] * (factors[0] / factors[1])
    if side == "high":
        return factors[-1] * (factors[-1] / factors[-2])
    return None
