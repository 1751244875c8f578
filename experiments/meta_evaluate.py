"""Held-out evaluation of a learned memory vs Adam (``python -m experiments.meta_evaluate``).

Protocol (the project's fair-comparison rule, on a task family never seen in meta-training;
a family the checkpoint's training record names is refused, and a checkpoint without a record
is reported as such, not as held out):
each optimizer gets the same 4-point grid of step sizes (Adam's ``lr`` in
{1e-3, 3e-3, 1e-2, 3e-2}; the learned memory's ``lr`` multiplier in the checkpoint's ``lr``
times {0.3, 1, 3, 10}), the best point is chosen by mean final training loss over the seeds
(the quantity both were built to minimise; on a 569-sample dataset validation loss mostly
rewards early stopping, so it is reported but not used to choose), and the table reports
mean ± std over the seeds at that point. The learned memory is also run for
10x the meta-training horizon (at the tuned and at the meta-trained ``lr``, next to tuned
Adam) to check that it keeps training and does not blow up. The first step's size is reported
too: every weight's ``|W_1 - W_0| / lr`` after one step (Adam's is about 1), median and max
over the weights and the seeds. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from assocmem.meta.checkpoint import load_checkpoint
from assocmem.meta.tasks import FAMILIES, HELD_OUT_FAMILIES, sample_task
from assocmem.optim import MemoryOptimizer
from assocmem.training import fit
from experiments.cli_files import output_path
from experiments.lr_grid import best_factor, edge_side, next_factor
from experiments.report import refuse_unreplaceable, replace_section

ADAM_GRID = (1e-3, 3e-3, 1e-2, 3e-2)
LEARNED_MULTIPLIERS = (0.3, 1.0, 3.0, 10.0)


def evaluate_on_task(
    family: str,
    seed: int,
    make_optimizer: Callable[[list[Tensor]], torch.optim.Optimizer],
    steps: int,
) -> dict[str, Any]:
    """Train task ``(family, seed)`` for ``steps`` steps with ``make_optimizer(params)``.

    Returns ``train_loss`` (mean minibatch loss over the last 10% of steps), ``val_loss``
    (the task's held-out loss at the end; NaN if it has no held-out data),
    ``first_loss``, ``finite`` (no NaN/inf anywhere) and ``seconds``.
    """
    task = sample_task(family, seed)
    params = {k: v.clone().requires_grad_() for k, v in task.params.items()}
    result = fit(
        list(params.values()),
        lambda batch: task.loss(params, batch),
        (task.batch() for _ in itertools.count()),  # a fresh minibatch per step
        make_optimizer,
        steps=steps,
    )
    losses = [rec["train_loss"] for rec in result.history]
    tail = losses[-max(1, steps // 10) :]
    with torch.no_grad():
        val = float(task.eval_loss(params)) if task.eval_loss is not None else float("nan")
    # The loop ends a run at its first non-finite loss (status "diverged"): its tail is then
    # non-finite, so it scores as the worst grid point.
    finite = result.status == "ok" and all(bool(p.isfinite().all()) for p in params.values())
    return {
        "train_loss": sum(tail) / len(tail),
        "val_loss": val,
        "first_loss": losses[0],
        "finite": finite,
        "seconds": result.wall_time,
    }


def first_step_movement(
    family: str,
    seed: int,
    make_optimizer: Callable[[list[Tensor]], torch.optim.Optimizer],
) -> Tensor:
    """``|W_1 - W_0| / lr`` of every weight after one step on task ``(family, seed)``."""
    task = sample_task(family, seed)
    params = {k: v.clone().requires_grad_() for k, v in task.params.items()}
    opt = make_optimizer(list(params.values()))
    before = [p.detach().clone() for p in params.values()]
    task.loss(params, task.batch()).backward()
    opt.step()
    lr = opt.param_groups[0]["lr"]
    moved = [(p.detach() - b).abs().flatten() for p, b in zip(params.values(), before, strict=True)]
    return torch.cat(moved) / lr


def _sweep(
    family: str,
    seeds: list[int],
    steps: int,
    name: str,
    make: Callable[[float], Callable[[list[Tensor]], Any]],
    lrs: Sequence[float],
    extensions: int,
) -> tuple[float, list[dict[str, Any]], str]:
    """The best lr by mean final training loss (NaN counts as worst), its runs, and a note on
    the grid: ``lrs``, then one grid step past an edge while the best lies on it, at most
    ``extensions`` times (``experiments.lr_grid``'s rule, as the comparisons tune; Adam's best
    was the top of its grid, unextended, and "tuned Adam" said nothing of it)."""
    runs_at: dict[float, list[dict[str, Any]]] = {}
    scores: dict[float, float] = {}

    def run(lr: float) -> None:
        runs_at[lr] = [evaluate_on_task(family, s, make(lr), steps) for s in seeds]
        score = statistics.fmean(r["train_loss"] for r in runs_at[lr])
        scores[lr] = score if math.isfinite(score) else math.inf

    for lr in lrs:
        run(lr)
    done = 0
    while (nxt := next_factor(scores, done, extensions)) is not None:
        run(float(f"{nxt:.6g}"))
        done += 1
    best = best_factor(scores)
    best = min(scores) if best is None else best  # every run diverged: the smallest lr's
    side = edge_side(scores)
    note = f"{name}: best lr {best:g} of {len(scores)} tried ({done} past the grid's edges)"
    if side is not None:
        note += f", still at the {side} edge: a better lr may lie beyond it"
    return best, runs_at[best], note


def _fmt(values: list[float]) -> str:
    mean = statistics.fmean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.4f} ± {spread:.4f}"


def training_record(info: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint's meta-training record (``info["train"]``, a ``TrainConfig.to_dict()``)
    if it names the families and horizon trained on, else ``None``: then nothing is known
    about which tasks the memory saw."""
    train = info.get("train")
    if not isinstance(train, dict):
        return None
    families, horizon = train.get("families"), train.get("horizon")
    if not (isinstance(families, list) and all(isinstance(f, str) for f in families)):
        return None
    if not isinstance(horizon, int) or isinstance(horizon, bool) or horizon < 1:
        return None
    return train


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="learned memory (default: shipped)")
    parser.add_argument("--family", default=HELD_OUT_FAMILIES[0], choices=sorted(FAMILIES))
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="default: meta-train horizon (required without a training record)",
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--lr-extensions",
        type=int,
        default=2,
        help="grid steps past an edge while the best lr lies on it (the comparisons' rule, "
        "experiments.lr_grid), for Adam and the learned memory alike",
    )
    parser.add_argument(
        "--long-steps", type=int, default=None, help="the long runs' steps (default: 10x horizon)"
    )
    parser.add_argument(
        "--write", type=output_path, help="markdown file whose learned-classic section to refresh"
    )
    args = parser.parse_args(argv)
    refuse_unreplaceable(parser, args.write, SECTION)
    # refused here, before the memory loads: 0 read as "the default" (the horizon, 10x it),
    # no seeds ended in a StatisticsError, negative steps in fit's ValueError
    for name in ("steps", "long_steps", "seeds"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.lr_extensions < 0:
        parser.error(f"--lr-extensions must be >= 0, got {args.lr_extensions}")
    torch.set_num_threads(1)
    try:
        ckpt = load_checkpoint(args.checkpoint)
    except (FileNotFoundError, ValueError) as e:
        parser.error(str(e))
    record = training_record(ckpt.info)
    # Refused before any run: a family the memory was meta-trained on is no held-out task.
    if record is not None and args.family in record["families"]:
        unseen = [f for f in FAMILIES if f not in record["families"]]
        parser.error(
            f"the checkpoint was meta-trained on {args.family!r} (its families: "
            f"{', '.join(record['families'])}): that is no held-out evaluation. Pick a family "
            f"it never saw: {', '.join(unseen) or 'none is left'}"
        )
    if record is None and args.steps is None:
        parser.error(
            "the checkpoint records no meta-training horizon (no usable info['train']): give "
            "--steps"
        )
    base_lr = ckpt.config.lr
    horizon = record["horizon"] if record is not None else None
    steps = args.steps if args.steps is not None else horizon
    assert steps is not None
    seeds = list(range(1000, 1000 + args.seeds))  # task seeds no meta-training run draws

    def adam_at(lr: float) -> Callable[[list[Tensor]], Any]:
        return lambda ps: torch.optim.Adam(ps, lr=lr)

    def learned_at(lr: float) -> Callable[[list[Tensor]], Any]:
        return lambda ps: MemoryOptimizer(ps, memory="learned", lr=lr, checkpoint=args.checkpoint)

    adam, learned, rows, notes = {}, {}, [], []
    for name, at, lrs, makers in (
        ("adam", adam_at, ADAM_GRID, adam),
        ("learned", learned_at, [base_lr * m for m in LEARNED_MULTIPLIERS], learned),
    ):
        lr, runs, note = _sweep(args.family, seeds, steps, name, at, lrs, args.lr_extensions)
        makers[f"{name} lr={lr:g}"] = at(lr)
        rows.append((f"{name} lr={lr:g}", steps, runs))
        notes.append(note)
    learned.setdefault(f"learned lr={base_lr:g}", learned_at(base_lr))
    reference = horizon or steps  # what the long runs are a multiple of
    long_steps = args.long_steps if args.long_steps is not None else 10 * reference
    long = f"{long_steps / reference:g}x {'horizon' if horizon else 'steps'}"
    long_grid = {
        f"{rows[0][0]} ({long})": adam[rows[0][0]],
        f"{rows[1][0]} ({long})": learned[rows[1][0]],
    }
    if rows[1][0] != f"learned lr={base_lr:g}":  # else the same runs again
        long_grid[f"learned lr={base_lr:g} (meta-trained lr, {long})"] = learned[
            f"learned lr={base_lr:g}"
        ]
    for name, make in long_grid.items():
        rows.append(
            (name, long_steps, [evaluate_on_task(args.family, s, make, long_steps) for s in seeds])
        )
    makers = {**adam, **learned, **long_grid}
    title = (
        f"Held-out task `{args.family}`"
        if record is not None
        else f"Task `{args.family}` (not known to be held out: the checkpoint has no training "
        "record)"
    )
    has_val = any(math.isfinite(r["val_loss"]) for _, _, runs in rows for r in runs)
    lines = [
        f"{title}, seeds {seeds}, best grid point by final train loss.",
        "",
        "| optimizer | steps | first loss | final train loss | val loss | all finite "
        "| first step \\|ΔW\\| / lr: median (max) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, n, runs in rows:
        moved = torch.cat([first_step_movement(args.family, s, makers[name]) for s in seeds])
        val = _fmt([r["val_loss"] for r in runs]) if has_val else "n/a"
        lines.append(
            f"| {name} | {n} | {_fmt([r['first_loss'] for r in runs])} | "
            f"{_fmt([r['train_loss'] for r in runs])} | {val} | "
            f"{all(r['finite'] for r in runs)} | "
            f"{float(moved.median()):.2f} ({float(moved.max()):.2f}) |"
        )
    lines += ["", "Learning rates: " + "; ".join(notes) + "."]
    if not has_val:
        lines += [
            "",
            f"Val loss: n/a, no validation loss for this family (`{args.family}` "
            "has no `eval_loss`).",
        ]
    table = "\n".join(lines)
    print(table)
    if args.write:
        replace_section(
            args.write, SECTION, _section(ckpt.info, args.family, steps, long_steps, argv) + table
        )


SECTION = "learned-classic"


def _section(
    info: dict[str, Any], family: str, steps: int, long_steps: int, argv: list[str] | None
) -> str:
    """The section's heading and protocol, from the checkpoint's own training record; where
    it has none, the text says so and claims nothing held out."""
    command = " ".join(["python -m experiments.meta_evaluate", *(argv or sys.argv[1:])])
    record = training_record(info)
    if record is None:
        heading = (
            f"## Learned memory on `{family}` and {long_steps / steps:g}× the evaluated steps\n\n"
        )
        provenance = (
            'The checkpoint records no meta-training configuration (no usable `info["train"]`), '
            f"so which tasks it was meta-trained on is unknown and `{family}` may not be held "
            "out."
        )
    else:
        horizon = record["horizon"]
        families = ", ".join(f"`{f}`" for f in record["families"])
        objective = record.get("objective")
        objective = (
            f"{objective} objective" if isinstance(objective, str) else "objective not recorded"
        )
        heading = (
            "## Learned memory on a held-out classic task and a "
            f"{long_steps / horizon:g}× horizon\n\n"
        )
        provenance = (
            f"The checkpoint was meta-trained with {horizon}-step horizons on {families} "
            f"({objective}); `{family}` was not among them."
        )
    return (
        heading + f"Command: `{command}`. {provenance} Each optimizer gets the same 4-point LR "
        "grid; the grid point is chosen by final training loss (on small datasets validation "
        "loss mostly rewards stopping early), validation loss is reported where the task has "
        "one. The last column is the first step's size: every weight's `|W_1 - W_0| / lr` "
        "(Adam's is 1), median and max over weights and seeds.\n\n"
    )


if __name__ == "__main__":
    main()
