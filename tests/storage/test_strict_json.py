"""The harness's records are JSON that strict parsers read: no NaN or Infinity tokens."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from assocmem.storage import strict_json


def test_the_strict_reader_refuses_what_python_accepts():
    for token in ("NaN", "Infinity", "-Infinity"):
        assert math.isnan(json.loads(f"[{token}]")[0]) or math.isinf(json.loads(f"[{token}]")[0])
        with pytest.raises(ValueError, match=token):
            strict_json.loads(f'{{"x": [1, {token}]}}')
    assert strict_json.loads('{"x": [1.5, null]}') == {"x": [1.5, None]}


leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(max_size=5),
    st.floats(allow_nan=True, allow_infinity=True),
)  # fmt: skip
records = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=20,
)


def expected(value):
    """What a strict reader must get back: every non-finite float as None, the rest equal."""
    if isinstance(value, dict):
        return {k: expected(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expected(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@given(records)
def test_every_record_parses_strictly_and_keeps_its_finite_values(record):
    # finite floats round-trip exactly (json writes repr, the shortest exact decimal)
    assert strict_json.loads(strict_json.dumps(record)) == expected(record)


def test_numpy_and_torch_scalars_through_default_are_made_finite_or_null():
    record = {
        "auc": np.float32(0.75), "loss": np.float64("inf"), "n": np.int64(3),
        "z": torch.tensor(float("nan")), "w": torch.tensor(0.5),
    }  # fmt: skip
    assert strict_json.loads(strict_json.dumps(record, default=float)) == {
        "auc": 0.75, "loss": None, "n": 3, "z": None, "w": 0.5,
    }  # fmt: skip


def test_an_object_json_does_not_know_still_raises_without_default():
    with pytest.raises(TypeError, match="not JSON serializable"):
        strict_json.dumps({"z": torch.tensor(1.0)})
