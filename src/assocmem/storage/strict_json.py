"""JSON that every parser reads: a number that is not finite is written as ``null``.

Python's ``json`` writes ``NaN``, ``Infinity`` and ``-Infinity`` by default, which RFC 8259 does
not allow: ``jq``, JavaScript's ``JSON.parse``, Go's and Rust's parsers refuse such a file. The
harness's records hold one wherever a run diverged (a loss of ``inf``), a tuning point diverged
(the LR grid) or a metric was undefined, so they are written as ``null``; the records that hold
one also say why in a field a reader checks first (``status``, ``best_lr``, ...). The library's
own JSON files for people and other tools (a checkpoint's ``.json`` sidecar, ``assocmem-detect
--json``) are written the same way.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Callable
from typing import Any


def finite_or_null(value: Any) -> Any:
    """``value`` with every non-finite real number in it (at any depth of dicts, lists and
    tuples) replaced by ``None``; integers, strings and finite numbers are kept as they are."""
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    is_real = isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral)
    if is_real and not math.isfinite(value):
        return None
    return value


def dumps(value: Any, *, default: Callable[[Any], Any] | None = None, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`finite_or_null` of ``value``; what ``default`` makes of an
    object the encoder does not know (a numpy or 0-d torch scalar through ``float``) is made
    finite-or-null too, so a record written after hours of training never fails on a NaN."""
    if default is not None:
        convert = default

        def default(obj: Any) -> Any:
            return finite_or_null(convert(obj))

    return json.dumps(finite_or_null(value), allow_nan=False, default=default, **kwargs)


def loads(text: str | bytes, **kwargs: Any) -> Any:
    """``json.loads`` as RFC 8259 reads JSON: a ``NaN``/``Infinity``/``-Infinity`` token raises
    ``ValueError`` (Python's own reader accepts them, which is how such files go unnoticed).
    ``kwargs`` go to ``json.loads`` (e.g. ``object_pairs_hook=unique_keys``)."""

    def refuse(token: str) -> Any:
        raise ValueError(f"not JSON: the non-standard token {token}")

    return json.loads(text, parse_constant=refuse, **kwargs)


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An ``object_pairs_hook`` for ``json.loads`` that refuses an object naming one key twice
    (Python keeps the last value without a word: a checkpoint header edited by appending a
    second ``"threshold"`` loaded with it)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {key!r} appears twice in one JSON object")
        out[key] = value
    return out
