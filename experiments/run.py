"""One training run, hydra-configured.

    python -m experiments.run optimizer=delta task=quadratic seed=1
    python -m experiments.run -m optimizer=adam,delta task=digits_mlp optimizer.lr=0.003,0.01

Writes the resolved config, ``metrics.jsonl`` (one record per step, validation metrics at
intervals) and ``summary.json`` into hydra's output directory.
A config value that cannot work (``task.steps=abc``, an unwritable ``data.cache_dir``, ...)
ends the command before hydra creates a folder, with one line naming it and exit status 2
(``experiments/validate_config.py``); with ``-m`` every job of the sweep is checked so before
the first one runs. A value only the task's constructor refuses (``task.build.condition=-1``)
ends its job the same way, before the job writes a file of its own (hydra has by then made the
folder and its ``.hydra/`` files; in a sweep, the jobs before it have run).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from assocmem.optim import param_groups
from experiments.loop import OptimizerFactory, train_run
from experiments.validate_config import (
    ConfigError,
    build_task,
    check_dirs_before_hydra,
    check_job_overrides,
    check_jobs_before_hydra,
    exit_on_error,
    validate_run,
)


def task_module(task: Any) -> nn.Module:
    """The module whose parameters ``task`` trains: its ``model``, or, for a task that holds
    bare tensors (the quadratic, Rosenbrock), those tensors in an ``nn.ParameterList``."""
    model = getattr(task, "model", None)
    if isinstance(model, nn.Module):
        return model
    return nn.ParameterList(list(task.parameters()))


def optimizer_factory(cfg: DictConfig, task: Any) -> OptimizerFactory:
    """The run's optimizer maker. A config with ``split`` (Muon-style presets) builds its param
    groups with :func:`assocmem.optim.param_groups` from the task's module: hidden matrices in
    the preset's group, the rest in ``split.rest`` (e.g. ``memory: adam``) at
    ``lr * split.rest_lr_ratio``."""
    make = instantiate(cfg.optimizer.factory)
    split = cfg.optimizer.get("split")
    if not split:
        return make
    rest = {
        **OmegaConf.to_container(split.rest, resolve=True),
        "lr": cfg.optimizer.lr * split.rest_lr_ratio,
    }
    groups = param_groups(task_module(task), rest=rest, trainable_only=True)

    def split_factory(params: Iterable[Tensor]) -> torch.optim.Optimizer:
        wanted = {id(p) for p in params}
        grouped = {id(p) for g in groups for p in g["params"]}
        if grouped != wanted:  # the module and the task disagree on what trains
            raise ValueError(
                f"optimizer.split: the task's module has {len(grouped)} trainable parameters, "
                f"the task trains {len(wanted)}; give the task a `model` holding exactly those"
            )
        return make(groups)

    return split_factory


def execute(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Build the task and optimizer from ``cfg`` and train; returns the run's summary.

    Raises :class:`~experiments.validate_config.ConfigError` for a value the task's
    constructor refuses, before anything is written to ``out_dir`` (a folder may hold an earlier
    run's record)."""
    torch.manual_seed(cfg.seed)
    task = build_task(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    summary = train_run(
        task,
        optimizer_factory(cfg, task),
        steps=cfg.task.steps,
        eval_every=cfg.task.eval_every,
        out_dir=out_dir,
        target=cfg.target,
        progress=cfg.progress,
    )
    return {
        "task": cfg.task.name,
        "optimizer": cfg.optimizer.name,
        "lr": cfg.optimizer.lr,
        "seed": cfg.seed,
        **summary,
    }


@hydra.main(config_path="conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> float:
    exit_on_error(validate_run, cfg)  # before anything is built: one line naming a bad key
    exit_on_error(check_job_overrides("config"), cfg)
    try:
        summary = execute(cfg, Path(HydraConfig.get().runtime.output_dir))
    except ConfigError as e:  # the task refused a value: nothing written
        print(f"config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(
        f"{summary['task']} / {summary['optimizer']} lr={summary['lr']} seed={summary['seed']}: "
        f"{summary['status']}, final {summary['final']}"
    )
    # Returned so hydra sweepers that optimise a value (e.g. optuna) can use it.
    return summary["final"]["val_loss"]


if __name__ == "__main__":
    check_dirs_before_hydra(sys.argv[1:], ("hydra.run.dir", "hydra.sweep.dir"))
    check_jobs_before_hydra(sys.argv[1:], "config", validate_run)
    main()
