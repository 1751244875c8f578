"""Meta-training's task families, its validation objective and the learned step's warm-up."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._pytree import tree_leaves as leaves

from assocmem import MemoryOptimizer
from assocmem.meta import LearnedConfig, init_memory, init_meta_params, save_checkpoint
from assocmem.meta.network import warmup_clamp, warmup_limit
from assocmem.meta.tasks import (
    FAMILIES,
    TRAIN_FAMILIES,
    Task,
    _split,
    pointer_sequences,
    sample_task,
)
from assocmem.meta.train import TrainConfig, unroll

TINY = LearnedConfig(hidden=(8,))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_has_fixed_validation_data_and_reproducible_draws(family):
    a, b = sample_task(family, 3), sample_task(family, 3)
    assert a.val_batch is not None
    va, vb = a.val_batch(), a.val_batch()
    for x, y in zip(leaves(va), leaves(vb), strict=True):
        assert x is y  # the same batch every call: its loss measures the parameters only
    for x, y in zip(leaves(va), leaves(b.val_batch()), strict=True):
        assert torch.equal(x, y)
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k])
    for x, y in zip(leaves(a.batch()), leaves(b.batch()), strict=True):
        assert torch.equal(x, y)
    # every family's initial loss is finite on both its data sets
    params = {k: v.clone() for k, v in a.params.items()}
    assert math.isfinite(float(a.loss(params, a.batch())))
    assert math.isfinite(float(a.loss(params, va)))


@pytest.mark.parametrize("family", ["digits_mlp", "digits_conv"])
def test_digits_validation_rows_never_reach_a_training_minibatch(family):
    task = sample_task(family, 11)
    val_x, _ = task.val_batch()
    val_rows = {tuple(r.flatten().tolist()) for r in val_x}
    assert len(val_x) == 1797 - int(0.75 * 1797)
    for _ in range(20):
        x, _ = task.batch()
        assert not val_rows & {tuple(r.flatten().tolist()) for r in x}


@given(st.integers(2, 400), st.integers(0, 2**31 - 1))
@settings(max_examples=50, deadline=None)
def test_split_is_a_partition(n, seed):
    train, val = _split(n, torch.Generator().manual_seed(seed))
    rows = torch.cat([train, val]).sort().values
    assert torch.equal(rows, torch.arange(n))
    assert len(train) == int(0.75 * n)


@given(st.integers(2, 12), st.integers(0, 2**31 - 1))
@settings(max_examples=30, deadline=None)
def test_pointer_labels_are_the_pointed_tokens(length, seed):
    tokens, labels = pointer_sequences(64, length, torch.Generator().manual_seed(seed))
    pointers = tokens[:, 0]
    assert bool(((pointers >= 1) & (pointers < length)).all())
    for row, p, label in zip(tokens, pointers, labels, strict=True):
        assert row[p] == label


def test_train_families_include_convolution_and_attention():
    assert {"digits_conv", "pointer_attention"} <= set(TRAIN_FAMILIES)
    assert "breast_cancer_mlp" not in TRAIN_FAMILIES


def _tiny_task_with_validation() -> Task:
    # one training batch, drawn every step, so that one unroll of K steps and K unrolls of one
    # step follow the same trajectory; the validation batch differs from it
    g = torch.Generator().manual_seed(0)
    hessian = torch.diag(torch.tensor([1.0, 3.0, 0.5], dtype=torch.float64))
    batch = 0.1 * torch.randn(3, generator=g, dtype=torch.float64)
    val = torch.tensor([0.2, -0.1, 0.3], dtype=torch.float64)

    def loss(params, xi):
        r = params["w"] - xi
        return 0.5 * r @ hessian @ r + 1.0

    params = {"w": torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)}
    return Task("tiny", params, loss, lambda: batch, g, val_batch=lambda: val)


@pytest.mark.parametrize("objective", ["train", "validation"])
def test_unroll_scores_the_objective_batch(objective):
    # The meta-loss is the mean log loss of theta_1..theta_K on the objective's data: replay
    # the unroll by hand from the returned parameters' trajectory.
    config = LearnedConfig(hidden=(8,), lr=0.05)
    meta = init_meta_params(config, torch.Generator().manual_seed(1), dtype=torch.float64)
    task = _tiny_task_with_validation()
    memory = {k: init_memory(v, config) for k, v in task.params.items()}
    trajectory = []
    params, mem, step = task.params, memory, 0
    for _ in range(3):
        _, params, mem, step = unroll(meta, config, task, params, mem, step, 1, objective=objective)
        trajectory.append({k: v.detach() for k, v in params.items()})
    # the same three steps in one unroll
    task = _tiny_task_with_validation()
    memory = {k: init_memory(v, config) for k, v in task.params.items()}
    loss, *_ = unroll(meta, config, task, task.params, memory, 0, 3, objective=objective)
    scored_on = task.val_batch() if objective == "validation" else task.batch()
    scored = [task.loss(p, scored_on) for p in trajectory]
    expected = torch.stack([torch.log(s) for s in scored]).mean()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-12, atol=0)


def test_validation_objective_needs_validation_data():
    task = _tiny_task_with_validation()
    task.val_batch = None
    memory = {k: init_memory(v, TINY) for k, v in task.params.items()}
    meta = init_meta_params(TINY, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="no validation data"):
        unroll(meta, TINY, task, task.params, memory, 0, 1, objective="validation")
    with pytest.raises(ValueError, match="objective must be one of"):
        TrainConfig(objective="test")
    # a checkpoint's training config from before the field resumes as the train objective
    assert TrainConfig.from_dict({"meta_steps": 3}).objective == "train"


@given(
    st.floats(1.0, 1e4),
    st.floats(1.0, 1e4),
    st.lists(st.floats(-1e4, 1e4), min_size=1, max_size=20),
)
@settings(max_examples=100, deadline=None)
def test_warmup_clamps_before_its_end_and_never_after(warmup, step, values):
    config = LearnedConfig(warmup=warmup)
    u = torch.tensor(values, dtype=torch.float64)
    out = warmup_clamp(u, step, config)
    limit = warmup_limit(step, config)
    if step >= warmup:
        assert limit is None and out is u
    else:
        assert limit == pytest.approx(10.0 * math.exp(4.0) * step / warmup)
        assert bool((out.abs() <= limit).all())
        inside = u.abs() <= limit
        assert torch.equal(out[inside], u[inside])  # nothing inside the bound changes


def test_no_warmup_clamps_nothing_and_bad_warmups_are_refused():
    u = torch.tensor([1e6, -1e6])
    assert warmup_clamp(u, 1, LearnedConfig()) is u
    assert LearnedConfig.from_dict({"lr": 1e-3}).warmup == 0.0  # checkpoints without the field
    for bad in (-1.0, float("nan"), float("inf"), "10"):
        with pytest.raises(ValueError, match="warmup"):
            LearnedConfig(warmup=bad)


def test_first_step_of_a_warmed_up_memory_is_bounded(tmp_path):
    # A network that asks for the largest step it can (the log-scale saturated at S): without
    # a warm-up the first update moves weights by up to lr D e^S; with one, by lr D e^S / T.
    config = LearnedConfig(hidden=(8,), warmup=100.0)
    meta = init_meta_params(config, torch.Generator().manual_seed(0))
    meta["out.bias"] = torch.tensor([0.0, 100.0])
    path = tmp_path / "big-steps.safetensors"
    save_checkpoint(path, meta, config)
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3)
    before = [p.detach().clone() for p in model.parameters()]
    opt = MemoryOptimizer(model.parameters(), memory="learned", lr=1e-3, checkpoint=str(path))
    model(torch.randn(8, 6)).square().mean().backward()
    opt.step()
    moved = torch.cat(
        [(p.detach() - b).abs().flatten() for p, b in zip(model.parameters(), before, strict=True)]
    )
    limit = 1e-3 * 10.0 * math.exp(4.0) / 100.0
    # float32 rounding of W - lr u: one ulp of |W| (< 1) on top of the bound
    assert float(moved.max()) <= limit * (1 + 1e-5) + 2**-23
    assert float(moved.max()) > 0.5 * limit  # the clamp is what binds here


def test_a_loss_of_exactly_zero_keeps_the_meta_loss_finite():
    # A task that reaches loss 0 exactly (here: the parameters start at the minimum): the
    # floor keeps log(L + floor) finite, and with floor=0 the log is -inf.
    hessian = torch.eye(2, dtype=torch.float64)
    target = torch.zeros(2, dtype=torch.float64)

    def loss(params, batch):
        r = params["w"] - batch
        return 0.5 * r @ hessian @ r

    def task() -> Task:
        return Task("zero", {"w": target.clone()}, loss, lambda: target, torch.Generator())

    config = LearnedConfig(hidden=(8,), lr=0.05)
    meta = init_meta_params(config, torch.Generator().manual_seed(0), dtype=torch.float64)
    meta = {k: v.requires_grad_() for k, v in meta.items()}
    t = task()
    memory = {k: init_memory(v, config) for k, v in t.params.items()}
    raw, *_ = unroll(meta, config, t, t.params, memory, 0, 2)
    assert raw.item() == -math.inf
    floored, *_ = unroll(meta, config, t, t.params, memory, 0, 2, floor=1e-6)
    assert floored.item() == pytest.approx(math.log(1e-6))
    grads = torch.autograd.grad(floored, list(meta.values()), allow_unused=True)
    assert all(g is None or bool(g.isfinite().all()) for g in grads)


@pytest.mark.parametrize("warmup", [0.0, 100.0])
def test_a_count_on_the_device_gives_the_hosts_constants(warmup):
    # sync_free: the step count stays a tensor; the bias corrections, time features and the
    # warm-up bound computed from it must be the float32 bits the host's numbers give.
    from assocmem.meta.features import step_constants

    config = LearnedConfig(warmup=warmup)
    like = torch.zeros(3)
    u = torch.linspace(-600.0, 600.0, 241)
    for t in (1, 2, 3, 7, 50, 99, 100, 101, 999, 1000, 4321, 10**5):
        count = torch.tensor(float(t))  # a step counter, as the optimizer keeps it
        for host, device in zip(
            step_constants(t, config, like), step_constants(count, config, like), strict=True
        ):
            assert host.dtype == device.dtype == torch.float32
            assert torch.equal(host, device), t
        assert torch.equal(warmup_clamp(u, t, config), warmup_clamp(u, count, config)), t
