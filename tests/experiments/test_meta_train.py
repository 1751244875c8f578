"""``python -m experiments.meta_train``'s export: what the shipped memory's record holds."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from assocmem.meta import LearnedConfig, init_meta_params, load_checkpoint
from assocmem.meta.train import TrainResult
from experiments import meta_train


def test_export_records_the_skipped_meta_steps(tmp_path, monkeypatch):
    def fake_meta_train(learned: LearnedConfig, train, **kwargs) -> TrainResult:
        meta = init_meta_params(learned, torch.Generator().manual_seed(0))
        return TrainResult(meta, train.meta_steps, [0.0, 0.1, -0.2, -0.3], 1.0, skipped=[1])

    monkeypatch.setattr(meta_train, "meta_train", fake_meta_train)
    out = tmp_path / "memory.safetensors"
    overrides = ["learned.hidden=[4]", "train.meta_steps=4", "progress=false",
                 f"checkpoint={tmp_path / 'train.safetensors'}", f"export={out}"]  # fmt: skip
    conf = Path(meta_train.__file__).with_name("conf")
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        cfg = compose("meta_train", overrides=overrides)
    meta_train.main.__wrapped__(cfg)  # the function under @hydra.main
    assert load_checkpoint(out).info["skipped"] == [1]
    assert json.loads(out.with_suffix(".json").read_text())["skipped"] == [1]
