"""The ``cms`` preset: gradient memories at several timescales (AdEMAMix, M3 as configs)."""

import contextlib

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from optim_support import (
    LOCKSTEP_TOL,
    assert_lockstep,
    batch,
    flat_params,
    in_float64,
    loss_at,
    make_model,
    train,
    two_groups,
)

from assocmem import MemoryOptimizer
from assocmem.optim import fused
from assocmem.optim.presets.cms import ademamix_config, debias_factor, m3_config

CONFIGS = {
    "default": {},
    "ademamix": ademamix_config(alpha=2.0, beta3=0.99),
    "m3": m3_config(freq=3),
    "m3_normalized": m3_config(freq=4, normalize=True),
    "m3_polar_express": {**m3_config(freq=3), "ns_coefficients": "polar_express", "ns_steps": 4},
    "three_levels_no_acc": dict(
        alphas=(0.9, 0.8, 0.5),
        freqs=(1, 3, 7),
        weights=(1.0, 0.5, -0.2),
        debias=(True, False, True),
        etas=(0.1, 1.0, 0.3),
        accumulate=False,
    ),
    # The fused Adam kernel takes the first level written every step as lerp(L, g, 1 - alpha):
    # here level 1, and not bias-corrected; level 0 accumulates.
    "fused_base_is_level1": dict(
        alphas=(0.9, 0.8), freqs=(2, 1), weights=(0.3, 1.0), debias=(True, False)
    ),
    # Newton-Schulz reads with every level debiased: the 1-D tensors (biases) skip
    # Newton-Schulz and take the debias factor with their weight instead.
    "orthogonalized_debiased": dict(
        orthogonalize=True, normalize=False, alphas=(0.9, 0.8), freqs=(1, 3), debias=(True, True)
    ),
    # No level can be fused (alpha = 0 carries nothing, freq 4 is not written every step).
    "nothing_to_fuse": dict(alphas=(0.0, 0.9), freqs=(1, 4), weights=(1.0, -0.5)),
    # One plain level is momentum: torch's fused SGD kernel steps it (with L2 weight decay).
    "one_plain_level": dict(
        alphas=(0.85,),
        freqs=(1,),
        etas=(0.3,),
        weights=(2.0,),
        debias=(False,),
        normalize=False,
        decoupled_weight_decay=False,
    ),  # fmt: skip
}


def test_one_plain_level_steps_through_the_fused_sgd_kernel(monkeypatch):
    calls = []
    monkeypatch.setattr(
        fused, "sgd_", lambda *a, **k: calls.append(k) or torch._fused_sgd_(*a, **k)
    )
    model = make_model()
    opt = MemoryOptimizer(model.parameters(), "cms", lr=1e-2, **CONFIGS["one_plain_level"])
    train(model, opt, range(2))
    assert len(calls) == 2
    assert calls[0]["dampening"] == pytest.approx(0.7) and calls[0]["lr"] == pytest.approx(2e-2)


@pytest.mark.parametrize("config", CONFIGS)
def test_foreach_equals_reference_at_every_step(config):
    with in_float64():
        fast_model, ref_model = make_model(), make_model()
        kw = dict(lr=1e-3, weight_decay=0.01, **CONFIGS[config])
        fast = MemoryOptimizer(two_groups(fast_model, 1e-3), "cms", foreach=True, **kw)
        ref = MemoryOptimizer(two_groups(ref_model, 1e-3), "cms", foreach=False, **kw)
        # The fast paths fold bias corrections into eps and the step size, or run the fused
        # Adam kernel (same maths, other rounding): equal to float rounding, not to the bit.
        assert_lockstep(fast_model, fast, ref_model, ref, 30, **LOCKSTEP_TOL)


def ademamix_reference(params, steps, lr, beta1, beta2, beta3, alpha, eps, wd):
    """AdEMAMix (Pagliardini et al. 2024, Alg. 1) without the alpha/beta3 warmup."""
    m1 = [torch.zeros_like(p) for p in params]
    m2 = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for t in range(1, steps + 1):
        grads = yield
        for p, g, a, b, c in zip(params, grads, m1, m2, v, strict=True):
            a.mul_(beta1).add_(g, alpha=1 - beta1)
            b.mul_(beta3).add_(g, alpha=1 - beta3)
            c.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            m1_hat = a / (1 - beta1**t)
            v_hat = c / (1 - beta2**t)
            p.sub_(lr * ((m1_hat + alpha * b) / (v_hat.sqrt() + eps) + wd * p))


@pytest.mark.parametrize("foreach", [False, True])
def test_ademamix_config_equals_an_independent_ademamix(foreach):
    hyper = dict(beta1=0.9, beta2=0.999, beta3=0.9999, alpha=5.0, eps=1e-8)
    lr, wd = 1e-3, 0.1
    model, twin = make_model(), make_model()
    opt = MemoryOptimizer(
        model.parameters(),
        "cms",
        lr=lr,
        weight_decay=wd,
        foreach=foreach,
        **ademamix_config(**hyper),
    )
    twin_params = list(twin.parameters())
    reference = ademamix_reference(twin_params, 40, lr, wd=wd, **hyper)
    next(reference)
    for t in range(40):
        train(model, opt, range(t, t + 1))
        twin.zero_grad()
        loss_at(twin, t).backward()
        with torch.no_grad(), contextlib.suppress(StopIteration):
            reference.send([p.grad for p in twin_params])
        torch.testing.assert_close(flat_params(model), flat_params(twin), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("foreach", [False, True])
def test_one_level_is_momentum_exactly(foreach):
    a, b = make_model(), make_model()
    opt_a = MemoryOptimizer(
        a.parameters(), "cms", lr=1e-2, alphas=(0.9,), freqs=(1,), etas=(1.0,), weights=(1.0,),
        debias=(False,), normalize=False, foreach=foreach,
    )  # fmt: skip
    opt_b = MemoryOptimizer(b.parameters(), "momentum", lr=1e-2, momentum=0.9, foreach=foreach)
    train(a, opt_a, range(20))
    train(b, opt_b, range(20))
    assert torch.equal(flat_params(a), flat_params(b))


@pytest.mark.parametrize("foreach", [False, True])
def test_one_debiased_normalized_level_is_adam(foreach):
    a, b = make_model(), make_model()
    opt_a = MemoryOptimizer(
        a.parameters(), "cms", lr=1e-3, alphas=(0.8,), freqs=(1,), weights=(1.0,), debias=(True,),
        normalize=True, beta2=0.99, eps=1e-8, foreach=foreach,
    )  # fmt: skip
    opt_b = MemoryOptimizer(b.parameters(), "adam", lr=1e-3, betas=(0.8, 0.99), foreach=foreach)
    train(a, opt_a, range(20))
    train(b, opt_b, range(20))
    torch.testing.assert_close(flat_params(a), flat_params(b), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("accumulate", [False, True])
def test_level_k_changes_only_every_freq_k_steps(foreach, accumulate):
    w = torch.nn.Parameter(torch.randn(3, 4))
    freqs = (1, 3, 5)
    opt = MemoryOptimizer(
        [w], "cms", lr=1e-2, alphas=(0.9, 0.9, 0.9), freqs=freqs, weights=(1.0, 1.0, 1.0),
        debias=(True, True, True), accumulate=accumulate, foreach=foreach,
    )  # fmt: skip
    previous = [torch.zeros(3, 4)] * 3
    for t in range(1, 16):
        opt.zero_grad()
        (w.sin() * torch.arange(12.0).reshape(3, 4) * t).sum().backward()
        opt.step()
        levels = [opt.state[w][f"level{k}"].clone() for k in range(3)]
        for k, f in enumerate(freqs):
            assert (not torch.equal(levels[k], previous[k])) == (t % f == 0), (t, k)
        previous = levels


def test_accumulated_level_is_written_with_the_chunk_mean():
    w = torch.nn.Parameter(torch.zeros(2))
    opt = MemoryOptimizer(
        [w], "cms", lr=0.0, alphas=(0.0, 0.5), freqs=(1, 3), etas=(1.0, 1.0), weights=(1.0, 1.0),
        debias=(False, False), normalize=False,
    )  # fmt: skip
    grads = [torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0]), torch.tensor([5.0, 9.0])]
    for g in grads:
        w.grad = g.clone()
        opt.step()
    torch.testing.assert_close(opt.state[w]["level1"], torch.tensor([3.0, 5.0]))
    assert torch.equal(opt.state[w]["acc1"], torch.zeros(2))


def test_debias_factor_undoes_constant_writes():
    for alpha, eta, n in [(0.9, 0.1, 1), (0.99, 1.0, 7), (0.5, 0.3, 20)]:
        level = 0.0
        for _ in range(n):
            level = alpha * level + eta * 2.5
        assert abs(level / debias_factor(alpha, eta, n) - 2.5) < 1e-9
    assert debias_factor(0.9, 0.1, 0) == 1.0


def test_m3_orthogonalizes_matrices():
    w = torch.nn.Parameter(torch.zeros(4, 6))
    opt = MemoryOptimizer([w], "cms", lr=1.0, **m3_config(alpha=0.0))
    w.grad = torch.randn(4, 6)
    opt.step()
    s = torch.linalg.svdvals(w.detach())
    assert ((s > 0.6) & (s < 1.2)).all()


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        (dict(freqs=(1, 2, 3)), "freqs"),
        (dict(weights=(1.0,)), "weights"),
        (dict(debias=(True,)), "debias"),
        (dict(etas=(0.1, 0.1, 0.1)), "etas"),
        (dict(alphas=(0.9, 1.0)), "alphas"),
        (dict(freqs=(1, 0)), "freqs"),
        (dict(etas=(0.1, -1.0)), "etas"),
        (dict(weights=(1.0, float("nan"))), "weights"),
        (dict(beta2=1.0), "beta2"),
        (dict(ns_steps=0), "ns_steps"),
        (dict(alphas=()), "alphas"),
    ],
)
def test_invalid_hyperparameters_name_the_argument(kw, name):
    with pytest.raises(ValueError, match=name):
        MemoryOptimizer(make_model().parameters(), "cms", **kw)


class FusedAdamSpy:
    """Counts the tensors handed to torch's fused Adam kernel (and still runs it)."""

    def __init__(self, monkeypatch):
        self.tensors = 0
        kernel = torch._fused_adam_

        def spy(params, *args, **kwargs):
            self.tensors += len(params)
            return kernel(params, *args, **kwargs)

        monkeypatch.setattr(torch, "_fused_adam_", spy)


@pytest.mark.parametrize(
    ("config", "fused"),
    [
        ({}, True),
        (ademamix_config(), True),
        (CONFIGS["fused_base_is_level1"], True),
        (CONFIGS["nothing_to_fuse"], False),
        (dict(normalize=False), False),
        (m3_config(normalize=True), False),
    ],
)
def test_fused_kernel_takes_exactly_the_adam_like_configurations(monkeypatch, config, fused):
    spy = FusedAdamSpy(monkeypatch)
    model = make_model()
    train(model, MemoryOptimizer(model.parameters(), "cms", lr=1e-3, **config), range(3))
    assert (spy.tensors > 0) == fused


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_fused_path_in_other_dtypes_and_layouts_equals_reference(monkeypatch, dtype):
    """A channels_last conv weight is not contiguous: the kernel must not take it (it indexes
    raw memory), the rest of the model still goes through the kernel."""
    spy = FusedAdamSpy(monkeypatch)
    fast_model, ref_model = make_model().to(dtype), make_model().to(dtype)
    for model in (fast_model, ref_model):
        model.conv.weight.data = model.conv.weight.data.to(memory_format=torch.channels_last)
    assert not fast_model.conv.weight.is_contiguous()
    fast = MemoryOptimizer(fast_model.parameters(), "cms", lr=1e-3, foreach=True)
    ref = MemoryOptimizer(ref_model.parameters(), "cms", lr=1e-3, foreach=False)
    # bf16 rounds every op (the kernel computes in fp32 inside): equal to bf16 precision
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float64 else dict(rtol=2e-2, atol=1e-3)
    for t in range(10):
        x, y = (v.to(dtype) for v in batch(t))
        for model, opt in ((fast_model, fast), (ref_model, ref)):
            opt.zero_grad()
            (model(x) - y).pow(2).mean().backward()
            opt.step()
        torch.testing.assert_close(flat_params(fast_model), flat_params(ref_model), **tol)
    n_params = len(list(fast_model.parameters()))
    assert spy.tensors == 10 * (n_params - 1)


@st.composite
def cms_configs(draw):
    """Any configuration without Newton-Schulz: the fused path or the plain one, whichever
    applies, must stay equal to the reference."""
    levels = draw(st.integers(1, 3))
    alphas = tuple(draw(st.sampled_from([0.0, 0.3, 0.9, 0.99])) for _ in range(levels))
    return dict(
        alphas=alphas,
        freqs=tuple(draw(st.integers(1, 3)) for _ in range(levels)),
        etas=draw(st.none() | st.just(tuple(1.0 for _ in range(levels)))),
        weights=tuple(draw(st.sampled_from([-0.5, 0.0, 0.25, 1.0, 4.0])) for _ in range(levels)),
        debias=tuple(draw(st.booleans()) for _ in range(levels)),
        accumulate=draw(st.booleans()),
        normalize=draw(st.booleans()),
    )


@given(config=cms_configs())
def test_any_configuration_foreach_equals_reference(config):
    with in_float64():
        fast_model, ref_model = make_model(), make_model()
        fast = MemoryOptimizer(fast_model.parameters(), "cms", lr=1e-3, foreach=True, **config)
        ref = MemoryOptimizer(ref_model.parameters(), "cms", lr=1e-3, foreach=False, **config)
        assert_lockstep(fast_model, fast, ref_model, ref, 8, **LOCKSTEP_TOL)


@pytest.mark.parametrize("config", ["default", "ademamix", "m3_normalized"])
def test_reference_second_moment_stays_finite_where_torchs_adam_does(config):
    # Gradients of ~1e20 (float32): g g overflows, (1 - beta2) g g does not (torch's order,
    # the fast path's). The reference once squared first: s = inf, and u / inf = 0 stopped
    # the parameter for good.
    def run(foreach):
        torch.manual_seed(0)
        ps = [torch.nn.Parameter(torch.randn(6, 5)), torch.nn.Parameter(torch.randn(5))]
        opt = MemoryOptimizer(ps, "cms", lr=1e-2, foreach=foreach, **CONFIGS[config])
        g = torch.Generator().manual_seed(1)
        moved = []
        for _ in range(3):
            before = [p.detach().clone() for p in ps]
            for p in ps:
                p.grad = torch.randn(p.shape, generator=g) * 1e20
            opt.step()
            moved += [not torch.equal(p.detach(), b) for p, b in zip(ps, before, strict=True)]
        return [p.detach() for p in ps], [opt.state[p]["exp_avg_sq"] for p in ps], moved

    ref_p, ref_s, moved = run(False)
    fast_p, fast_s, _ = run(True)
    assert all(torch.isfinite(s).all() for s in ref_s)
    # the vector at every step; the matrix too unless Newton-Schulz reads it (its Frobenius
    # normalisation of a ~1e20 matrix is another matter, newton_schulz.py's)
    assert all(moved[1::2]) and (CONFIGS[config].get("orthogonalize") or all(moved[::2]))
    for a, b in zip(ref_s + ref_p, fast_s + fast_p, strict=True):
        torch.testing.assert_close(a, b)
