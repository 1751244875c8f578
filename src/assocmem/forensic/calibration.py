"""Calibrated decisions: a threshold chosen on validation reals for a target false-positive rate.

Users act on a decision, not on an AUC. A detector's scores are only comparable to 0.5 if it is
calibrated, which a detector trained on balanced batches of some families is not on photos and
families it has not seen. The deployable rule (as in forensic practice) fixes the rate at which
real photos are flagged: on real images that played no part in training (the validation split's
reals), take the threshold above which at most ``target_fpr`` of them score, then report the test
split's TPR and FPR at that threshold. The FPR on test reals then measures how well the
calibration transfers to photos never seen.

Convention as in ``metrics.py``: higher score = more fake; fake when ``score >= threshold``.
"""

from __future__ import annotations

import numpy as np

from assocmem.forensic.metrics import ArrayLike, _np

__all__ = ["rates_at_threshold", "threshold_at_fpr"]


def threshold_at_fpr(real_scores: ArrayLike, target_fpr: float = 0.05) -> float:
    """The lowest threshold that flags at most ``target_fpr`` of ``real_scores`` as fake.

    With ``k = floor(target_fpr * n)`` false positives allowed, the threshold is the smallest
    float above the ``(k + 1)``-th highest real score, so exactly the ``k`` highest (fewer where
    scores tie) are at or above it: the FPR on the data it was fit on is ``<= target_fpr``, and
    as close to it as the ``n`` scores allow.

    Raises:
        ValueError: ``target_fpr`` outside [0, 1), no scores, or non-finite scores.
    """
    if not 0.0 <= target_fpr < 1.0:
        raise ValueError(f"target_fpr must be in [0, 1), got {target_fpr}")
    s = _np(real_scores)
    if s.size == 0:
        raise ValueError("no real scores to calibrate on")
    if not np.isfinite(s).all():
        raise ValueError("real scores contain NaN or inf")
    k = int(np.floor(target_fpr * s.size))
    highest_first = np.sort(s)[::-1]
    return float(np.nextafter(highest_first[k], np.inf))


def rates_at_threshold(labels: ArrayLike, scores: ArrayLike, threshold: float) -> dict[str, float]:
    """``{"tpr", "fpr"}`` of the decision ``score >= threshold`` (NaN for an absent class)."""
    y, s = _np(labels), _np(scores)
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} vs {s.shape[0]}")
    flagged = s >= threshold
    fake, real = y == 1.0, y == 0.0
    return {
        "tpr": float(flagged[fake].mean()) if fake.any() else float("nan"),
        "fpr": float(flagged[real].mean()) if real.any() else float("nan"),
    }
