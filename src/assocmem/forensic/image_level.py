"""Image-level evaluation: a detector scored the way users run it, on images larger than a patch.

The benchmark's numbers are per 32 x 32 patch. ``Detector`` scores an image by cutting it into
tiles and averaging their logits, and decides at a threshold calibrated on single validation
patches, or on validation images of the image's size where its checkpoint stores them
(``detector.py``); how either transfers to other photos is a measurement, not a given.
:func:`image_level_report` makes it on images built like the benchmark's, from photos no
detector trained, stopped or calibrated on:

1. ``n`` real crops of ``size`` x ``size`` from the **test** split's photos
   (``data.crops.PhotoCrops``: random photo, pyramid level, position, square symmetry;
   near-flat crops redrawn);
2. for every family (seen and held out), its fake of *each* crop (the families are functions
   of the image, any size; the learned ones with the benchmark's fitted models; splice donors
   are further crops of the test photos), gray photos' fakes projected back to gray: a paired
   design, every fake has a real twin with the same content;
3. the benchmark's post-processing on every image, its coin flips drawn per set, independently
   of the label;
4. every image scored by ``detector.score`` (tiles, views, mean tile logit), and per family the
   AUC of its fakes against all the reals, with the TPR of the detector's decisions (at the
   threshold it uses for that image size: ``Detector.threshold_for``); the reals' FPR beside.

:func:`real_image_scores` draws the reals alone and :func:`fake_image_scores` fakes of given
families, from any split: ``experiments.ship_detector`` calibrates a checkpoint's image-size
thresholds and ``P(fake)`` maps on the **validation** photos' crops with them.

With ``size`` equal to the patch size an image is one tile, the benchmark's own setting; larger
sizes average more tiles. The crops of one run overlap (a test split holds a few photos), so
``n`` counts images, not independent photos: the report names the photos.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from assocmem.forensic.calibration import probability_losses
from assocmem.forensic.data.benchmark import ForensicBenchmark, fitted_generators
from assocmem.forensic.data.crops import PhotoCrops
from assocmem.forensic.data.families import LEARNED_FAMILIES, generate
from assocmem.forensic.data.pipeline import gray_where
from assocmem.forensic.data.postprocess import postprocess, processing_kinds
from assocmem.forensic.detector import Detector
from assocmem.forensic.metrics import detection_metrics
from assocmem.forensic.protocol import FamilySplit

__all__ = ["fake_image_scores", "image_level_report", "real_image_scores"]


def _crops(crops: PhotoCrops, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    pairs = [crops.crop(rng) for _ in range(n)]
    return np.stack([c for c, _ in pairs]), np.array([p for _, p in pairs], dtype=np.int64)


class _Scored(NamedTuple):
    scores: np.ndarray  # float64 (n,); NaN for a blank image (every tile blank: no score)
    fake: np.ndarray  # bool (n,): the detector's decisions (a blank image: not fake)
    probability: np.ndarray  # float64 (n,): its P(fake); 0.5 for a blank image (no evidence)
    tiles: int  # per image (one size: the same for all), blank tiles included
    blank: np.ndarray  # bool (n,): images with every tile blank (Detector.textured_tiles)


def _score(detector: Detector, images: np.ndarray) -> _Scored:
    results = detector.score(torch.from_numpy(images))
    blank = np.array([r.blank for r in results], bool)
    return _Scored(
        np.array([r.score for r in results], np.float64),
        np.array([r.fake for r in results], bool),
        np.where(blank, 0.5, np.array([r.probability for r in results], np.float64)),
        results[0].tiles + results[0].blank_tiles,
        blank,
    )


def _ranked(scores: np.ndarray) -> np.ndarray:
    """``scores`` for the rank metrics: a blank image (NaN: no score) below every scored one,
    as it is flagged at no threshold; blank images tie with each other."""
    blank = np.isnan(scores)
    if not blank.any():
        return scores
    floor = float(np.min(scores[~blank])) - 1.0 if (~blank).any() else 0.0
    return np.where(blank, floor, scores)


def _reals(
    bench: ForensicBenchmark, split: str, size: int, n: int, seed: int
) -> tuple[PhotoCrops, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The crops, the clean real crops and their photo numbers, the post-processed reals and
    their ``POST_*`` flags."""
    crops = PhotoCrops(bench, split, size)
    reals, sources = _crops(crops, n, np.random.default_rng([seed, 0]))
    processed, flags = postprocess(reals, bench.config.post, np.random.default_rng([seed, 2]))
    return crops, reals, sources, processed, flags


def real_image_scores(
    detector: Detector, bench: ForensicBenchmark, *, size: int, n: int, split: str = "val",
    seed: int = 0,
) -> np.ndarray:  # fmt: skip
    """``detector``'s scores (mean tile logits) of ``n`` real ``size`` x ``size`` crops of the
    ``split`` photos, post-processed like the benchmark: float64 (n,)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return _score(detector, _reals(bench, split, size, n, seed)[3]).scores


def fake_image_scores(
    detector: Detector,
    bench: ForensicBenchmark,
    families: Sequence[str],
    *,
    size: int,
    n: int,
    split: str = "val",
    seed: int = 0,
) -> np.ndarray:
    """``detector``'s scores of ``n`` fake ``size`` x ``size`` images: real crops of the
    ``split`` photos, each made fake by a family drawn uniformly from ``families`` (the seen
    ones), post-processed like the benchmark: float64 (n,). With :func:`real_image_scores` of
    the same size, what a map from an image's score to ``P(fake)`` is fit on."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not families:
        raise ValueError("no families to make fakes with")
    crops = PhotoCrops(bench, split, size)
    reals, sources = _crops(crops, n, np.random.default_rng([seed, 5]))
    donors, donor_sources = _crops(crops, n, np.random.default_rng([seed, 6]))
    rng = np.random.default_rng([seed, 7])
    chosen = rng.integers(len(families), size=n)
    models = fitted_generators(bench) if any(f in LEARNED_FAMILIES for f in families) else {}
    fakes = reals.copy()
    for k, name in enumerate(families):
        rows = np.flatnonzero(chosen == k)
        if rows.size:
            fakes[rows] = _family_fakes(
                bench, crops, reals[rows], sources[rows], donors, donor_sources, name, rng, models
            )
    fakes, _ = postprocess(fakes, bench.config.post, np.random.default_rng([seed, 8]))
    return _score(detector, fakes).scores


def _family_fakes(
    bench: ForensicBenchmark,
    crops: PhotoCrops,
    reals: np.ndarray,
    sources: np.ndarray,
    donors: np.ndarray,
    donor_sources: np.ndarray,
    name: str,
    rng: np.random.Generator,
    models: dict[str, Any],
) -> np.ndarray:
    """``name``'s fakes of clean ``reals`` (gray photos' fakes back to gray), not yet
    post-processed; splice donors from ``donors``, another photo where the split has one."""
    fakes = generate(
        name,
        reals,
        rng=rng,
        settings=bench.config.generators,
        models=models,
        donors=donors,
        sources=sources,
        donor_sources=donor_sources,
    )
    return gray_where(fakes, crops.gray[sources])


def image_level_report(
    detector: Detector,
    bench: ForensicBenchmark,
    families: FamilySplit,
    *,
    size: int,
    n: int,
    seed: int = 0,
) -> dict[str, Any]:
    """Score ``detector`` on ``n`` real ``size`` x ``size`` test crops and each family's fakes of
    them (module docstring).

    Returns:
        ``{"size", "n", "tiles" (scored per image, overlapping ones included), "photos" (the
        test photos drawn from), "threshold" (the one every decision was made at:
        ``detector.threshold_for(detector.area_tiles(size, size))``), "real_fpr",
        "real_fpr_by_kind" ({kind: {"fpr", "n"}} for the kinds of ``processing_kinds``; ``fpr``
        None where no real is of that kind), "seen" / "heldout":
        {family: {"auc", "ap", "tpr"}, "mean": {"auc", "tpr"}}, "probability": {"seen" /
        "heldout": the class-balanced Brier score and log loss of the detector's ``P(fake)`` on
        the reals and that group's fakes}}``.

    Raises:
        ValueError: ``n < 1``, or a size the test photos cannot give.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    families.check(bench)
    config = bench.config
    crops, reals, sources, real_post, real_flags = _reals(bench, "test", size, n, seed)
    donors, donor_sources = _crops(crops, n, np.random.default_rng([seed, 1]))
    models = fitted_generators(bench) if any(f in LEARNED_FAMILIES for f in config.families) else {}
    real = _score(detector, real_post)
    report: dict[str, Any] = {
        "size": int(size),
        "n": int(n),
        "tiles": real.tiles,
        "photos": sorted({crops.photo_names[int(p)] for p in sources}),
        # the threshold the decisions were made at: Detector counts an image's tiles on the
        # non-overlapping grid (area_tiles), not the tiles it scored (a 40 px image is scored as
        # 4 overlapping tiles and decided as 1)
        "threshold": detector.threshold_for(detector.area_tiles(size, size)),
        "real_fpr": float(real.fake.mean()),
        # images with every tile blank: no score, not flagged (ranked below every scored one)
        "real_blank": int(real.blank.sum()),
        # the reals flagged by what they went through (most photos are JPEG files)
        "real_fpr_by_kind": {
            kind: {
                "fpr": float(real.fake[mask].mean()) if mask.any() else None,
                "n": int(mask.sum()),
            }
            for kind, mask in processing_kinds(real_flags).items()
        },
    }
    for group, names in (("seen", families.seen), ("heldout", families.heldout)):
        if not names:
            continue
        per: dict[str, dict[str, float]] = {}
        group_p = []
        for name in names:
            code = config.families.index(name)
            rng = np.random.default_rng([seed, 3, code])
            fakes = _family_fakes(
                bench, crops, reals, sources, donors, donor_sources, name, rng, models
            )
            fakes, _ = postprocess(fakes, config.post, np.random.default_rng([seed, 4, code]))
            fake = _score(detector, fakes)
            scores = _ranked(np.concatenate([real.scores, fake.scores]))
            labels = np.concatenate([np.zeros(n), np.ones(n)])
            metrics = detection_metrics(labels, scores, from_logits=True)
            tpr = float(fake.fake.mean())
            per[name] = {"auc": metrics["auc"], "ap": metrics["ap"], "tpr": tpr}
            if fake.blank.any():
                per[name]["blank"] = int(fake.blank.sum())
            group_p.append(fake.probability)
        per["mean"] = {k: float(np.mean([m[k] for m in per.values()])) for k in ("auc", "tpr")}
        report[group] = per
        fake_p = np.concatenate(group_p)
        labels = np.concatenate([np.zeros(n), np.ones(len(fake_p))])
        losses = probability_losses(labels, np.concatenate([real.probability, fake_p]))
        report.setdefault("probability", {})[group] = losses
    return report
