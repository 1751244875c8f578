"""A training-free spectral prior beside the detector, weighted without the held-out families.

The held-out misses are the smoothing families (``resample``, ``denoiser``). A prior that says
"smoother than a real photo" needs no fakes. Two are offered (:data:`PRIORS`): ``hf``, the
shortcut baseline's one feature, the log fraction of spectral energy above half Nyquist
(``assocmem.forensic.data.baseline.hf_energy_feature``); and ``residual``, a patch's fine
detail measured against what its coarser content predicts for a real photo (a line from the
lower radial bands of the spectrum to the upper ones, fit on the train split's reals); and
``surprise``, how much less predictable a patch is than a blind-spot pixel predictor fit on the
train split's reals expects (``assocmem.forensic.models.blind_spot``: ZED's coding-cost
statistic, Cozzolino et al. 2024). Each also has a one-sided form (``hf/one-sided``, ...),
in which only a patch smoother than the validation reals' mean moves. Fused
with the detector's logit ``z`` a prior ``f`` gives the score

    s_w(x) = z(x) / sd_z  -  w (f(x) - mu_f) / sd_f,

``sd_z``, ``mu_f``, ``sd_f`` over the validation reals (no family sets them). The question is
the prior and ``w``, and it must be answered without the held-out families. A fit on the seen
families' own validation fakes asks the wrong question (the network already detects them, so a
prior adds nothing there); what matters is what it adds on a family the network never saw. So
both are chosen by leave-one-family-out validation over the seen families (the "leave one
domain out" model selection of domain generalisation): for each seen family ``k`` a detector of
the same recipe is trained on the other seen families only (``experiments.detectors --seen``;
one or more seeds, as many for every family, each a fold of its own),
and ``s_w``'s validation AUC on the reals against ``k``'s fakes measures a prior and weight on
a family that network did not train on. Each prior's ``w`` = the grid point with the best mean
over the folds (ties to the smaller), and the prior = the one whose weight scores best (ties to
the first). The members, networks of the recipe trained on every seen family, are then scored
on the test split alone (``w = 0``) and with each prior at its weight, threshold from the
validation reals as always (``assocmem.forensic.protocol``). Nothing here reads a held-out
family before the members' test scores. ``--test-photos fresh`` scores the members on the fresh
test photos instead (``assocmem.forensic.data.fresh``: the same recipe on photos no study had
scored); the folds and every statistic still come from the unchanged validation split.
``--test-photos validation`` scores them on the validation split itself, whose held-out
families' fakes no zero-shot study reads (``assocmem.forensic.data.validation_test``: a third set of
photos for the held-out families, no test split: its reals set the thresholds).

    python -m experiments.detector_prior --fold ae_transconv=F1 ... --members W0 W1 W2 \\
        --views one d4 --json P.json [--write docs/results.md]
    python -m experiments.detector_prior --from-json P.json --write docs/results.md
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import Tensor

from assocmem.forensic.data import BenchmarkConfig, build_benchmark
from assocmem.forensic.data.baseline import gray_power_spectrum, hf_energy_feature
from assocmem.forensic.data.fresh import with_fresh_test
from assocmem.forensic.data.photos import FRESH_PHOTO_NAMES
from assocmem.forensic.data.validation_test import with_validation_test
from assocmem.forensic.models.blind_spot import BlindSpotPredictor, coding_surprise, fit_blind_spot
from assocmem.forensic.protocol import zero_shot_report
from assocmem.forensic.views import VIEWS, view_logits
from assocmem.storage import read_safetensors
from experiments.cli_files import input_path, output_path, reads_files, refuse_clashes
from experiments.detector_ensemble import RECIPE, ensemble_of, load_member
from experiments.detectors import HELDOUT, SEEN, _ms, family_split
from experiments.report import read_record, refuse_unreplaceable, replace_section, write_json
from experiments.score_cache import ScoreCache

SECTION = "detector-prior"
TEST_PHOTOS = ("benchmark", "fresh", "validation")  # what the members are scored on (--test-photos)
# the detector the sections before the "model" field were measured on (their titles omit it)
DEFAULT_MODEL = "npr_dct_dropout"
WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0)
# The linear forms, then each one-sided (ONE_SIDED), added 2026-12-04 after the linear ones'
# results were known; the rule's ties go to the earlier, i.e. to the linear forms.
ONE_SIDED = "/one-sided"
BASE_PRIORS = ("hf", "residual", "surprise")
PRIORS = (*BASE_PRIORS, *(f"{name}{ONE_SIDED}" for name in BASE_PRIORS))
# The blind-spot predictor's fit (fixed before any fold was scored with it: plan of 2026-12-04).
SURPRISE_FIT = {"steps": 3000, "batch_size": 64, "lr": 1e-3, "width": 32, "kernel": 5, "seed": 0}
BANDS = 8  # radial bands of the residual prior: the lower half predicts the upper half


@dataclass(frozen=True)
class RealStats:
    """Scale of the logit and centre and scale of the feature over the validation reals."""

    sd_z: float
    mu_f: float
    sd_f: float


def real_stats(z_real: np.ndarray, f_real: np.ndarray) -> RealStats:
    """:class:`RealStats` of the reals' logits ``z_real`` and features ``f_real``. Raises
    ``ValueError`` when either is constant (no scale to put them on)."""
    sd_z, sd_f = float(np.std(z_real)), float(np.std(f_real))
    if not (sd_z > 0 and sd_f > 0):
        raise ValueError(f"the reals' logits and features must vary, got sd {sd_z}, {sd_f}")
    return RealStats(sd_z, float(np.mean(f_real)), sd_f)


def fused(
    z: np.ndarray, f: np.ndarray, stats: RealStats, weight: float, one_sided: bool = False
) -> np.ndarray:
    """``z / sd_z - weight (f - mu_f) / sd_f``: higher = more fake, both terms in units of the
    reals' spread; the feature enters negated because smoother (lower ``f``) is the fake
    direction for every family the shortcut baseline measures. ``one_sided``: only a patch
    smoother than the reals' mean moves (``min(0, (f - mu_f) / sd_f)``): more detail than a
    real photo is not taken as evidence of a real one, which the premise does not say."""
    deviation = (f - stats.mu_f) / stats.sd_f
    if one_sided:
        deviation = np.minimum(deviation, 0.0)
    return z / stats.sd_z - weight * deviation


def base_prior(name: str) -> tuple[str, bool]:
    """``name``'s feature (one of :data:`BASE_PRIORS`) and whether it enters one-sided."""
    if name.endswith(ONE_SIDED):
        return name[: -len(ONE_SIDED)], True
    return name, False


def choose_weight(folds: Mapping[str, Mapping[float, float]]) -> float:
    """The weight with the best mean AUC over the folds (``{family: {weight: AUC}}``; ties: the
    smaller weight, i.e. the less prior). Every fold must have tried the same weights."""
    if not folds:
        raise ValueError("no folds")
    grids = {tuple(sorted(a)) for a in folds.values()}
    if len(grids) != 1:
        raise ValueError(f"the folds tried different weights: {sorted(grids)}")
    weights = next(iter(grids))
    means = {w: statistics.mean(a[w] for a in folds.values()) for w in weights}
    return min(weights, key=lambda w: (-means[w], w))


def radial_band_log_energy(images: Tensor, bands: int = BANDS) -> np.ndarray:
    """Each image's spectrum in ``bands`` equal radial bands over (0, sqrt 2] Nyquist units (DC
    left out): the log of a band's mean power minus the log of the total power, so brightness
    and contrast cancel. ``images`` as ``gray_power_spectrum``. Returns float64 (N, bands)."""
    power, radius = gray_power_spectrum(images)
    power, radius = power.double(), radius.double()
    edges = torch.linspace(0.0, 2.0**0.5, bands + 1, dtype=torch.float64)
    total = power.sum(dim=(-2, -1)).clamp_min(1e-20)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        band = ((radius > lo) & (radius <= hi)).double()
        mean = (power * band).sum(dim=(-2, -1)) / band.sum()
        out.append(torch.log(mean + 1e-20) - torch.log(total))
    return torch.stack(out, dim=1).numpy()


def fit_residual(train_reals: Tensor, ridge: float = 1e-3) -> np.ndarray:
    """Least squares (with intercept, a small ridge) from the lower half of the radial bands to
    the mean of the upper half, over real patches: what a real photo's fine detail is for its
    coarser content. Returns the coefficients (1 + BANDS // 2,)."""
    e = radial_band_log_energy(train_reals)
    design, high = _split_bands(e)
    gram = design.T @ design + ridge * len(e) * np.eye(design.shape[1])
    return np.linalg.solve(gram, design.T @ high)


def _split_bands(e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The residual line's inputs (a 1 for the intercept, then the lower half of the bands)
    and its target (the upper half's mean), from :func:`radial_band_log_energy`'s rows."""
    design = np.hstack([np.ones((len(e), 1)), e[:, : BANDS // 2]])
    return design, e[:, BANDS // 2 :].mean(axis=1)


def residual_feature(images: Tensor, coef: np.ndarray) -> np.ndarray:
    """The upper bands' mean log energy minus what :func:`fit_residual`'s line predicts from
    the lower bands: below 0 = smoother than real photos with this content."""
    design, high = _split_bands(radial_band_log_energy(images))
    return high - design @ coef


Fit = np.ndarray | BlindSpotPredictor | None


def fit_prior(
    name: str, train_reals: Tensor, surprise_fit: Mapping[str, Any] = SURPRISE_FIT
) -> Fit:
    """What the prior ``name`` learns from the train split's real patches (nothing for
    ``hf``); ``surprise_fit``: :func:`fit_blind_spot`'s settings."""
    name, _ = base_prior(name)
    if name == "residual":
        return fit_residual(train_reals)
    if name == "surprise":
        return fit_blind_spot(train_reals, **surprise_fit)
    if name == "hf":
        return None
    raise ValueError(f"unknown prior {name!r}; expected one of {PRIORS}")


def prior_feature(name: str, images: Tensor, fit: Fit) -> np.ndarray:
    """The prior ``name`` of :data:`PRIORS` (lower = smoother = the fake direction), with
    ``fit`` from :func:`fit_prior`."""
    name, _ = base_prior(name)
    if name == "hf":
        return hf_energy_feature(images)
    if name == "residual":
        if not isinstance(fit, np.ndarray):
            raise ValueError("the residual prior needs its fit on real patches (fit_residual)")
        return residual_feature(images, fit)
    if name == "surprise":
        if not isinstance(fit, BlindSpotPredictor):
            raise ValueError("the surprise prior needs its predictor (fit_blind_spot)")
        return coding_surprise(fit, images)
    raise ValueError(f"unknown prior {name!r}; expected one of {PRIORS}")


def _logits(model: torch.nn.Module, images: Tensor, views: str) -> np.ndarray:
    with torch.no_grad():
        return view_logits(model, images, views).double().numpy()


def fold_aucs(
    bench: Any,
    family: str,
    model: torch.nn.Module,
    priors: Mapping[str, Fit],
    weights: Sequence[float],
    scores: Scores | None = None,
) -> dict[str, dict[float, float]]:
    """Per prior, the validation AUC of ``fused`` at each weight, reals against ``family``'s
    fakes, for a network that did not train on ``family`` (one view). ``priors``: name -> its
    :func:`fit_prior`; ``scores``: as for :func:`member_report` (a prior's two forms share
    one feature)."""
    scores = Scores() if scores is None else scores
    val = bench.split("val", [family])
    z, labels = scores.logits(model, val.images, "one"), val.labels.numpy()
    out = {}
    for name, fit in priors.items():
        f = scores.feature(name, val.images, fit)
        stats = real_stats(z[labels == 0], f[labels == 0])
        one_sided = base_prior(name)[1]
        out[name] = {
            w: float(roc_auc_score(labels, fused(z, f, stats, w, one_sided))) for w in weights
        }
    return out


class Scores:
    """Logits and prior features computed once per model (or fit) and image set, however many
    priors and weights are scored on them: the same numbers as computing them each time (the
    evaluation is deterministic), keyed by the images' bytes since each split is built anew
    (:class:`experiments.score_cache.ScoreCache`)."""

    def __init__(self) -> None:
        self._cache = ScoreCache()

    def logits(self, model: torch.nn.Module, images: Tensor, views: str) -> np.ndarray:
        return self._cache.get(
            ("z", id(model), views), images, lambda: _logits(model, images, views)
        )

    def feature(self, name: str, images: Tensor, fit: Fit) -> np.ndarray:
        base = base_prior(name)[0]
        return self._cache.get(
            ("f", base, id(fit)), images, lambda: prior_feature(base, images, fit)
        )


def member_report(
    bench: Any,
    model: torch.nn.Module,
    views: str,
    prior: str,
    fit: Fit,
    weight: float,
    scores: Scores | None = None,
) -> dict:
    """The protocol's zero-shot report of ``fused`` with ``prior`` at ``weight``, with the real
    statistics taken from the validation reals. ``scores``: a :class:`Scores` shared by the
    calls on one model (the models and fits must outlive it)."""
    scores = Scores() if scores is None else scores
    families = family_split(bench.config)
    val = bench.split("val", families.seen)
    reals = val.images[val.labels == 0]
    stats = real_stats(scores.logits(model, reals, views), scores.feature(prior, reals, fit))

    def scorer(images: Tensor) -> np.ndarray:
        z = scores.logits(model, images, views)
        f = scores.feature(prior, images, fit)
        return fused(z, f, stats, weight, base_prior(prior)[1])

    report = zero_shot_report(scorer, bench, families, per_photo=True)
    return {"stats": asdict(stats), **report}


def best_weights(folds: Mapping[str, Mapping[str, Mapping[float, float]]]) -> dict[str, float]:
    """Each prior's weight by :func:`choose_weight` (``folds``: ``{family: {prior: {weight:
    AUC}}}``), in the folds' order of priors."""
    priors = list(next(iter(folds.values())))
    return {n: choose_weight({fam: aucs[n] for fam, aucs in folds.items()}) for n in priors}


def choose(folds: Mapping[str, Mapping[str, Mapping[float, float]]]) -> tuple[str, float]:
    """The (prior, weight) with the best mean AUC over the folds: each prior at its
    :func:`best_weights` weight, then the prior that scores best there (ties: the earlier
    prior in the folds' order)."""
    best = best_weights(folds)
    priors = list(best)
    mean = {n: statistics.mean(aucs[n][best[n]] for aucs in folds.values()) for n in priors}
    name = max(priors, key=lambda n: (mean[n], -priors.index(n)))
    return name, best[name]


@reads_files
def _fold_spec(text: str) -> tuple[str, Path]:
    family, sep, path = text.partition("=")
    if not sep or family not in SEEN:
        raise argparse.ArgumentTypeError(f"expected FAMILY=PATH with FAMILY one of {SEEN}")
    return family, Path(path)


def markdown(record: dict[str, Any], command: str) -> str:
    """The section: the folds' AUC for each prior and weight, the choice, and the members'
    test scores alone and with each prior at its fold-chosen weight."""
    folds, best, chosen = record["folds"], record["best"], record["chosen"]
    priors = list(best)
    weights = sorted({float(w) for f in folds for w in f["aucs"][priors[0]]})
    attribution = record.get("attribution", 0.0)  # records before the option had none
    trained = f" (networks trained with family attribution {attribution:g})" if attribution else ""
    model = record.get("model", DEFAULT_MODEL)  # records before the field: the default's
    if model != DEFAULT_MODEL:
        trained = f" ({model} networks" + (
            f", trained with family attribution {attribution:g})" if attribution else ")"
        )
    note = f" ({record['note']})" if record.get("note") else ""
    lines = [
        "## Detector with a training-free prior, weighted by leave-one-family-out validation"
        + trained
        + note,
        "",
        f"Regenerate: {command}",
        "",
        "Fused score `z / sd_z - w (f - mu_f) / sd_f`: `z` the detector's logit, `f` a prior "
        "feature (lower = smoother), statistics over the validation reals. Priors: `hf`, the "
        "shortcut section's feature (log fraction of spectral energy above half Nyquist); "
        "`residual`, the upper four of eight radial bands' mean log energy minus what a line "
        "fit on the train split's reals predicts from the lower four; `surprise`, the mean "
        "`abs(x - mu) / b` of a blind-spot Laplace pixel predictor fit on the train split's "
        "reals (ZED's coding-cost statistic). A prior marked `/one-sided` enters as "
        "`min(0, (f - mu_f) / sd_f)`: only patches smoother than the reals' mean move "
        "(added 2026-12-04, after the linear forms' results). `w` and the prior are "
        "chosen on the seen families only: each fold's network (same recipe) trained on three "
        "of the four seen families, scored on the validation reals against the fourth's fakes.",
        "",
        "| left-out seen family | prior | " + " | ".join(f"w = {w:g}" for w in weights) + " |",
        "|---|---|" + "---:|" * len(weights),
    ]
    for name in priors:
        for f in folds:
            cells = " | ".join(f"{f['aucs'][name][str(w)]:.3f}" for w in weights)
            lines.append(f"| {f['family']} (seed {f['seed']}) | {name} | {cells} |")
        means = [statistics.mean(f["aucs"][name][str(w)] for f in folds) for w in weights]
        lines.append(f"| **mean** | {name} | " + " | ".join(f"{m:.3f}" for m in means) + " |")
    lines += [
        "",
        "Best weight per prior: "
        + ", ".join(f"`{name}` {w:g}" for name, w in best.items())
        + f". Chosen: **`{chosen['prior']}` at w = {chosen['weight']:g}**.",
        "",
    ]
    members = [m for m in record["members"] if m.get("kind", "network") == "network"]
    ensembles = [m for m in record["members"] if m.get("kind") == "ensemble"]
    # records before --test-photos scored the benchmark's test split
    scored_on = {
        "fresh": "the fresh test photos (" + ", ".join(FRESH_PHOTO_NAMES) + ": the benchmark's "
        "recipe on photos no study had scored, `assocmem.forensic.data.fresh`)",
        "validation": "the validation split in place of the test split (no zero-shot study "
        "had read its held-out families' fakes; the members early-stopped on its reals and the "
        "thresholds are set on them, so the FPR column is the calibration's own: "
        "`assocmem.forensic.data.validation_test`)",
    }.get(record.get("test_photos"), "test split")
    if members:
        seeds = sorted({str(m["seed"]) for m in members}, key=lambda s: (len(s), s))
        lines += [
            f"Members: {members[0]['recipe_label']}, trained on every seen family, seeds "
            f"{', '.join(seeds)}; {scored_on}, mean ± std over the members.",
            "",
            *_member_table(members, chosen),
        ]
    if ensembles:
        groups = sorted({str(m["seed"]) for m in ensembles}, key=lambda s: (len(s), s))
        # Ensembles may share members (seeds 0-4, 5-9 and 0-9), so a spread over them is no
        # spread over independent draws: several get a table each.
        lines += [
            "",
            f"Ensembles (mean logit of the members, `experiments.detector_ensemble`): "
            f"{ensembles[0]['recipe_label']}, seeds {'; '.join(groups)}; the prior enters at the "
            "weight its folds chose for one network (not re-chosen: the folds are single "
            f"networks); {scored_on}, "
            + (
                "mean ± std over the ensembles."
                if len(groups) == 1
                else "one table per ensemble (they may share members: no spread is taken "
                "over them)."
            ),
        ]
        for group in groups:
            heading = [] if len(groups) == 1 else ["", f"Ensemble of seeds {group}:"]
            lines += [
                *heading,
                "",
                *_member_table([m for m in ensembles if str(m["seed"]) == group], chosen),
            ]
    lines += _photo_table(ensembles or members, chosen)
    return "\n".join(lines) + "\n"


def _photo_table(scored: list[dict[str, Any]], chosen: dict[str, Any]) -> list[str]:
    """Each test photo on its own (``protocol.per_photo_metrics``), for every ensemble (else
    every network) alone and with the chosen prior: seen and held-out AUC of the photo's reals
    against the fakes made from them, and its reals' FPR at the threshold. Records from before
    the per-photo scores have none: no table."""
    rows = [
        m
        for m in scored
        if "per_photo" in m["report"]
        and (m["weight"] == 0 or (m["prior"], m["weight"]) == (chosen["prior"], chosen["weight"]))
    ]
    if not rows:
        return []
    photos = list(rows[0]["report"]["per_photo"])
    kind = "ensemble" if rows[0].get("kind") == "ensemble" else "network"
    lines = [
        "",
        "Per photo (`protocol.per_photo_metrics`): each photo's reals against the fakes made from "
        "them, mean AUC over the seen / held-out families, and its reals' FPR at the threshold "
        "(the pooled tables rank every photo's reals against every photo's fakes).",
        "",
        f"| {kind} | views | prior | "
        + " | ".join(
            f"{p} ({rows[0]['report']['per_photo'][p]['reals']} reals): seen / held out / FPR"
            for p in photos
        )
        + " |",
        "|---|---|---|" + "---|" * len(photos),
    ]
    for m in rows:
        cells = []
        for photo in photos:
            r = m["report"]["per_photo"][photo]
            aucs = " / ".join("–" if r[g] is None else f"{r[g]:.3f}" for g in ("seen", "heldout"))
            cells.append(f"{aucs} / {r['real_fpr']:.3f}")
        label = "none" if m["weight"] == 0 else f"{m['prior']} (chosen), w = {m['weight']:g}"
        lines.append(f"| {m['seed']} | {m['views']} | {label} | " + " | ".join(cells) + " |")
    return lines


def _member_table(members: list[dict[str, Any]], chosen: dict[str, Any]) -> list[str]:
    """One row per (views, prior, weight): mean ± std over ``members`` of the seen and held-out
    means, the test-real FPR and each family's AUC."""
    lines = [
        "| views | prior | w | seen AUC | held-out AUC | test-real FPR | "
        + " | ".join(f"{f}{' (held out)' if f in HELDOUT else ''}" for f in (*SEEN, *HELDOUT))
        + " |",
        "|---|---|---|---|---|---|" + "---|" * (len(SEEN) + len(HELDOUT)),
    ]
    for views in dict.fromkeys(m["views"] for m in members):
        for prior, w in dict.fromkeys((m["prior"], m["weight"]) for m in members):
            rows = [
                m["report"]
                for m in members
                if (m["views"], m["prior"], m["weight"]) == (views, prior, w)
            ]
            cells = [
                _ms([r["seen"]["mean"]["auc"] for r in rows]),
                _ms([r["heldout"]["mean"]["auc"] for r in rows]),
                _ms([r["test_real_fpr"] for r in rows]),
            ]
            for fam in (*SEEN, *HELDOUT):
                group = "seen" if fam in SEEN else "heldout"
                cells.append(_ms([r[group][fam]["auc"] for r in rows]))
            mark = " (chosen)" if (prior, w) == (chosen["prior"], chosen["weight"]) else ""
            label = "none" if w == 0 else prior
            lines.append(f"| {views} | {label}{mark} | {w:g} | " + " | ".join(cells) + " |")
    return lines


@reads_files
def _ensemble_spec(text: str) -> list[Path]:
    paths = [Path(p) for p in text.split(",") if p]
    if len(paths) < 2:
        raise argparse.ArgumentTypeError(f"an ensemble is W1,W2[,...] (two or more), got {text!r}")
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fold", type=_fold_spec, nargs="+", default=[], metavar="FAMILY=PATH")
    parser.add_argument("--members", type=input_path, nargs="+", default=[])
    parser.add_argument(
        "--ensemble",
        type=_ensemble_spec,
        nargs="+",
        default=[],
        metavar="W1,W2,...",
        help="also score deep ensembles of members (each a comma-separated list of weights)",
    )
    parser.add_argument("--weights", type=float, nargs="+", default=list(WEIGHTS))
    parser.add_argument("--priors", nargs="+", default=list(PRIORS), choices=PRIORS)
    parser.add_argument("--views", nargs="+", default=["one"], choices=VIEWS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tiny", action="store_true", help="the seconds-long test benchmark")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument(
        "--test-photos",
        choices=TEST_PHOTOS,
        default="benchmark",
        help="score the members on the benchmark's test split, on the fresh test photos "
        "(assocmem.forensic.data.fresh) or on the validation split (its held-out families' "
        "fakes: assocmem.forensic.data.validation_test); folds, priors and thresholds use "
        "validation either way",
    )
    parser.add_argument("--json", type=output_path, help="write the record here")
    parser.add_argument("--from-json", type=input_path, help="render a record written before")
    parser.add_argument("--write", type=output_path, help="markdown file whose section to refresh")
    parser.add_argument(
        "--section",
        default=SECTION,
        help=f"the section of --write to refresh (default {SECTION}; another name keeps a second "
        "study, e.g. of other fold networks, beside it)",
    )
    parser.add_argument(
        "--note",
        help="what else sets this study apart, added to its title (e.g. 'members trained with "
        "patience 8'; a record's own note unless given)",
    )
    args = parser.parse_args(argv)
    refuse_unreplaceable(parser, args.write, args.section)
    # before anything is read: --write onto the --from-json record appended markdown to it,
    # --json onto a member wrote over its weights
    refuse_clashes(parser, args)
    # a network named twice was two members, its spread over itself reported as 0
    for flag, names in (("--members", [str(p.resolve()) for p in args.members]),
                        ("--views", args.views)):  # fmt: skip
        if len(set(names)) < len(names):
            parser.error(f"{flag} names one twice: {names}")
    # shlex.join: an argument with spaces (a --note) comes back quoted, ready to paste
    command = "`python -m experiments.detector_prior " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    if args.from_json:
        record = read_record(parser, args.from_json, ("command", "folds", "members"))
        command = f"`{record['command']}`, then " + command.strip() + "`"
        if args.note:
            record["note"] = args.note
    else:
        record = _measure(parser, args)
        record["command"] = command.strip()[1:]
        if args.note:
            record["note"] = args.note
        command = command.strip() + "`"
        if args.json:
            write_json(args.json, record)
    text = markdown(record, command)
    print(text)
    if args.write:
        replace_section(args.write, args.section, text)


def _fold_problem(family: str, path: Any, head: dict[str, Any]) -> str | None:
    """Why ``path`` cannot be the fold network that leaves ``family`` out, or ``None``. Its
    header's families must be the seen ones but ``family``; a header from before it recorded
    them (``load_member`` then fills in every seen family) is taken on trust, with a warning."""
    recorded = json.loads(read_safetensors(Path(path), "detector weights")[0]["assocmem"])
    if "seen" not in recorded:
        warnings.warn(
            f"{path} records no training families: cannot check that it left {family} out",
            stacklevel=2,
        )
        return None
    want = sorted(set(SEEN) - {family})
    if sorted(head["seen"]) != want:
        return (
            f"--fold {family}={path} trained on {head['seen']}, not on the seen families but "
            f"{family} ({want}): leave-one-family-out validation would leak"
        )
    return None


def _measure(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    if not all(math.isfinite(w) and w >= 0 for w in args.weights):
        parser.error(f"--weights must be finite and >= 0 (0 is the detector alone): {args.weights}")
    families = [family for family, _ in args.fold]
    counts = {fam: families.count(fam) for fam in SEEN}
    if set(families) != set(SEEN) or len(set(counts.values())) != 1 or not args.members:
        parser.error(
            f"need the same number of --fold networks for every seen family {SEEN} "
            f"(got {counts}) and at least one --members"
        )
    torch.set_num_threads(args.threads)
    try:  # a missing or foreign file is a usage error, named, before anything is scored
        loaded = [(fam, *load_member(path)) for fam, path in args.fold]
        members = [load_member(path) for path in args.members]
        ensembles = [ensemble_of(paths) for paths in args.ensemble]
    except (OSError, ValueError) as e:
        parser.error(str(e))
    runs = [(fam, head["seed"]) for fam, head, _ in loaded]
    if len(set(runs)) != len(runs):
        parser.error(f"a fold network repeats a family and seed: {sorted(runs)}")
    fold_heads = [h for _, h, _ in loaded]
    member_heads = [h for h, _ in (*members, *ensembles)]
    # one recipe but for the families seen (a fold network leaves its own family out) and the
    # early-stopping patience: the folds that choose a prior are the adoption rule's (patience
    # 4) and the members may be trained longer (the recipe's 8), but each side agrees within
    shared = [k for k in RECIPE if k not in ("seen", "patience")]
    recipes = {json.dumps([h[k] for k in shared]) for h in fold_heads + member_heads}
    if len(recipes) != 1:
        parser.error(f"the folds and members must be one recipe, got {sorted(recipes)}")
    for side, side_heads in (("fold networks", fold_heads), ("members", member_heads)):
        patiences = sorted({json.dumps(h["patience"]) for h in side_heads})
        if len(patiences) > 1:
            parser.error(f"the {side} must share one patience, got {', '.join(patiences)}")
    for head, _ in (*members, *ensembles):
        if sorted(head["seen"]) != sorted(SEEN):
            parser.error(f"a member must have trained on every seen family {SEEN}: {head['seen']}")
    for (fam, path), (_, head, _) in zip(args.fold, loaded, strict=True):
        problem = _fold_problem(fam, path, head)
        if problem:
            parser.error(problem)
    header = members[0][0]
    config = BenchmarkConfig.tiny() if args.tiny else BenchmarkConfig()
    bench = build_benchmark(config, args.cache_dir)
    if args.test_photos == "fresh":  # the test split replaced; train and validation the same
        bench = with_fresh_test(bench)
    elif args.test_photos == "validation":  # the validation split scored as the test split
        bench = with_validation_test(bench)
    train = bench.split("train", [SEEN[0]])
    train_reals = train.images[train.labels == 0]
    # --tiny: a few predictor steps, for the seconds-long test benchmark
    surprise_fit = {**SURPRISE_FIT, "steps": 20} if args.tiny else SURPRISE_FIT
    base_fits = {
        base: fit_prior(base, train_reals, surprise_fit)
        for base in dict.fromkeys(base_prior(name)[0] for name in args.priors)
    }
    fits = {name: base_fits[base_prior(name)[0]] for name in args.priors}
    scores = Scores()  # the models and fits live until the end of this function
    folds, by_fold = [], {}
    for fam, head, model in loaded:
        by_fold[f"{fam} seed {head['seed']}"] = aucs = fold_aucs(
            bench, fam, model, fits, args.weights, scores
        )
        folds.append({
            "family": fam, "seed": head["seed"],
            "aucs": {n: {str(w): a for w, a in per.items()} for n, per in aucs.items()},
        })  # fmt: skip
        for name, per in aucs.items():
            print(
                f"fold {fam} seed {head['seed']} {name}: "
                + ", ".join(f"w {w:g} {a:.3f}" for w, a in per.items())
            )
    best = best_weights(by_fold)
    prior, weight = choose(by_fold)
    label = (
        f"{header['model']}, {header['optimizer']} (lr {header['lr']:g}), "
        f"weight average {header['average']}"
        + (f", family attribution {header['attribution']:g}" if header["attribution"] else "")
    )
    settings = [(args.priors[0], 0.0)] + [(n, w) for n, w in best.items() if w > 0]
    scored = []
    to_score = [
        ("network", head, model, str(path))
        for (head, model), path in zip(members, args.members, strict=True)
    ] + [
        ("ensemble", head, model, ",".join(map(str, paths)))
        for (head, model), paths in zip(ensembles, args.ensemble, strict=True)
    ]
    for kind, head, model, path in to_score:
        for views in args.views:
            for name, w in settings:
                report = member_report(bench, model, views, name, fits[name], w, scores)
                scored.append({
                    "kind": kind, "seed": head["seed"], "path": path, "views": views,
                    "prior": name,
                    "weight": w, "recipe_label": label, "report": report,
                })  # fmt: skip
                print(
                    f"member seed {head['seed']} views {views} {name} w {w:g}: seen "
                    f"{report['seen']['mean']['auc']:.3f} held out "
                    f"{report['heldout']['mean']['auc']:.3f}",
                    flush=True,
                )
    return {
        "priors": {n: _fit_record(c, surprise_fit) for n, c in fits.items()},
        "folds": folds,
        "best": best,
        "chosen": {"prior": prior, "weight": weight},
        "attribution": header["attribution"],
        "model": header["model"],
        "test_photos": args.test_photos,
        "members": scored,
    }


def _fit_record(fit: Fit, surprise_fit: Mapping[str, Any]) -> Any:
    """What the record keeps of a prior's fit: the residual line's coefficients; the
    predictor's settings (its weights are refit from them, deterministically); nothing for
    ``hf``."""
    if isinstance(fit, np.ndarray):
        return fit.tolist()
    if isinstance(fit, BlindSpotPredictor):
        return dict(surprise_fit)
    return None


if __name__ == "__main__":
    main()
