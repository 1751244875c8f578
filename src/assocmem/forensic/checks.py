"""Argument checks the forensic configs and functions share: a whole number (never a bool) and
a ``(lo, hi)`` range within bounds. One rule each: the configs had their own copies, and one
range check took ``(50.5, 80.5)`` as JPEG qualities that another refused."""

from __future__ import annotations

import numbers

__all__ = ["check_range", "whole_number"]


def whole_number(value: object, least: int) -> bool:
    """Whether ``value`` is an integer (not a bool) of at least ``least``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= least


def check_range(
    name: str,
    value: object,
    low: float,
    high: float,
    *,
    whole: bool = False,
    above_low: bool = False,
) -> None:
    """``value`` is a ``(lo, hi)`` pair with ``low <= lo <= hi <= high`` (``low < lo`` if
    ``above_low``; integers, never bools, if ``whole``), else a ``ValueError`` naming ``name``.

    >>> check_range("quality", (50, 80), 1, 100, whole=True)
    >>> check_range("quality", (50.5, 80), 1, 100, whole=True)
    Traceback (most recent call last):
    ...
    ValueError: quality must be two integers lo <= hi in [1, 100], got (50.5, 80)
    """
    kinds = numbers.Integral if whole else numbers.Real
    ok = (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, kinds) and not isinstance(v, bool) for v in value)
        and low <= value[0] <= value[1] <= high
        and not (above_low and value[0] == low)
    )
    if not ok:
        kind = "integers" if whole else "numbers"
        bounds = f"({low}, {high}]" if above_low else f"[{low}, {high}]"
        raise ValueError(f"{name} must be two {kind} lo <= hi in {bounds}, got {value!r}")
