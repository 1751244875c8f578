"""One training run: task + optimizer -> per-step JSONL records and a summary dict."""

from __future__ import annotations

import json
import math
import resource
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from experiments.guard import record_skipped_steps
from experiments.tasks import Task

OptimizerFactory = Callable[[Iterable[torch.Tensor]], torch.optim.Optimizer]


def state_bytes_per_param(opt: torch.optim.Optimizer) -> float:
    n = sum(p.numel() for g in opt.param_groups for p in g["params"])
    held = sum(
        v.numel() * v.element_size()
        for s in opt.state.values()
        for k, v in s.items()
        if torch.is_tensor(v) and k != "step"
    )
    return held / max(n, 1)


def first_reaching(history: list[dict[str, Any]], target: float, key: str = "val_loss"):
    """(step, wall seconds) of the first evaluation at or below ``target``; Nones if never."""
    for record in history:
        if key in record and record[key] <= target:
            return record["step"], record["wall"]
    return None, None


def train_run(
    task: Task,
    optimizer_factory: OptimizerFactory,
    *,
    steps: int,
    eval_every: int,
    out_dir: Path | None = None,
    target: float | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Train ``task`` for ``steps`` steps; a non-finite loss ends the run as ``diverged``.

    ``wall`` in the records counts training time only (evaluation excluded), so time-to-target
    compares optimizers, not evaluation costs. It is this run's own clock: the comparison's
    report derives time-to-target from steps x an interleaved step cost instead
    (``experiments/step_cost.py``), as runs made one after another absorb the machine's load.
    """
    opt = optimizer_factory(task.parameters())
    history: list[dict[str, Any]] = []
    log = (out_dir / "metrics.jsonl").open("w") if out_dir else None
    status, wall, step_seconds = "ok", 0.0, []

    def record(entry: dict[str, Any]) -> None:
        history.append(entry)
        if log:
            log.write(json.dumps(entry) + "\n")
            log.flush()

    record({"step": 0, "wall": 0.0, **task.evaluate()})
    bar = tqdm(range(1, steps + 1), disable=not progress, desc=getattr(task, "name", "train"))
    for step in bar:
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = task.train_loss(step)
        if not math.isfinite(loss.item()):
            status = "diverged"
            break
        loss.backward()
        before_step = time.perf_counter()
        opt.step()
        now = time.perf_counter()
        step_seconds.append(now - before_step)
        wall += now - start
        entry: dict[str, Any] = {"step": step, "wall": wall, "train_loss": loss.item()}
        if step % eval_every == 0 or step == steps:
            metrics = task.evaluate()
            entry.update(metrics)
            if not math.isfinite(metrics["val_loss"]):
                record(entry)
                status = "diverged"
                break
            bar.set_postfix(val_loss=f"{metrics['val_loss']:.4g}")
        record(entry)
    if log:
        log.close()

    evals = [h for h in history if "val_loss" in h]
    final = evals[-1] if status == "ok" else {"val_loss": math.inf}
    summary: dict[str, Any] = {
        "status": status,
        "steps_done": history[-1]["step"],
        "final": {k: v for k, v in final.items() if k not in ("step", "wall", "train_loss")},
        "best_val_loss": min(h["val_loss"] for h in evals) if status == "ok" else math.inf,
        "train_seconds": wall,
        "mean_step_ms": 1e3 * sum(step_seconds) / max(len(step_seconds), 1),
        "state_bytes_per_param": state_bytes_per_param(opt),
        # Process-wide peak resident memory (KiB on Linux), as torch has no CPU allocator stats.
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if status == "ok" and hasattr(task, "final_report"):
        # Task-specific end-of-run evaluation, e.g. the forensic zero-shot per-family table.
        summary["report"] = task.final_report()
    if target is not None:
        step_hit, wall_hit = first_reaching(history, target)
        summary.update(target=target, steps_to_target=step_hit, time_to_target=wall_hit)
    record_skipped_steps(summary, opt)
    if out_dir:
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
