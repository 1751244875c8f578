"""The validation split in place of the test split: a third set of photos for held-out families.

The zero-shot protocol scores held-out families only on the test split, so their fakes of the
validation photos exist in every built benchmark and no zero-shot study has read them: no early
stop, threshold, prior or choice of recipe (those use the validation reals against the *seen*
families' fakes). Only the ceiling study's networks, trained on all eight families,
early-stopped on them, and nothing in the recipe was chosen from those runs. The detector
studies chose their recipe with the test split's numbers in view, and the fresh photos
(``fresh.py``) then scored lower; the validation photos are a third set on which the held-out
families' AUC was never looked at, to tell those two readings apart (docs/results.md,
``detector-prior-validation``).

They are not a clean test split, and nothing may be claimed on them: the members were
early-stopped on these reals and every threshold is set on them (the false-positive rate
scored on them is the calibration's own, ~5 % by construction), so their real side is if
anything optimistic.

:func:`with_validation_test` returns the benchmark with its ``test`` split replaced by the
validation split (the same arrays), ``meta["test_photos"] = "validation"``.
"""

from __future__ import annotations

from assocmem.forensic.data.splits import ForensicBenchmark

__all__ = ["with_validation_test"]


def with_validation_test(bench: ForensicBenchmark) -> ForensicBenchmark:
    """``bench`` with its ``test`` split replaced by its validation split (the same arrays:
    the source names and every other split unchanged) and ``meta["test_photos"]`` set to
    ``"validation"``, which ``crops.PhotoCrops`` follows for the test split's photos."""
    if bench.meta.get("test_photos", "benchmark") != "benchmark":
        raise ValueError(
            f"the test split is already replaced ({bench.meta['test_photos']!r} photos)"
        )
    return bench.with_test(bench.splits["val"], "validation")
