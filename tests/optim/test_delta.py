"""The ``delta`` preset: delta-rule momentum (erase along the gradient, then write it)."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from optim_support import (
    LOCKSTEP_TOL,
    assert_lockstep,
    flat_params,
    in_float64,
    make_model,
    spy_stacked,
    train,
    two_groups,
)

from assocmem import MemoryOptimizer
from assocmem.optim.presets import delta
from assocmem.optim.presets.delta import delta_momentum_write, unit_rows


@pytest.mark.parametrize("erase", ["tensor", "row"])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("decoupled", [True, False])  # gamma = 0, L2: torch's fused SGD kernel
def test_foreach_equals_reference_at_every_step(erase, gamma, decoupled):
    with in_float64():
        fast_model, ref_model = make_model(), make_model()
        kw = dict(lr=1e-2, gamma=gamma, erase=erase, alpha=0.8, eta=0.7, weight_decay=0.01)
        kw["decoupled_weight_decay"] = decoupled
        fast = MemoryOptimizer(two_groups(fast_model, 1e-2), "delta", foreach=True, **kw)
        ref = MemoryOptimizer(two_groups(ref_model, 1e-2), "delta", foreach=False, **kw)
        assert_lockstep(fast_model, fast, ref_model, ref, 30, **LOCKSTEP_TOL)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("erase", ["tensor", "row"])
def test_gamma_zero_is_momentum_exactly(foreach, erase):
    a, b = make_model(), make_model()
    opt_a = MemoryOptimizer(
        a.parameters(),
        "delta",
        lr=1e-2,
        alpha=0.85,
        gamma=0.0,
        eta=1.0,
        erase=erase,
        foreach=foreach,
    )
    opt_b = MemoryOptimizer(b.parameters(), "momentum", lr=1e-2, momentum=0.85, foreach=foreach)
    train(a, opt_a, range(20))
    train(b, opt_b, range(20))
    assert torch.equal(flat_params(a), flat_params(b))


@given(
    alpha=st.floats(0.0, 0.99),
    gamma=st.floats(0.0, 1.0),
    eta=st.floats(0.0, 2.0),
    seed=st.integers(0, 2**16),
)
def test_write_erases_along_the_gradient(alpha, gamma, eta, seed):
    # <g_hat, m_new> = (alpha - gamma) <g_hat, m> + eta ||g||: the old memory keeps only
    # alpha - gamma along the key; orthogonal to it, it keeps alpha.
    gen = torch.Generator().manual_seed(seed)
    m, g = (
        torch.randn(4, 6, generator=gen, dtype=torch.float64),
        torch.randn(4, 6, generator=gen, dtype=torch.float64),
    )
    new = delta_momentum_write(m, g, alpha=alpha, gamma=gamma, eta=eta, erase="tensor")
    g_hat = g / g.norm()
    along = (g_hat * new).sum()
    expected = (alpha - gamma) * (g_hat * m).sum() + eta * g.norm()
    torch.testing.assert_close(along, expected)
    orth = m - (g_hat * m).sum() * g_hat  # component of m orthogonal to g
    torch.testing.assert_close(
        new - eta * g - (alpha - gamma) * (g_hat * m).sum() * g_hat, alpha * orth
    )


@pytest.mark.parametrize("with_safe", [False, True])
def test_compiled_body_run_eagerly_is_the_reference_write_and_step(with_safe):
    # write_and_step is what compile=True compiles (tested compiled in the slow tier only):
    # eagerly, m <- alpha m + r g and W <- W - lr m with r = eta - gamma <g, m> / ||g||^2 is
    # the reference delta_momentum_write and its step. The same maths summed in another
    # order (the erase folded into r), in float64: equal to 1e-12, well above its rounding.
    gen = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (5,), (2, 3, 2)]
    params, grads, bufs = (
        [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes] for _ in range(3)
    )
    alpha, gamma, eta, lr = 0.8, 0.5, 0.7, 0.1
    want_m = [
        delta_momentum_write(m, g, alpha=alpha, gamma=gamma, eta=eta, erase="tensor")
        for g, m in zip(grads, bufs, strict=True)
    ]
    want_p = [p - lr * m for p, m in zip(params, want_m, strict=True)]
    rates = [eta - gamma * (g * m).sum() / (g * g).sum() for g, m in zip(grads, bufs, strict=True)]
    safe = None
    if with_safe:  # the last tensor's rate does not fit: it takes its safe write, given here
        rates[-1] = torch.tensor(float("inf"), dtype=torch.float64)
        safe = [torch.full_like(m, float("nan")) for m in bufs[:-1]] + [want_m[-1]]
    # lr a tensor, as compiled_step passes it
    lr_tensor = torch.tensor(lr, dtype=torch.float64)
    delta.write_and_step(params, grads, bufs, rates, safe, alpha=alpha, lr=lr_tensor)
    for got, want in zip([*bufs, *params], [*want_m, *want_p], strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_row_erase_acts_per_row_and_full_erase_forgets_the_key():
    m, g = torch.randn(3, 2, 2, dtype=torch.float64), torch.randn(3, 2, 2, dtype=torch.float64)
    new = delta_momentum_write(m, g, alpha=0.9, gamma=0.9, eta=0.0, erase="row")
    rows_hat = unit_rows(g.reshape(3, -1))
    # gamma = alpha: nothing of the old memory survives along each row's gradient direction.
    torch.testing.assert_close(
        (rows_hat * new.reshape(3, -1)).sum(-1), torch.zeros(3, dtype=torch.float64)
    )


def test_zero_gradient_erases_nothing():
    m = torch.randn(5)
    new = delta_momentum_write(m, torch.zeros(5), alpha=0.9, gamma=1.0, eta=1.0, erase="tensor")
    assert torch.equal(new, 0.9 * m)


def test_trains_a_model_and_handles_every_rank():
    model = make_model()
    opt = MemoryOptimizer(model.parameters(), "delta", lr=1e-2, erase="row")
    from optim_support import loss_at

    before = loss_at(model, 0).item()
    for _ in range(60):
        opt.zero_grad()
        loss_at(model, 0).backward()
        opt.step()
    assert loss_at(model, 0).item() < before


@pytest.mark.parametrize(
    ("name", "value"),
    [("alpha", 1.0), ("alpha", -0.1), ("gamma", 1.5), ("eta", -1.0), ("erase", "column")],
)
def test_invalid_hyperparameters_name_the_argument(name, value):
    with pytest.raises(ValueError, match=name):
        MemoryOptimizer(make_model().parameters(), "delta", **{name: value})


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("erase", ["tensor", "row"])
@pytest.mark.parametrize("scale", [2e16, 1e18, 1e-25])
def test_extreme_gradients_are_erased_along_like_float64(scale, erase, foreach):
    # |g| = 2e16 on 1000x1000: ||g||^2 ~ 4e38 overflows fp32 (it wrote NaN, where SGD stays
    # finite; 1e18 overflows a row's too); |g| = 1e-25: g^2 ~ 1e-50 flushes to 0 (it erased
    # nothing). All must give the float64 numbers. Each step is a few fp32 operations, each
    # within eps32 relative to the memory's scale (an entry where terms cancel can be off by
    # that much in absolute terms), over 3 steps: 16 * eps32 * max|m| covers it.
    gen = torch.Generator().manual_seed(0)
    grads = [scale * (1 + torch.rand(1000, 1000, generator=gen)) for _ in range(3)]
    runs = {}
    for dtype in (torch.float32, torch.float64):
        p = torch.nn.Parameter(torch.zeros(1000, 1000, dtype=dtype))
        opt = MemoryOptimizer([p], "delta", lr=1.0, erase=erase, foreach=foreach)
        for g in grads:
            p.grad = g.to(dtype)
            opt.step()
        runs[dtype] = opt.state[p]["momentum"]
    assert torch.isfinite(runs[torch.float32]).all()
    exact = runs[torch.float64]
    atol = 16 * torch.finfo(torch.float32).eps * exact.abs().max().item()
    torch.testing.assert_close(runs[torch.float32].double(), exact, rtol=0.0, atol=atol)


@pytest.mark.parametrize("sync_free", [False, True])  # the host path, the device-rate path
def test_small_tensors_of_one_shape_step_stacked_and_follow_the_reference(monkeypatch, sync_free):
    # Each tensor is a row of its stack, so the per-tensor erase is the per-row one; float64,
    # so the only difference from the reference is the order of each sum: LOCKSTEP_TOL. With
    # sync_free the rates stay on the device (row_rates' fallback selected, not branched).
    sizes = spy_stacked(monkeypatch, delta)
    with in_float64():

        def make():
            torch.manual_seed(0)
            return [
                *(torch.nn.Parameter(torch.randn(3, 5)) for _ in range(4)),
                *(torch.nn.Parameter(torch.randn(())) for _ in range(2)),
                torch.nn.Parameter(torch.randn(4)),  # alone: no other of its shape
            ]

        runs = []
        for foreach in (True, False):
            params = make()
            opt = MemoryOptimizer(
                params, "delta", lr=0.1, alpha=0.8, eta=0.7, foreach=foreach, sync_free=sync_free
            )
            gen = torch.Generator().manual_seed(1)
            for _ in range(20):
                for p in params:
                    p.grad = torch.randn(p.shape, generator=gen) + 0.5 * p.detach()
                opt.step()
            runs.append([t for p in params for t in (p.detach(), opt.state[p]["momentum"])])
    assert sorted(sizes[:2]) == [2, 4]
    for fast, ref in zip(*runs, strict=True):
        torch.testing.assert_close(fast, ref, **LOCKSTEP_TOL)


@pytest.mark.parametrize("scale", [3e18, 1e-25])
def test_stacked_small_tensors_with_extreme_gradients_are_erased_along_like_float64(
    monkeypatch, scale
):
    # 8 x 8 tensors at |g| ~ 3e18: ||g||^2 ~ 1e39 overflows fp32; at 1e-25 the squares flush
    # to 0. The stacked rows take row_rates' scaled fallback; the tolerance is the one
    # argued in test_extreme_gradients_are_erased_along_like_float64.
    sizes = spy_stacked(monkeypatch, delta)
    gen = torch.Generator().manual_seed(0)
    grads = [[scale * (1 + torch.rand(8, 8, generator=gen)) for _ in range(4)] for _ in range(3)]
    runs = {}
    for dtype in (torch.float32, torch.float64):
        params = [torch.nn.Parameter(torch.zeros(8, 8, dtype=dtype)) for _ in range(4)]
        opt = MemoryOptimizer(params, "delta", lr=1.0)
        for step in grads:
            for p, g in zip(params, step, strict=True):
                p.grad = g.to(dtype)
            opt.step()
        runs[dtype] = torch.stack([opt.state[p]["momentum"] for p in params])
    assert sizes and set(sizes) == {4}
    assert torch.isfinite(runs[torch.float32]).all()
    exact = runs[torch.float64]
    atol = 16 * torch.finfo(torch.float32).eps * exact.abs().max().item()
    torch.testing.assert_close(runs[torch.float32].double(), exact, rtol=0.0, atol=atol)


def test_a_strided_tensor_leaves_the_others_on_the_cpu_host_path(monkeypatch):
    # The host path's fused SGD kernel takes contiguous tensors only; a channels_last weight
    # steps on the device-rate path while the other tensors of its group stay on the host
    # path (they used to follow it there). Both routes against the reference, float64.
    from assocmem.optim import fused

    calls = []
    real = fused.sgd_
    monkeypatch.setattr(
        fused,
        "sgd_",
        lambda params, *a, **k: calls.append(params[0].shape) or real(params, *a, **k),
    )
    with in_float64():
        models = make_model(), make_model()
        for m in models:
            m.conv.to(memory_format=torch.channels_last)
        kw = dict(lr=1e-2, alpha=0.8, eta=0.7)
        fast = MemoryOptimizer(two_groups(models[0], 1e-2), "delta", **kw)
        ref = MemoryOptimizer(two_groups(models[1], 1e-2), "delta", foreach=False, **kw)
        assert_lockstep(models[0], fast, models[1], ref, 10, **LOCKSTEP_TOL)
    stepped = set(calls)
    assert models[0].fc.weight.shape in stepped  # contiguous: the host path
    assert models[0].conv.weight.shape not in stepped  # strided: the device-rate path


@pytest.mark.parametrize("tiny", [1e-37, 1e-45])
@pytest.mark.parametrize("path", ["host", "device", "sync_free", "stacked", "row", "muon"])
def test_a_gradient_far_below_the_memory_is_erased_along_like_float64(monkeypatch, path, tiny):
    # A memory of ~100, then a gradient of 1e-37 (a normal fp32 number) or 1e-45 (subnormal):
    # the overlap c = <g, m> / ||g||^2 ~ 1e39 overflows fp32 although c g is of |m|'s size,
    # and the folded rate eta - gamma c made the memory inf; a first step of 1e-45 on the zero
    # memory made it NaN (0 * inf). SGD and the reference stay finite. Tolerance as in
    # test_extreme_gradients_are_erased_along_like_float64.
    from assocmem.optim import sync_free

    if path == "device":  # the device-rate path with its host reads (no fused kernel)
        monkeypatch.setattr(sync_free, "on_accelerator", lambda tensors: True)
    shapes = {"stacked": [(3,)] * 30, "muon": [(6, 5), (4, 5)]}.get(path, [(6, 5), (5,)])
    gen = torch.Generator().manual_seed(0)
    steps = [tiny] + [100.0] * 3 + [tiny]
    grads = [[s * (1 + torch.rand(shape, generator=gen)) for shape in shapes] for s in steps]
    options = {"sync_free": path == "sync_free"}
    if path == "row":
        options["erase"] = "row"
    memory = "muon" if path == "muon" else "delta"
    if memory == "muon":
        options["gamma"] = 0.5
    runs = {}
    for dtype in (torch.float32, torch.float64):
        params = [torch.nn.Parameter(torch.zeros(shape, dtype=dtype)) for shape in shapes]
        opt = MemoryOptimizer(params, memory, lr=1e-2, **options)
        for step in grads:
            for p, g in zip(params, step, strict=True):
                p.grad = g.to(dtype)
            opt.step()
        # muon's parameters also went through Newton-Schulz, in fp32 against fp64: its
        # memory is what the write computed
        kept = [opt.state[p]["momentum"] for p in params]
        if memory != "muon":
            kept += [p.detach() for p in params]
        runs[dtype] = kept
    for ours, exact in zip(runs[torch.float32], runs[torch.float64], strict=True):
        assert torch.isfinite(ours).all()
        atol = 16 * torch.finfo(torch.float32).eps * exact.abs().max().item()
        torch.testing.assert_close(ours.double(), exact, rtol=0.0, atol=atol)
