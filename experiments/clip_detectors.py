"""Clip detectors on the built-in clip benchmark: temporal (stacked RNN) against frame-only.

For every (model, optimizer, seed): train on the train split's real clips and as many fakes of
the seen families (``protocol.balanced``: a fixed, cached set, unlike the image detectors'
stream), select by early stopping on the validation split (reals and seen fakes, balanced),
calibrate the threshold on the validation reals for ``--target-fpr``, and score the test split
per family, seen and held out (``protocol.zero_shot_report``, which serves clips unchanged).
Nothing of the held-out families or of the test photos takes part in training, early stopping
or the threshold.

    python -m experiments.clip_detectors --tiny --max-steps 20            # a smoke run
    python -m experiments.clip_detectors --models gru frames --optimizers adam muon
    python -m experiments.clip_detectors --write docs/results.md          # refresh that section
    python -m experiments.clip_detectors --from-json runs.json --write docs/results.md  # no runs

Models: ``gru`` / ``lstm`` (``TemporalDetector``: per-frame CNN -> 2-layer RNN -> logit) and
``frames`` (``FrameDetector``: the same per-frame CNN, the mean of per-frame logits).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from assocmem.forensic.data.clips import ClipConfig, build_clip_benchmark
from assocmem.forensic.models.temporal import FrameDetector, TemporalDetector
from assocmem.forensic.protocol import FamilySplit, balanced, zero_shot_report
from assocmem.forensic.train import score, train_detector
from assocmem.storage import strict_json
from experiments.cli_files import input_path, output_path, refuse_clashes
from experiments.detectors import (
    HELDOUT,
    SEEN,
    _ms,
    bad_training_options,
    family_split,
    optimizer_factory,
    per_family_table,
)
from experiments.report import read_runs, refuse_unreplaceable, replace_section, write_json

MODELS: dict[str, Callable[[], nn.Module]] = {
    "gru": lambda: TemporalDetector(cell="gru"),
    "lstm": lambda: TemporalDetector(cell="lstm"),
    "frames": FrameDetector,
}


def run_one(
    bench: Any,
    families: FamilySplit,
    model_name: str,
    optimizer: str,
    lr: float,
    seed: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = MODELS[model_name]()
    x, y = balanced(bench.split("train", families.seen), seed=seed)
    x_val, y_val = balanced(bench.split("val", families.seen), seed=1000 + seed)
    start = time.perf_counter()
    result = train_detector(
        model,
        x,
        y,
        x_val,
        y_val,
        optimizer_factory(optimizer, lr, model),
        args.max_steps,
        batch_size=args.batch_size,
        generator=torch.Generator().manual_seed(seed),
        eval_every=args.eval_every,
        patience=args.patience,
        progress=args.progress,
    )
    seconds = time.perf_counter() - start
    report = zero_shot_report(partial(score, model), bench, families, target_fpr=args.target_fpr)
    return {
        "model": model_name,
        "optimizer": optimizer,
        "lr": lr,
        "seed": seed,
        "status": result.status,
        "steps": result.steps,
        "best_step": result.best_step,
        "best_val_loss": result.best_val_loss,
        "seconds": round(seconds, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "val_curve": [(r["step"], r["val_loss"]) for r in result.history if "val_loss" in r],
        "report": report,
    }


# what the section's text reads from the command line; kept in every run record, so that
# --from-json renders the section without the runs' command line
RECORDED_OPTIONS = ("tiny", "frames", "threads", "batch_size", "max_steps", "target_fpr")


def from_records(
    parser: argparse.ArgumentParser, path: Path
) -> tuple[list[dict[str, Any]], str, argparse.Namespace]:
    """The runs of a ``--json`` file, the command that made them and its recorded options (a
    usage error, naming the file, for one that is not such a record)."""
    try:
        runs = read_runs(path)
    except ValueError as e:
        parser.error(f"--from-json {e}")
    if not runs:
        parser.error(f"--from-json {path}: holds no runs")
    made = {(r.get("command"), strict_json.dumps(r.get("options"), sort_keys=True)) for r in runs}
    if len(made) != 1 or None in next(iter(made)) or "null" in next(iter(made)):
        parser.error(
            f"--from-json {path}: its runs do not name one command and its options (records "
            "written before they were kept cannot be rendered; run the command again)"
        )
    options = runs[0]["options"]
    if not isinstance(options, dict) or set(options) != set(RECORDED_OPTIONS):
        parser.error(f"--from-json {path}: its options are not {list(RECORDED_OPTIONS)}")
    return runs, runs[0]["command"], argparse.Namespace(**options)


def config_of(args: argparse.Namespace) -> ClipConfig:
    """The clip benchmark the command line asks for (``ValueError`` for one that cannot be)."""
    return (ClipConfig.tiny if args.tiny else ClipConfig)(frames=args.frames)


# what each model is, for the section's text (the models that ran, in their order)
MODEL_TEXT = {
    "gru": "per-frame CNN -> 2-layer GRU -> logit",
    "lstm": "per-frame CNN -> 2-layer LSTM -> logit",
    "frames": "the same per-frame CNN, mean of per-frame logits",
}


def describe_models(runs: list[dict[str, Any]]) -> str:
    """``gru``: ...; ``frames``: ... for the models among ``runs`` (the text named ``gru``
    whatever ran)."""
    names = dict.fromkeys(r["model"] for r in runs)
    return "; ".join(f"`{m}`: {MODEL_TEXT[m]}" for m in names) + "."


def markdown(runs: list[dict[str, Any]], command: str, args: argparse.Namespace) -> str:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in runs:
        # one row per recipe: the same optimizer at another learning rate is another row
        groups.setdefault((r["model"], f"{r['optimizer']} (lr {r['lr']:g})"), []).append(r)
    total = sum(r["seconds"] for r in runs)
    config = config_of(args)
    built = f"`ClipConfig{'.tiny' if args.tiny else ''}(frames={args.frames})`"
    threads = "one thread" if args.threads == 1 else f"{args.threads} threads"
    lines = [
        "## Clip detectors (temporal vs frame-only, calibrated threshold)",
        "",
        f"Regenerate: {command}",
        "",
        f"The built-in clip benchmark ({built}: clips of {config.frames} frames of "
        f"{config.patch_size} x {config.patch_size}, "
        "a window panning, zooming and shaking over a photo with fixed-pattern and temporal "
        "sensor noise; fakes made frame by frame, or a splice that jitters; split by photo as "
        "the image benchmark). Trained on the train split's reals and as many fakes of the seen "
        f"families {', '.join(SEEN)}, early-stopped on the validation split, threshold set on "
        f"the validation reals for a {100 * args.target_fpr:g} % false-positive rate, scored on "
        f"the test split (unseen photos); held-out families {', '.join(HELDOUT)} are never "
        f"trained on, stopped on or calibrated on. {describe_models(runs)} Batch "
        f"{args.batch_size} clips, at most {args.max_steps} steps, {threads}; "
        f"{total / 60:.1f} min of training and scoring in all. Mean ± std over seeds; TPR and "
        "FPR at the calibrated threshold.",
        "",
        "| detector | optimizer | seeds | params | seen AUC | held-out AUC | held-out TPR "
        "| seen TPR | test-real FPR | best step / steps run | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (model, opt), rs in groups.items():
        rep = [r["report"] for r in rs]
        budget = ", ".join(f"{r['best_step']}/{r['steps']}" for r in rs)
        seconds = ", ".join(f"{r['seconds']:.0f}" for r in rs)
        lines.append(
            f"| {model} | {opt} | {len(rs)} | {rs[0]['parameters']} "
            f"| {_ms([x['seen']['mean']['auc'] for x in rep])} "
            f"| {_ms([x['heldout']['mean']['auc'] for x in rep])} "
            f"| {_ms([x['heldout']['mean']['tpr'] for x in rep])} "
            f"| {_ms([x['seen']['mean']['tpr'] for x in rep])} "
            f"| {_ms([x['test_real_fpr'] for x in rep])} "
            f"| {budget} | {seconds} |"
        )
    lines += per_family_table(groups)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["gru", "frames"], choices=MODELS)
    parser.add_argument("--optimizers", nargs="+", default=["adam"])
    parser.add_argument("--lr", type=float, nargs="+", default=[1e-3], help="one per optimizer")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--max-steps", type=int, default=600)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--patience", type=int, default=3, help="evaluations without progress")
    parser.add_argument("--batch-size", type=int, default=8, help="clips per step")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--target-fpr", type=float, default=0.05)
    parser.add_argument("--tiny", action="store_true", help="the seconds-long test benchmark")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--write", type=output_path, help="markdown file whose section to refresh")
    parser.add_argument("--json", type=output_path, help="write every run's report here")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--from-json", type=input_path, help="no runs: render these records")
    args = parser.parse_args(argv)
    refuse_unreplaceable(parser, args.write, "clip-detectors")
    command = "python -m experiments.clip_detectors " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    refuse_clashes(parser, args)
    if args.from_json:
        if args.json:
            parser.error("--json with --from-json would write the same records again")
        runs, made_by, recorded = from_records(parser, args.from_json)
        text = markdown(runs, f"`{made_by}`, then `{command.strip()}`", recorded)
        print(text)
        if args.write:
            replace_section(args.write, "clip-detectors", text)
        return
    if len(args.lr) not in (1, len(args.optimizers)):
        parser.error("--lr takes one value, or one per optimizer")
    lrs = args.lr * len(args.optimizers) if len(args.lr) == 1 else args.lr
    problem = bad_training_options(args, lrs)  # before the benchmark and any run: no run lost
    if problem:
        parser.error(problem)
    try:
        config = config_of(args)
    except ValueError as error:  # --frames 1: a clip must move
        parser.error(f"--frames: {error}")
    torch.set_num_threads(args.threads)
    bench = build_clip_benchmark(config, args.cache_dir, progress=args.progress)
    families = family_split(config)  # type: ignore[arg-type] (a ClipConfig has .families too)
    runs = []
    for model in args.models:
        for seed in args.seeds:
            for opt, lr in zip(args.optimizers, lrs, strict=True):
                run = run_one(bench, families, model, opt, lr, seed, args)
                run["command"] = command.strip()
                run["options"] = {k: getattr(args, k) for k in RECORDED_OPTIONS}
                runs.append(run)
                rep = run["report"]
                print(
                    f"{model:7s} {opt:6s} seed {seed}: seen AUC {rep['seen']['mean']['auc']:.3f}"
                    f" held-out AUC {rep['heldout']['mean']['auc']:.3f}"
                    f" test-real FPR {rep['test_real_fpr']:.3f}"
                    f" (best step {run['best_step']} of {run['steps']}, {run['seconds']:.0f} s)",
                    flush=True,
                )
    text = markdown(runs, f"`{command.strip()}`", args)
    print(text)
    if args.json:
        write_json(args.json, runs)
    if args.write:
        replace_section(args.write, "clip-detectors", text)


if __name__ == "__main__":
    main()
