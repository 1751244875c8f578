"""Score a deep ensemble of trained detectors (the mean of their logits) zero-shot.

The members are weights files written by ``experiments.detectors --save-weights`` from runs of
one recipe (every entry of ``WEIGHTS_RECIPE`` the same: detector, optimizer, lr, weight average,
training families, paired batches, patience, ...; different seeds). Files written before their
header held the whole recipe take the missing entries from their run records (``--records``,
the JSON files ``experiments.detectors --json`` wrote, matched by the weights path they name),
or else the values those runs had by default (patience then stays unknown). Their mean logit
(``assocmem.forensic.models.ensemble.LogitEnsemble``) is calibrated on the validation reals and
scored on the test split exactly as one detector is (``assocmem.forensic.protocol``), so the
records render in the detectors table (``python -m experiments.detectors --from-json``) as the
row "DETECTOR (ensemble of K)". Nothing is trained here: the members' training, early stopping
and weight choice saw only the seen families, and so does the ensemble's threshold.

    python -m experiments.detector_ensemble --members W0 W3 W6 --views one d4 --json E0.json
    python -m experiments.detector_ensemble --members W0 W1 --records R0.json R1.json --json E.json

The ensemble is scored on its members' split: trained on other families than the default seen
ones (``--seen``), its held-out group is theirs, never a family they trained on.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from assocmem.forensic.data import BenchmarkConfig, build_benchmark
from assocmem.forensic.models.ensemble import LogitEnsemble
from assocmem.forensic.models.one_class import margin_bce, margin_of
from assocmem.forensic.protocol import balanced, zero_shot_report
from assocmem.forensic.train import fake_probability, logits
from assocmem.forensic.views import VIEWS, view_logits
from assocmem.storage import read_safetensors
from experiments.cli_files import input_path, output_path, refuse_clashes
from experiments.detectors import (
    LEGACY_DEFAULTS,
    MODELS,
    SEEN,
    WEIGHTS_RECIPE,
    family_split,
    group_mean,
    recipe_of,
)
from experiments.report import read_runs, write_json

# What every member must share: an ensemble row stands for one recipe.
RECIPE = WEIGHTS_RECIPE
# What every weights file's header has held since ``--save-weights`` existed.
ALWAYS_RECORDED = ("model", "patch_size", "optimizer", "lr", "average", "seed")


def records_by_weights(paths: list[Path]) -> dict[Path, dict[str, Any]]:
    """The run records in the JSON files ``paths`` that name a weights file, keyed by its
    resolved path (a ``ValueError`` naming a file that holds none)."""
    found: dict[Path, dict[str, Any]] = {}
    for path in paths:
        for record in read_runs(path, lone=True):
            if record.get("weights"):
                found[Path(record["weights"]).resolve()] = record
    return found


def add_records_option(parser: argparse.ArgumentParser) -> None:
    """``--records``: the run records of weights files whose header predates the whole recipe
    (read by :func:`records_by_weights`), for every command that loads members by recipe."""
    parser.add_argument(
        "--records",
        type=input_path,
        nargs="+",
        default=[],
        help="the members' run records (experiments.detectors --json), for weights whose header "
        "predates the whole recipe",
    )


def load_member(
    path: Path, record: dict[str, Any] | None = None
) -> tuple[dict[str, Any], nn.Module]:
    """The recipe header and the network of one weights file (strict: every tensor present,
    none extra, shapes equal). Entries the header lacks (written before it held them) come from
    ``record``, the run record that wrote the file, if given, else from
    :data:`experiments.detectors.LEGACY_DEFAULTS`; an entry both hold must agree."""
    metadata, tensors = read_safetensors(path, "detector weights")
    if "assocmem" not in metadata:
        raise ValueError(f"{path} has no assocmem header: not written by --save-weights")
    header = json.loads(metadata["assocmem"])
    missing = [k for k in ALWAYS_RECORDED if k not in header]
    if missing:
        raise ValueError(f"{path}: its header lacks {', '.join(missing)}")
    if record is not None:
        from_record = recipe_of(record) | {"seed": record.get("seed")}
        clash = [k for k in (*RECIPE, "seed") if k in header and header[k] != from_record[k]]
        if clash:
            raise ValueError(f"{path}: its header and its run record differ in {clash}")
        header = from_record | header
    header = LEGACY_DEFAULTS | header
    if header["model"] not in MODELS:
        raise ValueError(f"{path}: unknown detector {header['model']!r}")
    seen = header["seen"]
    if not (isinstance(seen, list) and seen and all(isinstance(f, str) for f in seen)):
        raise ValueError(f"{path}: its training families are not a list of names: {seen!r}")
    model = MODELS[header["model"]](header["patch_size"])
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:  # another network's tensors: a traceback the commands passed on
        first = str(e).strip().splitlines()[0]
        raise ValueError(
            f"{path}: its tensors are not a {header['model']} at patch {header['patch_size']} "
            f"({first})"
        ) from None
    return header, model.eval()


def ensemble_of(
    paths: list[Path], records: dict[Path, dict[str, Any]] | None = None
) -> tuple[dict[str, Any], LogitEnsemble]:
    """The shared recipe (with the members' seeds, steps and files) and the ensemble of the
    weights at ``paths``; ``records``: run records by resolved weights path
    (:func:`records_by_weights`), for headers written before they held the whole recipe.
    Raises ``ValueError`` if the members differ in recipe or repeat a seed (two copies of one
    run are not an ensemble)."""
    if not paths:
        raise ValueError("an ensemble needs at least one member")
    records = records or {}
    headers, members = zip(
        *(load_member(p, records.get(Path(p).resolve())) for p in paths), strict=True
    )
    for key in RECIPE:
        values = {json.dumps(h[key]) for h in headers}
        if len(values) > 1:
            raise ValueError(f"the members differ in {key}: {sorted(values)}")
    seeds = [h["seed"] for h in headers]
    if len(set(seeds)) < len(seeds):
        raise ValueError(f"the members repeat a seed: {seeds}")
    recipe = {key: headers[0][key] for key in RECIPE}
    if recipe["patience"] is None:  # unknown (an old header, no record): not claimed
        del recipe["patience"]
    recipe |= {
        "seed": "+".join(str(s) for s in seeds),
        "ensemble": seeds,
        "best_step": "+".join(str(h.get("best_step", "?")) for h in headers),
        "steps": "+".join(str(h.get("steps", "?")) for h in headers),
        "members": [str(p) for p in paths],
    }
    return recipe, LogitEnsemble(members).eval()


def validation_scores(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, margin: float = 0.0
) -> tuple[float, float]:
    """From one pass of ``model`` (eval mode) over ``images``: the binary cross-entropy of its
    logits with the members' ``margin`` (a one-class head's, 0 for a linear one), the loss the
    members were early-stopped on; and their ROC AUC, which unlike the loss compares detectors
    trained on different losses."""
    z = logits(model, images)
    return float(margin_bce(z, labels, margin)), float(roc_auc_score(labels.numpy(), z.numpy()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=input_path, nargs="+", required=True)
    add_records_option(parser)
    parser.add_argument("--views", nargs="+", default=["one"], choices=VIEWS)
    parser.add_argument("--target-fpr", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tiny", action="store_true", help="the seconds-long test benchmark")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--json", type=output_path, help="write the records here")
    args = parser.parse_args(argv)
    # before anything is read: --json onto a member wrote the records over its weights
    refuse_clashes(parser, args)
    if len({p.resolve() for p in args.members}) < len(args.members):
        parser.error(f"--members names one twice: {[str(p) for p in args.members]}")
    if len(set(args.views)) < len(args.views):  # scored twice, records detectors then refused
        parser.error(f"--views names one twice: {args.views}")
    command = "python -m experiments.detector_ensemble " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    torch.set_num_threads(args.threads)
    try:
        recipe, ensemble = ensemble_of(args.members, records_by_weights(args.records))
    except (ValueError, OSError) as e:  # a JSONDecodeError is a ValueError
        parser.error(str(e))
    config = BenchmarkConfig.tiny() if args.tiny else BenchmarkConfig()
    if recipe["patch_size"] != config.patch_size:
        config = dataclasses.replace(config, patch_size=recipe["patch_size"])
    bench = build_benchmark(config, args.cache_dir)
    # the members' split; the default one cut to what this benchmark builds
    seen = None if tuple(recipe["seen"]) == SEEN else recipe["seen"]
    try:
        families = family_split(config, seen)
    except ValueError as e:  # families this benchmark does not build
        parser.error(str(e))
    # The selection criterion the members were early-stopped on (seen families only): the
    # validation loss, here on one balanced draw (the first member's) for the ensemble and each
    # member alike, so the three numbers compare.
    x_val, y_val = balanced(bench.split("val", families.seen), seed=1000 + recipe["ensemble"][0])
    margin = margin_of(ensemble.members[0])  # one recipe: one margin
    recipe["val_loss"], recipe["val_auc"] = validation_scores(ensemble, x_val, y_val, margin)
    members = [validation_scores(m, x_val, y_val, margin) for m in ensemble.members]
    recipe["member_val_losses"] = [loss for loss, _ in members]
    recipe["member_val_aucs"] = [auc for _, auc in members]
    records = []
    for views in args.views:

        def scorer(images: torch.Tensor, views: str = views) -> torch.Tensor:
            # probabilities, so that the report also gives the FPR at 0.5
            return fake_probability(view_logits(ensemble, images, views))

        report = zero_shot_report(scorer, bench, families, target_fpr=args.target_fpr)
        records.append({**recipe, "views": views, "report": report, "command": command.strip()})
        print(
            f"ensemble of {len(args.members)} ({recipe['seed']}) views {views}: seen AUC "
            f"{report['seen']['mean']['auc']:.3f} held-out AUC "
            f"{group_mean(report, 'heldout'):.3f} test-real FPR {report['test_real_fpr']:.3f}; "
            f"validation loss {recipe['val_loss']:.4f} (members "
            + ", ".join(f"{v:.4f}" for v in recipe["member_val_losses"])
            + f"), validation AUC {recipe['val_auc']:.4f} (members "
            + ", ".join(f"{v:.4f}" for v in recipe["member_val_aucs"])
            + ")",
            flush=True,
        )
    if args.json:
        write_json(args.json, records)


if __name__ == "__main__":
    main()
