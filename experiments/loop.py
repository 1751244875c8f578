"""One training run: task + optimizer -> per-step JSONL records and a summary dict."""

from __future__ import annotations

import itertools
import math
import resource
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from assocmem.storage import strict_json
from assocmem.training import fit
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
    """Train ``task`` for ``steps`` steps through the library's loop
    (:func:`assocmem.training.fit`); a non-finite loss ends the run as ``diverged``.

    ``wall`` in the records counts training time only (evaluation excluded), so time-to-target
    compares optimizers, not evaluation costs; ``mean_step_ms`` is the time inside
    ``optimizer.step`` alone. Both are this run's own clock: the comparison's report derives
    time-to-target from steps x an interleaved step cost instead (``experiments/step_cost.py``),
    as runs made one after another absorb the machine's load.
    """
    if out_dir:  # a run into a folder that held one: its summary goes before its metrics do
        (out_dir / "summary.json").unlink(missing_ok=True)
    log = (out_dir / "metrics.jsonl").open("w") if out_dir else None

    def record(entry: dict[str, Any]) -> None:
        # The harness's records call the loop's training time "wall" (its reports read that).
        entry["wall"] = entry.pop("time")
        if log:
            log.write(strict_json.dumps(entry) + "\n")
            log.flush()

    try:
        result = fit(
            list(task.parameters()), task.train_loss, itertools.count(1), optimizer_factory,
            steps=steps, eval_every=eval_every, evaluate=task.evaluate, log=record,
            progress=progress, desc=getattr(task, "name", "train"),
        )  # fmt: skip
    finally:
        if log:
            log.close()
    history, status, opt = result.history, result.status, result.optimizer
    evals = [h for h in history if "val_loss" in h]
    final = evals[-1] if status == "ok" else {"val_loss": math.inf}
    summary: dict[str, Any] = {
        "status": status,
        "steps_done": history[-1]["step"],
        "final": {k: v for k, v in final.items() if k not in ("step", "wall", "train_loss")},
        "best_val_loss": min(h["val_loss"] for h in evals) if status == "ok" else math.inf,
        "train_seconds": history[-1]["wall"],
        "mean_step_ms": 1e3 * result.optimizer_seconds / max(result.steps, 1),
        "state_bytes_per_param": state_bytes_per_param(opt),
        # why a diverged run ended (the loop's message: which loss, at which step); "" if ok
        "message": result.message,
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
        (out_dir / "summary.json").write_text(strict_json.dumps(summary, indent=2))
    return summary
