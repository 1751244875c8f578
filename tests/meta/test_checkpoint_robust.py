"""Tampered and malformed learned-memory checkpoints: each is refused at load with an error that
names the file and the problem; none loads to train silently wrong, none hangs."""

from __future__ import annotations

import contextlib
import json
import math
import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from assocmem import MemoryOptimizer
from assocmem.meta import LearnedConfig, init_meta_params, load_checkpoint, save_checkpoint
from assocmem.meta.checkpoint import FORMAT, FORMAT_VERSION, network_digest, weights_digest

TINY = LearnedConfig(hidden=(8,))


@contextlib.contextmanager
def unblocking(path: Path, seconds: int):
    """If ``path`` is a FIFO, a helper process opens it (read-write, which never blocks) after
    ``seconds`` and closes it, so a reader still blocked on it sees end-of-file: a hang becomes a
    test failure. In-process signals and threads cannot do this, as safetensors' native open
    holds the GIL while it blocks."""
    if not stat.S_ISFIFO(os.lstat(path).st_mode):
        yield
        return
    helper = subprocess.Popen(["sh", "-c", f'sleep {seconds} && : <> "$1"', "sh", str(path)])
    try:
        yield
    finally:
        rescued = helper.poll() is not None
        helper.kill()
        helper.wait()
        assert not rescued, f"reading {path} blocked for {seconds} s"


def _tensors() -> dict[str, torch.Tensor]:
    meta = init_meta_params(TINY, torch.Generator().manual_seed(0))
    return {f"meta.{k}": v.contiguous() for k, v in meta.items()}


def _header(**config_changes: Any) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "config": {**TINY.to_dict(), **config_changes},
        "info": {},
    }


def _with_digests(tensors: dict[str, torch.Tensor], header: Any) -> Any:
    """``header`` with the digests of ``tensors`` and its config, where it is a version-2 header
    whose config can be read: a tamperer who recomputes them, so that what is tested is the
    structural check itself (the digests are tested in test_meta_integrity.py)."""
    if not isinstance(header, dict) or header.get("version") != 2 or "network_sha256" in header:
        return header
    try:
        config = LearnedConfig.from_dict(header["config"])
    except (KeyError, TypeError, ValueError):
        return header
    meta = {k[len("meta.") :]: v for k, v in tensors.items() if k.startswith("meta.")}
    extra = {k: v for k, v in tensors.items() if not k.startswith("meta.")}
    return {
        **header,
        "network_sha256": network_digest(meta, config),
        "extra_sha256": weights_digest(extra),
    }


def _write(path: Path, tensors: dict[str, torch.Tensor], header: Any | str) -> Path:
    """Write a file as a tamperer would: straight through safetensors, no validation (but with
    the digests recomputed, :func:`_with_digests`)."""
    header = _with_digests(tensors, header)
    text = header if isinstance(header, str) else json.dumps(header)
    save_file(tensors, str(path), metadata={"assocmem": text})
    return path


def _config_case(**changes: Any) -> Callable[[Path], Path]:
    return lambda p: _write(p, _tensors(), _header(**changes))


def _tensor_case(change: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[Path], Path]:
    def make(p: Path) -> Path:
        tensors = _tensors()
        change(tensors)
        return _write(p, tensors, _header())

    return make


def _set(name: str, value: torch.Tensor) -> Callable[[dict[str, torch.Tensor]], None]:
    return lambda t: t.__setitem__(name, value)


def _nan_in(name: str) -> Callable[[dict[str, torch.Tensor]], None]:
    def change(t: dict[str, torch.Tensor]) -> None:
        t[name] = t[name].clone()
        t[name].view(-1)[0] = math.nan

    return change


def _without_config(p: Path) -> Path:
    header = _header()
    del header["config"]
    return _write(p, _tensors(), header)


def _fifo(p: Path) -> Path:
    os.mkfifo(p)
    return p


def _directory(p: Path) -> Path:
    p.mkdir()
    return p


def _truncated(p: Path) -> Path:
    _write(p, _tensors(), _header())
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 100])
    return p


BAD: dict[str, tuple[Callable[[Path], Path], str]] = {
    # the config: each of these used to load, then train wrong or divide by zero
    "nan direction_bound": (_config_case(direction_bound=math.nan), "direction_bound"),
    "nan log_scale_bound": (_config_case(log_scale_bound=math.nan), "log_scale_bound"),
    "inf exp_mult": (_config_case(exp_mult=math.inf), "exp_mult"),
    "zero time scales": (_config_case(time_scales=[0, 0, 0]), "time_scales"),
    "negative time scale": (_config_case(time_scales=[10, -1, 100]), "time_scales"),
    "zero direction_bound": (_config_case(direction_bound=0), "direction_bound"),
    "zero log_scale_bound": (_config_case(log_scale_bound=0.0), "log_scale_bound"),
    "zero eps": (_config_case(eps=0.0), "eps"),
    "negative lr": (_config_case(lr=-1e-3), "lr"),
    "string lr": (_config_case(lr="abc"), "lr"),
    "boolean lr": (_config_case(lr=True), "lr"),
    "zero feature_clip": (_config_case(feature_clip=0.0), "feature_clip"),
    # finite but beyond float32, the dtype the memory runs in: every step failed unnamed
    "huge feature_clip": (_config_case(feature_clip=1e300), "feature_clip must fit float32"),
    "huge eps": (_config_case(eps=1e300), "eps must fit float32"),
    "eps squared overflows": (_config_case(eps=1e20), "eps must be <="),
    # eps^2 underflowed to 0 in float32: a coordinate without gradients had NaN features
    "eps squared underflows": (_config_case(eps=1e-25), "eps must be >="),
    "largest update overflows": (_config_case(log_scale_bound=100.0), "largest update"),
    "version true": (lambda p: _write(p, _tensors(), {**_header(), "version": True}), "version"),
    "nan beta": (_config_case(betas=[0.5, math.nan, 0.99]), "betas"),
    "string betas": (_config_case(betas="abc"), "betas"),
    "fractional width": (_config_case(hidden=[8.5]), "hidden"),
    "float init_skip": (_config_case(init_skip=2.5), "init_skip"),
    "unknown field": (_config_case(bogus=1), "bogus"),
    "config is a list": (lambda p: _write(p, _tensors(), {**_header(), "config": [1]}), "mapping"),
    "config is null": (lambda p: _write(p, _tensors(), {**_header(), "config": None}), "mapping"),
    # the header
    "missing config": (_without_config, "no 'config'"),
    "malformed json": (lambda p: _write(p, _tensors(), '{"format": '), "malformed"),
    "header is a list": (lambda p: _write(p, _tensors(), "[1, 2]"), "not a dict"),
    "info is a list": (lambda p: _write(p, _tensors(), {**_header(), "info": []}), "'info'"),
    "no header": (lambda p: save_file(_tensors(), str(p)) or p, "no header"),
    "other format": (lambda p: _write(p, _tensors(), {**_header(), "format": "x"}), "format"),
    # the tensors
    "nan weight": (_tensor_case(_nan_in("meta.out.weight")), "non-finite"),
    "inf bias": (
        _tensor_case(lambda t: t.__setitem__("meta.out.bias", torch.full((2,), math.inf))),
        "non-finite",
    ),
    "integer weight": (
        _tensor_case(lambda t: t.__setitem__("meta.out.bias", torch.zeros(2, dtype=torch.int64))),
        "floating point",
    ),
    "wrong shape": (_tensor_case(_set("meta.out.bias", torch.zeros(3))), "shape"),
    "extra meta tensor": (_tensor_case(_set("meta.junk", torch.zeros(1))), "names"),
    "missing meta tensor": (_tensor_case(lambda t: t.pop("meta.out.bias")), "names"),
    "stray tensor": (_tensor_case(_set("junk", torch.zeros(1))), "unexpected tensors"),
    # the file
    "directory": (_directory, "not a regular file"),
    "fifo": (_fifo, "not a regular file"),
    "garbage bytes": (lambda p: p.write_bytes(b"not safetensors at all") and p, "safetensors"),
    "empty file": (lambda p: p.write_bytes(b"") or p, "safetensors"),
    "truncated": (_truncated, "safetensors"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_checkpoint_is_refused_with_a_clear_error(tmp_path, case):
    make, expected = BAD[case]
    path = make(tmp_path / "ckpt.safetensors")
    with unblocking(path, 10), pytest.raises(ValueError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert str(path) in message and expected in message, message
    assert type(err.value) is ValueError  # not a JSONDecodeError or other raw subclass


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="learned-memory checkpoint .*missing.safetensors"):
        load_checkpoint(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("case", ["nan direction_bound", "zero time scales", "nan weight"])
def test_the_learned_preset_refuses_a_tampered_checkpoint_at_construction(tmp_path, case):
    path = BAD[case][0](tmp_path / "ckpt.safetensors")
    model = torch.nn.Linear(3, 2)
    with pytest.raises(ValueError, match=BAD[case][1]):
        MemoryOptimizer(model.parameters(), memory="learned", checkpoint=str(path))


def test_a_valid_checkpoint_still_round_trips(tmp_path):
    path = tmp_path / "ok.safetensors"
    meta = init_meta_params(TINY, torch.Generator().manual_seed(0))
    save_checkpoint(path, meta, TINY, extra={"rng.cpu": torch.zeros(4, dtype=torch.uint8)})
    ckpt = load_checkpoint(path, TINY)
    assert ckpt.config == TINY and set(ckpt.extra) == {"rng.cpu"}
    assert all(torch.equal(ckpt.meta_params[k], v) for k, v in meta.items())


@pytest.mark.parametrize(
    "changes",
    [
        {"time_scales": (0.0,)},
        {"direction_bound": math.nan},
        {"log_scale_bound": -1.0},
        {"lr": math.inf},
        {"hidden": (8.0,)},
        {"beta2": math.nan},
    ],
)
def test_learned_config_refuses_values_that_break_the_network(changes):
    with pytest.raises(ValueError, match=next(iter(changes))):
        LearnedConfig(**changes)


def test_loading_a_checkpoint_leaves_the_global_rng_alone():
    """Shape checks build a reference network from a private generator, not torch's global
    one: a seeded run that loads a checkpoint draws the same numbers as one that does not."""
    from assocmem.meta.checkpoint import load_checkpoint
    from assocmem.meta.preset import DEFAULT_CHECKPOINT

    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    load_checkpoint(DEFAULT_CHECKPOINT)
    assert torch.equal(torch.rand(3), expected)


def test_a_missing_learned_checkpoint_is_named(tmp_path):
    from assocmem import MemoryOptimizer

    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        MemoryOptimizer([torch.nn.Parameter(torch.ones(2))], "learned", checkpoint=str(missing))


def test_a_header_asking_for_a_huge_network_is_refused_without_building_it(tmp_path):
    # hidden sizes of 10^6 would be a 4 TB first matrix if built to check the tensors' shapes;
    # they are checked on the meta device, so the refusal is the shape mismatch, at once
    path = _write(tmp_path / "huge.safetensors", _tensors(), _header(hidden=[10**6, 10**6]))
    with pytest.raises(ValueError, match="shape|names"):
        load_checkpoint(path)


def test_a_memory_finite_only_in_float64_is_refused_where_it_runs_in_float32(tmp_path):
    # stored as float64 with a bias of 1e39: finite in the file, inf once cast to float32,
    # where every coordinate then stepped by the bound and nothing was counted
    tensors = {k: v.double() for k, v in _tensors().items()}
    tensors["meta.out.bias"][0] = 1e39
    path = _write(tmp_path / "f64.safetensors", tensors, _header())
    load_checkpoint(path)  # the file itself is finite
    with pytest.raises(ValueError, match=r"not finite in torch.float32"):
        MemoryOptimizer(torch.nn.Linear(3, 2).parameters(), "learned", checkpoint=path)


def test_a_step_that_cannot_read_its_memory_changes_nothing(tmp_path):
    # the file is read at every step; once it is gone (or replaced by a memory of other
    # shapes) the step must raise before counting or decaying, so a retry resumes exactly
    path = tmp_path / "mem.safetensors"
    save_checkpoint(path, init_meta_params(TINY, torch.Generator().manual_seed(0)), TINY)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = MemoryOptimizer(model.parameters(), "learned", checkpoint=path, weight_decay=0.1)

    def step() -> None:
        opt.zero_grad()
        model(torch.ones(4, 3)).square().sum().backward()
        opt.step()

    step()
    before = ([p.clone() for p in model.parameters()], repr(opt.state_dict()))
    other = LearnedConfig(hidden=(8,), betas=(0.5, 0.9))
    for replace in (path.unlink, lambda: save_checkpoint(
        path, init_meta_params(other, torch.Generator().manual_seed(0)), other
    )):  # fmt: skip
        replace()
        with pytest.raises((FileNotFoundError, ValueError), match="does not exist|changed"):
            step()
        assert all(torch.equal(a, b) for a, b in zip(before[0], model.parameters(), strict=True))
        assert repr(opt.state_dict()) == before[1]
    save_checkpoint(path, init_meta_params(TINY, torch.Generator().manual_seed(0)), TINY)
    step()  # restored: steps on from where it was
    assert float(opt.state[model.weight]["step"]) == 2.0


def test_a_path_object_is_kept_as_a_string_so_the_state_dict_loads_weights_only(tmp_path):
    from assocmem.meta.preset import DEFAULT_CHECKPOINT

    model = torch.nn.Linear(3, 2)
    opt = MemoryOptimizer(model.parameters(), "learned", checkpoint=Path(DEFAULT_CHECKPOINT))
    opt.add_param_group(
        {"params": [torch.nn.Parameter(torch.ones(2))], "checkpoint": Path(DEFAULT_CHECKPOINT)}
    )
    assert all(isinstance(g["checkpoint"], str) for g in opt.param_groups)
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    torch.load(tmp_path / "opt.pt")  # weights_only=True: a PosixPath would be refused


def test_export_refuses_a_json_path(tmp_path):
    from assocmem.meta.train import export

    meta = init_meta_params(TINY, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="its own sidecar"):
        export(tmp_path / "memory.json", meta, TINY, info={})
    assert not list(tmp_path.iterdir())


def test_an_export_never_takes_over_the_sidecar_of_another_beside_it(tmp_path):
    """``mem`` and ``mem.safetensors`` share ``mem.json``: the second export replaced the
    first's record."""
    from assocmem.meta.train import export

    meta = init_meta_params(TINY, torch.Generator().manual_seed(0))
    export(tmp_path / "mem.safetensors", meta, TINY, info={"seed": 0})
    with pytest.raises(ValueError, match=r"mem\.safetensors beside it has the same sidecar"):
        export(tmp_path / "mem", meta, TINY, info={"seed": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mem.json", "mem.safetensors"]
    assert json.loads((tmp_path / "mem.json").read_text())["seed"] == 0


def test_an_export_and_its_sidecar_are_written_as_a_pair(tmp_path):
    """The memory was written, then its sidecar (a folder at its path here) failed: a new
    memory beside an old or missing record."""
    from assocmem.meta.train import export

    meta = init_meta_params(TINY, torch.Generator().manual_seed(0))
    (tmp_path / "mem.json").mkdir()
    with pytest.raises(IsADirectoryError):
        export(tmp_path / "mem.safetensors", meta, TINY, info={})
    assert [p.name for p in tmp_path.iterdir()] == ["mem.json"]  # no memory written


def test_a_non_finite_info_value_is_null_in_the_checkpoint_header(tmp_path):
    """A diverged loss in ``info`` was a NaN token in the header, which RFC 8259 readers
    refuse (the sidecar already wrote null)."""
    meta = init_meta_params(TINY, torch.Generator().manual_seed(0))
    save_checkpoint(tmp_path / "m.safetensors", meta, TINY, info={"loss": float("nan")})
    from safetensors import safe_open

    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as f:
        text = f.metadata()["assocmem"]
    assert "NaN" not in text and json.loads(text)["info"] == {"loss": None}
    assert load_checkpoint(tmp_path / "m.safetensors").info["loss"] is None


def test_exports_named_with_dots_keep_sidecars_of_their_own(tmp_path):
    """``mem_v1.0`` and ``mem_v1.1`` both wrote ``mem_v1.json`` (the last suffix replaced):
    the second export's record replaced the first's. Each name now keeps its own."""
    from assocmem.meta.train import export

    for seed, name in ((0, "mem_v1.0"), (1, "mem_v1.1")):
        meta = init_meta_params(TINY, torch.Generator().manual_seed(seed))
        export(tmp_path / name, meta, TINY, info={"seed": seed})
    export(tmp_path / "mem.safetensors", meta, TINY, info={"seed": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "mem.json", "mem.safetensors", "mem_v1.0", "mem_v1.0.json", "mem_v1.1", "mem_v1.1.json"
    ]  # fmt: skip
    assert json.loads((tmp_path / "mem_v1.0.json").read_text())["seed"] == 0
