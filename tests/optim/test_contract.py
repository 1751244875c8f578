"""The torch.optim contract, table-driven over every registered preset.

torch's generic tests, ported over a table of every preset and configuration, are in
test_optimizer_info.py; these are the ones that need the full TinyNet or a second preset.
"""

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
def test_default_hyperparameters_reduce_the_loss(memory):
    model = make_model()
    opt = make_opt(model, memory, lr=1e-3 if memory == "learned" else 1e-2)
    before = loss_at(model, 0).item()
    train(model, opt, [0] * 40)  # the same batch: a deterministic objective to descend
    assert loss_at(model, 0).item() < before


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
def test_sparse_gradients_raise_a_clear_error(memory):
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = MemoryOptimizer(emb.parameters(), memory)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


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


def test_checkpoint_without_a_newer_hyperparameter_keeps_the_constructed_value():
    model = make_model()
    opt = MemoryOptimizer(model.parameters(), "landscape", lr=1e-2, form="diagonal", period=3)
    train(model, opt, range(2))
    saved = opt.state_dict()
    del saved["param_groups"][0]["period"]  # as written before `period` existed
    resumed = MemoryOptimizer(model.parameters(), "landscape", lr=1e-2, form="diagonal", period=3)
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["period"] == 3
    train(model, resumed, range(2, 4))
