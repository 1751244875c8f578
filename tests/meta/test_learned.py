"""The learned memory: meta-gradients, checkpoints, the preset's contract, meta-training."""

from __future__ import annotations

import copy
import json
import math
import sys
import warnings

import pytest
import torch
from safetensors.torch import save_file

from assocmem import MemoryOptimizer, get_preset
from assocmem.meta import (
    DEFAULT_CHECKPOINT,
    LearnedConfig,
    init_memory,
    init_meta_params,
    load_checkpoint,
    save_checkpoint,
)
from assocmem.meta.network import (
    ACCELERATOR_CHUNK_ROWS,
    CHUNK_ROWS,
    chunk_rows,
    learned_update,
    learned_update_chunked,
)
from assocmem.meta.tasks import HELD_OUT_FAMILIES, TRAIN_FAMILIES, Task, sample_task
from assocmem.meta.train import CheckpointRefused, TrainConfig, meta_train, unroll

TINY = LearnedConfig(hidden=(8,))


def _tiny_quadratic(dtype: torch.dtype) -> Task:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 5, generator=g, dtype=dtype)
    hessian = a @ a.T / 5 + 0.1 * torch.eye(5, dtype=dtype)
    noise = [0.1 * torch.randn(5, generator=g, dtype=dtype) for _ in range(8)]
    counter = iter(range(10**6))

    def loss(params, xi):
        r = params["w"] - xi
        return 0.5 * r @ hessian @ r + 0.1 * params["b"].square().sum()

    params = {
        "w": torch.randn(5, generator=g, dtype=dtype),
        "b": torch.randn(2, 3, generator=g, dtype=dtype),
    }
    # a fixed batch sequence, so every unroll sees the same data (needed by finite differences)
    return Task("tiny", params, loss, lambda: noise[next(counter) % 8], g)


def _meta_loss(meta, config, second_order=True):
    task = _tiny_quadratic(torch.float64)
    memory = {k: init_memory(v, config) for k, v in task.params.items()}
    loss, *_ = unroll(meta, config, task, task.params, memory, 0, 4, second_order=second_order)
    return loss


def test_meta_gradient_matches_finite_differences():
    config = LearnedConfig(hidden=(8,), lr=0.05)
    g = torch.Generator().manual_seed(1)
    meta = init_meta_params(config, g, dtype=torch.float64, out_scale=1.0)
    meta = {k: v.requires_grad_() for k, v in meta.items()}
    grads = torch.autograd.grad(_meta_loss(meta, config), list(meta.values()))
    direction = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in meta.items()}
    analytic = sum((gr * direction[k]).sum() for k, gr in zip(meta, grads, strict=True))
    h = 1e-6
    plus = {k: (v + h * direction[k]).detach() for k, v in meta.items()}
    minus = {k: (v - h * direction[k]).detach() for k, v in meta.items()}
    numeric = (_meta_loss(plus, config) - _meta_loss(minus, config)).detach() / (2 * h)
    assert float(analytic) == pytest.approx(float(numeric), rel=1e-5, abs=1e-9)


def test_checkpoint_round_trip_and_refusals(tmp_path):
    meta = init_meta_params(TINY, torch.Generator().manual_seed(0))
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, meta, TINY, info={"note": "x"})
    ckpt = load_checkpoint(path, TINY)
    assert ckpt.config == TINY and ckpt.info == {"note": "x"}
    assert set(ckpt.meta_params) == set(meta)
    assert all(torch.equal(ckpt.meta_params[k], meta[k]) for k in meta)
    with pytest.raises(ValueError, match="does not match the network"):
        load_checkpoint(path, LearnedConfig(hidden=(16,)))
    with pytest.raises(ValueError, match="do not match the config"):
        save_checkpoint(path, init_meta_params(LearnedConfig()), TINY)
    header = {"format": "assocmem.learned_memory", "version": 99, "config": TINY.to_dict()}
    tensors = {f"meta.{k}": v for k, v in meta.items()}
    save_file(tensors, str(tmp_path / "v99.safetensors"), {"assocmem": json.dumps(header)})
    with pytest.raises(ValueError, match="version"):
        load_checkpoint(tmp_path / "v99.safetensors")
    save_file(tensors, str(tmp_path / "bare.safetensors"))
    with pytest.raises(ValueError, match="not an assocmem"):
        load_checkpoint(tmp_path / "bare.safetensors")


def test_held_out_family_is_not_trained_on():
    assert not set(HELD_OUT_FAMILIES) & set(TRAIN_FAMILIES)
    assert set(TrainConfig().families) == set(TRAIN_FAMILIES)


def test_shipped_checkpoint_trains_a_held_out_problem():
    assert DEFAULT_CHECKPOINT.exists()
    task = sample_task("breast_cancer_mlp", 7)
    params = {k: v.clone().requires_grad_() for k, v in task.params.items()}
    opt = MemoryOptimizer(params.values(), memory="learned")
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = task.loss(params, task.batch())
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.5 * losses[0]
    assert all(bool(p.isfinite().all()) for p in params.values())


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))


def _train(model, opt, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 6, generator=g)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()


def test_reference_equals_foreach():
    a, b = _model(), _model()
    opt_a = MemoryOptimizer(a.parameters(), memory="learned", lr=3e-3, foreach=False)
    opt_b = MemoryOptimizer(b.parameters(), memory="learned", lr=3e-3, foreach=True)
    for step in range(6):
        _train(a, opt_a, 1, seed=step)
        _train(b, opt_b, 1, seed=step)
        for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
            torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("foreach", [False, True])
def test_state_dict_resume_is_bit_exact(foreach):
    model = _model()
    opt = MemoryOptimizer(model.parameters(), memory="learned", foreach=foreach, weight_decay=0.1)
    _train(model, opt, 3)
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(opt.state_dict())
    _train(model, opt, 3, seed=1)
    resumed = _model(seed=5)
    resumed.load_state_dict(saved_model)
    opt2 = MemoryOptimizer(resumed.parameters(), memory="learned", foreach=foreach)
    opt2.load_state_dict(saved_opt)
    _train(resumed, opt2, 3, seed=1)
    for p, q in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)


def test_preset_hyper_validation_and_custom_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="checkpoint"):
        MemoryOptimizer(_model().parameters(), memory="learned", checkpoint=3)
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, init_meta_params(TINY, torch.Generator().manual_seed(0)), TINY)
    model = _model()
    opt = MemoryOptimizer(model.parameters(), memory="learned", checkpoint=str(path))
    _train(model, opt, 2)
    assert opt.state[next(model.parameters())]["momenta"].shape[0] == len(TINY.betas)


def test_building_the_preset_leaves_the_global_rng_alone(monkeypatch):
    # The first optimizer in a process loads the checkpoint; that drew from torch's global
    # RNG, so two identically seeded runs differed by whether one had built it before.
    learned = sys.modules[type(get_preset("learned")).__module__]
    monkeypatch.setattr(learned, "_CACHE", {})  # as in a fresh process
    params = list(_model().parameters())
    torch.manual_seed(0)
    before = torch.get_rng_state()
    MemoryOptimizer(params, memory="learned")
    assert learned._CACHE  # the checkpoint was loaded here
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("foreach", [False, True])
def test_zero_gradient_moves_only_what_the_memory_holds(foreach):
    # Zero gradients into an empty memory move nothing (torch.optim's rule; it drifted by
    # ~0.3 lr per step); a coordinate that saw a gradient before keeps moving on its
    # momentum, as with Adam.
    w = torch.nn.Parameter(torch.randn(4, 5, generator=torch.Generator().manual_seed(0)))
    opt = MemoryOptimizer([w], memory="learned", foreach=foreach)
    start = w.detach().clone()
    for _ in range(3):
        w.grad = torch.zeros_like(w)
        opt.step()
    assert torch.equal(w, start)
    w.grad = torch.zeros_like(w)
    w.grad[0] = 1.0  # row 0 gets one gradient, then zeros again
    opt.step()
    moved = w.detach().clone()
    w.grad = torch.zeros_like(w)
    opt.step()
    assert torch.equal(w[1:], start[1:])
    assert (w[0] != moved[0]).all()


@pytest.mark.parametrize("foreach", [False, True])
def test_zeroed_nonfinite_updates_are_counted(foreach):
    # A finite gradient of 1e30 overflows g^2 in the fp32 second moment: from then on the
    # features hold NaN and the network's u is zeroed. The step is not lost silently: every
    # stalled coordinate is counted, once per step, in the parameter's state.
    w = torch.nn.Parameter(torch.ones(3, 4))
    healthy = torch.nn.Parameter(torch.ones(5))
    opt = MemoryOptimizer([w, healthy], memory="learned", foreach=foreach)
    for step, g in enumerate([1e30, 1.0, 1.0], start=1):
        w.grad = torch.full_like(w, g)
        healthy.grad = torch.ones_like(healthy)
        opt.step()
        assert int(opt.state[w]["nonfinite_updates"]) == step * w.numel()
        assert int(opt.state[healthy]["nonfinite_updates"]) == 0
    assert torch.equal(w, torch.ones_like(w)) and (healthy < 1).all()


def test_nonfinite_counter_is_validated_on_load():
    w = torch.nn.Parameter(torch.ones(3))
    opt = MemoryOptimizer([w], memory="learned")
    w.grad = torch.ones_like(w)
    opt.step()
    for bad, match in [(torch.tensor(-1), "count"), (torch.tensor(1.5), "integer tensor")]:
        sd = copy.deepcopy(opt.state_dict())
        sd["state"][0]["nonfinite_updates"] = bad
        before = copy.deepcopy(opt.state_dict())
        with pytest.raises(ValueError, match=match):
            opt.load_state_dict(sd)
        assert torch.equal(opt.state[w]["momenta"], before["state"][0]["momenta"])


def test_untrained_memory_steps_like_adam(tmp_path):
    """Zero output layer + Adam skip: the step is D*tanh(adam_dir / D), about Adam's."""
    config = LearnedConfig()
    meta = init_meta_params(config, torch.Generator().manual_seed(0), out_scale=0.0)
    a, b = _model(), _model()
    path = tmp_path / "untrained.safetensors"
    save_checkpoint(path, meta, config)
    opt_a = MemoryOptimizer(a.parameters(), memory="learned", lr=1e-2, checkpoint=str(path))
    opt_b = torch.optim.Adam(b.parameters(), lr=1e-2, betas=(0.9, 0.999), eps=1e-12)
    _train(a, opt_a, 5)
    _train(b, opt_b, 5)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=5e-4)


def test_meta_train_smoke_and_resume(tmp_path):
    train = TrainConfig(
        meta_steps=4,
        unroll=2,
        horizon=4,
        tasks_per_step=1,
        families=("quadratic", "logistic"),
        checkpoint_every=2,
        second_order=True,
    )
    full = meta_train(TINY, train, checkpoint=tmp_path / "a.safetensors", progress=False)
    assert full.meta_step == 4 and len(full.history) == 4
    half = TrainConfig(**{**train.to_dict(), "families": train.families, "meta_steps": 2})
    meta_train(TINY, half, checkpoint=tmp_path / "b.safetensors", progress=False)
    resumed = meta_train(TINY, train, checkpoint=tmp_path / "b.safetensors", progress=False)
    assert resumed.history == full.history
    for k, v in full.meta_params.items():
        assert torch.equal(v, resumed.meta_params[k]), k
    other = TrainConfig(**{**train.to_dict(), "families": train.families, "meta_lr": 1.0})
    # its own type (a ValueError): the command reports it by type, not by its message's words
    with pytest.raises(CheckpointRefused, match="cannot resume"):
        meta_train(TINY, other, checkpoint=tmp_path / "b.safetensors", progress=False)


def _small(**changes):
    base = {"meta_steps": 4, "unroll": 2, "horizon": 4, "tasks_per_step": 1,
            "families": ("quadratic",), "checkpoint_every": 2}  # fmt: skip
    return TrainConfig(**{**base, **changes})


def test_a_checkpoint_that_cannot_be_resumed_is_refused_with_the_reason(tmp_path):
    from assocmem.meta.checkpoint import load_checkpoint, save_checkpoint
    from assocmem.meta.train import export
    from assocmem.storage import strict_json

    # a file written inside a task (2 meta-steps per task; made by editing a boundary's header,
    # as the run itself now keeps the last boundary): refused
    two = meta_train(TINY, _small(meta_steps=2), checkpoint=tmp_path / "m.safetensors",
                     progress=False)  # fmt: skip
    ckpt = load_checkpoint(tmp_path / "m.safetensors")
    info = {**ckpt.info, "meta_step": 3, "history": [*ckpt.info["history"], 0.0]}
    save_checkpoint(tmp_path / "m.safetensors", two.meta_params, TINY, info=info, extra=ckpt.extra)
    with pytest.raises(CheckpointRefused, match="inside a task"):
        meta_train(TINY, _small(meta_steps=5), checkpoint=tmp_path / "m.safetensors",
                   progress=False)  # fmt: skip
    # a meta-parameters-only file (export) holds no training state
    done = meta_train(TINY, _small(), checkpoint=tmp_path / "a.safetensors", progress=False)
    info = {"command": "test", "loss": math.inf}
    export(tmp_path / "e.safetensors", done.meta_params, TINY, info)
    # the sidecar is strict JSON: a diverged loss is null, not an Infinity token jq refuses
    sidecar = strict_json.loads((tmp_path / "e.json").read_text())
    assert sidecar["command"] == "test" and sidecar["loss"] is None
    with pytest.raises(CheckpointRefused, match="no training state"):
        meta_train(TINY, _small(meta_steps=6), checkpoint=tmp_path / "e.safetensors",
                   progress=False)  # fmt: skip
    # a corrupt optimizer state: refused before anything is replaced
    ckpt = load_checkpoint(tmp_path / "a.safetensors")
    for name, bad in (("optim.0.exp_avg", torch.zeros(3)), ("optim.0.exp_avg", None)):
        extra = dict(ckpt.extra)
        extra[name] = bad if bad is not None else torch.full_like(extra[name], float("nan"))
        path = tmp_path / "t.safetensors"
        save_checkpoint(path, ckpt.meta_params, TINY, info=ckpt.info, extra=extra)
        with pytest.raises(CheckpointRefused, match="cannot be resumed"):
            meta_train(TINY, _small(meta_steps=6), checkpoint=path, progress=False)


def test_a_run_that_ends_inside_a_task_keeps_its_last_boundary_resumable(tmp_path):
    # it wrote its final (unresumable) state over the last resumable one, so the next run of
    # the same command could only start again (an audit)
    path = tmp_path / "m.safetensors"
    with pytest.warns(UserWarning, match="keeps meta-step 2, the last task boundary"):
        three = meta_train(TINY, _small(meta_steps=3), checkpoint=path, progress=False)
    assert three.meta_step == 3 and len(three.history) == 3
    from assocmem.meta.checkpoint import load_checkpoint

    assert load_checkpoint(path).info["meta_step"] == 2
    # the same command again, and a longer run, resume from it and match uninterrupted runs
    for steps in (3, 6):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            resumed = meta_train(TINY, _small(meta_steps=steps), checkpoint=path, progress=False)
            whole = meta_train(TINY, _small(meta_steps=steps), progress=False)
        assert resumed.history == whole.history
        for k, v in whole.meta_params.items():
            assert torch.equal(v, resumed.meta_params[k]), k
    assert load_checkpoint(path).info["meta_step"] == 6
    # shorter than one task: the run's start (meta-step 0) is kept
    with pytest.warns(UserWarning, match="keeps meta-step 0"):
        meta_train(TINY, _small(meta_steps=1), checkpoint=tmp_path / "one.safetensors",
                   progress=False)  # fmt: skip
    assert load_checkpoint(tmp_path / "one.safetensors").info["meta_step"] == 0


def _edited(tmp_path, ckpt, info=None, extra=None):
    from assocmem.meta.checkpoint import save_checkpoint

    path = tmp_path / "edited.safetensors"  # re-saved: every digest matches the edit
    save_checkpoint(path, ckpt.meta_params, TINY, info=info or ckpt.info,
                    extra=ckpt.extra if extra is None else extra)  # fmt: skip
    return path


def test_a_training_state_whose_counters_disagree_is_refused(tmp_path):
    """The header's meta_step and skipped list are checked against Adam's step counts and the
    tensors present: an edited meta_step resumed at that step with the Adam bias correction and
    task stream of another one, exit 0 (an audit)."""
    from assocmem.meta.checkpoint import load_checkpoint

    meta_train(TINY, _small(), checkpoint=tmp_path / "a.safetensors", progress=False)
    ckpt = load_checkpoint(tmp_path / "a.safetensors")
    info, extra = ckpt.info, dict(ckpt.extra)
    assert info["meta_step"] == 4 and not info["skipped"]
    n = len([k for k in extra if k.endswith(".step")])
    step0, moment = extra["optim.0.step"], extra["optim.0.exp_avg_sq"]
    cases = {
        "meta_step 2": ({**info, "meta_step": 2, "history": info["history"][:2]}, extra),
        "skipped [0]": ({**info, "skipped": [0]}, extra),
        "one step 2": (info, {**extra, "optim.0.step": torch.full_like(step0, 2.0)}),
        "a state missing": (info, {k: v for k, v in extra.items() if not k.startswith("optim.1.")}),
        "its step missing": (info, {k: v for k, v in extra.items() if k != "optim.0.step"}),
        "an unknown state": (info, {**extra, f"optim.{n - 1}.max_exp_avg_sq": moment.clone()}),
        "an unknown tensor": (info, {**extra, "rng.other": extra["rng.tasks"].clone()}),
        "a negative moment": (info, {**extra, "optim.0.exp_avg_sq": -moment - 1}),
    }  # fmt: skip
    for name, (bad_info, bad_extra) in cases.items():
        path = _edited(tmp_path, ckpt, bad_info, bad_extra)
        with pytest.raises(ValueError, match="edited or corrupted|unknown training-state") as e:
            meta_train(TINY, _small(meta_steps=6), checkpoint=path, progress=False)
        assert str(e.value).startswith(str(path)), (name, str(e.value))
    # unedited, it resumes
    meta_train(TINY, _small(meta_steps=6), checkpoint=_edited(tmp_path, ckpt), progress=False)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"seed": 2**64}, "seed must be an integer < 2"),  # torch's manual_seed refuses it later
        ({"families": "quadratic"}, "sequence of names"),
        ({"families": ()}, "at least one"),
        ({"tasks_per_step": 0}, "tasks_per_step"),
        ({"unroll": 0}, "unroll"),
        ({"horizon": 0}, "horizon"),
        ({"meta_lr": float("nan")}, "meta_lr"),
        ({"clip": -1.0}, "clip"),
        ({"seed": -1}, "seed"),
        ({"meta_steps": 2.5}, "meta_steps"),
        # accepted before, then a TypeError deep in meta_train (second_order) or a bool read
        # as 1.0 (meta_lr, clip)
        ({"second_order": "no"}, "second_order"),
        ({"second_order": 1}, "second_order"),
        ({"meta_lr": True}, "meta_lr"),
        ({"clip": True}, "clip"),
    ],
)
def test_train_config_refuses_values_that_would_fail_later(changes, match):
    with pytest.raises(ValueError, match=match):
        _small(**changes)


def test_meta_training_on_the_held_out_family_is_warned_about():
    with pytest.warns(UserWarning, match="holds out"):
        _small(families=("quadratic", *HELD_OUT_FAMILIES))


def test_meta_parameters_that_are_not_finite_are_never_written(tmp_path):
    from assocmem.meta.checkpoint import save_checkpoint

    meta = init_meta_params(TINY, torch.Generator().manual_seed(0))
    meta["out.bias"][0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        save_checkpoint(tmp_path / "n.safetensors", meta, TINY)
    assert not (tmp_path / "n.safetensors").exists()


def test_the_chunked_update_is_the_whole_update_and_chunks_grow_off_the_cpu():
    config = LearnedConfig()
    meta = init_meta_params(config, torch.Generator().manual_seed(0), dtype=torch.float64)
    x = torch.randn(1000, config.num_features, dtype=torch.float64)
    whole = learned_update(meta, x, config)
    parts = learned_update_chunked(meta, x, config, chunk=64)  # 16 chunks, the last short
    # rows are independent: each row's MLP is the same arithmetic whatever its neighbours
    torch.testing.assert_close(parts.value, whole.value, rtol=0, atol=1e-12)
    assert torch.equal(parts.finite, whole.finite)
    assert chunk_rows(torch.device("cpu")) == CHUNK_ROWS
    assert chunk_rows(torch.device("meta")) == ACCELERATOR_CHUNK_ROWS > CHUNK_ROWS


def _tensors(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g) for s in shapes]


def test_batched_write_and_features_give_the_per_tensor_bits():
    from assocmem.meta.features import features, features_batch, write, write_batch

    config = LearnedConfig()
    shapes = [(5, 7)] * 3
    params, grads = _tensors(shapes, 0), _tensors(shapes, 1)
    memories = [init_memory(p, config) for p in params]
    for m, g in zip(memories, _tensors(shapes, 2), strict=True):  # a non-empty history
        m.update(write(m, g, config))
    alone = [write(m, g, config) for m, g in zip(memories, grads, strict=True)]
    together = write_batch(memories, grads, config)
    for a, b in zip(alone, together, strict=True):
        assert torch.equal(a["momenta"], b["momenta"])
        assert torch.equal(a["second_moment"], b["second_moment"])
    xs = [features(m, g, p, 3.0, config) for m, g, p in zip(alone, grads, params, strict=True)]
    for a, b in zip(xs, features_batch(together, grads, params, 3.0, config), strict=True):
        assert torch.equal(a, b)


def test_the_learned_step_batches_tensors_of_one_shape_to_the_same_bits(monkeypatch):
    from assocmem.meta import step as step_module

    config = LearnedConfig()
    meta = init_meta_params(config, torch.Generator().manual_seed(0))
    shapes = [(4, 4), (3,), (4, 4), (4, 4), (3,)]
    params, grads = _tensors(shapes, 0), _tensors(shapes, 1)

    def run():
        memories = [init_memory(p, config) for p in params]
        with torch.no_grad():
            return step_module.learned_step(
                meta, config, params, grads, memories, [2.0] * 5, chunk=1 << 16
            )

    batched = run()
    with torch.no_grad():  # the optimizer's step; meta-training (with grad) stays per tensor
        assert step_module._batches(params, [2.0] * 5) == [[0, 2, 3], [1, 4]]
    assert step_module._batches(params, [2.0] * 5) == [[i] for i in range(5)]
    monkeypatch.setattr(step_module, "_batches", lambda ps, ts: [[i] for i in range(len(ps))])
    alone = run()
    for a, b in zip(batched.updates, alone.updates, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(batched.memories, alone.memories, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_one_non_finite_coordinate_stalls_itself_not_its_tensor():
    """The RMS features' tensor-wide mean squares took in a coordinate's NaN or overflowed
    square, and then every coordinate of the tensor had 0 or NaN features: under
    ``nonfinite="ignore"`` one NaN froze all 1000 coordinates for good, and a finite 1e25
    (whose square overflows float32) moved the other 999 off course. Now the means are over the
    finite squares and only that coordinate stalls (its update zeroed and counted), as Adam
    loses only that coordinate."""
    torch.manual_seed(0)
    start, grads = torch.randn(1000), [torch.randn(1000) for _ in range(20)]

    def run(first: float, nonfinite: str) -> tuple[torch.Tensor, int]:
        w = torch.nn.Parameter(start.clone())
        opt = MemoryOptimizer([w], memory="learned", nonfinite=nonfinite)
        for i, g in enumerate(grads):
            w.grad = g.clone()
            if i == 0:
                w.grad[0] = first
            opt.step()
        return w.detach(), int(opt.state[w]["nonfinite_updates"])

    clean, none = run(grads[0][0].item(), "ignore")
    stalled, counted = run(math.nan, "ignore")
    assert none == 0 and counted == len(grads)  # coordinate 0, once per step
    assert stalled[0] == start[0]
    moved = (clean[1:] - start[1:]).abs()
    # the others' RMS features are over 999 of the 1000 squares: a relative change of O(1/n)
    # in each mean, so their paths stay within a percent of the clean run's (measured 0.1 %)
    assert (stalled[1:] - clean[1:]).abs().max() <= 0.01 * moved.max()

    # a finite 1e25 overflows v[0] to inf for good: the others' features stay finite and alive
    w = torch.nn.Parameter(start.clone())
    opt = MemoryOptimizer([w], memory="learned")
    w.grad = grads[0].clone()
    w.grad[0] = 1e25
    opt.step()
    v = opt.state[w]["second_moment"]
    assert math.isinf(v[0]) and torch.isfinite(v[1:]).all()
    assert int(opt.state[w]["nonfinite_updates"]) == 1
    before = w.detach().clone()
    w.grad = grads[1].clone()
    opt.step()
    assert w[0] == before[0] and int(opt.state[w]["nonfinite_updates"]) == 2
    assert (w[1:] != before[1:]).all()


def test_the_learned_step_refuses_lists_that_do_not_pair_up_and_dtypes_it_cannot_run_in():
    from assocmem.meta.step import learned_step

    config = LearnedConfig()
    meta = init_meta_params(config, torch.Generator().manual_seed(0))
    params, grads = _tensors([(3,), (7,)], 0), _tensors([(3,), (7,)], 1)
    memories = [init_memory(p, config) for p in params]
    # one param with two grads and memories: the extra ones were dropped without a word
    with pytest.raises(ValueError, match="one grad, memory and step per param"):
        learned_step(meta, config, params[:1], grads, memories, [1.0])
    with pytest.raises(ValueError, match="one grad, memory and step per param"):  # IndexError
        learned_step(meta, config, params, grads[:1], memories, [1.0, 1.0])
    # float64 tensors and float32 meta-parameters: torch's "mat1 and mat2" from inside the MLP
    doubles = [p.double() for p in params]
    with pytest.raises(ValueError, match="tensor 0 is torch.float64"):
        learned_step(meta, config, doubles, [g.double() for g in grads], memories, [1.0, 1.0])
    # float16 throughout: every update came out non-finite and was zeroed
    half_meta = {k: w.half() for k, w in meta.items()}
    halves = [p.half() for p in params]
    with pytest.raises(ValueError, match="float32 or float64"):
        learned_step(half_meta, config, halves, [g.half() for g in grads], memories, [1.0] * 2)
    # what the message says to do works
    cast = {k: w.double() for k, w in meta.items()}
    doubled = [init_memory(p, config) for p in doubles]
    step = learned_step(cast, config, doubles, [g.double() for g in grads], doubled, [1.0] * 2)
    assert [u.dtype for u in step.updates] == [torch.float64] * 2


def test_loading_with_a_config_that_is_not_a_learned_config_is_a_type_error():
    # a dict was "'dict' object has no attribute 'to_dict'" after the file was read
    with pytest.raises(TypeError, match="LearnedConfig.from_dict"):
        load_checkpoint(config=LearnedConfig().to_dict())
    assert load_checkpoint(config=load_checkpoint().config).config == load_checkpoint().config
