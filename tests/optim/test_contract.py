"""The torch.optim contract, table-driven over every registered preset."""

import io

import pytest
import torch
from optim_support import (
    LOCKSTEP_TOL,
    every_memory,
    flat_params,
    in_float64,
    loss_at,
    make_model,
    safe_lr,
    train,
    two_groups,
)

from assocmem import MemoryOptimizer, available_memories

MEMORIES = every_memory()


def make_opt(model, memory, **kw):
    return MemoryOptimizer(
        model.parameters(), memory=memory, lr=kw.pop("lr", safe_lr(memory)), **kw
    )


@pytest.mark.parametrize("memory", MEMORIES)
def test_step_returns_the_closure_loss_and_moves_params(memory):
    model = make_model()
    opt = make_opt(model, memory)
    before = flat_params(model)

    def closure():
        opt.zero_grad()
        loss = loss_at(model, 0)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.item() > 0
    assert not torch.equal(flat_params(model), before)
    assert torch.isfinite(flat_params(model)).all()


@pytest.mark.parametrize("memory", MEMORIES)
def test_default_hyperparameters_reduce_the_loss(memory):
    model = make_model()
    opt = make_opt(model, memory, lr=1e-3 if memory == "learned" else 1e-2)
    before = loss_at(model, 0).item()
    train(model, opt, [0] * 40)  # the same batch: a deterministic objective to descend
    assert loss_at(model, 0).item() < before


@pytest.mark.parametrize("memory", MEMORIES)
def test_save_load_continue_is_bit_identical(memory):
    reference = make_model()
    ref_opt = make_opt(reference, memory, weight_decay=0.01)
    train(reference, ref_opt, range(12))

    model = make_model()
    opt = make_opt(model, memory, weight_decay=0.01)
    train(model, opt, range(5))
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    resumed = make_model(seed=123)  # different init: everything must come from the checkpoint
    resumed.load_state_dict(saved["model"])
    resumed_opt = make_opt(resumed, memory, weight_decay=0.01)
    resumed_opt.load_state_dict(saved["opt"])
    train(resumed, resumed_opt, range(5, 12))
    assert torch.equal(flat_params(resumed), flat_params(reference))


@pytest.mark.parametrize("memory", MEMORIES)
def test_foreach_path_equals_reference_at_every_step(memory):
    with in_float64():
        fast_model, ref_model = make_model(), make_model()
        lr = safe_lr(memory)
        fast = MemoryOptimizer(two_groups(fast_model, lr), memory, lr=lr, foreach=True)
        ref = MemoryOptimizer(two_groups(ref_model, lr), memory, lr=lr, foreach=False)
        for t in range(25):
            train(fast_model, fast, range(t, t + 1))
            train(ref_model, ref, range(t, t + 1))
            torch.testing.assert_close(
                flat_params(fast_model), flat_params(ref_model), **LOCKSTEP_TOL
            )


@pytest.mark.parametrize("memory", MEMORIES)
def test_param_without_grad_gets_no_state(memory):
    model = make_model()
    model.gain.requires_grad_(False)
    opt = make_opt(model, memory)
    train(model, opt, range(3))
    assert model.gain not in opt.state
    assert model.gain.item() == 1.0
    assert all(p in opt.state for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("memory", MEMORIES)
def test_sparse_gradients_raise_a_clear_error(memory):
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = MemoryOptimizer(emb.parameters(), memory)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


@pytest.mark.parametrize("memory", MEMORIES)
def test_maximize_on_minus_loss_equals_minimize(memory):
    a, b = make_model(), make_model()
    opt_a = make_opt(a, memory)
    opt_b = make_opt(b, memory, maximize=True)
    for t in range(10):
        opt_a.zero_grad()
        loss_at(a, t).backward()
        opt_a.step()
        opt_b.zero_grad()
        (-loss_at(b, t)).backward()
        opt_b.step()
    torch.testing.assert_close(flat_params(a), flat_params(b))


@pytest.mark.parametrize("memory", MEMORIES)
@pytest.mark.parametrize("policy", ["skip", "raise"])
def test_non_finite_gradient_touches_nothing(memory, policy):
    model = make_model()
    opt = make_opt(model, memory, nonfinite=policy)
    train(model, opt, range(3))
    params = flat_params(model)

    def snapshot():
        return [v.clone() for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]

    state = snapshot()
    opt.zero_grad()
    loss_at(model, 3).backward()
    model.fc.weight.grad[0, 0] = float("nan")
    model.out.bias.grad[0] = float("inf")
    if policy == "raise":
        with pytest.raises(FloatingPointError):
            opt.step()
    else:
        opt.step()
    assert opt.skipped_steps == 1
    assert torch.equal(flat_params(model), params)
    after = snapshot()
    assert len(after) == len(state)
    assert all(torch.equal(a, b) for a, b in zip(after, state, strict=True))
    train(model, opt, range(4, 6))  # and training goes on
    assert torch.isfinite(flat_params(model)).all()
    assert opt.state_dict()["assocmem"]["skipped_steps"] == 1


BITS = {torch.float32: torch.int32, torch.float64: torch.int64, torch.bfloat16: torch.int16}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", list(BITS))
def test_finiteness_check_catches_every_kind_and_leaves_gradients_bitwise(bad, dtype):
    w = torch.nn.Parameter(torch.zeros(3, 4, dtype=dtype))
    v = torch.nn.Parameter(torch.zeros(5, dtype=dtype))
    opt = MemoryOptimizer([w, v], "momentum", lr=0.1)
    tiny = torch.finfo(dtype).tiny / 4  # subnormal
    # A transposed (non-contiguous) gradient with -0.0 and subnormals in it.
    w.grad = torch.tensor([[-0.0, tiny, -tiny], [1.0, -2.5, 3e-3]] * 2, dtype=dtype).t()
    v.grad = torch.arange(5, dtype=dtype)
    before = [g.clone().view(BITS[dtype]) for g in (w.grad, v.grad)]
    opt.step()
    assert opt.skipped_steps == 0
    for g, b in zip((w.grad, v.grad), before, strict=True):
        assert torch.equal(g.clone().view(BITS[dtype]), b)
    v.grad[3] = bad
    opt.step()
    assert opt.skipped_steps == 1


@pytest.mark.parametrize("memory", MEMORIES)
def test_scheduler_controls_the_step(memory):
    model = make_model()
    opt = make_opt(model, memory)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 if t < 3 else 0.0)
    train(model, opt, range(3), after_step=lambda _: sched.step())
    frozen = flat_params(model)
    train(model, opt, range(3, 6), after_step=lambda _: sched.step())
    assert torch.equal(flat_params(model), frozen)


@pytest.mark.parametrize("memory", MEMORIES)
def test_per_group_hyperparameters_and_add_param_group(memory):
    model = make_model()
    opt = MemoryOptimizer(
        [{"params": model.conv.parameters(), "lr": 0.0}, {"params": model.fc.parameters()}],
        memory,
        lr=safe_lr(memory),
    )
    opt.add_param_group({"params": [*model.out.parameters(), model.gain]})
    conv = torch.cat([p.detach().flatten() for p in model.conv.parameters()])
    out = torch.cat([p.detach().flatten() for p in model.out.parameters()])
    train(model, opt, range(3))
    assert torch.equal(torch.cat([p.detach().flatten() for p in model.conv.parameters()]), conv)
    assert not torch.equal(torch.cat([p.detach().flatten() for p in model.out.parameters()]), out)
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [model.gain]})


@pytest.mark.parametrize("memory", MEMORIES)
def test_float64_parameters(memory):
    model = make_model().double()
    opt = make_opt(model, memory)
    for t in range(3):
        opt.zero_grad()
        x, y = (v.double() for v in __import__("optim_support").batch(t))
        (model(x) - y).pow(2).mean().backward()
        opt.step()
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert all(
        v.dtype == torch.float64
        for s in opt.state.values()
        for k, v in s.items()
        if torch.is_tensor(v) and v.is_floating_point() and k != "step" and v.dim() > 0
    )


@pytest.mark.parametrize("memory", MEMORIES)
def test_invalid_hyperparameters_name_the_argument(memory):
    params = make_model().parameters()
    with pytest.raises(ValueError, match="lr"):
        MemoryOptimizer(params, memory, lr=-1.0)
    with pytest.raises(ValueError, match="weight_decay"):
        MemoryOptimizer(make_model().parameters(), memory, weight_decay=float("nan"))
    with pytest.raises(ValueError, match="not_a_hyper"):
        MemoryOptimizer(make_model().parameters(), memory, not_a_hyper=1)
    with pytest.raises(ValueError, match="lr"):
        MemoryOptimizer(make_model().parameters(), memory).add_param_group(
            {"params": [torch.nn.Parameter(torch.zeros(2))], "lr": "fast"}
        )


def test_unknown_memory_lists_the_available_ones():
    with pytest.raises(ValueError, match="available memories: .*adam.*momentum"):
        MemoryOptimizer(make_model().parameters(), memory="adamm")
    assert "adam" in available_memories() and available_memories("mom*") == ["momentum"]


def test_nonfinite_policy_is_validated():
    with pytest.raises(ValueError, match="nonfinite"):
        MemoryOptimizer(make_model().parameters(), nonfinite="warn")


@pytest.mark.parametrize("memory", MEMORIES)
def test_mismatched_state_dict_is_refused_and_changes_nothing(memory):
    model = make_model()
    opt = make_opt(model, memory)
    train(model, opt, range(2))
    saved = opt.state_dict()
    other_memory = "momentum" if memory != "momentum" else "adam"
    other = MemoryOptimizer(make_model().parameters(), other_memory)
    with pytest.raises(ValueError, match="memory"):
        other.load_state_dict(saved)
    assert other.state_dict()["state"] == {}

    wider = torch.nn.Linear(4, 2)
    lin = torch.nn.Linear(3, 2)
    narrow_opt = MemoryOptimizer(lin.parameters(), memory)
    lin(torch.ones(1, 3)).sum().backward()
    narrow_opt.step()
    wide_opt = MemoryOptimizer(wider.parameters(), memory)
    with pytest.raises(ValueError, match="shape"):
        wide_opt.load_state_dict(narrow_opt.state_dict())
    assert wide_opt.state_dict()["state"] == {}


def test_group_can_name_its_own_memory():
    model = make_model()
    opt = MemoryOptimizer(
        [
            {"params": [model.fc.weight, model.out.weight], "memory": "momentum", "momentum": 0.8},
            {"params": [model.fc.bias, model.out.bias, model.gain, *model.conv.parameters()]},
        ],
        memory="adam",
        lr=1e-3,
    )
    train(model, opt, range(2))
    assert set(opt.state[model.fc.weight]) == {"step", "momentum_buffer"}
    assert set(opt.state[model.fc.bias]) == {"step", "exp_avg", "exp_avg_sq"}
    with pytest.raises(ValueError, match="betas"):
        opt.add_param_group(
            {
                "params": [torch.nn.Parameter(torch.ones(1))],
                "memory": "momentum",
                "betas": (0.9, 0.9),
            }
        )


@pytest.mark.parametrize("memory", MEMORIES)
def test_empty_parameter_is_harmless(memory):
    model = make_model()
    empty = torch.nn.Parameter(torch.zeros(0, 3))
    opt = MemoryOptimizer([*model.parameters(), empty], memory, lr=safe_lr(memory))
    for t in range(3):
        opt.zero_grad()
        (loss_at(model, t) + empty.sum()).backward()
        opt.step()
    assert torch.isfinite(flat_params(model)).all() and empty.shape == (0, 3)


def test_checkpoint_without_a_newer_hyperparameter_keeps_the_constructed_value():
    model = make_model()
    opt = MemoryOptimizer(model.parameters(), "landscape", lr=1e-2, period=3)
    train(model, opt, range(2))
    saved = opt.state_dict()
    del saved["param_groups"][0]["period"]  # as written before `period` existed
    resumed = MemoryOptimizer(model.parameters(), "landscape", lr=1e-2, period=3)
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["period"] == 3
    train(model, resumed, range(2, 4))
