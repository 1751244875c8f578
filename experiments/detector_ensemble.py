"""Score a deep ensemble of trained detectors (the mean of their logits) zero-shot.

The members are weights files written by ``experiments.detectors --save-weights`` from runs of
one recipe (same detector, optimizer, lr and weight average; different seeds). Their mean logit
(``assocmem.forensic.models.ensemble.LogitEnsemble``) is calibrated on the validation reals and
scored on the test split exactly as one detector is (``assocmem.forensic.protocol``), so the
records render in the detectors table (``python -m experiments.detectors --from-json``) as the
row "DETECTOR (ensemble of K)". Nothing is trained here: the members' training, early stopping
and weight choice saw only the seen families, and so does the ensemble's threshold.

    python -m experiments.detector_ensemble --members W0 W3 W6 --views one d4 --json E0.json
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
from experiments.detectors import MODELS, family_split

# What every member must share: an ensemble row stands for one recipe.
RECIPE = ("model", "patch_size", "optimizer", "lr", "average", "attribution")


def load_member(path: Path) -> tuple[dict[str, Any], nn.Module]:
    """The recipe header and the network of one weights file (strict: every tensor present,
    none extra, shapes equal)."""
    metadata, tensors = read_safetensors(path, "detector weights")
    if "assocmem" not in metadata:
        raise ValueError(f"{path} has no assocmem header: not written by --save-weights")
    header = json.loads(metadata["assocmem"])
    # weights saved before the family-attribution option existed were trained without it
    header.setdefault("attribution", 0.0)
    missing = [k for k in (*RECIPE, "seed") if k not in header]
    if missing:
        raise ValueError(f"{path}: its header lacks {', '.join(missing)}")
    if header["model"] not in MODELS:
        raise ValueError(f"{path}: unknown detector {header['model']!r}")
    model = MODELS[header["model"]](header["patch_size"])
    model.load_state_dict(tensors, strict=True)
    return header, model.eval()


def ensemble_of(paths: list[Path]) -> tuple[dict[str, Any], LogitEnsemble]:
    """The shared recipe (with the members' seeds, steps and files) and the ensemble of the
    weights at ``paths``. Raises ``ValueError`` if the members differ in recipe or repeat a
    seed (two copies of one run are not an ensemble)."""
    if not paths:
        raise ValueError("an ensemble needs at least one member")
    headers, members = zip(*(load_member(p) for p in paths), strict=True)
    for key in RECIPE:
        values = {json.dumps(h[key]) for h in headers}
        if len(values) > 1:
            raise ValueError(f"the members differ in {key}: {sorted(values)}")
    seeds = [h["seed"] for h in headers]
    if len(set(seeds)) < len(seeds):
        raise ValueError(f"the members repeat a seed: {seeds}")
    recipe = {key: headers[0][key] for key in RECIPE}
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
    parser.add_argument("--members", type=Path, nargs="+", required=True)
    parser.add_argument("--views", nargs="+", default=["one"], choices=VIEWS)
    parser.add_argument("--target-fpr", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tiny", action="store_true", help="the seconds-long test benchmark")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--json", type=Path, help="write the records here")
    args = parser.parse_args(argv)
    command = "python -m experiments.detector_ensemble " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    torch.set_num_threads(args.threads)
    try:
        recipe, ensemble = ensemble_of(args.members)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    config = BenchmarkConfig.tiny() if args.tiny else BenchmarkConfig()
    if recipe["patch_size"] != config.patch_size:
        config = dataclasses.replace(config, patch_size=recipe["patch_size"])
    bench = build_benchmark(config, args.cache_dir)
    families = family_split(config)
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
            f"{report['heldout']['mean']['auc']:.3f} test-real FPR {report['test_real_fpr']:.3f}; "
            f"validation loss {recipe['val_loss']:.4f} (members "
            + ", ".join(f"{v:.4f}" for v in recipe["member_val_losses"])
            + f"), validation AUC {recipe['val_auc']:.4f} (members "
            + ", ".join(f"{v:.4f}" for v in recipe["member_val_aucs"])
            + ")",
            flush=True,
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(records, indent=1, default=float))


if __name__ == "__main__":
    main()
