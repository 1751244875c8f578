"""Named validators for hyperparameters: each returns an error message or ``None``.

They are declared next to each preset's defaults, so ``MemoryOptimizer`` can reject a bad value
eagerly (in ``__init__``, ``add_param_group`` and ``load_state_dict``, the same checks in all
three) with a ``ValueError`` naming the argument.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import torch

Check = Callable[[Any], "str | None"]


def _is_real(x: Any) -> bool:
    # numbers.Real admits numpy's scalars too (a LambdaLR table of np.float32 puts one in
    # group["lr"], and the checkpoint must load back); a bool is not a hyperparameter value.
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _refusal(need: str, x: Any) -> str:
    """The message for ``x``, which is not ``need``; a tensor is told that only ``lr`` and
    ``betas`` take one (``tensor(0.1)`` "must be >= 0" read as a contradiction)."""
    if isinstance(x, torch.Tensor):
        return f"{need} given as a Python number (only lr and betas may be tensors), got {x!r}"
    return f"{need}, got {x!r}"


def non_negative(x: Any) -> str | None:
    return None if _is_real(x) and x >= 0 else _refusal("must be a finite number >= 0", x)


def learning_rate(x: Any) -> str | None:
    """A finite number ``>= 0``, or a one-element real floating tensor holding one (torch
    accepts a tensor ``lr``; schedulers then update it in place)."""
    if isinstance(x, torch.Tensor):
        if x.numel() != 1 or not x.is_floating_point():
            return f"must be a number or a one-element floating tensor, got {_describe(x)}"
        x = x.item()
    return non_negative(x)


def count(x: Any) -> str | None:
    """A whole number ``>= 0`` (a step or skip counter)."""
    if isinstance(x, torch.Tensor):
        if x.numel() != 1 or x.is_complex() or x.dtype == torch.bool:
            return f"must be a whole number >= 0, got {_describe(x)}"
        x = x.item()
    ok = _is_real(x) and x >= 0 and float(x).is_integer()
    return None if ok else f"must be a whole number >= 0, got {x!r}"


def _describe(t: torch.Tensor) -> str:
    return f"a {t.dtype} tensor of shape {tuple(t.shape)}"


def positive(x: Any) -> str | None:
    return None if _is_real(x) and x > 0 else _refusal("must be a finite number > 0", x)


def unit_interval(x: Any) -> str | None:
    """``0 <= x < 1``: decay rates, where 1 would never forget and never bias-correct."""
    return None if _is_real(x) and 0 <= x < 1 else _refusal("must be in [0, 1)", x)


def open_unit_interval(x: Any) -> str | None:
    """``0 < x < 1``: a fraction that must be neither nothing nor everything."""
    return None if _is_real(x) and 0 < x < 1 else _refusal("must be in (0, 1)", x)


def closed_unit_interval(x: Any) -> str | None:
    return None if _is_real(x) and 0 <= x <= 1 else _refusal("must be in [0, 1]", x)


def positive_int(x: Any) -> str | None:
    ok = isinstance(x, numbers.Integral) and not isinstance(x, bool) and x >= 1
    return None if ok else f"must be an integer >= 1, got {x!r}"


def non_negative_int(x: Any) -> str | None:
    ok = isinstance(x, numbers.Integral) and not isinstance(x, bool) and x >= 0
    return None if ok else f"must be an integer >= 0, got {x!r}"


def boolean(x: Any) -> str | None:
    return None if isinstance(x, bool) else f"must be True or False, got {x!r}"


def one_of(*choices: Any) -> Check:
    def check(x: Any) -> str | None:
        return None if x in choices else f"must be one of {choices}, got {x!r}"

    return check


def pair_of(check: Check) -> Check:
    """A 2-tuple whose entries both pass ``check`` (e.g. Adam's ``betas``)."""

    def check_pair(x: Any) -> str | None:
        if not isinstance(x, (tuple, list)) or len(x) != 2:
            return f"must be a pair, got {x!r}"
        for i, item in enumerate(x):
            if (msg := check(item)) is not None:
                return f"[{i}] {msg}"
        return None

    return check_pair


def sequence_of(check: Check, *, min_len: int = 1) -> Check:
    def check_seq(x: Any) -> str | None:
        if not isinstance(x, (tuple, list)) or len(x) < min_len:
            return f"must be a sequence of at least {min_len} entries, got {x!r}"
        for i, item in enumerate(x):
            if (msg := check(item)) is not None:
                return f"[{i}] {msg}"
        return None

    return check_seq


def real(x: Any) -> str | None:
    """Any finite number (e.g. a read weight, which may be negative)."""
    return None if _is_real(x) else f"must be a finite number, got {x!r}"


def optional(check: Check) -> Check:
    """``None`` or a value passing ``check`` (``None`` means "derive the default")."""

    def check_optional(x: Any) -> str | None:
        return None if x is None else check(x)

    return check_optional
