"""One training run, hydra-configured.

    python -m experiments.run optimizer=delta task=quadratic seed=1
    python -m experiments.run -m optimizer=adam,delta task=digits_mlp optimizer.lr=0.003,0.01

Writes the resolved config, ``metrics.jsonl`` (one record per step, validation metrics at
intervals) and ``summary.json`` into hydra's output directory.
A config value that cannot work (``task.steps=abc``, an unwritable ``data.cache_dir``, ...)
ends the command before anything is built, with one line naming it and exit status 2
(``experiments/validate_config.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from experiments.loop import train_run
from experiments.validate_config import exit_on_error, validate_run


def execute(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Build the task and optimizer from ``cfg`` and train; returns the run's summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    torch.manual_seed(cfg.seed)
    task = instantiate(cfg.task.build, seed=cfg.seed)
    summary = train_run(
        task,
        instantiate(cfg.optimizer.factory),
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
    summary = execute(cfg, Path(HydraConfig.get().runtime.output_dir))
    print(
        f"{summary['task']} / {summary['optimizer']} lr={summary['lr']} seed={summary['seed']}: "
        f"{summary['status']}, final {summary['final']}"
    )
    # Returned so hydra sweepers that optimise a value (e.g. optuna) can use it.
    return summary["final"]["val_loss"]


if __name__ == "__main__":
    main()
