"""A training-free spectral prior beside the detector, weighted without the held-out families.

The held-out misses are the smoothing families (``resample``, ``denoiser``); the shortcut
baseline's one feature, the log fraction of spectral energy above half Nyquist
(``assocmem.forensic.data.baseline.hf_energy_feature``, lower = smoother), needs no training.
Fused with the detector's logit ``z`` it gives the score

    s_w(x) = z(x) / sd_z  -  w (f(x) - mu_f) / sd_f,

``sd_z``, ``mu_f``, ``sd_f`` over the validation reals (no family sets them). The question is
``w``, and it must be answered without the held-out families. A fit on the seen families' own
validation fakes asks the wrong question (the network already detects them, so the prior adds
nothing there); what matters is what the prior adds on a family the network never saw. So
``w`` is chosen by leave-one-family-out validation over the seen families (the "leave one
domain out" model selection of domain generalisation): for each seen family ``k`` a detector of
the same recipe is trained on the other seen families only (``experiments.detectors --seen``),
and ``s_w``'s validation AUC on the reals against ``k``'s fakes measures ``w`` on a family that
network did not train on. ``w`` = the grid point with the best mean over the folds (ties to the
smaller). The members, networks of the recipe trained on every seen family, are then scored
on the test split at ``w = 0`` (the detector alone) and at the chosen ``w``, threshold from the
validation reals as always (``assocmem.forensic.protocol``). Nothing here reads a held-out
family before the members' test scores.

    python -m experiments.detector_prior --fold ae_transconv=F1 ... --members W0 W1 W2 \\
        --views one d4 --json P.json [--write docs/results.md]
    python -m experiments.detector_prior --from-json P.json --write docs/results.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import Tensor

from assocmem.forensic.data import BenchmarkConfig, build_benchmark
from assocmem.forensic.data.baseline import hf_energy_feature
from assocmem.forensic.protocol import zero_shot_report
from assocmem.forensic.views import VIEWS, view_logits
from experiments.detector_ensemble import RECIPE, load_member
from experiments.detectors import HELDOUT, SEEN, _ms, family_split
from experiments.report import replace_section

SECTION = "detector-prior"
WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0)


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


def fused(z: np.ndarray, f: np.ndarray, stats: RealStats, weight: float) -> np.ndarray:
    """``z / sd_z - weight (f - mu_f) / sd_f``: higher = more fake, both terms in units of the
    reals' spread; the feature enters negated because smoother (lower ``f``) is the fake
    direction for every family the shortcut baseline measures."""
    return z / stats.sd_z - weight * (f - stats.mu_f) / stats.sd_f


def choose_weight(fold_aucs: Mapping[str, Mapping[float, float]]) -> float:
    """The weight with the best mean AUC over the folds (ties: the smaller weight, i.e. the
    less prior). Every fold must have tried the same weights."""
    if not fold_aucs:
        raise ValueError("no folds")
    grids = {tuple(sorted(a)) for a in fold_aucs.values()}
    if len(grids) != 1:
        raise ValueError(f"the folds tried different weights: {sorted(grids)}")
    weights = next(iter(grids))
    means = {w: statistics.mean(a[w] for a in fold_aucs.values()) for w in weights}
    return min(weights, key=lambda w: (-means[w], w))


def _features(model: torch.nn.Module, images: Tensor, views: str) -> tuple[np.ndarray, ...]:
    with torch.no_grad():
        z = view_logits(model, images, views).double().numpy()
    return z, hf_energy_feature(images)


def fold_aucs(bench: Any, family: str, model: torch.nn.Module, weights: Sequence[float]) -> dict:
    """Validation AUC of ``fused`` at each weight, reals against ``family``'s fakes, for a
    network that did not train on ``family`` (one view)."""
    val = bench.split("val", [family])
    z, f = _features(model, val.images, "one")
    labels = val.labels.numpy()
    stats = real_stats(z[labels == 0], f[labels == 0])
    return {w: float(roc_auc_score(labels, fused(z, f, stats, w))) for w in weights}


def member_report(bench: Any, model: torch.nn.Module, views: str, weight: float) -> dict:
    """The protocol's zero-shot report of ``fused`` at ``weight``, with the real statistics
    taken from the validation reals."""
    families = family_split(bench.config)
    val = bench.split("val", families.seen)
    reals = val.images[val.labels == 0]
    stats = real_stats(*_features(model, reals, views))

    def scorer(images: Tensor) -> np.ndarray:
        return fused(*_features(model, images, views), stats, weight)

    return {"stats": asdict(stats), **zero_shot_report(scorer, bench, families)}


def _fold_spec(text: str) -> tuple[str, Path]:
    family, sep, path = text.partition("=")
    if not sep or family not in SEEN:
        raise argparse.ArgumentTypeError(f"expected FAMILY=PATH with FAMILY one of {SEEN}")
    return family, Path(path)


def markdown(record: dict[str, Any], command: str) -> str:
    """The section: the folds' AUC at each weight, the choice, and the members' test scores at
    ``w = 0`` and at the chosen weight."""
    folds, chosen = record["folds"], record["chosen_weight"]
    weights = sorted({float(w) for f in folds for w in f["aucs"]})
    lines = [
        "## Detector with a spectral prior, weighted by leave-one-family-out validation",
        "",
        f"Regenerate: {command}",
        "",
        "Fused score `z / sd_z - w (f - mu_f) / sd_f`: `z` the detector's logit, `f` the shortcut "
        "section's feature (log fraction of spectral energy above half Nyquist), statistics over "
        "the validation reals. `w` is chosen on the seen families only: each fold's network "
        "(same recipe) trained on three of the four seen families, scored on the validation "
        "reals against the fourth's fakes.",
        "",
        "| left-out seen family | " + " | ".join(f"w = {w:g}" for w in weights) + " |",
        "|---|" + "---:|" * len(weights),
    ]
    for f in folds:
        cells = " | ".join(f"{f['aucs'][str(w)]:.3f}" for w in weights)
        lines.append(f"| {f['family']} (seed {f['seed']}) | {cells} |")
    means = [statistics.mean(f["aucs"][str(w)] for f in folds) for w in weights]
    lines.append("| **mean** | " + " | ".join(f"{m:.3f}" for m in means) + " |")
    lines += ["", f"Chosen weight: **w = {chosen:g}**.", ""]
    members = record["members"]
    seeds = sorted({m["seed"] for m in members})
    lines += [
        f"Members: {members[0]['recipe_label']}, trained on every seen family, seeds "
        f"{', '.join(map(str, seeds))}; test split, mean ± std over the members.",
        "",
        "| views | w | seen AUC | held-out AUC | test-real FPR | "
        + " | ".join(f"{f}{' (held out)' if f in HELDOUT else ''}" for f in (*SEEN, *HELDOUT))
        + " |",
        "|---|---|---|---|---|" + "---|" * (len(SEEN) + len(HELDOUT)),
    ]
    for views in dict.fromkeys(m["views"] for m in members):
        for w in dict.fromkeys(sorted(m["weight"] for m in members)):
            rows = [m["report"] for m in members if m["views"] == views and m["weight"] == w]
            cells = [
                _ms([r["seen"]["mean"]["auc"] for r in rows]),
                _ms([r["heldout"]["mean"]["auc"] for r in rows]),
                _ms([r["test_real_fpr"] for r in rows]),
            ]
            for fam in (*SEEN, *HELDOUT):
                group = "seen" if fam in SEEN else "heldout"
                cells.append(_ms([r[group][fam]["auc"] for r in rows]))
            lines.append(f"| {views} | {w:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fold", type=_fold_spec, nargs="+", default=[], metavar="FAMILY=PATH")
    parser.add_argument("--members", type=Path, nargs="+", default=[])
    parser.add_argument("--weights", type=float, nargs="+", default=list(WEIGHTS))
    parser.add_argument("--views", nargs="+", default=["one"], choices=VIEWS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tiny", action="store_true", help="the seconds-long test benchmark")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--json", type=Path, help="write the record here")
    parser.add_argument("--from-json", type=Path, help="render a record written before")
    parser.add_argument("--write", type=Path, help="markdown file whose section to refresh")
    args = parser.parse_args(argv)
    command = "`python -m experiments.detector_prior " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    if args.from_json:
        record = json.loads(args.from_json.read_text())
        command = f"`{record['command']}`, then " + command.strip() + "`"
    else:
        record = _measure(parser, args)
        record["command"] = command.strip()[1:]
        command = command.strip() + "`"
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(record, indent=1, default=float))
    text = markdown(record, command)
    print(text)
    if args.write:
        replace_section(args.write, SECTION, text)


def _measure(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    families = [family for family, _ in args.fold]
    if sorted(families) != sorted(SEEN) or not args.members:
        parser.error(f"need one --fold per seen family {SEEN} and at least one --members")
    torch.set_num_threads(args.threads)
    loaded = {fam: load_member(path) for fam, path in args.fold}
    members = [load_member(path) for path in args.members]
    recipes = {json.dumps([h[k] for k in RECIPE]) for h, _ in (*loaded.values(), *members)}
    if len(recipes) != 1:
        parser.error(f"the folds and members must be one recipe, got {sorted(recipes)}")
    header = members[0][0]
    config = BenchmarkConfig.tiny() if args.tiny else BenchmarkConfig()
    bench = build_benchmark(config, args.cache_dir)
    folds, by_family = [], {}
    for fam, (head, model) in loaded.items():
        by_family[fam] = aucs = fold_aucs(bench, fam, model, args.weights)
        folds.append(
            {"family": fam, "seed": head["seed"], "aucs": {str(w): a for w, a in aucs.items()}}
        )
        print(f"fold {fam}: " + ", ".join(f"w {w:g} {a:.3f}" for w, a in aucs.items()), flush=True)
    chosen = choose_weight(by_family)
    label = (
        f"{header['model']}, {header['optimizer']} (lr {header['lr']:g}), "
        f"weight average {header['average']}"
    )
    scored = []
    for (head, model), path in zip(members, args.members, strict=True):
        for views in args.views:
            for w in dict.fromkeys((0.0, chosen)):
                report = member_report(bench, model, views, w)
                scored.append({
                    "seed": head["seed"], "path": str(path), "views": views, "weight": w,
                    "recipe_label": label, "report": report,
                })  # fmt: skip
                print(
                    f"member seed {head['seed']} views {views} w {w:g}: seen "
                    f"{report['seen']['mean']['auc']:.3f} held out "
                    f"{report['heldout']['mean']['auc']:.3f}",
                    flush=True,
                )
    return {"folds": folds, "chosen_weight": chosen, "members": scored}


if __name__ == "__main__":
    main()
