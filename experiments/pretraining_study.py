"""Does frequency masking help? Frequency vs pixel vs no pretraining, same detector recipe.

For every (arm, seed): a ViT encoder (the encoder of ``task/freqmask_pretrain.yaml``) is
pretrained by masked reconstruction on fresh training-stream crops (seen families' fakes and
reals alike, labels unused) for the same number of steps in the ``frequency`` and ``pixel`` arms
(equal compute), not at all in ``none``. Then, from that encoder,

* **probe**: a logistic regression solved to convergence on its frozen features (balanced
  train split), which measures what pretraining alone gave, and
* **fine-tune**: encoder + linear head trained end to end on the stream with Adam, early-stopped
  on the validation split (the recipe of ``experiments.detectors``),

are scored zero-shot with the threshold calibrated on validation reals
(``assocmem.forensic.protocol.zero_shot_report``). Held-out families never reach pretraining,
training, early stopping or calibration.

    python -m experiments.pretraining_study --arms frequency --json outputs/pretrain/freq.json
    python -m experiments.pretraining_study --from-json outputs/pretrain/*.json \
        --write docs/results.md

``--arch npr --pretrain-only --save-encoders DIR`` pretrains the residual encoder of the best
image detector (``npr_dct_dropout``'s NPR branch) instead, which ``experiments.detectors
--init-residual 'DIR/ARM-seed{seed}.safetensors'`` then fine-tunes with that detector's own
recipe, so the masking question is also asked of the detector that detects.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

from assocmem.forensic.data import BenchmarkConfig, build_benchmark
from assocmem.forensic.data.stream import TrainStream, stream_loader
from assocmem.forensic.models.heads import fine_tune
from assocmem.forensic.models.pretrain import MaskedPretrainer
from assocmem.forensic.protocol import FamilySplit, balanced, linear_probe_scorer, zero_shot_report
from assocmem.forensic.train import pretrain, score
from assocmem.storage import read_safetensors, strict_json, write_safetensors
from experiments.cli_files import input_path, output_folder, output_path, refuse_clashes
from experiments.detectors import (
    HELDOUT,
    MODELS,
    SEEN,
    average_decay,
    bad_image_batch,
    bad_lr,
    bad_optimizer_name,
    bad_run_options,
    bad_seeds,
    optimizer_factory,
    recipe_clash,
    train_one,
)
from experiments.report import read_runs, refuse_unreplaceable, replace_section
from experiments.tasks.forensic import build_encoder, build_masker

ENCODER = {"arch": "vit", "patch": 4, "dim": 64, "depth": 2, "heads": 4}


def _spectral(ratio: float, keep_dc: bool = False) -> dict[str, Any]:
    """The masker of a study arm with spectral frequency masks (4-bin blocks) at ``ratio``."""
    return {
        "domain": "frequency",
        "kind": "spectral",
        "ratio": ratio,
        "patch": 4,
        "keep_dc": keep_dc,
    }


# The maskers and losses of task/freqmask_pretrain.yaml and task/pixelmask_pretrain.yaml.
ARMS: dict[str, dict[str, Any] | None] = {
    "frequency": {
        "masker": {"domain": "frequency", "kind": "spectral", "ratio": 0.5, "patch": 4},
        "loss": "both",
    },
    "pixel": {"masker": {"domain": "pixel", "ratio": 0.75, "patch": 4}, "loss": "pixel"},
    "none": None,
    # The domain alone: frequency masks at the pixel arm's ratio and loss, DC removable as in
    # "frequency" (whose ratio and loss differ from "pixel"'s) or always kept (keep_dc: the
    # removed mean colour otherwise dominates the pixel target with content).
    "frequency-matched": {"masker": _spectral(0.75), "loss": "pixel"},
    "frequency-matched-keepdc": {"masker": _spectral(0.75, keep_dc=True), "loss": "pixel"},
    # "frequency" (ratio 0.5, pixel + log-amplitude loss) with DC always kept: whether its
    # margin needed the removed mean colour in its target.
    "frequency-keepdc": {"masker": _spectral(0.5, keep_dc=True), "loss": "both"},
    # One factor each from "frequency-keepdc": its loss without the log-amplitude term, and
    # the pixel arm with that term (is it the loss rather than the domain?).
    "frequency-keepdc-pixelloss": {"masker": _spectral(0.5, keep_dc=True), "loss": "pixel"},
    "pixel-both": {"masker": {"domain": "pixel", "ratio": 0.75, "patch": 4}, "loss": "both"},
}


# Encoders the study pretrains: the ViT of task/freqmask_pretrain.yaml, or the residual
# encoder of the best image detector (NPR's, with batch statistics, as in NPRWithDCT), whose
# pretrained weights `experiments.detectors --init-residual` fine-tunes with that detector's
# own recipe.
ARCHS = ("vit", "npr")


def study_encoder(arch: str, image_size: int) -> torch.nn.Module:
    """A freshly initialised encoder of ``arch`` (:data:`ARCHS`)."""
    if arch == "npr":
        # the detector's own branch, so the saved weights always fit it (built first inside
        # the detector: the same initial draw as an NPR made alone)
        return MODELS["npr_dct_dropout"](image_size).residual
    return build_encoder(ENCODER, image_size)


def finetune_model(image_size: int) -> torch.nn.Module:
    """The fine-tuned detector's network (encoder + linear head), freshly initialised."""
    return fine_tune(build_encoder(ENCODER, image_size))


def pretrainer_for(arm: str, encoder: torch.nn.Module) -> MaskedPretrainer:
    """``encoder`` under ``arm``'s masker and reconstruction loss."""
    spec = ARMS[arm]
    if spec is None:
        raise ValueError(f"arm {arm!r} does not pretrain")
    return MaskedPretrainer(encoder, build_masker(spec["masker"]), loss=spec["loss"])


def pretrainer_model(arm: str, image_size: int) -> MaskedPretrainer:
    """The masked pretrainer of ``arm`` (its encoder, masker and loss), freshly initialised."""
    return pretrainer_for(arm, build_encoder(ENCODER, image_size))


# Run records of a masked pretrainer name their model ``vit/ARM`` + this suffix.
PRETRAIN_SUFFIX = "-pretrain"


def pretrainer_name(arm: str, arch: str = "vit") -> str:
    """The model name of ``arm``'s masked pretrainer in run records: ``ARCH/ARM-pretrain``."""
    return f"{arch}/{arm}{PRETRAIN_SUFFIX}"


def pretrained_arm(model_name: str) -> str | None:
    """The arm whose pretrainer ``model_name`` names (:func:`pretrainer_name`); ``None`` for
    any other name, the ``none`` arm's included (it does not pretrain)."""
    kind, _, rest = model_name.partition("/")
    arm = rest.removesuffix(PRETRAIN_SUFFIX)
    return arm if kind == "vit" and arm != rest and ARMS.get(arm) else None


def pretraining_record(
    arm: str, curve: list[tuple[int, float]], args: Any, ran: int = 0
) -> dict[str, Any]:
    """The pretraining run as the run record ``experiments.detector_race`` reads: model
    ``vit/ARM-pretrain``, its optimizer and lr, the validation reconstruction-loss curve, and
    the best evaluation on it (after step 0). A run that diverged before its first evaluation
    has none: its best loss and step are ``None`` (a race reads that lr as infinitely bad).
    ``ran``: the last step the run took, past its last evaluation when it diverged early."""
    evaluated = [(s, v) for s, v in curve if s > 0]
    best_step, best = min(evaluated, key=lambda sv: (sv[1], sv[0])) if evaluated else (None, None)
    return {
        "model": pretrainer_name(arm, getattr(args, "arch", "vit")),
        "optimizer": args.pretrain_optimizer,
        "average": getattr(args, "average", None),
        "lr": args.pretrain_lr,
        "lr_decay": getattr(args, "pretrain_lr_decay", None),
        "best_val_loss": best,
        "best_step": best_step,
        "steps": max(curve[-1][0], ran),
        "val_curve": curve,
    }


def run_one(bench: Any, families: FamilySplit, arm: str, seed: int, args: Any) -> dict[str, Any]:
    torch.manual_seed(seed)
    arch = getattr(args, "arch", "vit")
    encoder = study_encoder(arch, bench.config.patch_size)
    out: dict[str, Any] = {
        "arm": arm,
        "seed": seed,
        "model": f"{arch}/{arm}",
        "eval_every": args.eval_every,
    }
    start = time.perf_counter()
    if args.encoder is not None:  # a given pretrained encoder: the fine-tuning task alone
        load_encoder(encoder, args.encoder)
        out["encoder"] = str(args.encoder)
    elif ARMS[arm] is not None:
        pretrainer = pretrainer_for(arm, encoder)
        # Its own stream seed: the fine-tuning stream below must not replay these crops.
        crops = TrainStream(bench, families.seen, batch_size=args.batch_size, seed=10_000 + seed)
        val = bench.split("val", families.seen).images[:512]
        result = pretrain(
            pretrainer, stream_loader(crops, args.workers), val,
            optimizer_factory(args.pretrain_optimizer, args.pretrain_lr, pretrainer),
            args.pretrain_steps,
            generator=torch.Generator().manual_seed(seed), eval_every=args.eval_every,
            progress=args.progress, average=getattr(args, "average", None),
            lr_decay=getattr(args, "pretrain_lr_decay", None),
        )  # fmt: skip
        curve = [(r["step"], r["val_loss"]) for r in result.history if "val_loss" in r]
        out.update(
            pretrain_status=result.status,
            pretrain_curve=curve,
            pretrain_optimizer=args.pretrain_optimizer,
            pretrain_lr=args.pretrain_lr,
            pretrain_lr_decay=getattr(args, "pretrain_lr_decay", None),
        )
        if args.save_encoders is not None and result.status == "ok":
            # a diverged encoder is not written: under its usual name a later --init-residual
            # or --encoder would fine-tune it unawares
            path = args.save_encoders / encoder_name(arm, seed)
            write_safetensors(
                path,
                {k: v.detach().contiguous() for k, v in encoder.state_dict().items()},
                encoder_header(args, arm, seed, bench.config.patch_size),
            )
        if args.pretrain_only:
            out["pretrain_seconds"] = round(time.perf_counter() - start, 1)
            ran = result.history[-1]["step"] if result.history else 0
            record = pretraining_record(arm, curve, args, ran)
            return {**out, **record, "status": result.status}
        if result.status != "ok":  # nothing to probe or fine-tune: recorded, not scored
            out["pretrain_seconds"] = round(time.perf_counter() - start, 1)
            return {**out, "status": "pretraining diverged"}
    out["pretrain_seconds"] = round(time.perf_counter() - start, 1)
    if not args.no_probe:
        x, y = balanced(bench.split("train", families.seen), 0)
        out["probe"] = zero_shot_report(
            linear_probe_scorer(encoder, x, y), bench, families, target_fpr=args.target_fpr
        )
    detector = fine_tune(encoder)
    # the image detectors' recipe, verbatim: stream of the seen families, early stopping
    out.update(train_one(bench, families, detector, args.optimizer, args.lr, seed, args))
    out["report"] = zero_shot_report(
        partial(score, detector), bench, families, target_fpr=args.target_fpr
    )
    return out


def encoder_name(arm: str, seed: int) -> str:
    """The file ``--save-encoders`` writes for ``arm`` and ``seed`` (``ARM-seedS``, the name
    ``experiments.detectors --init-residual`` templates)."""
    return f"{arm}-seed{seed}.safetensors"


def encoder_header(args: Any, arm: str, seed: int, patch_size: int) -> dict[str, Any]:
    """What a saved encoder's header records of how it was pretrained: the file name holds the
    arm and the seed only, so this is what tells two pretrainings apart (:func:`encoder_clash`)."""
    return {
        "arch": getattr(args, "arch", "vit"),
        "arm": arm,
        "seed": seed,
        "patch_size": patch_size,
        "pretrain_optimizer": args.pretrain_optimizer,
        "pretrain_lr": args.pretrain_lr,
        "pretrain_lr_decay": getattr(args, "pretrain_lr_decay", None),
        "pretrain_steps": args.pretrain_steps,
        "eval_every": args.eval_every,
        "batch_size": args.batch_size,
        "average": getattr(args, "average", None),
    }


def encoder_clash(args: Any, patch_size: int) -> str | None:
    """Why ``--save-encoders`` would replace an encoder of another pretraining, or ``None``:
    the name holds the arm and seed, not the architecture or the budget, so an ``--arch npr``
    run and a ViT run (or another ``--pretrain-lr``) wrote the same file, the second over the
    first. A file of the same pretraining (a rerun) is replaced. Checked before any work."""
    for arm in args.arms:
        for seed in args.seeds:
            if ARMS.get(arm) is None:
                continue
            path = args.save_encoders / encoder_name(arm, seed)
            wanted = encoder_header(args, arm, seed, patch_size)
            what = "an encoder of another pretraining"
            if problem := recipe_clash("--save-encoders", path, wanted, what):
                return problem
    return None


def load_encoder(encoder: torch.nn.Module, path: Path) -> None:
    """``path``'s tensors into ``encoder``, every one (strict); a ``ValueError`` naming the
    file when it is unreadable, not safetensors, or another architecture's."""
    _, tensors = read_safetensors(Path(path), "encoder")
    try:
        encoder.load_state_dict(tensors, strict=True)
    except RuntimeError as error:
        missing = sorted(set(encoder.state_dict()) - set(tensors))
        extra = sorted(set(tensors) - set(encoder.state_dict()))
        raise ValueError(
            f"{path} is not an encoder of this study's architecture ({len(missing)} of its "
            f"tensors missing, {len(extra)} others present; e.g. {(missing or extra)[:3]})"
            if missing or extra
            else f"{path}: its tensors do not fit the encoder ({str(error).splitlines()[-1]})"
        ) from None


def bad_study_options(args: argparse.Namespace, patch_size: int) -> str | None:
    """Why a study command cannot run as given, or ``None``; checked before the benchmark is
    built, where these used to fail after pretraining (an optimizer name, a target rate), in a
    traceback, or not at all (an option that writes nothing was silently ignored)."""
    # a repeated seed ran twice and its table said "± 0.000 over 2 seeds"
    if problem := bad_seeds(args.seeds):
        return problem
    if len(set(args.arms)) != len(args.arms):
        return f"--arms must be distinct, got {args.arms}"
    for option in ("optimizer", "pretrain_optimizer"):
        if problem := bad_optimizer_name(getattr(args, option)):
            return f"--{option.replace('_', '-')}: {problem}"
    if problem := bad_lr("--lr", args.lr) or bad_lr("--pretrain-lr", args.pretrain_lr):
        return problem
    if args.pretrain_steps < 1:
        return f"--pretrain-steps must be >= 1, got {args.pretrain_steps}"
    if problem := bad_run_options(args) or bad_image_batch(args):
        return problem
    not_the_study = args.no_probe or args.pretrain_only or args.encoder is not None
    if args.write and not_the_study:
        return (
            "--write refreshes the study's section, which runs with --no-probe, --pretrain-only "
            "or --encoder do not make (write it from their --json with --from-json)"
        )
    if args.save_encoders is not None:
        if args.encoder is not None:
            return "--save-encoders with --encoder: nothing is pretrained, nothing to save"
        if all(ARMS[arm] is None for arm in args.arms):
            return f"--save-encoders: the arms {args.arms} do not pretrain, nothing to save"
        if problem := encoder_clash(args, patch_size):
            return problem
    if args.encoder is not None:
        try:
            load_encoder(study_encoder(args.arch, patch_size), args.encoder)
        except (OSError, ValueError) as error:
            return f"--encoder: {error}"
    return None


def study_records(paths: list[Path]) -> list[dict[str, Any]]:
    """The study runs of ``--from-json`` files, or a ``ValueError`` saying why not: each a run
    with its arm, seed and fine-tuned report (or a recorded divergence), none twice."""
    runs = []
    for path in paths:
        try:
            records = read_runs(path)
        except ValueError as error:
            raise ValueError(f"--from-json {error}") from None
        for i, run in enumerate(records):
            if not {"arm", "seed"} <= set(run):
                raise ValueError(f"--from-json {path}: entry {i} is not a run of this study")
            if "report" not in run and run.get("status") != "pretraining diverged":
                kind = (
                    "a --pretrain-only record (a race's, not the study's)"
                    if str(run.get("model", "")).endswith(PRETRAIN_SUFFIX)
                    else "a run without a fine-tuned report"
                )
                raise ValueError(f"--from-json {path}: entry {i} is {kind}")
            runs.append(run)
    if not runs:
        raise ValueError("--from-json holds no runs: the section would be empty tables")
    keys = [json.dumps([r.get(k) for k in ("command", "arm", "seed", "average")]) for r in runs]
    if len(set(keys)) != len(keys):
        raise ValueError(
            "--from-json holds the same run (command, arm, seed, average) more than once "
            "(a file named twice, or a copy): each seed would be counted twice"
        )
    # runs of two commands share a row by arm (and average): one seed twice there was counted
    # twice in its mean and spread (an audit)
    rows: dict[tuple[Any, Any, Any], Any] = {}
    for r in runs:
        key = (r["arm"], r.get("average"), r["seed"])
        if key in rows:
            raise ValueError(
                f"--from-json: the {r['arm']} row holds seed {r['seed']} twice (from "
                f"`{rows[key]}` and `{r.get('command', '?')}`): a row is one recipe, each seed "
                "once; render those runs apart"
            )
        rows[key] = r.get("command", "?")
    study_recipe(runs)  # one recipe per section: the text states it
    return runs


def study_recipe(runs: list[dict[str, Any]]) -> tuple[str, str, float]:
    """The pretraining optimizer, the fine-tuning optimizer and the calibrated FPR that the
    section's text states (records written before they were kept: ``adam``, ``adam``, 5 %),
    or a ``ValueError`` for runs that differ in them: the rows group by arm, and the text said
    "Adam" and "5 % FPR" above runs of another optimizer and rate (an audit)."""
    scored = [r for r in runs if "report" in r]
    pre = {r.get("pretrain_optimizer", "adam") for r in runs if "pretrain_curve" in r}
    fine = {f"{r.get('optimizer', 'adam')} (lr {r.get('lr', 1e-3):g})" for r in scored}
    fprs = {r["report"].get("target_fpr", 0.05) for r in scored}
    for what, values in (("pretraining optimizer", pre), ("fine-tuning recipe", fine),
                         ("calibrated FPR", fprs)):  # fmt: skip
        if len(values) > 1:
            raise ValueError(
                f"--from-json: the runs differ in their {what} ({sorted(values, key=str)}); a "
                "section is one recipe: render them apart"
            )
    fine_opt = next(iter(fine), "adam (lr 0.001)")
    return next(iter(pre), "adam"), fine_opt, next(iter(fprs), 0.05)


def _ms(values: list[float], digits: int = 3) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _flattening(curve: list[list[float]]) -> float:
    """Relative drop of the validation reconstruction loss over the second half of the budget:
    near 0 means the loss had flattened."""
    last = curve[-1][1]
    half = min(curve, key=lambda point: abs(point[0] - curve[-1][0] / 2))[1]
    return (half - last) / half


def arm_recipe(arm: str) -> str:
    """``arm``'s masking recipe in words: domain, ratio, DC, loss (``none``: no pretraining)."""
    spec = ARMS.get(arm)
    if spec is None:
        return f"`{arm}` no pretraining" if arm in ARMS else f"`{arm}` (not an arm of this code)"
    m = spec["masker"]
    dc = ", DC always kept" if m.get("keep_dc") else ""
    loss = {"pixel": "pixel L2", "freq": "log-amplitude", "both": "pixel L2 + log-amplitude"}
    return f"`{arm}` {m['domain']} masks, ratio {m['ratio']}{dc}, loss {loss[spec['loss']]}"


def _named(optimizer: str) -> str:
    """An optimizer as the section's text names it: torch's Adam at the study's default lr as
    "Adam" (the text before it named any other), else its name and lr."""
    return "Adam" if optimizer in ("adam", "adam (lr 0.001)") else f"`{optimizer}`"


def markdown(runs: list[dict[str, Any]], command: str) -> str:
    pre, fine, fpr = study_recipe(runs)
    arms: dict[str, list[dict[str, Any]]] = {}
    diverged = [r for r in runs if "report" not in r]
    for r in runs:  # a weight-averaged run is another recipe: its own row
        if "report" not in r:
            continue
        label = r["arm"] + (f" (EMA {r['average']:g})" if r.get("average") else "")
        arms.setdefault(label, []).append(r)
    lines = [
        "## Frequency vs pixel vs no pretraining (same detector recipe)",
        "",
        f"Regenerate: {command}",
        "",
        "ViT encoder (dim 64, depth 2, 4×4 patches). Pretraining: masked reconstruction on "
        "fresh stream crops of the train photos (seen families and reals, labels unused), "
        f"{_named(pre)}, the same number of steps for both masking arms. Probe: logistic "
        f"regression on the frozen features. Fine-tune: encoder + linear head on the stream, "
        f"{_named(fine)}, early-stopped on validation. Threshold on validation reals for "
        f"{100 * fpr:g} % FPR; test split. "
        f"Seen: {', '.join(SEEN)}; held out: {', '.join(HELDOUT)}. Mean ± std over seeds.",
        "",
        "Arms: "
        + "; ".join(arm_recipe(arm) for arm in dict.fromkeys(r["arm"] for r in runs))
        + ".",
        "",
        "| pretraining | seeds | pretrain steps (val loss drop over 2nd half) | probe seen AUC "
        "| probe held-out AUC | fine-tuned seen AUC | fine-tuned held-out AUC | test-real FPR "
        "| best step / steps run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, rs in arms.items():
        if "pretrain_curve" in rs[0]:
            drops = [_flattening(r["pretrain_curve"]) for r in rs]
            budget = f"{rs[0]['pretrain_curve'][-1][0]} ({_ms([100 * d for d in drops], 1)} %)"
        else:
            budget = "0"
        # runs with --no-probe have none: "–" where no run of the row has one
        probe, tuned = [r["probe"] for r in rs if "probe" in r], [r["report"] for r in rs]
        lines.append(
            f"| {arm} | {len(rs)} | {budget} "
            f"| {_ms([p['seen']['mean']['auc'] for p in probe])} "
            f"| {_ms([p['heldout']['mean']['auc'] for p in probe])} "
            f"| {_ms([t['seen']['mean']['auc'] for t in tuned])} "
            f"| {_ms([t['heldout']['mean']['auc'] for t in tuned])} "
            f"| {_ms([t['test_real_fpr'] for t in tuned])} "
            f"| {', '.join(str(r['best_step']) + '/' + str(r['steps']) for r in rs)} |"
        )
    fams = [*SEEN, *HELDOUT]
    lines += [
        "",
        "Per-family test AUC of the fine-tuned detectors:",
        "",
        "| pretraining | "
        + " | ".join(f"{f}{' (held out)' if f in HELDOUT else ''}" for f in fams)
        + " |",
        "|---|" + "---|" * len(fams),
    ]
    for arm, rs in arms.items():
        cells = []
        for f in fams:
            group = "heldout" if f in HELDOUT else "seen"
            cells.append(_ms([r["report"][group][f]["auc"] for r in rs]))
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    if diverged:
        lines += [
            "",
            "Not in the tables (pretraining diverged, nothing probed or fine-tuned): "
            + ", ".join(f"{r['arm']} seed {r['seed']}" for r in diverged)
            + ".",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--arch",
        choices=ARCHS,
        default="vit",
        help="the encoder to pretrain: the study's ViT, or (with --pretrain-only) the residual "
        "encoder of npr_dct_dropout, fine-tuned by experiments.detectors --init-residual",
    )
    parser.add_argument("--pretrain-steps", type=int, default=1500)
    parser.add_argument("--pretrain-lr", type=float, default=3e-3)
    parser.add_argument(
        "--pretrain-lr-decay",
        choices=["linear"],
        default=None,
        help="decay the pretraining learning rate linearly to 0 at --pretrain-steps",
    )
    parser.add_argument(
        "--pretrain-optimizer",
        default="adam",
        help="pretraining optimizer, as --optimizer (adam is torch's Adam)",
    )
    parser.add_argument(
        "--pretrain-only",
        action="store_true",
        help="stop after pretraining: one record per run (experiments.detector_race reads "
        "the --arch vit ones)",
    )
    parser.add_argument("--max-steps", type=int, default=1500, help="fine-tuning cap")
    parser.add_argument("--lr", type=float, default=1e-3, help="fine-tuning lr")
    parser.add_argument(
        "--optimizer",
        default="adam",
        help="fine-tuning optimizer, as in experiments.detectors (adam, a preset, PRESET/split)",
    )
    parser.add_argument(
        "--encoder",
        type=input_path,
        help="fine-tune this pretrained encoder (safetensors from --save-encoders) instead of "
        "pretraining one; --arms then only labels the runs",
    )
    parser.add_argument(
        "--save-encoders", type=output_folder, help="write each pretrained encoder here (ARM-seedS)"
    )
    parser.add_argument(
        "--no-probe", action="store_true", help="skip the probe (fine-tuning runs only)"
    )
    parser.add_argument(
        "--average",
        type=average_decay,
        default=None,
        help="evaluate, early-stop on and keep the weights' exponential moving average of this "
        "decay, in pretraining and fine-tuning (experiments.detectors --average)",
    )
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0, help="stream worker processes")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--target-fpr", type=float, default=0.05)
    parser.add_argument("--tiny", action="store_true", help="the seconds-long test benchmark")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--json", type=output_path)
    parser.add_argument("--write", type=output_path, help="markdown file whose section to refresh")
    parser.add_argument("--from-json", type=input_path, nargs="+")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    refuse_unreplaceable(parser, args.write, "pretraining")
    command = "python -m experiments.pretraining_study " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    refuse_clashes(parser, args)  # before anything is read or run
    if args.from_json:
        try:
            runs = study_records(args.from_json)
        except ValueError as error:
            parser.error(str(error))
        made_by = " and ".join(f"`{c}`" for c in sorted({r.get("command", "?") for r in runs}))
        text = markdown(runs, f"{made_by}, then `{command.strip()}`")
        print(text)
        if args.write:
            replace_section(args.write, "pretraining", text)
        return
    if args.pretrain_only and (args.encoder is not None or "none" in args.arms):
        parser.error("--pretrain-only pretrains: no --encoder, no 'none' arm")
    if args.arch != "vit" and not args.pretrain_only:
        parser.error(
            f"--arch {args.arch} only pretrains (--pretrain-only): its detector is fine-tuned "
            "by experiments.detectors --init-residual"
        )
    config = BenchmarkConfig.tiny() if args.tiny else BenchmarkConfig()
    problem = bad_study_options(args, config.patch_size)
    if problem:  # before the benchmark and any run: no work lost
        parser.error(problem)
    torch.set_num_threads(args.threads)
    bench = build_benchmark(config, args.cache_dir, progress=args.progress)
    families = FamilySplit(
        tuple(f for f in SEEN if f in config.families),
        tuple(f for f in HELDOUT if f in config.families),
    )
    runs = []
    for arm in args.arms:
        for seed in args.seeds:
            run = run_one(bench, families, arm, seed, args)
            run["command"] = command.strip()
            runs.append(run)
            if args.json:  # after every run: a long study keeps what it finished
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(strict_json.dumps(runs, indent=1, default=float))
            if args.pretrain_only or "report" not in run:
                best = run.get("best_val_loss")
                print(f"{arm} seed {seed}: " + (
                    f"best validation loss {best:.4f} at step {run['best_step']}"
                    if best is not None else f"pretraining diverged ({run['pretrain_status']})"
                ), flush=True)  # fmt: skip
                continue
            probe = f"{run['probe']['heldout']['mean']['auc']:.3f}" if "probe" in run else "-"
            print(
                f"{arm} seed {seed}: probe held-out {probe}, fine-tuned seen "
                f"{run['report']['seen']['mean']['auc']:.3f} held-out "
                f"{run['report']['heldout']['mean']['auc']:.3f} "
                f"({run['best_step']}/{run['steps']} steps)",
                flush=True,
            )
    if args.no_probe or args.pretrain_only or args.encoder is not None:  # not the study
        return
    text = markdown(runs, f"`{command.strip()}`")
    print(text)
    if args.write:
        replace_section(args.write, "pretraining", text)


if __name__ == "__main__":
    main()
