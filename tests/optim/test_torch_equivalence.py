"""Presets that must equal torch.optim do, over 60 steps, with param groups and a scheduler."""

import pytest
import torch
from optim_support import TORCH_EQUIVALENTS, flat_params, make_model, train

from assocmem import MemoryOptimizer


def groups(model, lr):
    return [
        {"params": [*model.conv.parameters(), model.gain]},
        {"params": [*model.fc.parameters(), *model.out.parameters()], "lr": lr * 3},
    ]


def run(make_opt, steps=60):
    model = make_model()
    opt = make_opt(model)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[0.02, 0.05], total_steps=steps)
    train(model, opt, range(steps), after_step=lambda _: sched.step())
    return flat_params(model)


CASES = TORCH_EQUIVALENTS


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("foreach", [True, False])
def test_preset_matches_torch(case, foreach):
    torch_cls, memory, torch_kw, ours_kw = CASES[case]
    # the fast path is torch's fused kernel (adam: _fused_adam(w)_, momentum: _fused_sgd_)
    path = {"fused": True} if foreach else {"foreach": False}
    expected = run(lambda m: torch_cls(groups(m, 0.01), lr=0.01, **path, **torch_kw))
    got = run(
        lambda m: MemoryOptimizer(groups(m, 0.01), memory, lr=0.01, foreach=foreach, **ours_kw)
    )
    if foreach:  # the same kernels: bit-identical
        assert torch.equal(got, expected)
    else:  # the reference path is written from the equations: equal to float rounding
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def transposed(model):
    """The model's 2-D parameters replaced by transposed (non-contiguous) copies."""
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            if p.dim() == 2:
                setattr(module, name, torch.nn.Parameter(p.detach().t().contiguous().t()))
    return model


@pytest.mark.parametrize("case", ["adam", "adamw", "sgd_momentum", "sgd_nesterov"])
def test_tensors_the_fused_kernels_cannot_take_step_as_torchs_foreach(case):
    # A non-contiguous tensor goes through the foreach path, op for op torch's: the same bits.
    torch_cls, memory, torch_kw, ours_kw = CASES[case]

    def run_transposed(make_opt):
        model = transposed(make_model())
        assert not model.fc.weight.is_contiguous()
        opt = make_opt(model)
        train(model, opt, range(20))
        return flat_params(model)

    expected = run_transposed(
        lambda m: torch_cls(m.parameters(), lr=0.01, foreach=True, **torch_kw)
    )
    got = run_transposed(lambda m: MemoryOptimizer(m.parameters(), memory, lr=0.01, **ours_kw))
    assert torch.equal(got, expected)


@pytest.mark.parametrize("case", ["adam", "adamw", "sgd_momentum", "sgd_nesterov"])
def test_a_strided_gradient_of_a_contiguous_parameter_steps_as_torchs_foreach(case):
    # The fused-kernel check asks only contiguity of gradients and state (they share their
    # parameter's dtype and device): a contiguous parameter whose gradient is a transposed view
    # must still leave the kernels, which index raw memory (torch 2.13's CPU fused Adam and SGD
    # step such a pair silently wrong).
    torch_cls, memory, torch_kw, ours_kw = CASES[case]

    def run(make_opt):
        gen = torch.Generator().manual_seed(0)
        w = torch.nn.Parameter(torch.randn(6, 5, generator=gen))
        opt = make_opt([w])
        for _ in range(5):
            w.grad = torch.randn(5, 6, generator=gen).t()
            assert not w.grad.is_contiguous()
            opt.step()
        return w.detach().clone()

    expected = run(lambda ps: torch_cls(ps, lr=0.01, foreach=True, **torch_kw))
    got = run(lambda ps: MemoryOptimizer(ps, memory, lr=0.01, **ours_kw))
    assert torch.equal(got, expected)


def test_fusable_indices_asks_all_at_once_then_tensor_by_tensor():
    from assocmem.optim import fused

    params = [torch.zeros(4, 3), torch.zeros(3, 4), torch.zeros(5)]
    grads = [torch.zeros(4, 3), torch.zeros(4, 3).t(), torch.zeros(5)]  # the second strided
    state = [torch.zeros(4, 3), torch.zeros(3, 4), torch.zeros(5)]
    assert fused.fusable_indices(params, (grads, state)) == [0, 2]
    assert fused.fusable_indices(params, (state, state)) == [0, 1, 2]
    assert fused.fusable_indices([params[1].t()], ([grads[1]],)) == []  # a strided parameter
