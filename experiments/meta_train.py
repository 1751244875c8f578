"""Meta-train the ``learned`` memory: ``python -m experiments.meta_train [overrides]``.

Hydra config: ``experiments/conf/meta_train.yaml``. Writes a training checkpoint every
``train.checkpoint_every`` meta-steps to ``checkpoint`` and resumes from it after an
interruption (same command again); ``export=PATH`` writes the final meta-parameters with a
``.json`` sidecar recording the config and this exact command.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from assocmem.meta.config import LearnedConfig
from assocmem.meta.network import num_meta_params
from assocmem.meta.train import CheckpointRefused, TrainConfig, export, meta_train
from experiments.validate_config import check_job_overrides, exit_on_error, validate_meta_train


@hydra.main(config_path="conf", config_name="meta_train", version_base=None)
def main(cfg: DictConfig) -> None:
    exit_on_error(check_job_overrides("meta_train"), cfg)  # +train.meta_step=...: a typo
    exit_on_error(validate_meta_train, cfg)  # the export path, before hours of meta-training
    torch.set_num_threads(int(cfg.threads))
    learned = LearnedConfig.from_dict(OmegaConf.to_container(cfg.learned, resolve=True))
    train = TrainConfig.from_dict(OmegaConf.to_container(cfg.train, resolve=True))
    command = "python -m experiments.meta_train " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    # "~" expanded as validate_meta_train does: the checks ran on ~/ck.safetensors and the run
    # wrote ./~/ck.safetensors (an audit)
    checkpoint = Path(str(cfg.checkpoint)).expanduser() if cfg.checkpoint else None
    try:
        result = meta_train(
            learned,
            train,
            checkpoint=checkpoint,
            resume=cfg.resume,  # booleans: validate_meta_train
            progress=cfg.progress,
            info={"command": command},
        )
    except CheckpointRefused as e:
        # a checkpoint that cannot be resumed (another config, a longer run, an edited file):
        # one line saying why, before any meta-step, as a bad value gets
        print(f"config error: checkpoint = {str(cfg.checkpoint)!r}: refused: {e}", file=sys.stderr)
        raise SystemExit(2) from None
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
        export(Path(str(cfg.export)).expanduser(), result.meta_params, learned, info)
        print(f"exported {cfg.export}")


if __name__ == "__main__":
    main()
