"""Train, calibrate and write the detector that ships inside the package (``Detector.load()``).

The run is the one of ``experiments.detectors`` (its :func:`~experiments.detectors.train_one`:
training stream of the seen families, early stopping on the validation split), for one
detector and one seed, by default the recipe that ships (:data:`SHIPPED_RECIPE`); then the
threshold is calibrated on the validation reals' *logits* for ``--target-fpr`` (the scale
``assocmem.forensic.Detector`` decides on), the test split is scored per family, seen and held
out, and the weights are written with that table, the data config and this command
(``assocmem.forensic.checkpoint``). ``--views d4`` makes every logit of that
calibration and table the mean over a patch's eight dihedral views (``assocmem.forensic.views``)
and records ``views: d4`` in the header, so ``Detector`` scores each tile that way.

    python -m experiments.ship_detector --replace-shipped --write docs/results.md   # the recipe
    python -m experiments.ship_detector --table-only --write docs/results.md   # from the file

``--out`` defaults to the package's own checkpoint (``Detector.load()``'s), which is written only
with ``--replace-shipped`` and never by a ``--tiny`` run; ``--out FILE`` writes elsewhere.

Trains single-threaded (``--threads 1``); on this project's 2-core machine ~30-60 min.

``--members W ...`` ships a deep ensemble instead (architecture ``ensemble``, the mean logit of
its members, ``assocmem.forensic.models.ensemble``) from weights already trained by
``experiments.detectors --save-weights`` (one recipe, different seeds): no training here, the
same calibration and table.

    python -m experiments.ship_detector --members W0 W1 W2 --views d4 --out ens.safetensors
"""

from __future__ import annotations

import argparse
import shlex
import sys
import warnings
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import torch

from assocmem.forensic.calibration import (
    ProbabilityScaling,
    platt_scaling,
    probability_losses,
    size_thresholds,
)
from assocmem.forensic.checkpoint import (
    DEFAULT_CHECKPOINT,
    build_model,
    load_detector,
    save_detector,
)
from assocmem.forensic.data import BenchmarkConfig, build_benchmark
from assocmem.forensic.detector import Detector
from assocmem.forensic.image_level import fake_image_scores, real_image_scores
from assocmem.forensic.protocol import zero_shot_report
from assocmem.forensic.size_calibration import without_blank
from assocmem.forensic.views import VIEWS, view_logits
from assocmem.storage import sidecar_path
from experiments.cli_files import input_path, options_set, output_path, refuse_clashes
from experiments.detector_ensemble import ensemble_of
from experiments.detectors import (
    HELDOUT,
    SEEN,
    SHIPPABLE,
    add_training_options,
    bad_image_batch,
    bad_lr,
    bad_run_options,
    family_split,
    train_one,
)
from experiments.report import refuse_unreplaceable, replace_section
from experiments.score_cache import memoized
from experiments.validate_config import same_file


def ship(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Train ``args.model`` (seed ``args.seed``), or with ``args.members`` assemble the weights
    ``experiments.detectors --save-weights`` kept into a deep ensemble (no training); then
    calibrate, score and write ``args.out``. Returns the header written."""
    torch.set_num_threads(args.threads)
    config = BenchmarkConfig.tiny() if args.tiny else BenchmarkConfig()
    bench = build_benchmark(config, args.cache_dir, progress=args.progress)
    families = family_split(config)
    if args.members:
        recipe, model = ensemble_of(args.members)
        if tuple(recipe["seen"]) not in (SEEN, families.seen):
            # the checkpoint's table, threshold and probability map assume the default split:
            # members trained on others (--seen) shipped with a family they trained on listed
            # as held out, and families they never saw as "trained on"
            raise ValueError(
                f"the members were trained on {list(recipe['seen'])}, not the default seen "
                f"families {list(families.seen)}; a shipped detector is trained on those"
            )
        if recipe["model"] not in SHIPPABLE:
            raise ValueError(f"{recipe['model']!r} is not a detector a checkpoint can hold")
        if recipe["patch_size"] != config.patch_size:
            raise ValueError(
                f"the members were trained on {recipe['patch_size']} px patches, the benchmark "
                f"has {config.patch_size}"
            )
        member, member_kwargs = SHIPPABLE[recipe["model"]]
        architecture = "ensemble"
        kwargs: dict[str, Any] = {
            "members": [{"architecture": member, "arch_kwargs": member_kwargs}] * len(model.members)
        }
        label = f"{recipe['model']} (ensemble of {len(model.members)})"
        train = recipe
    else:
        architecture, kwargs = SHIPPABLE[args.model]
        torch.manual_seed(args.seed)  # before the network is built: its initialisation is seeded
        model = build_model(architecture, kwargs)
        run = train_one(bench, families, model, args.optimizer, args.lr, args.seed, args)
        label = args.model
        train = {
            **run,
            **{
                k: getattr(args, k)
                for k in ("batch_size", "max_steps", "eval_every", "patience", "lr_drops")
            },
            "threads": args.threads,  # the section's "s on N threads"
        }
    val = bench.split("val", families.seen)
    # the views the checkpoint will score with: the calibration and the table use the same
    # logits, each image set scored once (the report and the probability table share the test
    # split, the calibration and the report the validation reals)
    score = memoized(partial(view_logits, model, views=args.views))
    val_real_logits = score(val.images[val.labels == 0])
    val_fake_logits = score(val.images[val.labels == 1])
    report = zero_shot_report(score, bench, families, target_fpr=args.target_fpr)
    try:
        scaling: ProbabilityScaling | None = platt_scaling(val_real_logits, val_fake_logits)
    except ValueError as e:  # a detector that ranks its own validation fakes below the reals
        warnings.warn(f"no map to P(fake) in the checkpoint: {e}", stacklevel=2)
        scaling = None
    image_scores = image_calibration(model, bench, families.seen, args)
    info = {
        "command": command,
        "model": label,
        "train": train,
        "data": {
            "config": config.to_dict(),
            "key": config.key(),
            "seen": list(families.seen),
            "heldout": list(families.heldout),
        },
        "image_calibration": {
            "split": "val",
            "n": args.image_n,
            "sizes": {str(k): c.size for k, c in image_scores.items()},
        },
        "test": {
            **{k: report[k] for k in ("seen", "heldout", "test_real_fpr") if k in report},
            **(
                {"probability": probability_report(score, bench, families, scaling)}
                if scaling is not None
                else {}
            ),
        },
    }
    header = save_detector(
        args.out,
        model,
        architecture=architecture,
        arch_kwargs=kwargs,
        patch_size=config.patch_size,
        val_real_logits=val_real_logits,
        target_fpr=args.target_fpr,
        views=args.views,
        info=info,
        val_fake_logits=val_fake_logits if scaling is not None else None,
        image_real_scores={k: c.reals for k, c in image_scores.items()},
        image_fake_scores={k: c.fakes for k, c in image_scores.items() if c.fakes is not None}
        if all(c.fakes is not None for c in image_scores.values())
        else None,
    )
    # the protocol's threshold and the shipped one are the same computation on the same logits
    if header["calibration"]["threshold"] != report["threshold"]:
        raise RuntimeError(
            f"shipped threshold {header['calibration']['threshold']} differs from the "
            f"protocol's {report['threshold']}"
        )
    return header


class ImageCalibration(NamedTuple):
    size: int  # the crops' side in pixels
    reals: list[float]  # scores of real crops of the validation photos
    fakes: list[float] | None  # of fakes of the seen families, None where no map fits them


def image_calibration(
    model: torch.nn.Module, bench: Any, seen: Sequence[str], args: argparse.Namespace
) -> dict[int, ImageCalibration]:
    """Tile count -> the scores of ``args.image_n`` real crops of one ``args.image_sizes`` size
    of the **validation** photos and of as many fakes (crops made fake by a ``seen`` family
    drawn uniformly), for each size the validation photos can give (the others are skipped
    with a warning): what ``Detector`` calibrates larger images' thresholds and ``P(fake)`` on
    (``assocmem.forensic.detector``). If some size's fakes do not score above its reals
    (warned), no size stores fakes: every threshold is kept and ``P(fake)`` reads the patch
    map."""
    patch = bench.config.patch_size
    scorer = Detector(model=model, patch_size=patch, threshold=0.0, stride=patch, views=args.views)
    out: dict[int, ImageCalibration] = {}
    for size in args.image_sizes:
        try:
            reals = real_image_scores(scorer, bench, size=size, n=args.image_n, split="val")
        except ValueError as e:
            warnings.warn(f"no image threshold for {size} px: {e}", stacklevel=2)
            continue
        fakes = fake_image_scores(scorer, bench, seen, size=size, n=args.image_n, split="val")
        # A blank crop (no textured tile) has no score (NaN) and is never called fake: the
        # threshold and the map are fit on the crops that get a score (one blank fake made every
        # size's map fail, so P(fake) of every image fell back to the patch map)
        reals, fakes = (
            without_blank(x, f"{size} px {name}")
            for x, name in ((reals, "reals"), (fakes, "fakes"))
        )
        if not reals.size:
            warnings.warn(
                f"no image threshold for {size} px: every real crop is blank", stacklevel=2
            )
            continue
        try:
            platt_scaling(reals, fakes)
        except ValueError as e:
            warnings.warn(f"no map to P(fake) for {size} px: {e}", stacklevel=2)
            fakes = None
        out[scorer.area_tiles(size, size)] = ImageCalibration(
            size, reals.tolist(), None if fakes is None else fakes.tolist()
        )
    return out


def probability_report(
    score: Any, bench: Any, families: Any, scaling: ProbabilityScaling
) -> dict[str, dict[str, Any]]:
    """How good ``P(fake)`` is on the test split, seen and held-out families (each against all
    test reals, classes weighted equally): Platt's map against the plain sigmoid of the logit."""
    out: dict[str, dict[str, Any]] = {}
    for group, fams in (("seen", families.seen), ("heldout", families.heldout)):
        if not fams:
            continue
        test = bench.split("test", fams)
        logits = score(test.images).double()
        labels = test.labels.numpy()
        out[group] = {
            "platt": probability_losses(labels, scaling(logits)),
            "sigmoid": probability_losses(labels, torch.sigmoid(logits).numpy()),
        }
    return out


def training_sentence(header: dict[str, Any]) -> str:
    """How the shipped weights were trained, from the header: one run, or an ensemble's."""
    info = header["info"]
    train = info["train"]
    if header["architecture"] == "ensemble":
        n = len(header["arch_kwargs"]["members"])
        member = header["arch_kwargs"]["members"][0]
        return (
            f"`{info['model']}`: the mean logit of {n} networks ({member['architecture']} "
            f"{member['arch_kwargs']}) trained alike on seeds {train['seed'].replace('+', ', ')}, "
            f"{train['optimizer']} lr {train['lr']:g}"
            + (
                f", each kept as the exponential moving average of its weights (decay "
                f"{train['average']:g})"
                if train.get("average")
                else ""
            )
            + f"; best validation loss at steps {train['best_step'].replace('+', ', ')} "
            f"(of {train['steps'].replace('+', ', ')} run; `experiments.detectors "
            f"--save-weights`, members listed in the checkpoint's `info`)."
        )
    return (
        f"`{info['model']}` ({header['architecture']} {header['arch_kwargs']}), seed "
        f"{train['seed']}, {train['optimizer']} lr {train['lr']:g}, batch {train['batch_size']}"
        + (
            f", shipped as the exponential moving average of its weights (decay "
            f"{train['average']:g}): "
            if train.get("average")
            else ": "
        )
        + (
            f"trained beside a family-attribution head (weight {train['attribution']:g}, "
            "not shipped); "
            if train.get("attribution")
            else ""
        )
        + f"best validation loss at step {train['best_step']} of {train['steps']} run "
        f"({'stopped early' if train['stopped_early'] else 'step cap'}; {train['seconds']:.0f} s "
        f"on {_threads(train.get('threads', 1))})."
    )


def _threads(count: int) -> str:
    # a checkpoint written before its header held the count trained on one (the default)
    return "one thread" if count == 1 else f"{count} threads"


def markdown(header: dict[str, Any], path: Path) -> str:
    """The results section for a written checkpoint, from its header alone."""
    info, cal = header["info"], header["calibration"]
    test = info["test"]
    pct = f"{100 * cal['target_fpr']:g} %"
    views = header.get("views", "one")  # version-1 checkpoints predate the key: one view
    per_tile = "Per tile (one benchmark patch = one tile), " + (
        "views `one`: the tile as it is"
        if views == "one"
        else f"views `{views}`: each logit, the validation ones the threshold was set on "
        "included, is the mean over the tile's eight rotations and flips, as `Detector` scores"
    )
    shipped = same_file(path, DEFAULT_CHECKPOINT)
    where = f"the checkpoint: `{path}` and its `.json`" + (
        "; the default `--out`" if shipped else ""
    )
    if shipped and "--replace-shipped" not in info["command"].split():
        # the command as it ran, recorded before writing the package's checkpoint took a flag
        where = f"recorded before `--replace-shipped` was needed to write it: add it; {where}"
    table = "python -m experiments.ship_detector --table-only" + (
        "" if shipped else f" --out {shlex.quote(str(path))}"
    )
    lines = [
        "## Shipped detector (`Detector.load()`, `assocmem-detect`)",
        "",
        f"Regenerate: `{info['command']}` ({where}), then `{table} --write docs/results.md`.",
        "",
        training_sentence(header)
        + f" Inputs: {header['patch_size']} × {header['patch_size']} RGB tiles in "
        f"[0, 1]. Threshold on the logit {cal['threshold']:.4f}, set on the "
        f"{len(cal['val_real_logits'])} validation reals for a {pct} false-positive rate "
        f"(their FPR at it: {cal['val_real_fpr']:.3f}); test-real FPR at it: "
        f"{test['test_real_fpr']:.3f}. {per_tile}; scores of the test split (unseen photos), "
        "each family against all test reals; TPR at the threshold.",
        "",
        "| family | trained on | AUC | AP | TPR | FPR |",
        "|---|---|---|---|---|---|",
    ]
    for group, fams in (("seen", SEEN), ("heldout", HELDOUT)):
        if group not in test:
            continue
        for fam in [*(f for f in fams if f in test[group]), "mean"]:
            m = test[group][fam]
            side = "seen" if group == "seen" else "held out"
            name = f"**mean ({side})**" if fam == "mean" else fam
            lines.append(
                f"| {name} | {'yes' if group == 'seen' else 'no (held out)'} | {m['auc']:.3f} "
                f"| {m['ap']:.3f} | {m['tpr']:.3f} | {m['fpr']:.3f} |"
            )
    if "probability" in cal and "probability" in test:
        lines += ["", probability_markdown(cal, test["probability"])]
    if cal.get("image_real_scores") and "image_calibration" in info:
        lines += ["", image_markdown(cal, info["image_calibration"])]
    return "\n".join(lines) + "\n"


def image_markdown(cal: dict[str, Any], calibration: dict[str, Any]) -> str:
    """The sentence on the thresholds of larger images, from the header."""
    pct = f"{100 * cal['target_fpr']:g} %"
    stored = [(int(k), scores) for k, scores in cal["image_real_scores"].items()]
    thresholds = dict(size_thresholds(stored, cal["target_fpr"]))  # as Detector reads them
    parts = []
    for k, _ in sorted(stored):
        size = calibration["sizes"][str(k)]
        t = thresholds.get(k)
        decided = f"{t:.4f}" if t is not None else "none (too few crops: a smaller size's)"
        parts.append(f"{size} × {size} px ({k} tiles) {decided}")
    return (
        f"Larger images (`Detector.threshold_for`): thresholds for a {pct} false-positive rate "
        f"set on {calibration['n']} real crops per size of the validation photos, post-processed "
        f"like the benchmark: {'; '.join(parts)}; an image is decided at the threshold of the "
        "largest size whose tile count is not above its own (docs/results.md, `image-level`)"
        + (
            f", and its `P(fake)` is that size's Platt map, fit on those reals and "
            f"{calibration['n']} fakes of the seen families made from other crops of the same "
            "photos."
            if cal.get("image_fake_scores")
            else "."
        )
    )


def probability_markdown(cal: dict[str, Any], losses: dict[str, Any]) -> str:
    """The paragraph and table on ``P(fake)``: the Platt map and its test losses."""
    scaling = ProbabilityScaling(**cal["probability"])
    at_threshold = float(scaling([cal["threshold"]])[0])
    lines = [
        f"`P(fake)` (`ImageScore.probability`, `assocmem-detect`'s column): Platt's map "
        f"`{scaling.formula(4)}`, fit on the "
        f"{len(cal['val_real_logits'])} validation reals and {len(cal['val_fake_logits'])} "
        f"validation fakes of the seen families, the two classes weighted equally "
        f"(`calibration.platt_scaling`); at the threshold it reads {at_threshold:.3f}. Its losses "
        "on the test split, each group's fakes against all test reals with the classes weighted "
        "equally (lower is better; a constant 0.5 scores 0.250 and 0.693), against the plain "
        "sigmoid of the logit:",
        "",
        "| fakes | Brier (Platt) | Brier (sigmoid) | log loss (Platt) | log loss (sigmoid) |",
        "|---|---:|---:|---:|---:|",
    ]
    for group, name in (("seen", "seen families"), ("heldout", "held-out families")):
        if group in losses:
            p, s = losses[group]["platt"], losses[group]["sigmoid"]
            lines.append(
                f"| {name} | {p['brier']:.3f} | {s['brier']:.3f} | {p['log_loss']:.3f} "
                f"| {s['log_loss']:.3f} |"
            )
    return "\n".join(lines)


# The recipe the shipped checkpoint was trained with ("Forensic detectors: what the table
# says" in docs/results.md: the one-class head and statistics pooling adopted by
# leave-one-seen-family-out folds, patience 8 by the validation loss), so that the command
# without options trains what ships. A test checks it against the command recorded in the
# shipped checkpoint. Paired batches (--paired) were adopted for the recipe afterwards and are
# the same detector over five seeds; the checkpoint was not re-shipped for them.
SHIPPED_RECIPE: dict[str, Any] = {
    "model": "npr_dct_oc_std",
    "optimizer": "muon_delta/split",
    "lr": 5e-3,
    "seed": 0,
    "max_steps": 10_000,
    "eval_every": 250,
    "patience": 8,
    "average": 0.995,
    "attribution": 3.0,
    "train_postprocess": "shared",
    "real_consistency": 0.0,
    "views": "d4",
}


def build_parser() -> argparse.ArgumentParser:
    """The command line; its defaults are :data:`SHIPPED_RECIPE`."""
    recipe = SHIPPED_RECIPE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=recipe["model"], choices=SHIPPABLE)
    parser.add_argument("--optimizer", default=recipe["optimizer"])
    parser.add_argument("--lr", type=float, default=recipe["lr"])
    parser.add_argument("--seed", type=int, default=recipe["seed"])
    parser.add_argument("--max-steps", type=int, default=recipe["max_steps"])
    add_training_options(
        parser,
        **{k: recipe[k] for k in ("eval_every", "patience", "average", "attribution")},
    )
    parser.add_argument(
        "--image-sizes",
        type=int,
        nargs="*",
        default=[64, 128, 256],
        help="square image sizes (multiples of the patch) whose thresholds are calibrated on "
        "real crops of the validation photos; none: the patch threshold for every size",
    )
    parser.add_argument("--image-n", type=int, default=200, help="real crops per image size")
    parser.add_argument(
        "--views",
        default=recipe["views"],
        choices=VIEWS,
        help="test-time views of the calibration, the table and the shipped detector's scores: "
        "the tile alone, or the mean logit over its eight dihedral views",
    )
    parser.add_argument(
        "--members",
        type=input_path,
        nargs="+",
        help="no training: ship the deep ensemble of these weights files (written by "
        "experiments.detectors --save-weights from runs of one recipe)",
    )
    parser.add_argument("--tiny", action="store_true", help="the seconds-long test benchmark")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_CHECKPOINT,
        help="the checkpoint to write (with --table-only: to read) and its .json sidecar beside "
        "it; default: the package's shipped one (src/assocmem/forensic/checkpoints/"
        "detector.safetensors), which a run writes only with --replace-shipped",
    )
    parser.add_argument(
        "--replace-shipped",
        action="store_true",
        help="write the package's shipped checkpoint (the default --out); never with --tiny",
    )
    parser.add_argument("--write", type=output_path, help="markdown file whose section to refresh")
    parser.add_argument("--table-only", action="store_true", help="no training: read --out")
    parser.add_argument("--progress", action="store_true")
    return parser


def bad_image_sizes(args: argparse.Namespace) -> str | None:
    """Why ``--image-sizes`` cannot be calibrated, or ``None``: each a multiple of the benchmark's
    patch larger than one patch, once. A size between multiples is decided at the smaller
    multiple's tile count (``Detector.area_tiles``): 80 px crops stored as 4 tiles replaced the
    64 px calibration, and 40 px (1 tile) failed after training."""
    patch = (BenchmarkConfig.tiny() if args.tiny else BenchmarkConfig()).patch_size
    bad = [size for size in args.image_sizes if size <= patch or size % patch]
    if bad:
        return (
            f"--image-sizes must be multiples of the patch ({patch} px) larger than one patch, "
            f"got {bad}"
        )
    if len(set(args.image_sizes)) != len(args.image_sizes):
        return f"--image-sizes must be distinct, got {args.image_sizes}"
    return None


def bad_out(args: argparse.Namespace) -> str | None:
    """Why the checkpoint cannot be written to ``--out`` (with its sidecar), or ``None``; checked
    before any work. ``--out`` must be a file name (not a folder, not under a file, not
    ``.json``: its own sidecar), and the package's shipped checkpoint is written only with
    ``--replace-shipped``, never by a ``--tiny`` run. That neither it nor its sidecar is another
    input or output (a member's weights, the ``--write`` file) is :func:`refuse_out_clashes`'."""
    out = args.out
    try:
        output_path(str(out))
        output_path(str(sidecar_path(out)))
    except argparse.ArgumentTypeError as e:
        return f"--out: {e}"
    if out.suffix.lower() == ".json":
        return f"--out {out}: a checkpoint ending in .json would be its own sidecar"
    shipped = same_file(out, DEFAULT_CHECKPOINT)
    if shipped and args.tiny:
        return (
            f"--out {out} is the package's shipped checkpoint; a --tiny run never replaces it: "
            "give --out FILE"
        )
    if shipped and not args.replace_shipped:
        return (
            f"--out {out} is the package's shipped checkpoint (the default --out): give "
            "--replace-shipped to replace it, or --out FILE to write elsewhere"
        )
    if args.replace_shipped and not shipped:
        return f"--replace-shipped writes the shipped checkpoint, not --out {out}: drop one"
    return None


def refuse_out_clashes(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``parser.error`` if an output would replace an input or another output. ``--out`` is
    written by a run and read by ``--table-only``, so its role is passed here, not typed; the
    shipped checkpoint is an input unless it is ``--out`` (``--replace-shipped``)."""
    out, shipped = (
        args.out,
        [
            ("the shipped checkpoint", DEFAULT_CHECKPOINT),
            ("the shipped checkpoint's sidecar", sidecar_path(DEFAULT_CHECKPOINT)),
        ],
    )
    checkpoint = [("--out", out), ("--out's sidecar", sidecar_path(out))]
    if args.table_only:
        refuse_clashes(parser, args, inputs=[*checkpoint, *shipped])
    else:
        replaced = same_file(out, DEFAULT_CHECKPOINT)
        refuse_clashes(parser, args, outputs=checkpoint, inputs=[] if replaced else shipped)


# What only a training run reads: with --members (an ensemble of trained weights, no training)
# a command that sets one shipped the members and recorded the flag in its Regenerate line
TRAINING_ONLY = (
    "model", "optimizer", "lr", "seed", "max_steps", "eval_every", "patience", "average",
    "attribution", "lr_drops", "paired", "train_postprocess", "real_consistency", "batch_size",
    "workers",
)  # fmt: skip

# What --table-only reads: the checkpoint (--out) and where the section goes; the rest of these
# shape nothing in the table (the benchmark is not built).
TABLE_ONLY_READS = frozenset({"table_only", "out", "write", "progress", "tiny", "cache_dir"})


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    refuse_unreplaceable(parser, args.write, "shipped-detector")
    problem = (
        bad_run_options(args)
        or bad_image_batch(args)
        or bad_image_sizes(args)
        or bad_lr("--lr", args.lr)
    )
    if problem:  # before the benchmark is built and the detector trained: no work lost
        parser.error(problem)
    if args.image_n < 1:
        parser.error(f"--image-n must be >= 1, got {args.image_n}")
    if args.image_n * args.target_fpr < 1:  # calibration.size_thresholds leaves such sizes out
        warnings.warn(
            f"--image-n {args.image_n} real crops cannot calibrate a {args.target_fpr} "
            "false-positive rate: those sizes fall back to the patch threshold",
            stacklevel=2,
        )
    if not args.table_only and (problem := bad_out(args)):
        parser.error(problem)
    if args.members and (ignored := options_set(parser, args, among=TRAINING_ONLY)):
        parser.error(
            f"--members ships those weights as they were trained; it does not read "
            f"{', '.join(ignored)} (their recipe is the members' own)"
        )
    refuse_out_clashes(parser, args)
    if args.table_only:
        # the table is the checkpoint's own record: an option that would shape the detector is
        # not read, so a command that sets one is refused rather than answered from --out
        if ignored := options_set(parser, args, besides=TABLE_ONLY_READS):
            parser.error(
                f"--table-only writes the table of --out as it was shipped; it does not read "
                f"{', '.join(ignored)} (ship first, without --table-only)"
            )
        try:
            header = load_detector(args.out).header
        except (ValueError, OSError) as e:  # no checkpoint there, or not one
            parser.error(f"--out {args.out}: {e}")
    else:
        rest = sys.argv[1:] if argv is None else argv
        command = "python -m experiments.ship_detector " + " ".join(shlex.quote(a) for a in rest)
        try:
            header = ship(args, command.strip())
        except (ValueError, FileNotFoundError) as e:  # bad members: say which, write nothing
            parser.error(str(e))
    try:
        shown = args.out.resolve().relative_to(Path.cwd())
    except ValueError:
        shown = args.out
    text = markdown(header, shown)
    print(text)
    if args.write:
        replace_section(args.write, "shipped-detector", text)


if __name__ == "__main__":
    main()
