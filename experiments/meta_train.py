"""Meta-train the ``learned`` memory: ``python -m experiments.meta_train [overrides]``.

Hydra config: ``experiments/conf/meta_train.yaml``. Writes a training checkpoint every
``train.checkpoint_every`` meta-steps to ``checkpoint`` and resumes from it after an
interruption (same command again); ``export=PATH`` writes the final meta-parameters with a
``.json`` sidecar recording the config and this exact command.
"""

from __future__ import annotations

import shlex
import sys

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from assocmem.meta.config import LearnedConfig
from assocmem.meta.network import num_meta_params
from assocmem.meta.train import TrainConfig, export, meta_train
from experiments.validate_config import check_job_overrides, exit_on_error, validate_meta_train


@hydra.main(config_path="conf", config_name="meta_train", version_base=None)
def main(cfg: DictConfig) -> None:
    exit_on_error(check_job_overrides("meta_train"), cfg)  # +train.meta_step=...: a typo
    exit_on_error(validate_meta_train, cfg)  # the export path, before hours of meta-training
    torch.set_num_threads(int(cfg.threads))
    learned = LearnedConfig.from_dict(OmegaConf.to_container(cfg.learned, resolve=True))
    train = TrainConfig.from_dict(OmegaConf.to_container(cfg.train, resolve=True))
    command = "python -m experiments.meta_train " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    result = meta_train(
        learned,
        train,
        checkpoint=cfg.checkpoint,
        resume=cfg.resume,  # booleans: validate_meta_train
        progress=cfg.progress,
        info={"command": command},
    )
    tail = result.history[-20:]
    summary = {
        "meta_step": result.meta_step,
        "meta_params": num_meta_params(result.meta_params),
        "train_seconds": round(result.seconds, 1),
        "final_log_loss_ratio_mean20": round(sum(tail) / max(len(tail), 1), 4),
    }
    print(summary)
    if cfg.export:
        info = {
            "command": command,
            "train": train.to_dict(),
            **summary,
            "history": result.history,
            # the meta-steps whose update was skipped (a non-finite meta-loss or -gradient):
            # the history alone looks normal while the meta-parameters did not move
            "skipped": result.skipped,
            "torch": torch.__version__,
        }
        export(cfg.export, result.meta_params, learned, info)
        print(f"exported {cfg.export}")


if __name__ == "__main__":
    main()
