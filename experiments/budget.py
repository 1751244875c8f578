"""Was the budget long enough? How much the validation loss still fell at the end of a run.

The comparison's target is tuned Adam's final validation loss. If Adam's curve is still falling
when the budget ends, the target is an accident of the budget: a longer run moves it, and an
optimizer that is "faster to the target" may only be faster early. The report therefore states,
per task, how much tuned Adam's validation loss fell over the last ``TAIL`` of its steps and
compares that with the spread of its final loss over the evaluation seeds: a fall within the
seed spread is indistinguishable from noise (flattened), a larger one says the budget is short,
and a rise larger than the spread says the curve turned up (not converged: overfitting or an
unstable lr), so the final loss the target is made of is not the run's best.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

# The last fifth of the budget: long enough to hold several evaluations at the harness's usual
# eval_every (every 10-50 of 100s of steps), short enough to describe the end of the curve.
TAIL = 0.2


def tail_fall(history: Sequence[dict[str, Any]], tail: float = TAIL) -> float | None:
    """How much ``val_loss`` fell over the last ``tail`` of the run's steps (negative: it rose).

    From the last evaluation at or before step ``(1 - tail) x final step`` (so the window is at
    least the tail) to the final one; ``None`` when the run has fewer than two evaluations or a
    non-finite one.

    Raises:
        ValueError: ``tail`` is not in (0, 1].

    Example:
        >>> tail_fall([{"step": 0, "val_loss": 3.0}, {"step": 80, "val_loss": 1.25},
        ...            {"step": 100, "val_loss": 1.0}])
        0.25
    """
    if not (0 < tail <= 1):
        raise ValueError(f"tail must be in (0, 1], got {tail!r}")
    evals = [(r["step"], r["val_loss"]) for r in history if "val_loss" in r]
    if len(evals) < 2 or not all(math.isfinite(v) for _, v in evals):
        return None
    last_step, last = evals[-1]
    start = (1 - tail) * last_step
    before = [v for s, v in evals[:-1] if s <= start]
    if not before:
        return None
    return before[-1] - last


def tail_window(history: Sequence[dict[str, Any]], tail: float = TAIL) -> float | None:
    """The share of the run's steps that :func:`tail_fall` measures over: ``tail`` when an
    evaluation falls on the window's start, more when the evaluations are sparse (evaluations at
    steps 0 and 20 only: the whole run); ``None`` where ``tail_fall`` is.

    >>> tail_window([{"step": 0, "val_loss": 3.0}, {"step": 100, "val_loss": 1.0}])
    1.0
    """
    if tail_fall(history, tail) is None:
        return None
    steps = [r["step"] for r in history if "val_loss" in r]
    start = max(s for s in steps[:-1] if s <= (1 - tail) * steps[-1])
    return 1.0 - start / steps[-1] if steps[-1] else 1.0


def budget_verdict(falls: Sequence[float], finals: Sequence[float], window: float = TAIL) -> str:
    """One sentence: the mean tail fall against the seed spread (std) of the final loss.
    ``window``: the widest share of the steps the falls were measured over
    (:func:`tail_window`); the sentence names it, and says so where it is wider than the tail
    (it read "the last 20 %" of a run whose only evaluations were its first and last)."""
    if not falls:
        return "has no evaluation curve to judge the budget by"
    fall = statistics.mean(falls)
    over = f"the last {window:.0%} of its steps" + (
        f" (its evaluations are too sparse for the last {TAIL:.0%})" if window > TAIL + 1e-9 else ""
    )
    text = f"fell {fall:.3g} over {over} (mean over {len(falls)} seeds)"
    if len(finals) < 2:
        return text + "; one seed, so no spread to compare it with"
    spread = statistics.stdev(finals)
    if fall < -spread:  # not flattened either: the curve turned up (the sign was ignored)
        return (
            f"rose {-fall:.3g} over {over} (mean over {len(falls)} "
            f"seeds), more than the seed spread of its final loss ({spread:.3g}): not converged "
            "(rising at the end: overfitting or an unstable lr), the target is not its best loss"
        )
    if fall <= spread:
        return text + f", within the seed spread of its final loss ({spread:.3g}): flattened"
    return text + (
        f", more than the seed spread of its final loss ({spread:.3g}): still falling, a "
        "longer budget would move the target"
    )
