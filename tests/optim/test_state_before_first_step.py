"""Saving an optimizer before its first step does not change the run.

torch.distributed.checkpoint's ``get_optimizer_state_dict`` makes the state of an optimizer that
has not stepped with one step at lr 0 on zero gradients (``_init_optim_state``). The presets
counted that step and wrote its zeros into their memories, so a run saved at step 0 (a common
first checkpoint) drifted from the same run never saved: by 0.22 in 4 steps for ``learned``,
5e-3 for ``adam``. That step now only makes the state; the runs are equal bit for bit.
"""

import copy
import warnings

import pytest
import torch
from torch.distributed.checkpoint.state_dict import (
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from assocmem import MemoryOptimizer, available_memories


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))


def _train(model, opt, steps=4) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 6, generator=g), torch.randn(16, 2, generator=g)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # presets' own notes (learned's checkpoint, ...)
        yield


@pytest.mark.parametrize("memory", available_memories())
def test_a_run_saved_before_its_first_step_is_the_run_never_saved(memory):
    model = _model()
    never = _train(model, MemoryOptimizer(model.parameters(), memory=memory, lr=1e-2))

    model = _model()
    opt = MemoryOptimizer(model.parameters(), memory=memory, lr=1e-2)
    # a copy: the state dict holds the optimizer's live tensors, which the training below moves
    saved = copy.deepcopy(get_optimizer_state_dict(model, opt))
    assert opt.state and all(int(s["step"]) == 0 for s in opt.state.values())
    assert all(p.grad is None for p in model.parameters())  # torch's zero gradients removed
    assert torch.equal(_train(model, opt), never)

    # that step-0 state resumes as a fresh optimizer: the same run again
    model = _model()
    opt = MemoryOptimizer(model.parameters(), memory=memory, lr=1e-2)
    set_optimizer_state_dict(model, opt, saved)
    assert torch.equal(_train(model, opt), never)


def test_a_step_at_lr_0_on_real_gradients_is_a_step():
    # a warm-up from lr 0 counts its first step and writes its gradient: only torch's
    # state-making step (every gradient zero as well) is not one
    model = _model()
    opt = MemoryOptimizer(model.parameters(), memory="adam", lr=0.0)
    _train(model, opt, steps=1)
    assert all(int(s["step"]) == 1 for s in opt.state.values())
    assert any(bool(s["exp_avg"].any()) for s in opt.state.values())
    # zero gradients at lr > 0: a step too
    model = _model()
    opt = MemoryOptimizer(model.parameters(), memory="adam", lr=1e-2)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert all(int(s["step"]) == 1 for s in opt.state.values())
