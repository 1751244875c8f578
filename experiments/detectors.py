"""Forensic detectors trained to convergence on the training stream, scored zero-shot.

For every (detector, optimizer, seed): train on fresh stream batches of the seen families
(``assocmem.forensic.data.stream``), select by early stopping on the validation split (reals and
seen fakes, balanced), calibrate the threshold on the validation reals for ``--target-fpr``, and
score the test split per family, seen and held out (``assocmem.forensic.protocol``). Nothing of
the held-out families or of the test photos takes part in training, early stopping or the
threshold. ``--seen`` trains on other families (all eight: the ceiling runs of
``experiments.detector_ceiling``, which measure the benchmark and choose nothing here).

    python -m experiments.detectors                                   # the results table
    python -m experiments.detectors --models npr --seeds 0 --max-steps 600 --optimizers adam muon
    python -m experiments.detectors --write docs/results.md           # refresh that section

Prints a markdown section (mean ± std over seeds) and, with ``--json``, every run's report.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from assocmem import MemoryOptimizer, available_memories
from assocmem.forensic.checkpoint import build_model
from assocmem.forensic.data import BenchmarkConfig, build_benchmark
from assocmem.forensic.data.postprocess import PostProcessConfig
from assocmem.forensic.data.spectral_augment import checked_spectral_mask
from assocmem.forensic.data.stream import TrainStream, checked_strength, stream_loader
from assocmem.forensic.models import F3Net, MesoNet4
from assocmem.forensic.models.attribution import FamilyAttribution
from assocmem.forensic.models.npr import NPRWithSpectrum
from assocmem.forensic.protocol import FamilySplit, balanced, zero_shot_report
from assocmem.forensic.train import fake_probability, train_detector
from assocmem.forensic.views import VIEWS, view_logits
from assocmem.optim import param_groups
from assocmem.storage import read_safetensors, write_safetensors
from experiments.cli_files import (
    input_path,
    options_set,
    output_folder,
    output_path,
    refuse_clashes,
)
from experiments.report import read_runs, refuse_unreplaceable, replace_section, write_json
from experiments.validate_config import CONF


def _shippable(name: str, size: int) -> nn.Module:
    return build_model(*SHIPPABLE[name])


SEEN = ("ae_transconv", "ae_nearest", "double_jpeg", "splice")
HELDOUT = ("ae_bilinear", "ae_pixelshuffle", "resample", "denoiser")
# The benchmark's patch side unless --patch-size says otherwise (runs recorded before the
# option existed were all at this size).
DEFAULT_PATCH = BenchmarkConfig.patch_size
# Early stopping's patience (evaluations without progress) unless --patience says otherwise
DEFAULT_PATIENCE = 4
# What a run's weights file records of how they were trained (``save_weights``'s header), so that
# ``experiments.detector_ensemble`` joins only members of one recipe, labels its row as theirs
# and scores it on their split: every option that makes a row of its own, and the families seen.
WEIGHTS_RECIPE = (
    "model",
    "patch_size",
    "optimizer",
    "lr",
    "average",
    "attribution",
    "seen",
    "paired",
    "train_postprocess",
    "real_consistency",
    "trace_strength",
    "spectral_mask",
    "lr_drops",
    "patience",
    "init_residual",
)
# The WEIGHTS_RECIPE entries a record or header written before them lacks, as those runs had
# them by default; patience is not among them (its default changed between recipes), and a
# record's command says it (recipe_of).
LEGACY_DEFAULTS: dict[str, Any] = {
    "patch_size": DEFAULT_PATCH,
    "attribution": 0.0,
    "seen": list(SEEN),
    "paired": False,
    "train_postprocess": "shared",
    "real_consistency": 0.0,
    "trace_strength": None,
    "spectral_mask": None,
    "lr_drops": 0,
    "patience": None,
    "init_residual": None,
}
# --train-postprocess: name -> the training stream's post-processing for a benchmark
TRAIN_POSTPROCESS: dict[str, Callable[[Any], PostProcessConfig]] = {
    "shared": lambda bench: bench.config.post,
    "none": lambda bench: PostProcessConfig.none(),
}
# what tells two runs of a --from-json table apart: a file copied or named twice repeats all of it
# What --from-json reads besides the records: where the section goes, and the rate the runs
# were calibrated for (checked against theirs); --progress shows nothing there and is harmless
FROM_JSON_READS = frozenset({"from_json", "write", "target_fpr", "progress"})

RUN_IDENTITY = ("command", "model", "optimizer", "lr", "seed", "views", "seen", "patch_size")

# The detectors a checkpoint can hold: name -> (architecture in the checkpoint format's
# registry, its constructor arguments). ``experiments.ship_detector`` ships from this table.
SHIPPABLE: dict[str, tuple[str, dict[str, Any]]] = {
    "npr": ("npr", {}),
    "npr_bn": ("npr", {"norm": "batch"}),
    "npr_pixels": ("npr_pixels", {}),
    "npr_dct": ("npr_dct", {}),
    "npr_dct_dropout": ("npr_dct", {"feature_dropout": 0.5}),
    "npr_dct_pe": ("npr_dct", {"feature_dropout": 0.5, "prediction_filters": 4}),
    # the residual encoder truncated to two stages: a 13-pixel receptive field instead of 29,
    # so the logit averages local evidence (Chai et al., ECCV 2020: truncated detectors with
    # small receptive fields generalise better to unseen generators); widths as a list, as a
    # checkpoint's JSON header gives them back
    "npr_dct_local": ("npr_dct", {"feature_dropout": 0.5, "widths": [16, 32]}),
    # a one-class cosine head (models/one_class.py: OC-softmax, made for unseen spoofing attacks)
    "npr_dct_oc": ("npr_dct", {"feature_dropout": 0.5, "head": "one_class"}),
    # the same with each branch's map pooled into its means and spreads over positions
    # (models/pooling.py: statistics pooling; a spliced region disagrees with the rest)
    "npr_dct_oc_std": (
        "npr_dct",
        {"feature_dropout": 0.5, "head": "one_class", "pool": "mean_std"},
    ),
    # the same with branch dropout (models/branch_dropout.py: half of the training patches lose
    # the NPR or the DCT embedding, so each branch must detect alone)
    "npr_dct_oc_std_bd": (
        "npr_dct",
        {"feature_dropout": 0.5, "head": "one_class", "pool": "mean_std", "branch_dropout": 0.5},
    ),
    "smallcnn": ("smallcnn", {}),
}

# Every detector by name, built for a patch size (the shippable ones ignore it).
MODELS: dict[str, Callable[[int], nn.Module]] = {
    **{name: partial(_shippable, name) for name in SHIPPABLE},
    "npr_spectrum": lambda size: NPRWithSpectrum(image_size=size),
    "f3net": lambda size: F3Net(image_size=size),
    "mesonet4": lambda size: MesoNet4(image_size=size),
}


# Muon's recipe for the ``/split`` optimizers, as the harness's optimizer/muon.yaml: the preset
# on the hidden matrices, Adam at lr * 0.1 with betas (0.9, 0.95) on the head, norms and biases.
SPLIT_REST_LR_RATIO = 0.1
SPLIT_REST_BETAS = (0.9, 0.95)


def optimizer_factory(
    name: str, lr: float, model: nn.Module | None = None
) -> Callable[[Any], torch.optim.Optimizer]:
    """``adam`` is torch's own Adam (the baseline); any other name is a MemoryOptimizer preset.

    ``PRESET/split`` (e.g. ``muon/split``) builds the preset's param groups from ``model`` with
    :func:`assocmem.optim.param_groups`: the preset on the hidden weight matrices, Adam on the
    rest, as a named configuration's ``split`` block says (``rest_lr_ratio``, ``rest``; e.g.
    ``muon_rest03``), else Muon's recipe (:data:`SPLIT_REST_LR_RATIO`).
    """
    if name == "adam":
        return partial(torch.optim.Adam, lr=lr)
    named, _, split = name.partition("/")
    config = named_configuration(named)
    preset, hyper = _preset_and_hyper(named, config)
    if not split:
        return partial(MemoryOptimizer, memory=preset, lr=lr, **hyper)
    if split != "split" or model is None:
        raise ValueError(f"optimizer {name!r}: expected PRESET or PRESET/split with a model")
    ratio, rest_hyper = split_of(config)
    rest = {**rest_hyper, "lr": lr * ratio}

    def make(params: Any) -> torch.optim.Optimizer:
        groups = param_groups(model, rest=rest, trainable_only=True)
        given = {id(p) for p in params}
        if given != {id(p) for g in groups for p in g["params"]}:
            raise ValueError(f"optimizer {name!r}: the split must cover exactly the trained params")
        for group in groups:  # the configuration's hyperparameters on the preset's groups only
            if "memory" not in group:
                group.update(hyper)
        return MemoryOptimizer(groups, memory=preset, lr=lr)

    return make


def configuration_path(name: str) -> Path:
    """Where the harness keeps the named optimizer configuration ``name``."""
    return CONF / "optimizer" / f"{name}.yaml"


def named_configuration(name: str) -> DictConfig | None:
    """``experiments/conf/optimizer/NAME.yaml``, loaded; ``None`` for a preset's own name.
    Raises ``ValueError`` for a name that is neither."""
    if name in available_memories():
        return None
    path = configuration_path(name)
    if not path.exists():
        raise ValueError(
            f"optimizer {name!r}: neither a preset ({', '.join(available_memories())}) nor a "
            f"configuration in {path.parent}"
        )
    config = OmegaConf.load(path)
    assert isinstance(config, DictConfig)
    return config


def preset_and_hyper(name: str) -> tuple[str, dict[str, Any]]:
    """A preset name as it is, or a named configuration of the harness
    (``experiments/conf/optimizer/NAME.yaml``, e.g. ``muon_delta``): its preset and the
    hyperparameters it sets besides the lr."""
    return _preset_and_hyper(name, named_configuration(name))


def _preset_and_hyper(name: str, config: DictConfig | None) -> tuple[str, dict[str, Any]]:
    if config is None:
        return name, {}
    factory = OmegaConf.to_container(config.factory)
    assert isinstance(factory, dict)
    if factory.pop("_target_", None) != "assocmem.MemoryOptimizer":
        raise ValueError(
            f"optimizer {name!r}: {configuration_path(name)} does not configure a MemoryOptimizer"
        )
    # hydra's own keys (_partial_, _convert_, ...) say how to instantiate, not what to set
    hyper = {
        k: v for k, v in factory.items() if not k.startswith("_") and k not in ("lr", "memory")
    }
    return str(factory["memory"]), hyper


def split_of(config: DictConfig | None) -> tuple[float, dict[str, Any]]:
    """The rest group's lr ratio and hyperparameters for ``NAME/split``: the ``split`` block of
    the named configuration (:func:`named_configuration`) where it has one (as
    ``experiments.run`` reads it), else Muon's recipe (Adam at ``lr * 0.1``, betas (0.9, 0.95))."""
    split = None if config is None else config.get("split")
    if not split:
        return SPLIT_REST_LR_RATIO, {"memory": "adam", "betas": SPLIT_REST_BETAS}
    rest = OmegaConf.to_container(split.rest, resolve=True)
    assert isinstance(rest, dict)
    return float(split.rest_lr_ratio), {str(k): v for k, v in rest.items()}


def family_split(config: BenchmarkConfig, seen: Sequence[str] | None = None) -> FamilySplit:
    """:data:`SEEN` and :data:`HELDOUT`, restricted to the families ``config`` builds.

    ``seen``: train on these families instead (a ceiling study trains on every family); the
    held-out families are then the rest of :data:`HELDOUT`, so a family is never both, and a
    family of :data:`SEEN` left out of ``seen`` is not scored at all.
    """
    if seen is None:  # the default split, cut to what the benchmark builds
        trained = SEEN
    else:  # named families must exist: a typo would train on fewer families unnoticed
        trained = tuple(dict.fromkeys(seen))  # in order, once each
        unknown = sorted(set(trained) - set(config.families))
        if unknown:
            raise ValueError(f"unknown families {unknown}; the benchmark has {config.families}")
    return FamilySplit(
        tuple(f for f in trained if f in config.families),
        tuple(f for f in HELDOUT if f in config.families and f not in trained),
    )


def nonnegative_weight(text: str) -> float:
    """The value of a loss weight's option (``--attribution``, ``--real-consistency``): a
    finite weight >= 0 (0: no attribution head, no consistency term)."""
    try:
        weight = float(text)
    except ValueError:
        weight = math.nan
    if not (math.isfinite(weight) and weight >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite weight >= 0, got {text!r}")
    return weight


def average_decay(text: str) -> float | None:
    """``--average``'s value: a decay in (0, 1), or ``None`` (the raw weights) for 0."""
    try:
        decay = float(text)
    except ValueError:
        decay = math.nan
    if decay == 0.0:
        return None
    if not 0.0 < decay < 1.0:
        raise argparse.ArgumentTypeError(f"expected a decay in (0, 1), or 0, got {text!r}")
    return decay


def add_training_options(parser: argparse.ArgumentParser, **defaults: Any) -> None:
    """The options of how a detector is trained, stopped and calibrated that
    ``experiments.detectors`` and ``experiments.ship_detector`` share, so that the two commands
    read a recipe alike; ``defaults`` overrides an option's default by its ``dest`` (the
    shipped recipe's, in ``experiments.ship_detector``)."""
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument(
        "--patience", type=int, default=DEFAULT_PATIENCE, help="evaluations without progress"
    )
    parser.add_argument(
        "--lr-drops",
        type=int,
        default=0,
        help="divide the lr by 10 at a plateau this many times before stopping early",
    )
    parser.add_argument(
        "--average",
        type=average_decay,
        default=None,
        help="evaluate, early-stop on and keep an exponential moving average of the weights "
        "with this decay (e.g. 0.995); 0: the raw weights",
    )
    parser.add_argument(
        "--paired",
        action="store_true",
        help="train on batches of pairs: each crop as its real and as its fake, post-processed "
        "alike (TrainStream's paired)",
    )
    parser.add_argument(
        "--train-postprocess",
        choices=TRAIN_POSTPROCESS,
        default="shared",
        help="post-processing of the training batches: 'shared', the benchmark's (resize, blur, "
        "JPEG, as validation and test); 'none', crops and fakes as made (TrainStream's post)",
    )
    parser.add_argument(
        "--real-consistency",
        type=nonnegative_weight,
        default=0.0,
        help="train each real crop to score alike under two independent post-processings: "
        "this weight times the mean squared difference of their logits (detector_loss's "
        "logit pairing; TrainStream's real_twins). 0: off",
    )
    parser.add_argument(
        "--attribution",
        type=nonnegative_weight,
        default=0.0,
        help="also train a head that names each image's family (real or which seen family), "
        "its cross-entropy at this weight beside the detection loss (FamilyAttribution); the "
        "head is dropped after training. 0: detection loss only",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1, help="stream worker processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the trainer")
    parser.add_argument("--target-fpr", type=float, default=0.05)
    parser.set_defaults(**defaults)


def trained_postprocess(entries: Mapping[str, Any]) -> str:
    """The training post-processing (a :data:`TRAIN_POSTPROCESS` name) of a run record, a
    recipe or a command line's ``vars(args)``: 'shared' for records made before the entry
    existed and for a caller's namespace without the option."""
    return entries.get("train_postprocess") or "shared"


def is_default_split(run: dict[str, Any]) -> bool:
    """Whether ``run`` trained on the default seen families (records made before the ``seen``
    entry existed all did)."""
    return tuple(run.get("seen", SEEN)) == SEEN


def train_one(
    bench: Any,
    families: FamilySplit,
    model: nn.Module,
    optimizer: str,
    lr: float,
    seed: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Train ``model`` in place on the stream of ``families.seen`` to early stopping; the run's
    record without its test report (``experiments.ship_detector`` reuses it)."""
    recipe = run_recipe(args, families, optimizer, lr, seed)
    strength = recipe["trace_strength"]
    masking = recipe["spectral_mask"]
    consistency = recipe["real_consistency"]
    stream = TrainStream(
        bench,
        families.seen,
        batch_size=args.batch_size,
        seed=seed,
        trace_strength=tuple(strength) if strength else None,
        paired=recipe["paired"],
        post=TRAIN_POSTPROCESS[recipe["train_postprocess"]](bench),
        real_twins=bool(consistency),
        spectral_mask=tuple(masking) if masking else None,
    )
    x_val, y_val = balanced(bench.split("val", families.seen), seed=1000 + seed)
    weight = recipe["attribution"]
    attribution = (
        FamilyAttribution(model, list(stream.family_codes.values()), weight) if weight else None
    )
    start = time.perf_counter()
    result = train_detector(
        model,
        stream_loader(stream, args.workers),
        None,
        x_val,
        y_val,
        optimizer_factory(optimizer, lr, model if attribution is None else attribution),
        args.max_steps,
        eval_every=args.eval_every,
        patience=args.patience,
        progress=args.progress,
        lr_drops=recipe["lr_drops"],
        average=recipe["average"],
        attribution=attribution,
        real_consistency=consistency,
    )
    seconds = time.perf_counter() - start
    curve = [(r["step"], r["val_loss"]) for r in result.history if "val_loss" in r]
    # the seen families' validation AUC of the kept weights: unlike the loss, comparable
    # between detectors trained on different losses (a one-class head's margin)
    kept = [r for r in result.history if r.get("step") == result.best_step and "val_auc" in r]
    return {
        **recipe,
        # what the recipe does not name but a race's step cost and a section's text need
        "batch_size": args.batch_size,
        "max_steps": getattr(args, "max_steps", None),
        "status": result.status,
        "steps": result.steps,
        "best_step": result.best_step,
        "best_val_loss": result.best_val_loss,
        "best_val_auc": kept[-1]["val_auc"] if kept else None,
        "stopped_early": result.stopped_early,
        "lr_drop_steps": result.lr_drop_steps,
        "seconds": round(seconds, 1),
        "val_curve": curve,
    }


def run_recipe(
    args: argparse.Namespace, families: FamilySplit, optimizer: str, lr: float, seed: int
) -> dict[str, Any]:
    """How a run of this command is trained, as its record holds it: :func:`train_one`'s record
    without the outcome, known before training (the weights' name and header are planned
    from it, :func:`weights_clash`)."""
    strength = getattr(args, "trace_strength", None)
    masking = getattr(args, "spectral_mask", None)
    return {
        "optimizer": optimizer,
        "lr": lr,
        "seed": seed,
        "seen": list(families.seen),
        "lr_drops": getattr(args, "lr_drops", 0),
        "average": getattr(args, "average", None),
        "eval_every": args.eval_every,
        "patience": args.patience,
        "trace_strength": list(strength) if strength else None,
        "spectral_mask": list(masking) if masking else None,
        "paired": getattr(args, "paired", False),
        "train_postprocess": trained_postprocess(vars(args)),
        "real_consistency": getattr(args, "real_consistency", 0.0) or 0.0,
        "attribution": getattr(args, "attribution", 0.0) or 0.0,
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
    """Train one detector; one record per view set in ``args.views`` (the same trained
    weights scored, and calibrated, with each)."""
    torch.manual_seed(seed)
    model = MODELS[model_name](bench.config.patch_size)
    template = getattr(args, "init_residual", None)
    init = initial_residual(model, template, seed) if template else None
    run = train_one(bench, families, model, optimizer, lr, seed, args)
    run["init_residual"] = init
    if getattr(args, "save_weights", None):
        run["weights"] = str(save_weights(args.save_weights, model_name, bench, run, model))
    records = []
    for views in getattr(args, "views", ["one"]):

        def scorer(images: torch.Tensor, views: str = views) -> torch.Tensor:
            # probabilities, so that the report also gives the FPR at 0.5
            return fake_probability(view_logits(model, images, views))

        report = zero_shot_report(scorer, bench, families, target_fpr=args.target_fpr)
        records.append(
            {
                "model": model_name,
                "patch_size": bench.config.patch_size,
                **run,
                "views": views,
                "report": report,
            }
        )
    return records


def weights_name(model_name: str, run: dict[str, Any]) -> str:
    """The file name of a run's kept weights: model, optimizer, lr, average and seed, so that
    the runs of one table never share a name."""
    average = f"-ema{run['average']:g}" if run.get("average") else ""
    optimizer = run["optimizer"].replace("/", "")
    trained = "" if is_default_split(run) else "-seen-" + "+".join(run["seen"])
    strength = run.get("trace_strength")
    traces = f"-trace{strength[0]:g}-{strength[1]:g}" if strength else ""
    masking = run.get("spectral_mask")
    traces += f"-fmask{masking[0]:g}-{masking[1]:g}" if masking else ""
    paired = "-paired" if run.get("paired") else ""
    post = "-nopost" if trained_postprocess(run) == "none" else ""
    post += f"-rc{run['real_consistency']:g}" if run.get("real_consistency") else ""
    attribution = f"-attr{run['attribution']:g}" if run.get("attribution") else ""
    init = f"-init-{pretraining_of(run)}" if run.get("init_residual") else ""
    return (
        f"{model_name}-{optimizer}-lr{run['lr']:g}{average}{traces}{paired}{post}{attribution}{init}"
        f"{trained}-seed{run['seed']}.safetensors"
    )


def pretraining_of(run: Mapping[str, Any]) -> str:
    """The pretraining arm a run's residual encoder started from, read from the file name that
    ``experiments.pretraining_study --save-encoders`` gives it (``ARM-seedS.safetensors``)."""
    return Path(run["init_residual"]).name.split("-seed")[0]


def initial_residual(model: nn.Module, template: str, seed: int) -> str:
    """Load the pretrained residual encoder of ``seed`` (``template`` with ``{seed}`` filled in)
    into ``model``'s NPR branch; the path loaded. Every tensor must match: an encoder of another
    shape or architecture is an error, not a partial start."""
    try:
        path = template.format(seed=seed)
    except (KeyError, IndexError, ValueError):  # {other}, {0} or a lone brace
        raise ValueError(
            f"--init-residual {template!r}: a file name with {{seed}} as its only field"
        ) from None
    if not hasattr(model, "residual"):
        raise ValueError(
            f"--init-residual needs a detector with an NPR branch, not {type(model).__name__}"
        )
    _, tensors = read_safetensors(Path(path), "residual encoder")
    model.residual.load_state_dict(tensors, strict=True)
    return path


def save_weights(
    directory: Path, model_name: str, bench: Any, run: dict[str, Any], model: nn.Module
) -> Path:
    """Write the weights ``run`` kept (the early-stopping choice, averaged when it was) to
    ``directory``, with the recipe in the file's header; ``experiments.detector_ensemble``
    reads them back (:data:`WEIGHTS_RECIPE`, the seed, the kept step and the steps run).
    Returns the file's path."""
    path = Path(directory) / weights_name(model_name, run)
    header = {
        **weights_recipe(model_name, bench.config.patch_size, run),
        **{k: run[k] for k in ("seed", "best_step", "steps")},
    }
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    write_safetensors(path, tensors, header)
    return path


def weights_recipe(model_name: str, patch_size: int, run: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`WEIGHTS_RECIPE` entries of a weights file's header for ``run``."""
    return {
        **{k: run.get(k) for k in WEIGHTS_RECIPE},
        "model": model_name,
        "patch_size": patch_size,
        "seen": list(run.get("seen", SEEN)),
        "attribution": run.get("attribution", 0.0),
    }


def weights_clash(
    folder: Path, patch_size: int, planned: Sequence[tuple[str, Mapping[str, Any]]]
) -> str | None:
    """Why ``--save-weights`` would replace weights of another recipe, or ``None``: a file name
    holds the model, optimizer, lr, average, seed and the options that name a row
    (:func:`weights_name`), not every :data:`WEIGHTS_RECIPE` entry (patience, lr drops, the
    patch size), so two commands that differ only there wrote the same file, the second
    silently over the first. ``planned``: each run's (model, :func:`run_recipe`). A file there
    of the same recipe (a rerun) is replaced; checked before training."""
    for model_name, run in planned:
        path = folder / weights_name(model_name, run)
        wanted = weights_recipe(model_name, patch_size, run)
        what = "weights of another recipe"
        if problem := recipe_clash("--save-weights", path, wanted, what, WEIGHTS_RECIPE):
            return problem
    return None


def recipe_clash(
    option: str, path: Path, wanted: Mapping[str, Any], what: str, keys: Sequence[str] = ()
) -> str | None:
    """Why ``option`` must not write over ``path``, or ``None``: there is no file there, or
    the recipe in its ``assocmem`` header is ``wanted`` (a rerun: replaced). ``keys``: the
    entries compared (default: every entry of ``wanted``); an entry a header lacks is compared
    as :data:`LEGACY_DEFAULTS` has it. ``what`` names a file of another recipe."""
    if not path.exists():
        return None
    try:
        metadata, _ = read_safetensors(path, "saved file")
        header = json.loads(metadata["assocmem"])
    except (OSError, ValueError, KeyError):
        return f"{option} would replace {path}, which is not a file {option} wrote"
    wanted = json.loads(json.dumps(dict(wanted)))  # as a header holds it (tuples are lists)
    differ = [k for k in keys or wanted if header.get(k, LEGACY_DEFAULTS.get(k)) != wanted[k]]
    if not differ:
        return None
    was = ", ".join(f"{k} {header.get(k)!r} (now {wanted[k]!r})" for k in differ)
    return f"{option} would replace {path}, {what} ({was}); give this command another folder"


def bad_models(args: argparse.Namespace, patch_size: int) -> str | None:
    """Why a named model cannot be trained as the options ask, or ``None``; checked on a
    network built for the purpose before the benchmark: these used to fail when that model's
    turn came, after the runs before it. ``--attribution`` needs a detector with ``embed`` and
    a linear ``fc``; ``--init-residual`` an NPR branch and, for every seed, a file whose
    tensors fit it."""
    weight = getattr(args, "attribution", 0.0) or 0.0
    template = getattr(args, "init_residual", None)
    for name in args.models:
        model = MODELS[name](patch_size)
        if weight:
            try:
                FamilyAttribution(model, [1], weight)
            except (TypeError, ValueError) as error:
                return f"--attribution {weight:g} with --models {name}: {error}"
        for seed in args.seeds if template else ():
            try:
                initial_residual(model, template, seed)
            except (OSError, RuntimeError, ValueError) as error:  # no file, or not its tensors
                return f"--models {name}, seed {seed}: {error}"
    return None


def _ms(values: list[float], digits: int = 3) -> str:
    """Mean ± std of the finite values; ``(k of n)`` where only k of the n runs have one (a
    run scored as logits has no FPR at 0.5)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "n/a"
    if len(finite) == 1:
        text = f"{finite[0]:.{digits}f}"
    else:
        text = f"{statistics.mean(finite):.{digits}f} ± {statistics.stdev(finite):.{digits}f}"
    return text + (f" ({len(finite)} of {len(values)})" if len(finite) < len(values) else "")


def recorded_option(run: Mapping[str, Any], key: str, flag: str, default: Any) -> Any:
    """A run's ``key`` entry, or (runs recorded before the entry existed) the value of ``flag``
    in the command that made it, or ``default`` if neither says (the CLI's default)."""
    if key in run:
        return run[key]
    words = str(run.get("command", "")).split()
    return words[words.index(flag) + 1] if flag in words else default


def batch_size_of(run: Mapping[str, Any]) -> int:
    """The training batch of ``run`` (:func:`recorded_option`; 64, the commands' default)."""
    return int(recorded_option(run, "batch_size", "--batch-size", 64))


def lr_drops_of(run: dict[str, Any]) -> int:
    """How many lr drops ``run`` allowed (:func:`recorded_option`, default 0)."""
    return int(recorded_option(run, "lr_drops", "--lr-drops", 0))


def recipe_of(run: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`WEIGHTS_RECIPE` entries of a run record (``--json``), absent ones as those runs
    had them by default (:data:`LEGACY_DEFAULTS`), the options older records hold only in their
    command (lr drops, patience) read from it: what two runs must share to be one recipe."""
    recipe = {k: run.get(k, LEGACY_DEFAULTS.get(k)) for k in WEIGHTS_RECIPE}
    return recipe | {"lr_drops": lr_drops_of(dict(run)), "patience": patience_of(dict(run))}


def patience_of(run: dict[str, Any]) -> int:
    """How many evaluations without progress ``run``'s early stopping allowed
    (:func:`recorded_option`, default :data:`DEFAULT_PATIENCE`)."""
    return int(recorded_option(run, "patience", "--patience", DEFAULT_PATIENCE))


def run_label(run: dict[str, Any]) -> str:
    """The detector column: the model, its patch size when not the default benchmark's, its lr
    drops when it had any (a different recipe), its weight average's decay when it was
    evaluated on one, its early stopping's patience when not the default, its training fakes'
    trace strength when they were blended, its training images' frequency masking when they
    had it, whether its batches were real/fake pairs, the
    weight of its reals' logit pairing when it had one, the
    weight of its family-attribution loss when it had one, its member count when it is an
    ensemble (``experiments.detector_ensemble``), and its test-time views
    when they are not the image alone (``assocmem.forensic.views``)."""
    drops = lr_drops_of(run)
    patience = patience_of(run)
    views = run.get("views", "one")
    size = run.get("patch_size", DEFAULT_PATCH)
    strength = run.get("trace_strength")
    masking = run.get("spectral_mask")
    return (
        run["model"]
        + (f" ({size} px)" if size != DEFAULT_PATCH else "")
        + (f" (lr drops {drops})" if drops else "")
        + (f" (patience {patience})" if patience != DEFAULT_PATIENCE else "")
        + (f" (EMA {run['average']:g})" if run.get("average") else "")
        + (f" (trace strength {strength[0]:g}–{strength[1]:g})" if strength else "")
        + (f" (frequency masking {masking[1]:g} of the bins, p {masking[0]:g})" if masking else "")
        + (" (paired)" if run.get("paired") else "")
        + (" (trained without post-processing)" if trained_postprocess(run) == "none" else "")
        + (
            f" (real consistency {run['real_consistency']:g})"
            if run.get("real_consistency")
            else ""
        )
        + (f" (attribution {run['attribution']:g})" if run.get("attribution") else "")
        + (f" (residual pretrained: {pretraining_of(run)})" if run.get("init_residual") else "")
        + (f" (ensemble of {len(run['ensemble'])})" if run.get("ensemble") else "")
        + (f" ({views} views)" if views != "one" else "")
        + ("" if is_default_split(run) else f" (trained on {trained_on(run['seen'])})")
    )


def trained_on(seen: Sequence[str]) -> str:
    """A label for a run's training families: ``every family`` when it saw them all."""
    return "every family" if set(seen) >= {*SEEN, *HELDOUT} else "+".join(seen)


def group_mean(report: dict[str, Any], group: str, key: str = "auc") -> float:
    """The mean ``key`` over ``group``'s families in a run's report; NaN when the run has no
    such group (a run trained on every family has no held-out one)."""
    return report[group]["mean"][key] if group in report else math.nan


def family_metric(report: dict[str, Any], family: str, key: str = "auc") -> float:
    """``family``'s ``key`` in a run's report, whichever group it was scored in (NaN if in
    none)."""
    for group in ("seen", "heldout"):
        if family in report.get(group, {}):
            return report[group][family][key]
    return math.nan


def _row_key(run: dict[str, Any]) -> tuple[str, str]:
    # one row per recipe: the same optimizer at another learning rate is another row
    return run_label(run), f"{run['optimizer']} (lr {run['lr']:g})"


def seed_twice_in_a_row(runs: list[dict[str, Any]]) -> str | None:
    """Why ``runs`` cannot make the table, or ``None``: a row (one recipe) holding a seed twice.
    Records of two commands that differ only in what a record does not hold (batch size, step
    cap) shared a row, one seed counted twice in its mean and spread (an audit)."""
    seen: dict[tuple[tuple[str, str], Any, str], str] = {}
    for run in runs:
        key = (_row_key(run), run.get("seed"), run.get("views", "one"))
        if key in seen:
            return (
                f"--from-json: the row {key[0][0]} / {key[0][1]} holds seed {key[1]} twice (from "
                f"`{seen[key]}` and `{run.get('command', '?')}`): a row is one recipe, each "
                "seed once; render those runs apart"
            )
        seen[key] = run.get("command", "?")
    return None


def markdown(runs: list[dict[str, Any]], command: str, target_fpr: float) -> str:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(_row_key(r), []).append(r)
    pct = f"{100 * target_fpr:g} %"
    trained, heldout = split_prose(runs)
    lines = [
        "## Forensic detectors (training stream, early stopping, calibrated threshold)",
        "",
        f"Regenerate: {command}",
        "",
        f"Trained on {trained} (fresh stream batches of the train photos), early-stopped on "
        f"the validation split, threshold set on the validation reals for a {pct} "
        f"false-positive rate; scored on the test split (unseen photos). {heldout} are never "
        "trained on, stopped on or calibrated on. "
        'Mean ± std over seeds. TPR and FPR are at the calibrated threshold; "FPR at 0.5" '
        "flags a real patch when `sigmoid(logit) >= 0.5`, which is a decision only for a "
        "logit trained as log-odds (the linear heads), not for a one-class head's "
        "(`*_oc`, a cosine logit with a margin, whose sigmoid is no probability).",
        "",
        "| detector | optimizer | seeds | seen AUC | held-out AUC | held-out TPR | seen TPR "
        "| test-real FPR | FPR at 0.5 | best step / steps run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (model, opt), rs in groups.items():
        rep = [r["report"] for r in rs]
        budget = ", ".join(f"{r['best_step']}/{r['steps']}" for r in rs)
        lines.append(
            f"| {model} | {opt} | {len(rs)} "
            f"| {_ms([group_mean(x, 'seen') for x in rep])} "
            f"| {_ms([group_mean(x, 'heldout') for x in rep])} "
            f"| {_ms([group_mean(x, 'heldout', 'tpr') for x in rep])} "
            f"| {_ms([group_mean(x, 'seen', 'tpr') for x in rep])} "
            f"| {_ms([x['test_real_fpr'] for x in rep])} "
            f"| {_ms([x.get('test_real_fpr_0.5', float('nan')) for x in rep])} "
            f"| {budget} |"
        )
    lines += per_family_table(groups)
    return "\n".join(lines) + "\n"


def split_prose(runs: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    """Who the runs of a table trained on and who they held out, in words: the default split's
    families by name, or each row's (``--seen``) when a run trained on others (the text named
    the default split whatever the runs had seen)."""
    if all(is_default_split(run) for run in runs):
        return f"the seen families {', '.join(SEEN)}", f"Held-out families {', '.join(HELDOUT)}"
    return (
        f"the families its row names (without a name: {', '.join(SEEN)})",
        f"Held-out families (those of {', '.join(HELDOUT)} a row did not train on)",
    )


def per_family_table(groups: dict[tuple[str, str], list[dict[str, Any]]]) -> list[str]:
    """The per-family lines under a detectors table: each (detector, optimizer) group's test
    AUC per family (mean ± std over its runs) and mean TPR at the calibrated threshold."""
    fams = [*SEEN, *HELDOUT]
    lines = [
        "",
        "Per-family test AUC (and TPR at the calibrated threshold):",
        "",
        "| detector | optimizer | "
        + " | ".join(f"{f}{' (held out)' if f in HELDOUT else ''}" for f in fams)
        + " |",
        "|---|---|" + "---|" * len(fams),
    ]
    for (model, opt), rs in groups.items():
        cells = []
        for f in fams:
            aucs = [family_metric(r["report"], f) for r in rs]
            tprs = [family_metric(r["report"], f, "tpr") for r in rs]
            cells.append(f"{_ms(aucs)} ({statistics.mean(tprs):.2f})")
        lines.append(f"| {model} | {opt} | " + " | ".join(cells) + " |")
    return lines


def build_parser() -> argparse.ArgumentParser:
    """The command line (its training options are :func:`add_training_options`)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["npr", "smallcnn"], choices=MODELS)
    parser.add_argument("--optimizers", nargs="+", default=["adam"])
    parser.add_argument(
        "--lr", type=float, nargs="+", default=[1e-3],
        help="one per optimizer, in --optimizers' order, or one for all of them",
    )  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-steps", type=int, default=4000)
    add_training_options(parser)
    parser.add_argument(
        "--trace-strength",
        type=float,
        nargs=2,
        default=None,
        metavar=("LO", "HI"),
        help="train on fakes blended with their real crop at a strength drawn from [LO, HI] "
        "(TrainStream's trace_strength); validation and test fakes stay at full strength",
    )
    parser.add_argument(
        "--spectral-mask",
        type=float,
        nargs=2,
        default=None,
        metavar=("P", "RATIO"),
        help="frequency masking as a training augmentation: with probability P each training "
        "image, real or fake, loses a random fraction RATIO of its frequency bins (DC kept) "
        "(TrainStream's spectral_mask; Doloriel and Cheung 2024 used 0.5 and 0.15); "
        "validation and test images are never masked",
    )
    parser.add_argument(
        "--seen",
        nargs="+",
        default=None,
        help=f"train (and early-stop and calibrate) on these families instead of {SEEN}; the "
        "held-out report scores the families of the default held-out set not named here. All "
        "eight: the ceiling runs of experiments.detector_ceiling",
    )
    parser.add_argument(
        "--init-residual",
        default=None,
        metavar="TEMPLATE",
        help="start the NPR branch from a pretrained residual encoder, this file with {seed} "
        "filled in (experiments.pretraining_study --arch npr --pretrain-only --save-encoders "
        "DIR writes DIR/ARM-seedS.safetensors)",
    )
    parser.add_argument(
        "--views",
        nargs="+",
        default=["one"],
        choices=VIEWS,
        help="test-time views to score with (one record each): the image alone, or the mean "
        "logit over its eight dihedral views",
    )
    parser.add_argument("--tiny", action="store_true", help="the seconds-long test benchmark")
    parser.add_argument(
        "--patch-size",
        type=int,
        default=DEFAULT_PATCH,
        help="side of the benchmark's patches in pixels (its own cached build per size)",
    )
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--write", type=output_path, help="markdown file whose section to refresh")
    parser.add_argument("--json", type=output_path, help="write every run's report here")
    parser.add_argument(
        "--save-weights",
        type=output_folder,
        help="write each run's kept weights to this folder (for experiments.detector_ensemble)",
    )
    parser.add_argument("--progress", action="store_true")
    parser.add_argument(
        "--from-json",
        type=input_path,
        nargs="+",
        help="only write the table, from the --json files of earlier runs (e.g. run in parallel)",
    )
    return parser


def _records(path: Path) -> list[dict[str, Any]]:
    """The image-detector runs of a ``--json`` file, or a ``ValueError`` saying why not."""
    try:
        runs = read_runs(path)
    except ValueError as e:
        raise ValueError(f"--from-json {e}") from None
    for i, run in enumerate(runs):
        ok = isinstance(run, dict) and {"command", "model", "optimizer", "seed", "report"} <= set(
            run
        )
        if not ok or run["model"] not in MODELS:
            raise ValueError(
                f"--from-json {path}: entry {i} is not a run of this command (an image "
                "detector's record from --json: command, model, optimizer, seed, report)"
            )
    return runs


# option dest -> the least value it takes: what every training command (this one,
# experiments.ship_detector, experiments.clip_detectors) refuses before anything is built;
# an option a command does not have is skipped
LEAST_VALUES = {
    "max_steps": 1,
    "eval_every": 1,
    "patience": 1,
    "batch_size": 1,
    "threads": 1,  # torch.set_num_threads(0) raises
    "workers": 0,  # DataLoader's num_workers
    "lr_drops": 0,
}


def bad_run_options(args: argparse.Namespace) -> str | None:
    """Why the numbers of a training command cannot run, or ``None``: each of
    :data:`LEAST_VALUES` the command has at least its least value, and ``--target-fpr`` a rate in
    [0, 1) (``calibration.threshold_at_fpr``'s). Checked before anything is built: they used to
    fail after training, all of it lost (a threshold for a rate of 1.5), or in a traceback."""
    for option, least in LEAST_VALUES.items():
        value = getattr(args, option, None)
        if value is not None and value < least:
            return f"--{option.replace('_', '-')} must be >= {least}, got {value}"
    fpr = getattr(args, "target_fpr", None)
    if fpr is not None and not (math.isfinite(fpr) and 0.0 <= fpr < 1.0):
        return f"--target-fpr must be a false-positive rate in [0, 1), got {fpr}"
    return None


def bad_optimizer_name(name: str) -> str | None:
    """Why :func:`optimizer_factory` cannot build optimizer ``name``, or ``None``: ``adam``
    (torch's), a preset or a configuration in ``conf/optimizer``, each optionally ``/split``."""
    if name == "adam":
        return None
    named, _, split = name.partition("/")
    if split not in ("", "split"):
        return f"optimizer {name!r}: expected PRESET or PRESET/split"
    try:
        named_configuration(named)
    except ValueError as e:
        return str(e)
    return None


def bad_lr(option: str, values: float | Sequence[float]) -> str | None:
    """Why ``option``'s learning rate(s) cannot train, or ``None``: each finite and > 0 (an lr
    of 0 trained to its patience, learning nothing)."""
    rates = [values] if isinstance(values, (int, float)) else list(values)
    if any(not (math.isfinite(lr) and lr > 0) for lr in rates):
        return f"{option} must be finite and > 0, got {values}"
    return None


def bad_seeds(seeds: Sequence[int]) -> str | None:
    """Why ``--seeds`` cannot be the seeds of one table, or ``None``: each >= 0, none twice (a
    run counted twice gave its row a spread of 0)."""
    if any(seed < 0 for seed in seeds):
        return f"--seeds must be >= 0, got {seeds}"
    if len(set(seeds)) != len(seeds):
        return f"--seeds must be distinct, got {seeds}"
    return None


def bad_training_options(args: argparse.Namespace, lrs: list[float]) -> str | None:
    """Why the training options cannot all run, or ``None``: checked before anything is built,
    so a typo in the last optimizer never costs the runs before it (``--json`` and ``--write``
    are checked by their argparse type, ``cli_files.output_path``, and against the inputs by
    ``cli_files.refuse_clashes``)."""
    for name in args.optimizers:
        if problem := bad_optimizer_name(name):
            return problem
    if problem := bad_lr("--lr", lrs) or bad_seeds(args.seeds):
        return problem
    for option in ("models", "views"):  # as a repeated seed: one run counted as two seeds
        named = getattr(args, option, None) or []
        if len(set(named)) != len(named):
            return f"--{option} must be distinct, got {named}"
    # an optimizer named twice at one lr runs the same seeds twice, counted as more seeds of
    # one row (a spread of 0); at two lrs it is two recipes, two rows
    recipes = [f"{name} (lr {lr:g})" for name, lr in zip(args.optimizers, lrs, strict=True)]
    if len(set(recipes)) != len(recipes):
        twice = sorted({r for r in recipes if recipes.count(r) > 1})
        return (
            f"--optimizers with --lr name the same run more than once ({', '.join(twice)}): "
            "each seed would be counted twice; give each optimizer once, or another --lr"
        )
    return bad_run_options(args)


def bad_image_batch(args: argparse.Namespace) -> str | None:
    """Why ``--batch-size`` cannot make an image detector's training batch, or ``None``: a
    batch is half real, half fake (``TrainStream``'s least is 2; 1 was a traceback once the
    benchmark was built). The clip detectors' batch has its own least."""
    if args.batch_size < 2:
        return f"--batch-size must be >= 2 (half real, half fake), got {args.batch_size}"
    return None


def from_json_target(runs: list[dict[str, Any]], asked: float, default: float) -> float:
    """The false-positive rate the ``--from-json`` runs were calibrated for, which the section
    states: theirs, one for all of them (a table of runs at 5 % and 1 % beside each other
    compared thresholds of two kinds under one heading), and ``asked`` only where it is theirs
    or left at ``default``. A ``ValueError`` otherwise."""
    targets = sorted({run["report"].get("target_fpr", default) for run in runs})
    if len(targets) != 1:
        raise ValueError(
            f"--from-json mixes runs calibrated for different false-positive rates {targets}; "
            "write a section per rate"
        )
    if asked not in (targets[0], default):
        raise ValueError(
            f"--target-fpr {asked:g}: the --from-json runs were calibrated for {targets[0]:g} "
            "(the table cannot recalibrate them)"
        )
    return targets[0]


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    refuse_unreplaceable(parser, args.write, "detectors")
    command = "python -m experiments.detectors " + " ".join(sys.argv[1:] if argv is None else argv)
    refuse_clashes(parser, args)  # before anything is read or run
    if args.from_json:
        # no training: an option that would shape the runs, or --json / --save-weights, was
        # accepted and ignored (and written into the section's "then" command)
        if ignored := options_set(parser, args, besides=FROM_JSON_READS):
            parser.error(
                f"--from-json renders the runs it is given; it does not read {', '.join(ignored)}"
            )
        try:
            runs = [run for path in args.from_json for run in _records(path)]
        except ValueError as error:  # read_runs: an unreadable file too
            parser.error(str(error))
        if not runs:
            parser.error("--from-json holds no runs: the section would be empty tables")
        # a run given twice (its file named more than once, or copied) would count its seeds
        # twice and shrink the spreads
        keys = [json.dumps([run.get(k) for k in RUN_IDENTITY]) for run in runs]
        if len(set(keys)) != len(keys):
            twice = sorted({k for k in keys if keys.count(k) > 1})
            parser.error(
                f"--from-json holds the same run ({', '.join(RUN_IDENTITY)}) more than once "
                f"(a file named twice, or a copy): {twice}"
            )
        if problem := seed_twice_in_a_row(runs):
            parser.error(problem)
        try:
            target = from_json_target(runs, args.target_fpr, parser.get_default("target_fpr"))
        except ValueError as error:
            parser.error(str(error))
        made_by = sorted({run.get("command", "?") for run in runs})
        sources = " and ".join(f"`{c}`" for c in made_by)
        text = markdown(runs, f"{sources}, then `{command.strip()}`", target)
        print(text)
        if args.write:
            replace_section(args.write, "detectors", text)
        return
    if len(args.lr) not in (1, len(args.optimizers)):
        parser.error("--lr takes one value, or one per optimizer")
    lrs = args.lr * len(args.optimizers) if len(args.lr) == 1 else args.lr
    # before the benchmark and any run: no run lost
    problem = bad_training_options(args, lrs) or bad_image_batch(args)
    if problem:
        parser.error(problem)
    if args.trace_strength is not None:  # refused before the benchmark is built
        try:
            checked_strength(args.trace_strength)
        except ValueError as error:
            parser.error(str(error))
    if args.spectral_mask is not None:
        try:
            checked_spectral_mask(args.spectral_mask)
        except ValueError as error:
            parser.error(str(error))
    config = BenchmarkConfig.tiny() if args.tiny else BenchmarkConfig()
    # a patch size or a family the benchmark cannot have: refused before it is built
    if args.patch_size != config.patch_size:
        try:
            config = dataclasses.replace(config, patch_size=args.patch_size)
        except ValueError as error:
            parser.error(f"--patch-size: {error}")
    try:
        families = family_split(config, args.seen)
    except ValueError as error:
        parser.error(str(error))
    problem = bad_models(args, config.patch_size)
    if not problem and args.save_weights:
        planned = [
            (model, run_recipe(args, families, opt, lr, seed))
            for model in args.models
            for seed in args.seeds
            for opt, lr in zip(args.optimizers, lrs, strict=True)
        ]
        if args.init_residual:
            for _, run in planned:
                run["init_residual"] = args.init_residual.format(seed=run["seed"])
        problem = weights_clash(args.save_weights, config.patch_size, planned)
    if problem:
        parser.error(problem)
    torch.set_num_threads(args.threads)
    bench = build_benchmark(config, args.cache_dir, progress=args.progress)
    runs = []
    for model in args.models:
        for seed in args.seeds:
            # optimizers interleaved per seed, so a slow spell of the machine hits all alike
            for opt, lr in zip(args.optimizers, lrs, strict=True):
                for run in run_one(bench, families, model, opt, lr, seed, args):
                    runs.append({**run, "command": command.strip()})
                    if args.json:  # after every run: an interrupted sweep keeps what finished
                        write_json(args.json, runs)
                    rep = run["report"]
                    heldout = group_mean(rep, "heldout")
                    print(
                        f"{model:9s} {opt:8s} seed {seed} views {run['views']}: seen AUC "
                        f"{rep['seen']['mean']['auc']:.3f} held-out AUC "
                        f"{heldout:.3f} test-real FPR "
                        f"{rep['test_real_fpr']:.3f} (best step {run['best_step']} of "
                        f"{run['steps']}, {run['seconds']:.0f} s)",
                        flush=True,
                    )
    text = markdown(runs, f"`{command.strip()}`", args.target_fpr)
    print(text)
    if args.json:
        write_json(args.json, runs)
    if args.write:
        replace_section(args.write, "detectors", text)


if __name__ == "__main__":
    main()
