"""What a learned memory is bound to: its checkpoint's digests, the optimizer state's memory
file, a resumed meta-training run's length and config, and torch's global RNG left alone."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from assocmem import MemoryOptimizer
from assocmem.meta import (
    DEFAULT_CHECKPOINT,
    LearnedConfig,
    init_meta_params,
    load_checkpoint,
    save_checkpoint,
)
from assocmem.meta.checkpoint import UnverifiedCheckpointWarning
from assocmem.meta.tasks import FAMILIES, sample_task
from assocmem.meta.train import CheckpointRefused, TrainConfig, meta_train

# two hidden layers of 8: two biases of one shape (swappable) and a square weight (transposable)
SQUARE = LearnedConfig(hidden=(8, 8), warmup=10.0)
# the shipped memory's network digest, computed from its tensors when the digests were added:
# pins the tensors (and config) the shipped checkpoint held before, bit for bit
SHIPPED_NETWORK_SHA256 = "6437dcc269600538b4c772fcc7bb3f95b23493b75edaa1cf3be05d91b1ad4df2"


def _read(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["assocmem"]), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def _rewrite(path: Path, header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    save_file(tensors, str(path), metadata={"assocmem": json.dumps(header)})
    return path


def _saved(path: Path, config: LearnedConfig = SQUARE, seed: int = 0, **kw: Any) -> Path:
    """A memory of ``config`` whose every tensor (biases included, which start at 0) differs
    from the others: as after some meta-training."""
    g = torch.Generator().manual_seed(seed)
    meta = {
        k: v + 0.1 * torch.randn(v.shape, generator=g)
        for k, v in init_meta_params(config, g).items()
    }
    save_checkpoint(path, meta, config, **kw)
    return path


def _swap_biases(t: dict[str, torch.Tensor]) -> None:
    a, b = "meta.layers.0.bias", "meta.layers.1.bias"
    t[a], t[b] = t[b], t[a]


EDITS = {
    **{
        f"config {key}": (key, value)
        for key, value in [
            ("warmup", 0.0),
            ("lr", 1.0),
            ("betas", [0.1, 0.2, 0.3]),
            ("time_scales", [1.0, 1.0, 1.0]),
            ("eps", 1.0),
            ("exp_mult", -5.0),
            ("init_skip", 0),
        ]
    },
    "swapped biases": _swap_biases,
    "transposed square weight": lambda t: t.__setitem__(
        "meta.layers.1.weight", t["meta.layers.1.weight"].T.contiguous()
    ),
    "cast to float64": lambda t: t.update({k: v.double() for k, v in t.items()}),
    "scaled weights": lambda t: t.__setitem__("meta.out.weight", t["meta.out.weight"] * 1.5),
}


@pytest.mark.parametrize("case", sorted(EDITS))
def test_an_edited_checkpoint_is_refused_as_edited(tmp_path, case):
    path = _saved(tmp_path / "m.safetensors")
    header, tensors = _read(path)
    edit = EDITS[case]
    if isinstance(edit, tuple):
        header["config"][edit[0]] = edit[1]
    else:
        edit(tensors)
    _rewrite(path, header, tensors)
    with pytest.raises(ValueError, match="edited or corrupted") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)
    with pytest.raises(ValueError, match="edited or corrupted"):
        MemoryOptimizer(torch.nn.Linear(3, 2).parameters(), "learned", checkpoint=path)


def test_edited_training_state_tensors_are_refused(tmp_path):
    extra = {"rng.tasks": torch.arange(8, dtype=torch.uint8), "optim.0.exp_avg": torch.ones(3)}
    path = _saved(tmp_path / "t.safetensors", extra=extra)
    load_checkpoint(path)  # as saved: reads
    header, tensors = _read(path)
    tensors["rng.tasks"] = torch.zeros(8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="edited or corrupted.*extra_sha256"):
        load_checkpoint(_rewrite(path, header, tensors))


@pytest.mark.parametrize("drop", ["network_sha256", "extra_sha256"])
def test_a_version_2_header_without_its_digests_is_refused(tmp_path, drop):
    path = _saved(tmp_path / "m.safetensors")
    header, tensors = _read(path)
    del header[drop]
    with pytest.raises(ValueError, match=f"lacks \\['{drop}'\\]"):
        load_checkpoint(_rewrite(path, header, tensors))


def test_a_version_2_config_missing_a_field_is_refused_not_defaulted(tmp_path):
    path = _saved(tmp_path / "m.safetensors")
    header, tensors = _read(path)
    del header["config"]["warmup"]
    # even with the digest recomputed for the defaulted config, the missing field is refused
    defaulted = LearnedConfig.from_dict(header["config"])
    from assocmem.meta.checkpoint import network_digest

    meta = {k[len("meta.") :]: v for k, v in tensors.items()}
    header["network_sha256"] = network_digest(meta, defaulted)
    with pytest.raises(ValueError, match=r"lacks \['warmup'\]"):
        load_checkpoint(_rewrite(path, header, tensors))


def test_a_version_1_checkpoint_loads_with_a_warning_and_resaves_as_version_2(tmp_path):
    path = _saved(tmp_path / "m.safetensors")
    header, tensors = _read(path)
    header = {k: v for k, v in header.items() if not k.endswith("_sha256")}
    header["version"] = 1
    del header["config"]["warmup"]  # version 1 files before warmup existed: read as 0
    _rewrite(path, header, tensors)
    with pytest.warns(UnverifiedCheckpointWarning, match="version-1"):
        ckpt = load_checkpoint(path)
    assert ckpt.config.warmup == 0.0
    save_checkpoint(path, ckpt.meta_params, ckpt.config, info=ckpt.info)
    assert _read(path)[0]["version"] == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_checkpoint(path)
    # a version-1 header naming a digest was edited (no version-1 writer made one)
    header["network_sha256"] = "0" * 64
    with pytest.raises(ValueError, match="version-1 header names"):
        load_checkpoint(_rewrite(path, header, tensors))


def test_the_shipped_checkpoint_is_version_2_with_its_digests_and_unchanged_tensors():
    header, _ = _read(DEFAULT_CHECKPOINT)
    assert header["version"] == 2
    assert header["network_sha256"] == SHIPPED_NETWORK_SHA256
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # verified: no UnverifiedCheckpointWarning
        assert load_checkpoint().network_sha256 == SHIPPED_NETWORK_SHA256
    sidecar = json.loads(DEFAULT_CHECKPOINT.with_suffix(".json").read_text())
    assert sidecar["config"] == header["config"]
    assert {k: v for k, v in sidecar.items() if k != "config"} == header["info"]


# --- the optimizer state and its memory file -------------------------------------------------


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(3, 2)


def _train(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int) -> None:
    for _ in range(steps):
        opt.zero_grad()
        model(torch.ones(4, 3)).square().sum().backward()
        opt.step()


def _trained_and_saved(path: Path) -> tuple[dict, dict, list[torch.Tensor]]:
    """Two learned steps, the model's and optimizer's state dicts then, and the weights two
    steps later (what a resume from those states must reach)."""
    model = _model()
    opt = MemoryOptimizer(model.parameters(), "learned", checkpoint=str(path))
    _train(model, opt, 2)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    _train(model, opt, 2)
    return saved_model, saved_opt, [p.detach().clone() for p in model.parameters()]


def test_a_state_dict_does_not_resume_with_a_replaced_memory_file(tmp_path):
    path = _saved(tmp_path / "m.safetensors")
    saved_model, saved_opt, expected = _trained_and_saved(path)
    original = path.read_bytes()
    _saved(path, seed=1)  # the same config, other meta-parameters
    resumed = _model()
    resumed.load_state_dict(saved_model)
    opt2 = MemoryOptimizer(resumed.parameters(), "learned", checkpoint=str(path))
    before = repr(opt2.state_dict())
    with pytest.raises(ValueError, match="not the memory this optimizer state was saved with"):
        opt2.load_state_dict(saved_opt)
    assert repr(opt2.state_dict()) == before  # nothing loaded
    path.write_bytes(original)  # the memory it was saved with: resumes bit for bit
    opt2.load_state_dict(saved_opt)
    _train(resumed, opt2, 2)
    assert all(torch.equal(a, b) for a, b in zip(expected, resumed.parameters(), strict=True))


def test_a_state_dict_saved_before_the_digest_was_recorded_still_loads(tmp_path):
    path = _saved(tmp_path / "m.safetensors")
    model = _model()
    opt = MemoryOptimizer(model.parameters(), "learned", checkpoint=str(path))
    _train(model, opt, 1)
    sd = copy.deepcopy(opt.state_dict())
    for group in sd["param_groups"]:
        del group["checkpoint_sha256"]
    opt2 = MemoryOptimizer(_model().parameters(), "learned", checkpoint=str(path))
    opt2.load_state_dict(sd)
    _train(_model(), opt2, 0)


def test_a_state_dict_resumes_with_its_memory_file_moved_elsewhere(tmp_path):
    # Shipped to another folder (machine, user), the state's path is gone: the optimizer's
    # own file with the recorded digest resumes it bit for bit; another memory is refused by
    # a ValueError that names both files (a FileNotFoundError of the old path before).
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    path = _saved(tmp_path / "a" / "m.safetensors")
    saved_model, saved_opt, expected = _trained_and_saved(path)
    moved = path.rename(tmp_path / "b" / "m.safetensors")
    other = _saved(tmp_path / "b" / "other.safetensors", seed=1)
    refused = MemoryOptimizer(_model().parameters(), "learned", checkpoint=str(other))
    before = repr(refused.state_dict())
    with pytest.raises(ValueError, match=r"does not exist here.*other\.safetensors is not"):
        refused.load_state_dict(saved_opt)
    assert repr(refused.state_dict()) == before
    resumed = _model()
    resumed.load_state_dict(saved_model)
    opt2 = MemoryOptimizer(resumed.parameters(), "learned", checkpoint=str(moved))
    opt2.load_state_dict(saved_opt)
    assert opt2.param_groups[0]["checkpoint"] == str(moved)
    _train(resumed, opt2, 2)
    assert all(torch.equal(a, b) for a, b in zip(expected, resumed.parameters(), strict=True))


def test_a_memory_file_replaced_with_its_mtime_kept_is_not_read_from_the_cache(tmp_path):
    # `cp -p` / `rsync -t` carry the old file's mtime over: the cache, keyed by mtime alone,
    # ran the old memory, and a step did not notice the file had changed
    import os

    path = _saved(tmp_path / "m.safetensors")
    stamp = path.stat().st_mtime_ns
    model = _model()
    opt = MemoryOptimizer(model.parameters(), "learned", checkpoint=str(path))
    _train(model, opt, 1)
    replacement = _saved(tmp_path / "new.safetensors", seed=1)
    os.utime(replacement, ns=(stamp, stamp))
    replacement.replace(path)
    assert path.stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="changed during training"):
        _train(model, opt, 1)


@pytest.mark.parametrize("dtype", [torch.int32, torch.complex64])
def test_save_checkpoint_refuses_what_load_checkpoint_would_refuse(tmp_path, dtype):
    path = _saved(tmp_path / "m.safetensors")
    original = path.read_bytes()
    meta = {k: v.to(dtype) for k, v in load_checkpoint(path).meta_params.items()}
    with pytest.raises(ValueError, match="must be floating point.*nothing was written"):
        save_checkpoint(path, meta, SQUARE)
    assert path.read_bytes() == original


def test_a_memory_file_replaced_during_training_is_refused_at_the_next_step(tmp_path):
    path = _saved(tmp_path / "m.safetensors")
    model = _model()
    opt = MemoryOptimizer(model.parameters(), "learned", checkpoint=str(path))
    _train(model, opt, 1)
    weights = [p.detach().clone() for p in model.parameters()]
    _saved(path, seed=1)
    with pytest.raises(ValueError, match="changed during training"):
        _train(model, opt, 1)
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True))


# --- meta-training ---------------------------------------------------------------------------

TINY = LearnedConfig(hidden=(4,))


def _small(**changes: Any) -> TrainConfig:
    base = {"meta_steps": 4, "unroll": 2, "horizon": 4, "tasks_per_step": 1,
            "families": ("quadratic",), "checkpoint_every": 2}  # fmt: skip
    return TrainConfig(**{**base, **changes})


def test_resuming_a_longer_run_with_fewer_meta_steps_is_refused(tmp_path):
    path = tmp_path / "run.safetensors"
    meta_train(TINY, _small(meta_steps=4), checkpoint=path, progress=False)
    with pytest.raises(CheckpointRefused, match="already trained for 4 meta-steps, more than"):
        meta_train(TINY, _small(meta_steps=2), checkpoint=path, progress=False)
    assert meta_train(TINY, _small(meta_steps=4), checkpoint=path, progress=False).meta_step == 4


def test_train_config_from_dict_refuses_unknown_fields():
    d = _small().to_dict()
    assert TrainConfig.from_dict(d) == _small()
    with pytest.raises(ValueError, match="second_ordre"):
        TrainConfig.from_dict({**d, "second_ordre": True})
    with pytest.raises(ValueError, match="mapping"):
        TrainConfig.from_dict([("seed", 1)])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_drawing_a_task_leaves_the_global_rng_alone(family):
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    task = sample_task(family, 1)
    task.loss(task.params, task.batch())
    assert torch.equal(torch.rand(3), expected)


def test_meta_training_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    train = _small(meta_steps=2, families=("digits_mlp", "digits_conv", "pointer_attention"))
    meta_train(TINY, train, progress=False)
    assert torch.equal(torch.rand(3), expected)
