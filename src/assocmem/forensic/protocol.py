"""The zero-shot protocol: what a detector may see, how it is scored, and how its threshold is set.

The workload's science lives here so that every caller (the experiments harness, the demo, a
user's script) measures the same thing:

- **Training and model selection see only the seen families.** Detectors train on the train
  split's photos with fakes of ``seen`` families (:func:`balanced` or the training stream) and
  are selected (early stopping, LR) on the validation split's reals and ``seen`` fakes. The
  ``heldout`` families appear only in :func:`zero_shot_report`, on the test split, whose photos
  are also unseen. :class:`FamilySplit` refuses a family on both sides.
- **Balanced sets.** The built-in benchmark has one fake per real *per family*; training on a
  split as is would teach the prior "fake" and wreck the false-positive rate.
- **Per-family scores.** Each fake family is scored against all the reals of the test split
  (``metrics.per_family_metrics``): AUC, AP, EER, accuracy at 0.5.
- **Calibrated decisions.** The threshold is set on the validation reals for ``target_fpr``
  (``calibration.threshold_at_fpr``); the report gives each family's TPR and the test reals'
  FPR at it, beside the FPR at 0.5.
- **Frozen features** are measured by a probe solved to its optimum (:func:`linear_probe_scorer`)
  so that what is compared is the features, not the probe's own optimisation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from assocmem.forensic.calibration import rates_at_threshold, threshold_at_fpr
from assocmem.forensic.checks import whole_number
from assocmem.forensic.data.benchmark import ForensicBenchmark, ForensicSubset
from assocmem.forensic.metrics import false_positive_rate, per_family_metrics

__all__ = [
    "FamilySplit",
    "balanced",
    "linear_probe_scorer",
    "per_photo_metrics",
    "texture_features",
    "zero_shot_report",
]

ScoreFn = Callable[[Tensor], Tensor]
SCALES = ("auto", "probabilities", "logits")


@dataclass(frozen=True)
class FamilySplit:
    """Which generator families train (``seen``) and which are only tested (``heldout``)."""

    seen: tuple[str, ...]
    heldout: tuple[str, ...]

    def __post_init__(self) -> None:
        for name in ("seen", "heldout"):
            if isinstance(getattr(self, name), str):  # tuple("splice") would be its letters
                raise ValueError(f"{name} must be a sequence of names, got {getattr(self, name)!r}")
        object.__setattr__(self, "seen", tuple(self.seen))
        object.__setattr__(self, "heldout", tuple(self.heldout))
        for name in ("seen", "heldout"):
            names = getattr(self, name)
            if len(set(names)) != len(names):
                raise ValueError(f"{name} names a family twice: {names}")
        if not self.seen:
            raise ValueError("at least one seen (training) family is needed")
        both = sorted(set(self.seen) & set(self.heldout))
        if both:
            raise ValueError(f"families {both} are both seen and held out: held out means unseen")

    def check(self, bench: ForensicBenchmark) -> None:
        unknown = [f for f in (*self.seen, *self.heldout) if f not in bench.config.families]
        if unknown:
            raise ValueError(
                f"unknown families {unknown}; the benchmark has {bench.config.families}"
            )


def balanced(subset: ForensicSubset, seed: int) -> tuple[Tensor, Tensor]:
    """All reals of ``subset`` plus as many of its fakes, drawn at random (seeded): float images
    in [0, 1] (N, 3, P, P) and float labels (N,). Where the subset has fewer fakes than reals
    (one family at the benchmark's default fake fraction of one half), all its fakes and as
    many reals, drawn at random, so the set is balanced either way. Raises ``ValueError`` for
    a subset without reals or without fakes, or a seed that is not an integer >= 0."""
    if not whole_number(seed, 0):
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    g = torch.Generator().manual_seed(int(seed))  # a numpy integer is no int to torch
    reals = torch.nonzero(subset.labels == 0).squeeze(1)
    fakes = torch.nonzero(subset.labels == 1).squeeze(1)
    if not len(reals) or not len(fakes):
        raise ValueError(
            f"a balanced set needs reals and fakes, the subset has {len(reals)} and {len(fakes)} "
            "(no family named?)"
        )
    fakes = fakes[torch.randperm(len(fakes), generator=g)[: len(reals)]]
    if len(fakes) < len(reals):  # one family's fakes: as many reals, drawn the same way
        reals = reals[torch.randperm(len(reals), generator=g)[: len(fakes)]].sort().values
    rows = torch.cat([reals, fakes])
    images = subset.images_uint8[rows].float().div_(255.0)
    return images, subset.labels[rows].float()


def _scores(score_fn: ScoreFn, images: Tensor) -> np.ndarray:
    s = score_fn(images)
    s = (s.detach().cpu().numpy() if isinstance(s, Tensor) else np.asarray(s)).astype(np.float64)
    if s.shape != (len(images),):
        raise ValueError(f"score_fn gave scores of shape {s.shape} for {len(images)} images")
    return s


def zero_shot_report(
    score_fn: ScoreFn,
    bench: ForensicBenchmark,
    families: FamilySplit,
    *,
    target_fpr: float = 0.05,
    scale: str = "auto",
    per_photo: bool = False,
) -> dict[str, Any]:
    """Score a detector on the test split, seen and held-out families, with a calibrated threshold.

    ``bench`` may be the clip benchmark (``data.clips``), whose ``images`` are clips.
    ``score_fn(images) -> scores`` (higher = more fake; probabilities or logits, the threshold is
    set on the same scale). The threshold comes from the *validation* reals at ``target_fpr``;
    nothing of the test split is used to choose it.

    ``scale`` says what the scores are, for the fixed-threshold numbers (accuracy and the test
    reals' FPR at ``P(fake) = 0.5``): ``"probabilities"`` (0.5 is the threshold),
    ``"logits"`` (0 is: ``sigmoid(z) >= 0.5``), or ``"auto"``, a guess: probabilities if every
    score is in [0, 1]. The guess reads an untrained detector's logits that all happen to fall
    in [0, 1] as probabilities: a caller that knows should say.

    Returns:
        ``{"threshold", "target_fpr", "val_real_fpr", "test_real_fpr", "test_real_fpr_0.5",
        "scale", "seen": per-family metrics, "heldout": per-family metrics}``, each family's
        metrics with ``tpr`` and ``fpr`` at the threshold added (``"mean"`` averages them too);
        ``scale`` is the one used (``"auto"`` resolved). A group without families (no held-out
        ones: a ceiling study's) has no key: ``"heldout" in report`` says whether it was
        scored. ``per_photo=True`` adds
        ``"per_photo"``: :func:`per_photo_metrics` of the test split at the same threshold.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    families.check(bench)
    val_real = bench.split("val", families.seen)
    val_real_scores = _scores(score_fn, val_real.images[val_real.labels == 0])
    threshold = threshold_at_fpr(val_real_scores, target_fpr)
    report: dict[str, Any] = {"threshold": threshold, "target_fpr": target_fpr}
    report["val_real_fpr"] = false_positive_rate(val_real_scores, threshold)
    groups = [
        (group, bench.split("test", fams))
        for group, fams in (("seen", families.seen), ("heldout", families.heldout))
        if fams
    ]
    scores = [_scores(score_fn, test.images) for _, test in groups]
    # one scale for the whole report; "auto": probabilities only if every score is in [0, 1]
    in_unit = all(bool(((s >= 0) & (s <= 1)).all()) for s in (val_real_scores, *scores))
    if scale == "probabilities" and not in_unit:
        raise ValueError("scale='probabilities', but some scores are outside [0, 1]")
    probabilities = in_unit if scale == "auto" else scale == "probabilities"
    report["scale"] = "probabilities" if probabilities else "logits"
    for (group, test), s in zip(groups, scores, strict=True):
        names = [test.family_of(i) for i in range(len(test))]
        labels = test.labels.numpy()
        metrics = per_family_metrics(labels, s, names, from_logits=not probabilities)
        real = labels == 0
        for fam, m in metrics.items():
            if fam == "mean":
                continue
            keep = real | (np.asarray(names, dtype=object) == fam)
            m.update(rates_at_threshold(labels[keep], s[keep], threshold))
        per_fam = [m for f, m in metrics.items() if f != "mean"]
        metrics["mean"]["tpr"] = float(np.mean([m["tpr"] for m in per_fam]))
        metrics["mean"]["fpr"] = float(np.mean([m["fpr"] for m in per_fam]))
        report[group] = metrics
        report["test_real_fpr"] = false_positive_rate(s[real], threshold)
        # P(fake) >= 0.5: a probability at 0.5, a logit at 0
        report["test_real_fpr_0.5"] = false_positive_rate(s[real], 0.5 if probabilities else 0.0)
    if per_photo:  # from the scores above: the reals that set test_real_fpr, and every fake
        last = groups[-1][1]
        picks = [(last, scores[-1], last.labels == 0)]
        picks += [(test, s, test.labels == 1) for (_, test), s in zip(groups, scores, strict=True)]
        report["per_photo"] = per_photo_metrics(
            np.concatenate([s[rows.numpy()] for _, s, rows in picks]),
            torch.cat([t.family[rows] for t, _, rows in picks]).numpy(),
            torch.cat([t.source[rows] for t, _, rows in picks]).numpy(),
            bench.family_names,
            bench.source_names,
            families,
            threshold,
        )
    return report


def per_photo_metrics(
    scores: np.ndarray,
    family: np.ndarray,
    source: np.ndarray,
    family_names: Sequence[str],
    source_names: Sequence[str],
    families: FamilySplit,
    threshold: float,
) -> dict[str, dict[str, Any]]:
    """Each test photo on its own, from test images' ``scores`` with their ``family`` codes
    (into ``family_names``, 0 real) and ``source`` codes (into ``source_names``): ``{photo:
    {"reals", "real_fpr", "real_mean", "seen", "heldout"}}``, its reals' count, FPR at
    ``threshold`` and mean score, and per group the mean over families of the AUC of its reals
    against the fakes made from them (``None`` for a group without such fakes). The pooled
    report ranks every photo's reals against every photo's fakes; this says which photos carry
    its errors (a photo whose reals all score high raises the pooled FPR and lowers every pooled
    AUC, however well its own fakes are told apart)."""
    from sklearn.metrics import roc_auc_score  # imported here, as in metrics.py: it is slow

    fam, src = np.asarray(family), np.asarray(source)
    codes = {f: list(family_names).index(f) for f in (*families.seen, *families.heldout)}
    out: dict[str, dict[str, Any]] = {}
    for photo in np.unique(src[fam == 0]).tolist():
        real = (fam == 0) & (src == photo)
        row: dict[str, Any] = {
            "reals": int(real.sum()),
            "real_fpr": false_positive_rate(scores[real], threshold),
            "real_mean": float(scores[real].mean()),
        }
        for group, names in (("seen", families.seen), ("heldout", families.heldout)):
            aucs = []
            for f in names:
                fake = (fam == codes[f]) & (src == photo)
                if fake.any():
                    keep = real | fake
                    aucs.append(float(roc_auc_score(fam[keep] > 0, scores[keep])))
            row[group] = float(np.mean(aucs)) if aucs else None
        out[source_names[photo]] = row
    return out


@torch.no_grad()
def texture_features(encoder: nn.Module, images: Tensor, batch_size: int = 512) -> Tensor:
    """Mean and standard deviation of each feature channel over positions: (N, 2 * channels).

    Generation traces are second-order statistics of local responses, which mean pooling alone
    averages away; the std keeps them.
    """
    was_training = encoder.training
    encoder.eval()
    out = []
    for start in range(0, len(images), batch_size):
        fmap = encoder.feature_map(images[start : start + batch_size]).flatten(2)
        if fmap.shape[2] < 2:  # std over one position is NaN: say so, not sklearn's "NaN in X"
            raise ValueError(
                f"texture features need a feature map of at least 2 positions; the encoder's "
                f"is {fmap.shape[2]} for images of side {images.shape[-1]} (too many stride-2 "
                "stages for this image size?)"
            )
        out.append(torch.cat([fmap.mean(2), fmap.std(2)], dim=1))
    encoder.train(was_training)
    return torch.cat(out)


def linear_probe_scorer(encoder: nn.Module, images: Tensor, labels: Tensor) -> ScoreFn:
    """Fit an L2-regularised logistic regression (L-BFGS, to convergence) on frozen features and
    return ``images -> P(fake)``.

    A probe solved to its optimum measures the features, not the probe's own optimisation, so
    the same recipe serves every optimizer and every pretraining under test.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    probe.fit(texture_features(encoder, images).numpy(), labels.numpy())

    def score_fn(x: Tensor) -> Tensor:
        feats = texture_features(encoder, x).numpy()
        return torch.from_numpy(probe.predict_proba(feats)[:, 1]).float()

    return score_fn
