"""Steps and time to tuned Adam's validation loss on the detector task (issue 16).

Reads the run records that ``experiments.detectors --json`` writes (or the fine-tuning runs of
``experiments.pretraining_study --json``, model ``vit/ARM``; one file per run or many runs per
file) and answers, per evaluation seed: how many training steps does a memory
optimizer need to reach the best validation loss that torch's Adam reaches at its tuned
learning rate, against Adam's own steps to it?

- **Tuning** uses the tuning seed only: each optimizer's learning rate is the one with the
  lowest best validation loss among its runs on that seed. An optimum on the edge of what was
  tried is flagged (``experiments.lr_grid``'s rule: run one more point beyond that edge).
- **Target** per seed: Adam's best validation loss at its tuned lr on that seed (the weights
  early stopping restores). Adam's steps to it are its best step; a candidate's are the first
  evaluation at which its validation loss is at or below it (``None``: never, within its run).
  Evaluations are every ``eval_every`` steps, so each count is known to that resolution.
- **Budget** (``--budget N``): runs trained for a fixed ``N`` steps without early stopping
  (``--patience`` above the number of evaluations). The target is then Adam's best over the
  whole budget, so Adam's steps to it do not depend on where patience would have ended its
  run; the race is checked to hold only such runs and gets a section of its own.
- **Time** = steps x the cost of one training step (batch, forward, backward, ``opt.step()``),
  measured here with the candidates interleaved on the same model, initialisation and batches
  (``experiments.step_cost``), not read off the runs' wall clocks, which absorbed whatever else
  the machine was doing.

    python -m experiments.detector_race --runs docs/results/detectors-npr_bn-*.json \\
        --candidate muon/split --write docs/results.md
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from assocmem.forensic.detector_loss import detector_loss
from assocmem.forensic.models.attribution import FamilyAttribution
from assocmem.storage import strict_json
from experiments.cli_files import input_path, output_path, refuse_clashes
from experiments.lr_grid import edge_side
from experiments.report import refuse_unreplaceable, replace_section
from experiments.step_cost import measure, time_to_target
from experiments.validate_config import same_file

BASELINE = "adam"
# The evaluation interval of the first races (the runs' CLIs' default); others name their
# sections.
DEFAULT_INTERVAL = 250


def load_runs(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Every run record in ``paths`` (each file holds a list of runs, as ``--json`` writes)."""
    runs = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        runs.extend(data if isinstance(data, list) else [data])
    return runs


def select(
    runs: Sequence[Mapping[str, Any]],
    model: str,
    optimizer: str,
    lr_drops: int = 0,
    average: float | None = None,
) -> list[Mapping[str, Any]]:
    """The runs of ``model`` with ``optimizer``, without learning-rate drops and evaluated on
    the weights themselves or on their average of decay ``average`` (each a different
    recipe; runs recorded before weight averaging existed evaluated the weights). Runs with a
    learning-rate decay (``lr_decay``) are another recipe too, and no race takes them yet.
    A run scored with several test-time view sets (``experiments.detectors --views one d4``)
    has one record per set, of the same training and validation curve: the race reads its
    single-view record."""
    from experiments.detectors import lr_drops_of

    return [
        r
        for r in runs
        if r.get("views", "one") == "one"
        and r["model"] == model
        and r["optimizer"] == optimizer
        and lr_drops_of(r) == lr_drops  # its record's entry, else its command's --lr-drops
        and r.get("average") == average
        and r.get("lr_decay") is None
    ]


def no_runs(runs: Sequence[Mapping[str, Any]], model: str, optimizer: str, average: Any) -> str:
    """Why :func:`select` found no run: the optimizer is not there, or (its runs are) none was
    evaluated as ``--average`` asks (the message named the optimizers alone, the one asked for
    among them, an audit)."""
    theirs = {r.get("average") for r in runs if (r["model"], r["optimizer"]) == (model, optimizer)}
    if not theirs:
        return (
            f"no run of {model} with {optimizer} in --runs (optimizers there: "
            f"{sorted({str(r.get('optimizer')) for r in runs})})"
        )
    asked = "on its weights" if average is None else f"on a weight average of decay {average:g}"
    return (
        f"no run of {model} with {optimizer} evaluated {asked} (--average); theirs were "
        + ", ".join("the weights" if a is None else f"decay {a:g}" for a in sorted(theirs, key=str))
    )


# What the runs of one race must share besides the model and the weight average (which
# ``select`` matches): the rest of the recipe, so that a race never sets runs trained on other
# families, batches, losses or stopping rules against each other. Patience is asked of the
# raced runs (each optimizer's at its tuned lr) only: a grid may be tuned at a shorter patience
# than the seeds are raced at, the same for both optimizers.
SHARED = (
    "patch_size",
    "attribution",
    "seen",
    "paired",
    "train_postprocess",
    "real_consistency",
    "trace_strength",
    "spectral_mask",
    "patience",
)
TUNING_SHARED = tuple(k for k in SHARED if k != "patience")


def shared_recipe(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The recipe (``experiments.detectors.recipe_of``) of the raced runs, which
    :func:`recipe_details` has checked they share; ``None`` without runs."""
    from experiments.detectors import recipe_of

    return recipe_of(runs[0]) if runs else None


def recipe_details(runs: Sequence[Mapping[str, Any]], keys: Sequence[str] = SHARED) -> list[str]:
    """What the runs of a race share of ``keys`` that their title should say (family
    attribution, paired batches, training batches without post-processing, the reals' logit
    pairing, a patience other than the default, another training split, blended fakes,
    frequency-masked training images);
    ``ValueError`` naming the entry if they do not all share it."""
    from experiments.detectors import DEFAULT_PATIENCE, SEEN, recipe_of, trained_postprocess

    recipes = [recipe_of(r) for r in runs]
    shared = dict.fromkeys(SHARED)
    for key in keys:
        values = {json.dumps(recipe[key]) for recipe in recipes}
        if len(values) > 1:
            raise ValueError(f"the runs differ in {key}: {sorted(values)}; race one recipe")
        shared[key] = recipes[0][key] if recipes else None
    details = []
    if shared["attribution"]:
        details.append(f"family attribution {shared['attribution']:g}")
    if shared["paired"]:
        details.append("paired batches")
    if trained_postprocess(shared) == "none":
        details.append("trained without post-processing")
    if shared["real_consistency"]:
        details.append(f"real consistency {shared['real_consistency']:g}")
    if shared["patience"] is not None and shared["patience"] != DEFAULT_PATIENCE:
        details.append(f"patience {shared['patience']}")
    if shared["trace_strength"]:
        low, high = shared["trace_strength"]
        details.append(f"trace strength {low:g}–{high:g}")
    if shared["spectral_mask"]:
        p, ratio = shared["spectral_mask"]
        details.append(f"frequency masking {ratio:g} of the bins, p {p:g}")
    if shared["seen"] is not None and tuple(shared["seen"]) != SEEN:
        details.append("trained on " + "+".join(shared["seen"]))
    return details


def check_distinct(runs: Sequence[Mapping[str, Any]]) -> None:
    """``ValueError`` if two of ``runs`` (one optimizer's, as :func:`select` gives them) share a
    seed and an lr: a rerun beside its first run, or one file given twice. Which of the two a
    race or a grid kept would depend on the order of ``--runs``."""
    seen: set[tuple[Any, float]] = set()
    for r in runs:
        key = (r["seed"], float(r["lr"]))
        if key in seen:
            raise ValueError(
                f"two runs of {r['optimizer']} at lr {key[1]:g} on seed {key[0]}: keep one"
            )
        seen.add(key)


def tune(
    runs: Sequence[Mapping[str, Any]], seed: int
) -> tuple[float, dict[float, float], str | None]:
    """The learning rate with the lowest best validation loss on ``seed``, every lr tried there
    with its loss, and the edge (``"low"``/``"high"``) the optimum sits on, if any.

    Raises:
        ValueError: no run on ``seed``, or two runs of one lr on it (ambiguous).
    """
    grid: dict[float, float] = {}
    for r in runs:
        if r["seed"] != seed:
            continue
        lr = float(r["lr"])
        if lr in grid:
            raise ValueError(f"two runs at lr {lr} on seed {seed}: keep one")
        # a run that diverged before its first evaluation has no best: never the tuned lr
        grid[lr] = math.inf if r["best_val_loss"] is None else float(r["best_val_loss"])
    if not grid:
        raise ValueError(f"no run on the tuning seed {seed}")
    if all(math.isinf(loss) for loss in grid.values()):  # inf was then "the best"
        raise ValueError(f"every run on the tuning seed {seed} diverged ({sorted(grid)}): no lr")
    best = min(grid, key=lambda lr: (grid[lr], lr))
    return best, grid, edge_side(grid) if len(grid) > 1 else None


def steps_to_target(curve: Sequence[Sequence[float]], target: float) -> int | None:
    """The first evaluated step (after step 0) whose validation loss is at or below ``target``.

    Example:
        >>> steps_to_target([(0, 0.69), (250, 0.5), (500, 0.39), (750, 0.38)], 0.39)
        500
        >>> steps_to_target([(0, 0.69), (250, 0.5)], 0.39) is None
        True
    """
    for step, loss in curve:
        # a record writes a non-finite loss as null (assocmem.storage.strict_json): never a hit
        if step > 0 and loss is not None and loss <= target:
            return int(step)
    return None


def evaluation_interval(run: Mapping[str, Any]) -> int:
    """The steps between a run's evaluations, the resolution of every step count read off it:
    its ``eval_every`` entry, else the ``--eval-every`` of the command that made it, else
    :data:`DEFAULT_INTERVAL` (the default of ``experiments.detectors`` and
    ``experiments.pretraining_study``)."""
    from experiments.detectors import recorded_option

    return int(recorded_option(run, "eval_every", "--eval-every", DEFAULT_INTERVAL))


def check_budget(runs: Iterable[Mapping[str, Any]], budget: int) -> None:
    """``ValueError`` unless every run trained exactly ``budget`` steps without stopping early."""
    for r in runs:
        if r.get("stopped_early", False) or int(r["steps"]) != budget:
            raise ValueError(
                f"{r['optimizer']} lr {r['lr']:g} seed {r['seed']} ran {r['steps']} steps"
                f"{' and stopped early' if r.get('stopped_early') else ''}: a --budget {budget} "
                f"race takes runs of exactly {budget} steps without early stopping"
            )


def race(
    baseline: Sequence[Mapping[str, Any]],
    candidate: Sequence[Mapping[str, Any]],
    baseline_lr: float,
    candidate_lr: float,
) -> list[dict[str, Any]]:
    """Per seed both optimizers ran at their tuned lr: the target (the baseline's best
    validation loss), the baseline's steps to it (its best step) and the candidate's, counted
    at the runs' evaluation interval (``ValueError`` if the two runs' intervals differ: the
    counts would not be at one resolution), and if two runs of one optimizer share a seed
    and an lr (:func:`check_distinct`: which one counted would depend on their order)."""
    check_distinct(baseline)
    check_distinct(candidate)
    base = {r["seed"]: r for r in baseline if float(r["lr"]) == baseline_lr}
    cand = {r["seed"]: r for r in candidate if float(r["lr"]) == candidate_lr}
    rows = []
    for seed in sorted(set(base) & set(cand)):
        b, c = base[seed], cand[seed]
        interval = evaluation_interval(b)
        if evaluation_interval(c) != interval:
            raise ValueError(
                f"seed {seed}: the baseline is evaluated every {interval} steps, the candidate "
                f"every {evaluation_interval(c)}: race runs of one resolution"
            )
        if b["best_val_loss"] is None:  # diverged before an evaluation: no target to race
            continue  # named by unraced_seeds
        target = float(b["best_val_loss"])
        best = c["best_val_loss"]
        rows.append(
            {
                "seed": seed,
                "target": target,
                "baseline_steps": int(b["best_step"]),
                "baseline_run": int(b["steps"]),
                "candidate_steps": steps_to_target(c["val_curve"], target),
                "candidate_run": int(c["steps"]),
                # None: diverged before its first evaluation (it never reached the target)
                "candidate_best": None if best is None else float(best),
                "interval": interval,
            }
        )
    return rows


def _loss(value: float | None) -> str:
    """A best validation loss as the table writes it; ``diverged`` for a run without one."""
    return "diverged" if value is None else f"{value:.4g}"


def unraced_seeds(
    baseline: Sequence[Mapping[str, Any]],
    candidate: Sequence[Mapping[str, Any]],
    baseline_lr: float,
    candidate_lr: float,
) -> list[str]:
    """Why each seed that :func:`race` leaves out is left out, one line each: a seed that one
    optimizer ran at its tuned lr and the other did not, or whose baseline run diverged before
    an evaluation (no target). A race used to drop them without a word, and its mean and
    "spreads apart" were then of fewer seeds than the records hold."""
    base = {r["seed"]: r for r in baseline if float(r["lr"]) == baseline_lr}
    cand = {r["seed"]: r for r in candidate if float(r["lr"]) == candidate_lr}
    out = []
    for seed in sorted(set(base) | set(cand)):
        if seed not in cand:
            out.append(f"seed {seed}: no candidate run at lr {candidate_lr:g}")
        elif seed not in base:
            out.append(f"seed {seed}: no Adam run at lr {baseline_lr:g}")
        elif base[seed]["best_val_loss"] is None:
            out.append(f"seed {seed}: Adam's run diverged before an evaluation (no target)")
    return out


def capped_runs(raced: Sequence[Mapping[str, Any]]) -> list[str]:
    """The raced runs that ended at their step cap without stopping early and were still at
    their best there: where the cap cut them, not early stopping, set their best (a target,
    or a step count) that the section calls "to early stopping"."""
    return [
        f"{r['optimizer']} seed {r['seed']} ({r['steps']} steps)"
        for r in raced
        if r.get("stopped_early") is False
        and r.get("best_step") is not None
        and int(r["best_step"]) == int(r["steps"])
    ]


def summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Ratios of steps per seed, their mean over seeds that reached the target, and whether the
    two optimizers' steps-to-target are apart by more than their spreads (mean ± std over the
    seeds; a seed that never reached the target counts as not apart)."""
    ratios = [
        r["candidate_steps"] / r["baseline_steps"] if r["candidate_steps"] is not None else None
        for r in rows
    ]
    reached = [x for x in ratios if x is not None]
    base = [r["baseline_steps"] for r in rows]
    cand = [r["candidate_steps"] for r in rows]
    apart = False
    if rows and all(s is not None for s in cand) and len(rows) > 1:
        b_lo = statistics.mean(base) - statistics.stdev(base)
        c_hi = statistics.mean(cand) + statistics.stdev(cand)  # type: ignore[arg-type]
        apart = c_hi < b_lo
    return {
        "ratios": ratios,
        "mean_ratio": statistics.mean(reached) if reached else None,
        "reached": len(reached),
        "seeds": len(rows),
        "apart": apart,
    }


class FixedBatches:
    """A network and a fixed list of training batches as a ``train_loss(step)`` task, so that
    :func:`experiments.step_cost.measure` times whole training steps on the same data.

    A detector's loss is the one ``assocmem.forensic.train.train_detector`` trains it on
    (``assocmem.forensic.detector_loss``): the binary cross-entropy of its logit (with a
    one-class head's margin), plus, with ``attribution`` (a ``FamilyAttribution`` around it),
    the family head's cross-entropy from the batches' family codes, its head stepped too, and
    with ``real_consistency`` the reals' logit pairing with their twin views; a masked
    pretrainer (``vit/ARM-pretrain``) returns its own reconstruction loss on the images.
    """

    def __init__(
        self,
        model: nn.Module,
        batches: Sequence[tuple[Tensor, ...]],
        pretraining: bool = False,
        attribution: FamilyAttribution | None = None,
        real_consistency: float = 0.0,
    ) -> None:
        self.model, self.batches, self.pretraining = model, list(batches), pretraining
        self.attribution, self.real_consistency = attribution, real_consistency
        self.trained = model if attribution is None else attribution

    def parameters(self) -> Iterable[nn.Parameter]:
        return self.trained.parameters()

    def train_loss(self, step: int) -> Tensor:
        batch = self.batches[step % len(self.batches)]
        if self.pretraining:
            return self.model(batch[0])
        return detector_loss(
            self.model,
            batch,
            attribution=self.attribution,
            real_consistency=self.real_consistency,
        )


def build(model_name: str, image_size: int) -> nn.Module:
    """A freshly initialised network of the runs named ``model_name``: a detector of
    ``experiments.detectors``, or ``vit/ARM``, the fine-tuned ViT of
    ``experiments.pretraining_study`` (the step costs the same whatever the pretraining), or
    ``vit/ARM-pretrain``, that study's masked pretrainer of the ``ARM`` masking."""
    from experiments.detectors import MODELS
    from experiments.pretraining_study import (
        ARMS,
        finetune_model,
        pretrained_arm,
        pretrainer_model,
    )

    if model_name in MODELS:
        return MODELS[model_name](image_size)
    kind, _, arm = model_name.partition("/")
    if kind == "vit" and arm in ARMS:
        return finetune_model(image_size)
    if (pretrained := pretrained_arm(model_name)) is not None:
        return pretrainer_model(pretrained, image_size)
    raise ValueError(
        f"unknown model {model_name!r}: one of {sorted(MODELS)}, vit/ARM or vit/ARM-pretrain"
    )


def step_costs(
    model_name: str,
    tuned: Mapping[str, float],
    *,
    samples: int,
    span: int,
    batch_size: int = 64,
    tiny: bool = False,
    cache_dir: str | None = None,
    recipe: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Seconds per training step of each ``optimizer: lr``, interleaved, on ``model_name``
    (same initialisation for all) and the same stream batches (seed 0). ``recipe``: the raced
    runs' shared entries (``experiments.detectors.recipe_of``): a family-attribution weight
    trains the attribution head beside the detector, the reals' logit pairing adds their twin
    views, paired batches and the training post-processing make the batches, as in the
    runs."""
    import dataclasses

    from assocmem.forensic.data import BenchmarkConfig, build_benchmark
    from assocmem.forensic.data.stream import TrainStream
    from experiments.detectors import (
        TRAIN_POSTPROCESS,
        family_split,
        optimizer_factory,
        trained_postprocess,
    )
    from experiments.pretraining_study import PRETRAIN_SUFFIX

    recipe = recipe or {}
    config = BenchmarkConfig.tiny() if tiny else BenchmarkConfig()
    # the runs' patch size (a 64 px race was costed on 32 px patches)
    patch = recipe.get("patch_size") or config.patch_size
    config = dataclasses.replace(config, patch_size=int(patch))
    bench = build_benchmark(config, cache_dir)
    post = TRAIN_POSTPROCESS[trained_postprocess(recipe)](bench)
    paired = bool(recipe.get("paired"))
    pretraining = model_name.endswith(PRETRAIN_SUFFIX)
    # a masked pretrainer trains its own loss: no attribution head, no logits to pair
    weight = 0.0 if pretraining else float(recipe.get("attribution") or 0.0)
    consistency = 0.0 if pretraining else float(recipe.get("real_consistency") or 0.0)
    stream = TrainStream(
        bench,
        family_split(config).seen,
        batch_size=batch_size,
        seed=0,
        paired=paired,
        post=post,
        real_twins=bool(consistency),
    )
    batches = [batch for batch, _ in zip(stream, range(span + 1), strict=False)]
    candidates = {}
    for name, lr in tuned.items():
        torch.manual_seed(0)
        model = build(model_name, config.patch_size)
        model.train()
        attribution = None
        if weight:
            attribution = FamilyAttribution(model, list(stream.family_codes.values()), weight)
            attribution.train()
        task = FixedBatches(
            model,
            batches,
            pretraining=pretraining,
            attribution=attribution,
            real_consistency=consistency,
        )
        candidates[name] = (task, optimizer_factory(name, lr, task.trained)(task.parameters()))
    extras = [f"family attribution {weight:g}"] if weight else []
    extras += ["paired batches"] if paired else []
    extras += [f"real consistency {consistency:g}"] if consistency else []
    return {
        "method": (
            f"training step (batch, forward, backward, opt.step) of {model_name}"
            + (f" with {', '.join(extras)}" if extras else "")
            + f", batch {batch_size}, at the tuned lr; optimizers interleaved; {samples} "
            f"samples of {span} steps; {torch.get_num_threads()} thread(s)"
        ),
        "optimizers": measure(candidates, samples, span),
    }


def _step_costs_alone(threads: int, model_name: str, tuned: Mapping[str, float], kw: dict) -> dict:
    """:func:`step_costs` with ``threads`` torch threads: the body of one fresh process."""
    torch.set_num_threads(threads)
    return step_costs(model_name, tuned, **kw)


def step_costs_in_processes(
    model_name: str, tuned: Mapping[str, float], *, processes: int, threads: int, **kw: Any
) -> dict[str, Any]:
    """:func:`step_costs` measured in ``processes`` fresh Python processes, one after another
    (the same kernels on the same sizes take a different time in each process, while inside
    one they agree: one process's pair of times can be unlucky as a whole). Per optimizer the
    median over the processes of each one's median step; ``ratios``: each process's own
    ``optimizer / adam`` ratio, whose median and range the section reports."""
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    context = multiprocessing.get_context("spawn")  # a new interpreter, not a fork of this one
    runs = []
    for _ in range(processes):
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            runs.append(pool.submit(_step_costs_alone, threads, model_name, tuned, kw).result())
    names = list(runs[0]["optimizers"])
    return {
        "method": runs[0]["method"]
        + f"; {processes} fresh processes one after another, each step cost the median of the "
        "processes' medians and each ratio the median (range) of the processes' own",
        "optimizers": {
            name: {
                "median_s": statistics.median(r["optimizers"][name]["median_s"] for r in runs),
                "process_medians_s": [r["optimizers"][name]["median_s"] for r in runs],
            }
            for name in names
        },
        "ratios": {
            name: [
                r["optimizers"][name]["median_s"] / r["optimizers"][BASELINE]["median_s"]
                for r in runs
            ]
            for name in names
            if BASELINE in names
        },
        "processes": processes,
    }


def _steps(values: Sequence[int | None]) -> str:
    hits = [v for v in values if v is not None]
    if not hits:
        return "never"
    text = f"{statistics.mean(hits):.0f}"
    if len(hits) > 1:
        text += f" ± {statistics.stdev(hits):.0f}"
    missed = len(values) - len(hits)
    return text + (f" ({missed} never)" if missed else "")


def markdown(
    model: str,
    candidate: str,
    grids: Mapping[str, tuple[float, dict[float, float], str | None]],
    rows: Sequence[Mapping[str, Any]],
    costs: Mapping[str, Any] | None,
    command: str,
    tuning_seed: int,
    average: float | None = None,
    budget: int | None = None,
    recipe: Sequence[str] = (),
) -> str:
    """The race's section; ``recipe``: what else its runs share that the title says
    (:func:`recipe_details`)."""
    from experiments.pretraining_study import PRETRAIN_SUFFIX

    if model.endswith(PRETRAIN_SUFFIX):
        task = "Masked pretraining task"
    elif model.startswith("vit/"):
        task = "Fine-tuning task"
    else:
        task = "Detector task"
    interval = race_interval(rows)
    details = [candidate]
    if average is not None:
        details.append(f"weight average {average:g}")
    if interval != DEFAULT_INTERVAL:
        details.append(f"evaluated every {interval} steps")
    if budget is not None:
        details.append(f"a fixed {budget} steps")
    # a fixed budget's patience only turns early stopping off: the budget says it
    details += [d for d in recipe if budget is None or not d.startswith("patience ")]
    stopping = (
        "evaluated and scored" if budget is not None else "evaluated, early-stopped and scored"
    )
    out = [
        f"## {task}: steps to tuned Adam's validation loss (`{model}`, {', '.join(details)})",
        "",
        f"Regenerate: {command}",
        "",
        *(
            [
                f"Every run, Adam's included, is {stopping} on the "
                f"exponential moving average of its weights (decay {average:g}, "
                "`assocmem.training.fit`'s `average`); the step costs below leave out the "
                "average's update, the same pass for every optimizer"
                + (
                    "; they train the family-attribution head beside the detector, as the runs did."
                    if any(r.startswith("family attribution") for r in recipe)
                    else "."
                ),
                "",
            ]
            if average is not None
            else []
        ),
        *(
            [
                f"Every run trained for a fixed budget of {budget} steps, without early "
                "stopping: the target is Adam's best validation loss over the whole budget, "
                "and Adam's steps are where it first reached it, wherever patience would have "
                "ended the run.",
                "",
                f"LR: the rates these runs used (each optimizer's lr tuned on seed {tuning_seed} "
                "in its early-stopped race, not re-tuned here), with their best validation "
                f"loss over the budget on seed {tuning_seed}:",
            ]
            if budget is not None
            else [
                f"LR tuned on seed {tuning_seed} only (best validation loss of each run, early "
                "stopping restores it):"
            ]
        ),
        "",
        "| optimizer | lr tried: best validation loss | tuned lr | on the grid's edge |",
        "|---|---|---|---|",
    ]
    for name, (lr, grid, edge) in grids.items():
        tried = ", ".join(f"{k:g}: {v:.4g}" for k, v in sorted(grid.items()))
        out.append(
            f"| {name} | {tried} | {lr:g} | {edge or ('no' if len(grid) > 1 else 'one lr run')} |"
        )
    sizes = {name: len(grid) for name, (_, grid, _) in grids.items()}
    if len(set(sizes.values())) > 1:
        # the harness's comparisons give every optimizer the same grid; these runs did not
        out += [
            "",
            "The grids are not the same size ("
            + ", ".join(f"{name} {n} learning rates" for name, n in sizes.items())
            + "): the larger one had more tries at the tuning seed's best.",
        ]
    over = " over the budget" if budget is not None else ""
    out += [
        "",
        f"Per evaluation seed: the target is Adam's best validation loss{over} at its tuned lr; "
        f"steps are evaluation steps (every {interval}), so each count is known to ± one "
        "evaluation.",
        "",
        f"| seed | target (Adam's best) | Adam steps (run) | {candidate} steps (run) | ratio | "
        f"{candidate}'s own best |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = (
            f"{r['candidate_steps'] / r['baseline_steps']:.2f}"
            if r["candidate_steps"] is not None
            else "never"
        )
        cs = r["candidate_steps"] if r["candidate_steps"] is not None else "never"
        out.append(
            f"| {r['seed']} | {r['target']:.4g} | {r['baseline_steps']} ({r['baseline_run']}) | "
            f"{cs} ({r['candidate_run']}) | {ratio} | {_loss(r['candidate_best'])} |"
        )
    s = summary(rows)
    mean_ratio = "n/a" if s["mean_ratio"] is None else f"{s['mean_ratio']:.2f}×"
    out += [
        "",
        f"Steps to target, mean ± std: Adam {_steps([r['baseline_steps'] for r in rows])}, "
        f"{candidate} {_steps([r['candidate_steps'] for r in rows])}; mean ratio over the "
        f"{s['reached']} of {s['seeds']} seeds that reached it: {mean_ratio}; spreads apart: "
        f"{'yes' if s['apart'] else 'no'}.",
    ]
    others = [r for r in rows if r["seed"] != tuning_seed]
    if 0 < len(others) < len(rows):
        # the tuning seed chose both learning rates on these very runs: its race scores the
        # tuning on itself (experiments.compare never evaluates on it)
        o = summary(others)
        out += [
            "",
            f"Without seed {tuning_seed}, which chose both learning rates on these runs (its race "
            "scores the tuning on itself; `experiments.compare` never evaluates on the tuning "
            f"seed): Adam {_steps([r['baseline_steps'] for r in others])}, {candidate} "
            f"{_steps([r['candidate_steps'] for r in others])}; mean ratio over the "
            f"{o['reached']} of {o['seeds']} seeds that reached it: "
            + ("n/a" if o["mean_ratio"] is None else f"{o['mean_ratio']:.2f}×")
            + f"; spreads apart: {'yes' if o['apart'] else 'no'}.",
        ]
    if costs:
        per = {k: v["median_s"] for k, v in costs["optimizers"].items()}
        base_cost = per[BASELINE]
        # over the seeds the candidate reached, so both means cover the same seeds
        reached = [r for r in rows if r["candidate_steps"] is not None]
        base_time = time_to_target([r["baseline_steps"] for r in reached], base_cost)
        cand_time = time_to_target([r["candidate_steps"] for r in reached], per[candidate])
        # several processes: the median of their own ratios, and their range
        ratios = costs.get("ratios", {}).get(candidate)
        cost_ratio = statistics.median(ratios) if ratios else per[candidate] / base_cost
        spread = f", range {min(ratios):.2f}–{max(ratios):.2f}×" if ratios else ""
        line = (
            f"Step cost ({costs['method']}): Adam {base_cost * 1e3:.1f} ms, {candidate} "
            f"{per[candidate] * 1e3:.1f} ms ({cost_ratio:.2f}×{spread})."
        )
        if base_time and cand_time:
            steps_ratio = statistics.mean(cand_time) / statistics.mean(base_time)
            steps_ratio *= base_cost / per[candidate]  # the steps' share of the time ratio
            ratio = steps_ratio * cost_ratio
            line += (
                f" Time to target = steps × step cost: Adam {statistics.mean(base_time):.0f} s, "
                f"{candidate} {statistics.mean(cand_time):.0f} s (mean over the "
                f"{len(reached)} of {len(rows)} seeds {candidate} reached it on): {ratio:.2f}×"
                + (
                    f" (range {steps_ratio * min(ratios):.2f}–{steps_ratio * max(ratios):.2f}×)."
                    if ratios
                    else "."
                )
            )
        out += ["", line]
    return "\n".join(out)


# The candidate whose races name their sections by the model alone (they were first).
FIRST_CANDIDATE = "muon/split"


def race_interval(rows: Sequence[Mapping[str, Any]]) -> int:
    """The one evaluation interval of a race's rows (:data:`DEFAULT_INTERVAL` for rows recorded
    before rows carried it); ``ValueError`` if the seeds were evaluated at different ones."""
    intervals = {int(r.get("interval", DEFAULT_INTERVAL)) for r in rows} or {DEFAULT_INTERVAL}
    if len(intervals) > 1:
        raise ValueError(f"the seeds were evaluated at different intervals {sorted(intervals)}")
    return intervals.pop()


def section_name(
    model: str,
    candidate: str = FIRST_CANDIDATE,
    average: float | None = None,
    interval: int = DEFAULT_INTERVAL,
    budget: int | None = None,
) -> str:
    """The docs/results.md section of a race: one per model for :data:`FIRST_CANDIDATE`
    (``vit/frequency`` -> ``race-vit-frequency``), one per model and candidate for any other
    (``npr_bn``, ``muon_delta/split`` -> ``race-npr_bn-muon_delta-split``), and one more for
    each weight average, each evaluation interval other than :data:`DEFAULT_INTERVAL` and each
    fixed budget (``-ema0.995``, ``-every125``, ``-budget6000``)."""
    name = "race-" + model.replace("/", "-")
    if candidate != FIRST_CANDIDATE or average is not None:
        name = f"{name}-{candidate.replace('/', '-')}"
    if average is not None:
        name = f"{name}-ema{average:g}"
    if interval != DEFAULT_INTERVAL:
        name = f"{name}-every{interval}"
    return name if budget is None else f"{name}-budget{budget}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=input_path, nargs="+", required=True)
    parser.add_argument("--model", default="npr_bn")
    parser.add_argument("--candidate", default=FIRST_CANDIDATE)
    parser.add_argument(
        "--average",
        type=float,
        default=None,
        help="race the runs evaluated on their weight average of this decay (--average of "
        "experiments.detectors); default: the runs evaluated on the weights",
    )
    parser.add_argument(
        "--budget",
        type=int,
        default=None,
        help="the runs trained this many steps without early stopping (checked): the target "
        "is Adam's best over the budget; a section of its own",
    )
    parser.add_argument("--tuning-seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=15, help="step-cost samples")
    parser.add_argument("--span", type=int, default=5, help="steps per step-cost sample")
    parser.add_argument("--threads", type=int, default=1, help="as the runs (--threads 1)")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="measure the step cost in this many fresh processes, one after another, and "
        "report the median and range of their ratios",
    )
    parser.add_argument("--no-step-cost", action="store_true")
    parser.add_argument(
        "--costs-from",
        type=input_path,
        default=None,
        help="take the step costs from this race record (--json) instead of measuring them: "
        "re-render a section with the costs it was written with",
    )
    parser.add_argument("--tiny", action="store_true", help="the seconds-long test benchmark")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--json", type=output_path, help="write the rows and step costs here")
    parser.add_argument("--write", type=output_path, help="markdown file whose section to refresh")
    args = parser.parse_args(argv)
    # before anything is read or measured: --json onto a --runs record wrote over it. --json
    # may be --costs-from: a re-render reads the costs and writes them back (the documented
    # Regenerate lines of docs/results.md do that)
    checked = argparse.Namespace(**vars(args))
    if args.json and args.costs_from and same_file(args.json, args.costs_from):
        checked.costs_from = None
    refuse_clashes(parser, checked)
    for option in ("processes", "samples", "span", "threads"):  # after the work, tracebacks
        if getattr(args, option) < 1:
            parser.error(f"--{option} must be >= 1, got {getattr(args, option)}")
    if args.candidate == BASELINE:  # a section of Adam against itself, ratio 1.00, exit 0
        parser.error(f"--candidate {BASELINE} races the baseline against itself")
    if args.costs_from is not None and args.no_step_cost:  # the costs file silently won
        parser.error("--costs-from and --no-step-cost: give one (costs from a record, or none)")
    try:  # a missing or malformed record, or a name with no runs, is a usage error
        runs = load_runs(args.runs)
        chosen = {
            name: select(runs, args.model, name, average=args.average)
            for name in (BASELINE, args.candidate)
        }
        for name, rs in chosen.items():
            if not rs:
                raise ValueError(no_runs(runs, args.model, name, args.average))
            check_distinct(rs)  # a rerun of a seed beside its first run: keep one
        grids = {name: tune(rs, args.tuning_seed) for name, rs in chosen.items()}
    except (OSError, ValueError) as e:  # json.JSONDecodeError is a ValueError
        parser.error(str(e))
    lrs = {name: grid[0] for name, grid in grids.items()}
    try:
        recipe_details([r for rs in chosen.values() for r in rs], TUNING_SHARED)
        raced = [r for name, rs in chosen.items() for r in rs if float(r["lr"]) == lrs[name]]
        recipe = recipe_details(raced)
        if args.budget is not None:
            check_budget([r for rs in chosen.values() for r in rs], args.budget)
            for name, rs in chosen.items():  # the section says they are not re-tuned here
                if len({float(r["lr"]) for r in rs}) > 1:
                    raise ValueError(
                        f"a --budget race takes each optimizer's runs at one lr (the one its "
                        f"early-stopped race tuned); {name} has {sorted({r['lr'] for r in rs})}"
                    )
        from experiments.detectors import batch_size_of

        batches = {batch_size_of(r) for r in raced}
        if len(batches) > 1:  # the step cost was measured at 64 whatever the runs used
            raise ValueError(f"the raced runs differ in batch size {sorted(batches)}")
        pair = (chosen[BASELINE], chosen[args.candidate], lrs[BASELINE], lrs[args.candidate])
        rows = race(*pair)
        if not rows:
            raise ValueError(f"no seed to race: {'; '.join(unraced_seeds(*pair))}")
        if at_zero := [r["seed"] for r in rows if r["baseline_steps"] == 0]:
            # the ratio divided by zero, after the step cost was measured
            raise ValueError(
                f"seeds {at_zero}: Adam's best validation loss is at step 0, before any "
                "training: there is no target to race to (check those runs' lr and curves)"
            )
        interval = race_interval(rows)
    except ValueError as e:
        parser.error(str(e))
    # its section's markers, before the step cost is measured (minutes with --processes)
    name = section_name(args.model, args.candidate, args.average, interval, args.budget)
    refuse_unreplaceable(parser, args.write, name)
    costs = None
    if args.costs_from is not None:
        try:
            costs = json.loads(args.costs_from.read_text())["costs"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            parser.error(f"--costs-from {args.costs_from}: no race record with costs ({e!r})")
        if costs is not None and set(costs.get("optimizers", {})) != set(lrs):
            parser.error(
                f"--costs-from {args.costs_from} holds the costs of "
                f"{sorted(costs.get('optimizers', {}))}, this race is of {sorted(lrs)}"
            )
    elif not args.no_step_cost:
        torch.set_num_threads(args.threads)
        options = {
            "samples": args.samples, "span": args.span, "tiny": args.tiny,
            "cache_dir": args.cache_dir, "recipe": shared_recipe(raced),
            "batch_size": batch_size_of(raced[0]),  # the runs' own (it was 64 whatever they had)
        }  # fmt: skip
        if args.processes > 1:
            costs = step_costs_in_processes(
                args.model, lrs, processes=args.processes, threads=args.threads, **options
            )
        else:
            costs = step_costs(args.model, lrs, **options)
    command = "python -m experiments.detector_race " + " ".join(
        str(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    text = markdown(
        args.model, args.candidate, grids, rows, costs, f"`{command}`", args.tuning_seed,
        args.average, args.budget, recipe,
    )  # fmt: skip
    notes = []
    if left_out := unraced_seeds(*pair):
        notes.append("Seeds not raced: " + "; ".join(left_out) + ".")
    if args.budget is None and (capped := capped_runs(raced)):
        notes.append(
            "Raced runs that ended at their step cap still at their best, not stopped early "
            "(the cap, not early stopping, set their best): " + ", ".join(capped) + "."
        )
    if notes:
        text = text.rstrip("\n") + "\n\n" + "\n\n".join(notes) + "\n"
    print(text)
    if args.json:
        args.json.write_text(
            strict_json.dumps({"rows": rows, "costs": costs}, indent=1, default=float)
        )
    if args.write:
        replace_section(args.write, name, text)


if __name__ == "__main__":
    main()
