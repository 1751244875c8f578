"""Calibrated decisions: a threshold chosen on validation reals for a target false-positive rate.

Users act on a decision, not on an AUC. A detector's scores are only comparable to 0.5 if it is
calibrated, which a detector trained on balanced batches of some families is not on photos and
families it has not seen. The deployable rule (as in forensic practice) fixes the rate at which
real photos are flagged: on real images that played no part in training (the validation split's
reals), take the threshold above which at most ``target_fpr`` of them score, then report the test
split's TPR and FPR at that threshold. The FPR on test reals then measures how well the
calibration transfers to photos never seen.

A threshold answers "fake or not"; a user reading one image's score also asks "how sure". The
raw logit does not say: a detector trained on balanced batches with a margin (the one-class head,
``models.one_class``) puts its logits on no probability scale at all. :func:`platt_scaling`
maps scores to ``P(fake)`` by Platt's method, a logistic regression of the label on the score fit
on the same held-apart validation patches (reals and the seen families' fakes, the two classes
weighted equally): a probability *at even odds, for fakes like the seen families*. It is
monotone, so it never changes a ranking (AUC) or the decision at a threshold.

Convention as in ``metrics.py``: higher score = more fake; fake when ``score >= threshold``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from assocmem.forensic.metrics import ArrayLike, _np

__all__ = [
    "ProbabilityScaling",
    "allowed_false_positives",
    "platt_scaling",
    "probability_losses",
    "rates_at_threshold",
    "size_thresholds",
    "threshold_allowing",
    "threshold_at_fpr",
]


def allowed_false_positives(target_fpr: float, n: int) -> int:
    """``floor(target_fpr * n)``, the false positives a rate allows among ``n`` reals, with the
    product's rounding forgiven: in binary ``0.29 * 100`` is ``28.999999999999996``, which
    allowed 28 of 100 (and ``1/49 * 49`` allowed none). Products within 2^-50 (relative) below
    an integer count as it, a few units in the last place of the float64 product; at most
    ``n - 1`` for a rate below 1."""
    return min(math.floor(float(target_fpr) * n * (1.0 + 2.0**-50)), n - 1)


def threshold_at_fpr(real_scores: ArrayLike, target_fpr: float = 0.05) -> float:
    """The lowest threshold that flags at most ``target_fpr`` of ``real_scores`` as fake.

    With ``k = floor(target_fpr * n)`` false positives allowed (:func:`allowed_false_positives`),
    the threshold is the smallest float above the ``(k + 1)``-th highest real score, so exactly
    the ``k`` highest (fewer where scores tie) are at or above it: the FPR on the data it was
    fit on is ``<= target_fpr``, and as close to it as the ``n`` scores allow. "Above" is in
    float64: compare float32 scores with it in float64 (``torch.Tensor.double``), because a
    float32 comparison rounds the threshold back onto that score and flags it too. The same
    scores, that is: the same images scored again in other batches can differ in their last
    float32 bits (kernels round by batch shape), and a real within that of the threshold can
    then fall on either side of it.

    Raises:
        ValueError: ``target_fpr`` outside [0, 1), no scores, or non-finite scores.
    """
    if not 0.0 <= target_fpr < 1.0:
        raise ValueError(f"target_fpr must be in [0, 1), got {target_fpr}")
    s = _np(real_scores)
    if s.size == 0:
        raise ValueError("no real scores to calibrate on")
    # non-finite scores are refused by threshold_allowing, with this message
    return threshold_allowing(s, allowed_false_positives(target_fpr, s.size))


def threshold_allowing(real_scores: ArrayLike, false_positives: int) -> float:
    """The smallest float above the ``(k + 1)``-th highest of ``real_scores`` (``k`` the
    ``false_positives`` allowed, ``0 <= k < n``): exactly the ``k`` highest score at or above
    it, fewer where scores tie. :func:`threshold_at_fpr` with ``k`` given.

    Raises:
        ValueError: ``k`` not an integer in ``[0, n)`` (a negative one used to wrap around to
            the lowest score), or non-finite scores.
    """
    s = _np(real_scores)
    k = false_positives
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < s.size:
        raise ValueError(
            f"false_positives must be an integer in [0, {s.size}) (the number of real scores), "
            f"got {k!r}"
        )
    if not np.isfinite(s).all():
        raise ValueError("real scores contain NaN or inf")
    highest_first = np.sort(s)[::-1]
    return float(np.nextafter(highest_first[k], np.inf))


def size_thresholds(
    scores: Sequence[tuple[int, Sequence[float]]], target_fpr: float | None
) -> tuple[tuple[int, float], ...]:
    """``(tile count, threshold)`` for each ``(tile count, real images' scores)`` at
    ``target_fpr`` (none without a target): the thresholds by image size of a detector
    (``Detector.threshold_for``).

    A count whose ``n`` scores cannot resolve the rate (``target_fpr < 1/n``: the threshold
    would only sit above the highest of them) gets none, so its images fall back to a smaller
    count's or the patch threshold, which flag fewer. The thresholds may not rise with the
    count: a larger image's mean logit varies less, so where a few hundred scores put a larger
    count's threshold above a smaller one's (sampling noise at small rates), the smaller count
    takes the larger one's, the direction with fewer false positives.
    """
    if target_fpr is None:
        return ()
    kept = [
        (k, threshold_at_fpr(s, target_fpr))
        for k, s in scores
        if allowed_false_positives(target_fpr, len(s)) >= 1
    ]
    out, floor = [], -np.inf
    for k, t in sorted(kept, reverse=True):  # from the largest count down
        floor = max(floor, t)
        out.append((k, float(floor)))
    return tuple(sorted(out))


def rates_at_threshold(labels: ArrayLike, scores: ArrayLike, threshold: float) -> dict[str, float]:
    """``{"tpr", "fpr"}`` of the decision ``score >= threshold`` (NaN for an absent class).

    Raises:
        ValueError: labels other than 0 and 1, non-finite scores or threshold (a NaN score
            would silently count as "not flagged"), or lengths that differ.
    """
    y, s = _np(labels), _np(scores)
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} vs {s.shape[0]}")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"labels must be 0 (real) or 1 (fake), got {sorted(set(y.tolist()))}")
    if not np.isfinite(s).all() or not np.isfinite(threshold):
        raise ValueError("scores and threshold must be finite (a NaN is never flagged)")
    flagged = s >= threshold
    fake, real = y == 1.0, y == 0.0
    return {
        "tpr": float(flagged[fake].mean()) if fake.any() else float("nan"),
        "fpr": float(flagged[real].mean()) if real.any() else float("nan"),
    }


class ProbabilityScaling(NamedTuple):
    """``P(fake) = sigmoid(slope * score + intercept)``, computed in float64."""

    slope: float
    intercept: float

    def formula(self, digits: int = 6) -> str:
        """``"sigmoid(a * score - b)"``, ``digits`` significant digits, the sign written once."""
        sign = "-" if self.intercept < 0 else "+"
        return f"sigmoid({self.slope:.{digits}g} * score {sign} {abs(self.intercept):.{digits}g})"

    def __call__(self, scores: ArrayLike) -> np.ndarray:
        z = self.slope * _np(scores) + self.intercept
        # sigmoid without overflow: exp of a non-positive number only
        e = np.exp(-np.abs(z))
        return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def platt_scaling(real_scores: ArrayLike, fake_scores: ArrayLike) -> ProbabilityScaling:
    """Platt's probability map for a detector's scores, fit on held-apart reals and fakes.

    The maximum-likelihood logistic regression of the label on the score, with Platt's (1999)
    regularised targets ``(n_fake + 1) / (n_fake + 2)`` for fakes and ``1 / (n_real + 2)`` for
    reals (a finite fit even when the scores separate the classes, where plain maximum likelihood
    has no optimum), each class's rows weighted to half the total: the probability at even odds,
    whatever the two counts. Solved by Newton's method (scikit-learn's ``newton-cholesky``) to a
    gradient tolerance of 1e-12: two parameters, a strictly convex loss, so a refit on the same
    scores agrees to far below any printed digit.

    Raises:
        ValueError: a class without scores, non-finite scores, or fakes whose mean score is not
            above the reals' (the fitted slope is then not positive: no increasing map exists).
    """
    from sklearn.linear_model import LogisticRegression

    real, fake = _np(real_scores), _np(fake_scores)
    if real.size == 0 or fake.size == 0:
        raise ValueError(
            f"Platt scaling needs reals and fakes, got {real.size} reals and {fake.size} fakes"
        )
    if not (np.isfinite(real).all() and np.isfinite(fake).all()):
        raise ValueError("scores contain NaN or inf")
    t_fake = (fake.size + 1.0) / (fake.size + 2.0)
    t_real = 1.0 / (real.size + 2.0)
    # a soft target t as two rows, label 1 with weight t and label 0 with weight 1 - t
    scores = np.concatenate([fake, fake, real, real])[:, None]
    labels = np.concatenate(
        [np.ones(fake.size), np.zeros(fake.size), np.ones(real.size), np.zeros(real.size)]
    )
    weights = np.concatenate(
        [
            np.full(fake.size, t_fake / fake.size),
            np.full(fake.size, (1.0 - t_fake) / fake.size),
            np.full(real.size, t_real / real.size),
            np.full(real.size, (1.0 - t_real) / real.size),
        ]
    )
    # fit on standardised scores (the solver's Newton steps are then well scaled whatever the
    # detector's logit range), and map the parameters back: a s + b = a' (s - mu) / sd + b'
    mu, sd = float(scores.mean()), float(scores.std())
    sd = sd if sd > 0 else 1.0
    # the scale of the weights is the regulariser's, and there is none (C = inf)
    fit = LogisticRegression(C=np.inf, solver="newton-cholesky", tol=1e-12, max_iter=100)
    fit.fit((scores - mu) / sd, labels, sample_weight=weights * scores.shape[0])
    # At slope 0 the loss's slope derivative is proportional to mean(real) - mean(fake), so the
    # optimal slope is positive exactly when the fakes' mean score is above the reals'; one at 0
    # to rounding says nothing about the label. Either way no increasing map follows.
    if not float(fit.coef_[0, 0]) > 1e-9:
        raise ValueError(
            f"the scores do not rank fakes above reals (mean fake {fake.mean():.4g}, mean real "
            f"{real.mean():.4g}; Platt slope {fit.coef_[0, 0] / sd:.3g}): no increasing map to "
            "P(fake)"
        )
    slope = float(fit.coef_[0, 0]) / sd
    intercept = float(fit.intercept_[0]) - slope * mu
    return ProbabilityScaling(slope, intercept)


def probability_losses(labels: ArrayLike, probabilities: ArrayLike) -> dict[str, float]:
    """``{"brier", "log_loss"}`` of ``P(fake)`` against the labels, the two classes weighted
    equally (the even odds :func:`platt_scaling` fits for), so that a split's real/fake ratio does
    not decide the number. Lower is better; guessing 0.5 scores 0.25 and ln 2 = 0.693."""
    from sklearn.metrics import brier_score_loss, log_loss

    y, p = _np(labels), _np(probabilities)
    if y.shape != p.shape:
        raise ValueError(f"labels and probabilities differ in length: {y.size} vs {p.size}")
    fake, real = y == 1.0, y == 0.0
    if not fake.any() or not real.any() or not (fake | real).all():
        raise ValueError("labels must be 0 (real) and 1 (fake), with both present")
    w = np.where(fake, 0.5 / fake.sum(), 0.5 / real.sum())
    return {
        "brier": float(brier_score_loss(y, p, sample_weight=w)),
        "log_loss": float(log_loss(y, p, sample_weight=w, labels=[0, 1])),
    }
