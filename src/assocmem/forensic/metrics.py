"""Real/fake detection metrics. Convention: label 1 = fake (positive), a higher score = more fake,
and an image is called fake when ``score >= threshold`` (the convention of ``roc_curve``).

- AUC: area under the ROC curve, ``P(score_fake > score_real)`` (ties count 1/2);
  threshold-free, the headline number.
- AP: area under the precision-recall curve (``average_precision_score``).
- acc@0.5: accuracy of the calibrated decision ``p >= 0.5``; needs probabilities.
- acc@best: accuracy at the best threshold, an oracle upper bound on acc@0.5 (it is tuned on
  the evaluation set itself, so it measures separability, not a deployable detector).
- EER: the error rate where the false-positive rate equals the false-negative rate
  ``1 - TPR``, linearly interpolated between the two ROC points that bracket the crossing.

Single-class input (all real or all fake) leaves AUC, AP and EER undefined: the functions raise
``ValueError`` rather than return a number that looks meaningful.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor | Sequence[float]

METRIC_NAMES = ("auc", "ap", "acc_0.5", "acc_best", "eer")


def _np(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)


def equal_error_rate(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """EER from an ROC curve: where ``fpr = 1 - tpr``, interpolated linearly between points."""
    fnr = 1.0 - tpr
    diff = fpr - fnr  # non-decreasing along the curve: from <= 0 (fpr 0) to >= 0 (fpr 1)
    i = int(np.searchsorted(diff, 0.0, side="left"))
    if i == 0:
        return float(fpr[0])
    d0, d1 = diff[i - 1], diff[i]
    t = 0.0 if d1 == d0 else -d0 / (d1 - d0)
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def detection_metrics(
    labels: ArrayLike, scores: ArrayLike, *, from_logits: bool = False
) -> dict[str, float]:
    """AUC, AP, accuracy at 0.5, accuracy at the best threshold and EER.

    Args:
        labels: 0 = real, 1 = fake, shape (N,).
        scores: P(fake) in [0, 1] (or logits with ``from_logits=True``), shape (N,).

    Returns:
        ``{"auc", "ap", "acc_0.5", "acc_best", "eer", "n_real", "n_fake"}``.

    Raises:
        ValueError: on length mismatch, labels outside {0, 1}, probabilities outside [0, 1],
            non-finite scores, or a single class (AUC/AP/EER undefined).

    Example:
        >>> detection_metrics([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])["auc"]
        1.0
    """
    y, s = _np(labels), _np(scores)
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} vs {s.shape[0]}")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 (real) or 1 (fake)")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or inf")
    # Logits are ranked as they are: the rank metrics need no probabilities, and a float64
    # sigmoid ties every logit above ~36.7 at 1.0 (perfectly separated logits 40, 41 vs 45, 46
    # scored AUC 0.5). The decision p >= 0.5 is logit >= 0.
    half = 0.0 if from_logits else 0.5
    if not from_logits and s.size and (s.min() < 0.0 or s.max() > 1.0):
        raise ValueError("scores must be probabilities in [0, 1]; pass from_logits=True for logits")
    n_fake = int(y.sum())
    n_real = int(y.size - n_fake)
    if n_fake == 0 or n_real == 0:
        raise ValueError(
            f"need both classes, got {n_real} real and {n_fake} fake: AUC, AP and EER undefined"
        )
    # scikit-learn costs ~1.5 s to import: only the functions that compute curves load it, so
    # scoring images (assocmem-detect) starts without it.
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    # Accuracy of every threshold on the curve: (TP + TN) / N with TP = tpr P, TN = (1 - fpr) R.
    acc_best = float(np.max((tpr * n_fake + (1.0 - fpr) * n_real) / y.size))
    return {
        "auc": float(roc_auc_score(y, s)),
        "ap": float(average_precision_score(y, s)),
        "acc_0.5": float(np.mean((s >= half) == (y == 1.0))),
        "acc_best": acc_best,
        "eer": equal_error_rate(fpr, tpr),
        "n_real": n_real,
        "n_fake": n_fake,
    }


def per_family_metrics(
    labels: ArrayLike,
    scores: ArrayLike,
    families: Sequence[str],
    real_label: str = "real",
    *,
    from_logits: bool = False,
) -> dict[str, dict[str, float]]:
    """Metrics of each fake family against all the reals of the evaluation set.

    For every family ``f != real_label`` the subset is (every image whose family is
    ``real_label``) + (the fakes of ``f``), so families are compared on the same negatives and
    an easy family cannot hide a hard one. ``"mean"`` is the unweighted mean over families.

    Returns:
        ``{family: detection_metrics(...), ..., "mean": {metric: mean over families}}``.
    """
    y, s = _np(labels), _np(scores)
    fam = np.asarray(list(families), dtype=object)
    if fam.shape != y.shape:
        raise ValueError(f"families has {fam.shape[0]} entries for {y.shape[0]} labels")
    is_real = fam == real_label
    if not is_real.any():
        raise ValueError(f"no image has family {real_label!r}")
    if (y[is_real] != 0).any() or (y[~is_real] != 1).any():
        raise ValueError(f"labels must be 0 exactly for family {real_label!r} and 1 otherwise")
    out: dict[str, dict[str, float]] = {}
    for f in sorted(set(fam[~is_real].tolist())):
        keep = is_real | (fam == f)
        out[f] = detection_metrics(y[keep], s[keep], from_logits=from_logits)
    if not out:
        raise ValueError("no fake family in the evaluation set")
    out["mean"] = {k: float(np.mean([m[k] for m in out.values()])) for k in METRIC_NAMES}
    return out


def false_positive_rate(scores_on_reals: ArrayLike, threshold: float) -> float:
    """Fraction of real images called fake, ``mean(score >= threshold)``.

    Raises:
        ValueError: no scores, or a NaN or inf score (a NaN is never ``>=`` a threshold, so it
            would count as a real kept, understating the rate), or a NaN threshold (nothing is
            ``>=`` it: the rate read 0). An infinite threshold is a decision (``+inf`` flags
            nothing, ``-inf`` everything).
    """
    if isinstance(threshold, (str, bytes)) or np.isnan(threshold):
        raise ValueError(f"the threshold must be a number, not NaN: got {threshold!r}")
    s = _np(scores_on_reals)
    if s.size == 0:
        raise ValueError("no scores given")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or inf; a false-positive rate over them is undefined")
    return float(np.mean(s >= threshold))
