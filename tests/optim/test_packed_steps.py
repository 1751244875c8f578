"""Step counters packed into one vector (assocmem.optim.packed_steps): one add per step on the
CPU, the same counts and trajectories as per-tensor counters, and state dicts of their own."""

from __future__ import annotations

import io

import pytest
import torch
from optim_support import every_memory

from assocmem import MemoryOptimizer
from assocmem.optim import packed_steps


def _params(n: int = 6, seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(3, 2, generator=g)) for _ in range(n)]


def _grads(params, t: int, skip: tuple[int, ...] = ()) -> None:
    g = torch.Generator().manual_seed(100 + t)
    for i, p in enumerate(params):
        p.grad = None if i in skip else torch.randn(p.shape, generator=g)


def _steps(opt, params) -> list[float]:
    return [float(opt.state[p]["step"]) for p in params]


def _vector(opt, params) -> torch.Tensor | None:
    bases = {id(opt.state[p]["step"]._base) for p in params}
    base = opt.state[params[0]]["step"]._base
    return base if len(bases) == 1 else None


@pytest.mark.parametrize("memory", ["adam", "momentum", "delta", "cms"])
def test_counters_become_views_of_one_vector_and_count_as_before(memory, monkeypatch):
    params = _params()
    opt = MemoryOptimizer(params, memory, lr=1e-2)
    calls = []
    real = torch._foreach_add_
    counters = lambda a: all(t.dim() == 0 for t in a[0])  # noqa: E731 - the step counts
    monkeypatch.setattr(
        torch, "_foreach_add_", lambda *a, **k: (calls.append(counters(a)), real(*a, **k))[1]
    )
    for t in range(3):
        _grads(params, t)
        opt.step()
    vector = _vector(opt, params)
    assert vector is not None and vector.shape == (6,) and vector.tolist() == [3.0] * 6
    assert all(opt.state[p]["step"].dim() == 0 for p in params)
    # the first step packs (no per-tensor count); no step counts its counters one by one
    assert True not in calls


def test_the_same_trajectory_as_torch_adam_with_its_per_tensor_counters():
    # torch's fused kernel reads the counters: packed, they are the same values
    ours, theirs = _params(), _params()
    opt = MemoryOptimizer(ours, "adam", lr=1e-2)
    ref = torch.optim.Adam(theirs, lr=1e-2, fused=True)
    for t in range(5):
        _grads(ours, t)
        _grads(theirs, t)
        opt.step()
        ref.step()
    assert _vector(opt, ours) is not None
    for p, q in zip(ours, theirs, strict=True):
        assert torch.equal(p, q)
        assert torch.equal(opt.state[p]["step"], ref.state[q]["step"])


def test_a_parameter_without_a_gradient_keeps_its_count_and_the_others_go_on():
    params = _params()
    opt = MemoryOptimizer(params, "adam", lr=1e-2)
    skips = [(), (2,), (), (0, 5), (), ()]
    for t, skip in enumerate(skips):
        _grads(params, t, skip)
        opt.step()
    expected = [len(skips) - sum(i in s for s in skips) for i in range(6)]
    assert _steps(opt, params) == expected


def test_a_counter_replaced_by_the_user_is_counted_from_its_value():
    params = _params()
    opt = MemoryOptimizer(params, "adam", lr=1e-2)
    for t in range(2):
        _grads(params, t)
        opt.step()
    opt.state[params[3]]["step"] = torch.tensor(10.0)
    _grads(params, 2)
    opt.step()
    assert _steps(opt, params) == [3.0, 3.0, 3.0, 11.0, 3.0, 3.0]
    assert _vector(opt, params) is not None  # packed again, with the new value


def test_a_state_dict_holds_copies_that_save_and_load_to_the_same_run():
    params, again = _params(), _params()
    opt = MemoryOptimizer(params, "adam", lr=1e-2)
    for t in range(3):
        _grads(params, t)
        opt.step()
    sd = opt.state_dict()
    steps = [s["step"] for s in sd["state"].values()]
    assert all(s._base is None for s in steps) and [float(s) for s in steps] == [3.0] * 6
    assert _vector(opt, params) is not None  # the optimizer's own state stays packed
    buffer = io.BytesIO()
    torch.save(sd, buffer)
    buffer.seek(0)
    for p, q in zip(params, again, strict=True):
        q.data.copy_(p)
    resumed = MemoryOptimizer(again, "adam", lr=1e-2)
    resumed.load_state_dict(torch.load(buffer))
    for t in range(3, 6):
        _grads(params, t)
        _grads(again, t)
        opt.step()
        resumed.step()
    assert all(torch.equal(p, q) for p, q in zip(params, again, strict=True))
    assert _steps(resumed, again) == [6.0] * 6 and _vector(resumed, again) is not None


def test_few_counters_and_non_cpu_float32_ones_stay_as_they_are():
    params = _params(packed_steps.PACK_FROM - 1)
    opt = MemoryOptimizer(params, "adam", lr=1e-2)
    _grads(params, 0)
    opt.step()
    assert all(opt.state[p]["step"]._base is None for p in params)
    states = [{"step": torch.tensor(1.0, dtype=torch.float64)} for _ in range(6)]
    assert packed_steps.count_step_(states, [s["step"] for s in states], None) is None
    assert [float(s["step"]) for s in states] == [2.0] * 6


@pytest.mark.parametrize("memory", every_memory())
def test_every_preset_steps_the_same_with_packed_counters(memory, monkeypatch):
    # the same run with packing off (PACK_FROM out of reach): identical parameters and state
    def run():
        params = _params(seed=1)
        opt = MemoryOptimizer(params, memory, lr=1e-3)
        for t in range(3):
            _grads(params, t)
            opt.step()
        return params, opt

    packed, opt = run()
    assert _vector(opt, packed) is not None
    monkeypatch.setattr(packed_steps, "PACK_FROM", 10**9)
    plain, plain_opt = run()
    assert _vector(plain_opt, plain) is None
    for p, q in zip(packed, plain, strict=True):
        assert torch.equal(p, q)
        for key, value in opt.state[p].items():
            other = plain_opt.state[q][key]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else True
