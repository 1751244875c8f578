"""The fair convergence comparison against Adam, then the report.

    python -m experiments.compare                          # classic tasks, all presets
    python -m experiments.compare +experiment=smoke        # seconds, for tests
    python -m experiments.compare name=mine tasks=[digits_mlp] optimizers=[adam,delta]
    python -m experiments.compare optimizers=[adam,muon] '+variants.muon=[muon,muon_nosplit]'

Protocol, per task and optimizer: ``len(lr_factors)`` tuning runs on ``tuning_seed`` at the
optimizer's default lr times each factor (the same budget for everyone), extended by one grid
step past the edge while the best LR is on it, at most ``lr_extensions`` times (the same rule
for everyone, ``experiments/lr_grid.py``); the best final validation loss picks the LR; then
one run per evaluation seed at that LR. A preset listed in ``variants`` has each of its
configurations tuned so, and only the one recommended on the tuning seed is evaluated
(``experiments/variants.py``). The baseline's (tuned Adam's) mean final validation
loss is every other optimizer's target for steps-to-target. After a task's runs, the cost of a
training step is measured with the optimizers interleaved (``experiments/step_cost.py``), and
time-to-target is steps-to-target times that cost. A diverged run is recorded as such and
never stops the sweep.
"""

from __future__ import annotations

import contextlib
import math
import os
import shlex
import statistics
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm.auto import tqdm

from assocmem.storage import strict_json
from experiments.lr_grid import best_factor, edge_side, next_factor
from experiments.report import PLAN, folder_lock, section, write_report
from experiments.run import execute, optimizer_factory
from experiments.step_cost import measure
from experiments.validate_config import (
    ConfigError,
    check_dirs_before_hydra,
    check_job_overrides,
    check_jobs_before_hydra,
    exit_on_error,
    validate_compare,
)
from experiments.variants import configurations, recommend


def run_config(task: str, optimizer: str, lr: float | None, seed: int, extra: list[str], **kw):
    overrides = [f"task={task}", f"optimizer={optimizer}", f"seed={seed}", "progress=false"]
    if lr is not None:
        overrides.append(f"optimizer.lr={lr:.6g}")
    overrides += [f"{k}={v}" for k, v in kw.items()] + list(extra)
    return compose(config_name="config", overrides=overrides)


def tune(task: str, optimizer: str, cfg: DictConfig, out: Path, bar: tqdm) -> dict[str, Any]:
    """The LR grid on the tuning seed, extended past an edge optimum (``experiments.lr_grid``)."""
    base_lr = run_config(task, optimizer, None, cfg.tuning_seed, cfg.overrides).optimizer.lr
    results: dict[float, float] = {}  # factor -> final val_loss (inf: diverged)
    lrs: dict[float, float] = {}

    def tune_at(factor: float) -> None:
        lr = float(f"{base_lr * factor:.6g}")
        run = run_config(task, optimizer, lr, cfg.tuning_seed, cfg.overrides)
        bar.set_postfix_str(f"{task} / {optimizer} / tune lr={lr:g}")
        summary = execute(run, out / "tune" / f"lr{lr:g}")
        bar.update()
        results[factor] = summary["final"]["val_loss"] if summary["status"] == "ok" else math.inf
        lrs[factor] = lr

    for factor in cfg.lr_factors:
        tune_at(float(factor))
    extensions = []
    while (factor := next_factor(results, len(extensions), cfg.lr_extensions)) is not None:
        bar.total += 1  # the sweep's length is known only as it goes
        side = "low" if factor < min(results) else "high"
        tune_at(factor)
        extensions.append({"factor": factor, "lr": lrs[factor], "side": side})
    best = best_factor(results)
    return {
        "grid": {str(lrs[f]): results[f] for f in sorted(results)},
        "best_lr": lrs[best] if best is not None else None,
        "best_loss": results[best] if best is not None else math.inf,
        "extensions": extensions,
        "max_extensions": cfg.lr_extensions,
        # Still on an edge after the last extension: the report says so, not "optimum".
        # a one-point grid tunes nothing: no edge to report (the lr was the config's)
        "edge": (edge_side(results) if len(results) > 1 else None)
        if best is not None
        else "all diverged",
    }


def tune_preset(task: str, name: str, cfg: DictConfig, out: Path, bar: tqdm) -> dict[str, Any]:
    """``tune`` for an optimizer, or for each of a preset's variants (``experiments.variants``):
    the protocol of the configuration recommended on the tuning seed, with ``config`` naming
    it and ``variants`` what each variant reached."""
    if name not in cfg.variants:
        return {**tune(task, name, cfg, out, bar), "config": name}
    configs = configurations(name, cfg.variants)
    tuned = {c: tune(task, c, cfg, out / "variants" / c, bar) for c in configs}
    chosen = recommend({c: p["best_loss"] for c, p in tuned.items()})
    summary = {
        c: {k: p[k] for k in ("best_lr", "best_loss", "edge")} | {"grid_runs": len(p["grid"])}
        for c, p in tuned.items()
    }
    return {**tuned[chosen or configs[0]], "config": chosen or configs[0], "variants": summary}


def evaluate(task, optimizer, lr, cfg, out, target, bar: tqdm) -> list[dict[str, Any]]:
    runs = []
    for seed in cfg.seeds:
        kw = {"target": target} if target is not None else {}
        run = run_config(task, optimizer, lr, seed, cfg.overrides, **kw)
        bar.set_postfix_str(f"{task} / {optimizer} / seed {seed}")
        runs.append(execute(run, out / f"seed{seed}"))
        bar.update()
    return runs


def step_costs(task: str, tuned: dict[str, tuple[str, float]], cfg: DictConfig) -> dict[str, Any]:
    """Each optimizer's cost of a training step (``name: (config, tuned lr)``) on this task,
    interleaved (``experiments.step_cost``), on the task built with the tuning seed."""
    candidates = {}
    for optimizer, (config, lr) in tuned.items():
        run = run_config(task, config, lr, cfg.tuning_seed, cfg.overrides)
        torch.manual_seed(run.seed)
        task_obj = instantiate(run.task.build, seed=run.seed)
        candidates[optimizer] = (task_obj, optimizer_factory(run, task_obj)(task_obj.parameters()))
    samples, span = cfg.step_cost.samples, cfg.step_cost.span
    return {
        "method": (
            f"training step (batch, forward, backward, opt.step) at the tuned lr, tuning seed "
            f"{cfg.tuning_seed}; optimizers interleaved; {samples} samples of {span} steps"
        ),
        "threads": torch.get_num_threads(),
        "optimizers": measure(candidates, samples, span),
    }


def compare(
    cfg: DictConfig, command: str | None = None, sweep: dict[str, Any] | None = None
) -> Path:
    """Run the comparison ``cfg`` into ``cfg.out_dir``. ``sweep``: this job's place in a hydra
    ``-m`` sweep (:func:`sweep_job`), kept in the plan so that a later job of the same sweep
    is refused the folder."""
    root = Path(cfg.out_dir)
    # Every file this invocation writes carries its id: a report refuses a folder whose files
    # come from several invocations (a re-run into the same out_dir, interrupted or with other
    # seeds, leaves the last one's runs beside this one's).
    run_id = uuid.uuid4().hex
    root.mkdir(parents=True, exist_ok=True)
    with _sole_writer(root):
        _refuse_a_sibling_jobs_folder(root, sweep)
        return _compare(cfg, command, root, run_id, sweep)


def sweep_job() -> dict[str, Any] | None:
    """This hydra job's place in a ``-m`` sweep, ``{"dir": sweep folder, "launch": when the
    sweep started, "job": number}``, or ``None`` outside one."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    hc = HydraConfig.get()
    where = Path(hc.sweep.dir).expanduser().resolve()
    try:  # the sweeper writes it as it starts: a later sweep into a fixed sweep.dir is another
        launch = (where / "multirun.yaml").stat().st_mtime_ns
    except OSError:
        launch = None
    return {"dir": str(where), "launch": launch, "job": int(hc.job.num)}


def _refuse_a_sibling_jobs_folder(root: Path, sweep: dict[str, Any] | None) -> None:
    """Refuse ``root`` when another job of this sweep wrote its comparison there: a command line
    ``check_jobs_before_hydra`` does not read (a hydra flag) reaches the jobs unchecked, and
    the second job wiped the first one's records (as the check before hydra refuses)."""
    if sweep is None or not (root / PLAN).is_file():
        return
    try:
        earlier = strict_json.loads((root / PLAN).read_text()).get("sweep")  # as _compare wrote it
    except (OSError, ValueError, AttributeError):
        return  # not a plan this code wrote: the run replaces it, as any re-run does
    same_sweep = isinstance(earlier, dict) and all(
        earlier.get(k) == sweep.get(k) for k in ("dir", "launch")
    )
    if same_sweep and earlier.get("job") != sweep["job"]:
        raise ConfigError(
            "out_dir", str(root), "", refused=f"job {earlier.get('job')} of this sweep wrote its "
            f"comparison there and job {sweep['job']} would wipe its records; give each job its "
            "own out_dir"
        )  # fmt: skip


@contextlib.contextmanager
def _sole_writer(root: Path) -> Iterator[None]:
    """Hold ``root``'s lock (``report.folder_lock``) while this comparison writes into it, and
    refuse (a ``ConfigError``: exit 2, nothing touched) one that another comparison holds: two
    at once wrote into the same ``metrics.jsonl`` files, and both ended after all their runs in
    a traceback."""
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(folder_lock(root, wait=False))
        except BlockingIOError:
            raise ConfigError(
                "out_dir", str(root), "", refused="another comparison is writing into it now; "
                "give this one its own out_dir"
            ) from None  # fmt: skip
        yield


def _compare(
    cfg: DictConfig, command: str | None, root: Path, run_id: str, sweep: dict[str, Any] | None
) -> Path:
    for stale in (*root.glob("*/*/protocol.json"), *root.glob("*/step_cost.json")):
        stale.unlink()  # a re-run's old records must not outlive its new runs
    optimizers = [cfg.baseline] + [o for o in cfg.optimizers if o != cfg.baseline]
    # What this invocation will write, and (rewritten at the end) that it did: a report of a
    # comparison interrupted (Ctrl-C) halfway is refused, not shown as a complete one.
    plan = {"run_id": run_id, "tasks": list(cfg.tasks), "optimizers": optimizers}
    if sweep is not None:
        plan["sweep"] = sweep
    (root / PLAN).write_text(strict_json.dumps({**plan, "complete": False}, indent=2))
    per_task = sum(
        len(configurations(o, cfg.variants)) * len(cfg.lr_factors) + len(cfg.seeds)
        for o in optimizers
    )
    bar = tqdm(total=len(cfg.tasks) * per_task, desc=f"compare {cfg.name}", unit="run")
    for task in cfg.tasks:
        target = None
        tuned = {}
        for optimizer in optimizers:
            out = root / task / optimizer
            out.mkdir(parents=True, exist_ok=True)
            protocol = tune_preset(task, optimizer, cfg, out, bar)
            config, lr = protocol["config"], protocol["best_lr"]
            runs = []
            if lr is not None:
                tuned[optimizer] = (config, lr)
                runs = evaluate(task, config, lr, cfg, out, target, bar)
            else:
                bar.update(len(cfg.seeds))
            finals = [r["final"]["val_loss"] for r in runs if r["status"] == "ok"]
            if optimizer == cfg.baseline and finals:
                target = statistics.mean(finals)
            # ``seeds``: the evaluation seeds run, none when every lr diverged (the report's
            # "all diverged" row; it looks for a run of every seed named here)
            protocol.update(
                target=target, seeds=list(cfg.seeds) if lr is not None else [], run_id=run_id,
                baseline=cfg.baseline, command=command,
            )  # fmt: skip
            (out / "protocol.json").write_text(strict_json.dumps(protocol, indent=2))
            bar.write(f"{task:>18} {optimizer:>10}: best lr {protocol['best_lr']}, finals {finals}")
        bar.set_postfix_str(f"{task} / step cost")
        costs = {**step_costs(task, tuned, cfg), "run_id": run_id}
        (root / task / "step_cost.json").write_text(strict_json.dumps(costs, indent=2))
    bar.close()
    (root / PLAN).write_text(strict_json.dumps({**plan, "complete": True}, indent=2))
    return root


def invocation() -> str:
    """The command line that made this comparison, quoted for a POSIX shell."""
    overrides = HydraConfig.get().overrides.task
    # the thread count sets the step costs the report prints: a command without it measured
    # another machine's number of threads ("1 thread(s)" in a section, 2 on a re-run)
    threads = os.environ.get("OMP_NUM_THREADS")
    env = [f"OMP_NUM_THREADS={shlex.quote(threads)}"] if threads else []
    return " ".join([*env, "python -m experiments.compare", *map(shlex.quote, overrides)])


# Whether the command line's config passed validate_compare before hydra started (set below;
# then it is not checked, and every task built, a second time).
_VALIDATED_BEFORE_HYDRA = False


@hydra.main(config_path="conf", config_name="compare", version_base=None)
def main(cfg: DictConfig) -> None:
    if not _VALIDATED_BEFORE_HYDRA:  # a command line check_jobs_before_hydra leaves to the job
        exit_on_error(validate_compare, cfg)  # every run's config, before the first one starts
        exit_on_error(check_job_overrides("compare"), cfg)
    command = cfg.report.get("command") or invocation()
    try:
        root = compare(cfg, command, sweep_job())
    except ConfigError as e:  # a task refused a value (task.build): its run wrote nothing
        print(f"config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    report = write_report(
        root,
        Path(cfg.report.markdown),
        Path(cfg.report.plots_dir),
        cfg.name,
        baseline=cfg.baseline,
        command=command,
    )
    print(section(report, cfg.name))
    print(f"report: {report}")


if __name__ == "__main__":
    check_dirs_before_hydra(sys.argv[1:], ("out_dir", "hydra.run.dir"))
    # before hydra makes out_dir/.hydra-run: a refused comparison left that folder behind, or
    # rewrote the .hydra/ record of a finished comparison in the same out_dir
    _VALIDATED_BEFORE_HYDRA = check_jobs_before_hydra(
        sys.argv[1:], "compare", validate_compare, distinct="out_dir"
    )
    main()
