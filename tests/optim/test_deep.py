import copy

import pytest
import torch
from optim_support import LOCKSTEP_TOL, assert_lockstep, flat_params, in_float64, make_model, train

from assocmem import MemoryOptimizer
from assocmem.optim import get_preset
from assocmem.optim.presets import deep as deep_preset

MLP = ("mlp_w1", "mlp_b1", "mlp_w2", "mlp_b2", "mlp_skip")


@pytest.mark.parametrize("hyper", [{}, {"retention_target": "zero", "retention": 0.99}])
def test_reference_equals_fast_path_at_every_step(hyper):
    with in_float64():
        fast_model, ref_model = make_model(), make_model()
        fast = MemoryOptimizer(fast_model.parameters(), "deep", lr=1e-2, foreach=True, **hyper)
        ref = MemoryOptimizer(ref_model.parameters(), "deep", lr=1e-2, foreach=False, **hyper)
        keys = (*MLP, "inner_loss", "momentum", "prev_grad", "grad_sq")
        assert_lockstep(fast_model, fast, ref_model, ref, 20, state_keys=keys, **LOCKSTEP_TOL)


def run_stream(gradients, n=256, steps=150, **hyper):
    """Feed a synthetic gradient stream to one tensor; returns its inner losses and state."""
    p = torch.nn.Parameter(torch.zeros(n))
    opt = MemoryOptimizer([p], "deep", lr=1e-3, **hyper)
    losses, snapshots = [], []
    g = None
    for t in range(steps):
        g = gradients(t, g)
        p.grad = g.clone()
        opt.step()
        losses.append(opt.state[p]["inner_loss"].item())
        snapshots.append({k: opt.state[p][k].clone() for k in MLP})
    return torch.tensor(losses), snapshots


ALTERNATING = torch.randn(256, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "stream",
    [
        # Oscillating gradients (a too-large step on a stiff direction): momentum forecasts
        # them badly, the memory learns a negative weight on the last gradient.
        lambda t, g: (-1) ** t * ALTERNATING + 0.1 * torch.randn(256),
        # AR(1) gradients: the last gradient carries information momentum smears out.
        lambda t, g: torch.randn(256) + (0.8 * g if g is not None else 0),
    ],
    ids=["alternating", "ar1"],
)
def test_the_memory_learns_to_forecast_the_gradient(stream):
    losses, _ = run_stream(stream)
    start, end = losses[1:11].mean(), losses[-10:].mean()  # no write (and no loss) at step 1
    assert end < 0.7 * start, (start, end)
    torch.manual_seed(0)
    frozen, _ = run_stream(stream, inner_lr=0.0)  # same stream, memory never written
    assert end < 0.7 * frozen[-10:].mean()


def test_mlp_weights_change_every_step():
    _, snaps = run_stream(lambda t, g: torch.randn(256) + 0.5, steps=8)
    fresh = get_preset("deep").init_state(torch.zeros(256), MemoryOptimizer.hyperparameters("deep"))
    assert all(torch.equal(snaps[0][k], fresh[k]) for k in MLP)  # step 1: no context, no write
    first_changed = {"mlp_w2": 1, "mlp_b2": 1, "mlp_skip": 1, "mlp_w1": 2, "mlp_b1": 2}
    for k, start in first_changed.items():  # W1, b1 wait for W2 to leave its zero init
        for t in range(start, len(snaps)):
            assert not torch.equal(snaps[t - 1][k], snaps[t][k]), (k, t)


def test_first_step_is_normalised_momentum():
    p = torch.nn.Parameter(torch.zeros(3, 4))
    g = torch.randn(3, 4)
    opt = MemoryOptimizer([p], "deep", lr=0.1)
    p.grad = g.clone()
    opt.step()
    torch.testing.assert_close(p.detach(), -0.1 * g / g.pow(2).mean().sqrt())


def test_converges_on_an_ill_conditioned_quadratic():
    A = torch.logspace(0, 2, 20)  # condition number 100
    x = torch.nn.Parameter(torch.ones(20))
    opt = MemoryOptimizer([x], "deep", lr=0.1)
    f0 = 0.5 * (A * x * x).sum().item()
    for _ in range(300):
        opt.zero_grad()
        (0.5 * (A * x * x).sum()).backward()
        opt.step()
    assert 0.5 * (A * x * x).sum().item() < 1e-5 * f0


def test_fresh_memories_are_identical_and_seeded():
    p = make_model().fc.weight
    hyper = MemoryOptimizer.hyperparameters("deep")
    a = get_preset("deep").init_state(p, hyper)
    b = get_preset("deep").init_state(p, hyper)
    c = get_preset("deep").init_state(p, {**hyper, "seed": 1})
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["mlp_w1"], c["mlp_w1"])
    assert not torch.equal(a["mlp_w1"], get_preset("deep").init_state(p.T, hyper)["mlp_w1"])


def test_every_param_rank_and_round_trip():
    model = make_model()  # conv (4-D), linear (2-D), biases (1-D), a scalar gain (0-D)
    opt = MemoryOptimizer(model.parameters(), "deep", lr=1e-2)
    train(model, opt, range(3))
    clone = make_model(seed=1)
    clone.load_state_dict(model.state_dict())
    opt2 = MemoryOptimizer(clone.parameters(), "deep", lr=1e-2)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    train(model, opt, range(3, 8))
    train(clone, opt2, range(3, 8))
    assert torch.equal(flat_params(model), flat_params(clone))
    assert torch.isfinite(flat_params(model)).all()


@pytest.mark.parametrize("hyper", [{}, {"retention_target": "zero", "retention": 0.99}])
def test_repeated_layers_step_as_one_batch_with_the_per_tensor_numbers(hyper, monkeypatch):
    # Four 6x6 layers (and four biases of 6) share a size: the fast path steps each size as
    # one batch of MLPs (bmm). In float64 it gives the reference's numbers to LOCKSTEP_TOL,
    # as the per-tensor fast path does; a transposed weight (no flat view) steps alone.
    def model():
        torch.manual_seed(0)
        net = torch.nn.Sequential(*(torch.nn.Linear(6, 6) for _ in range(4)))
        net[2].weight = torch.nn.Parameter(net[2].weight.detach().t().contiguous().t())
        return net

    def run(foreach, one_group):
        with in_float64():
            net = model()
            params = list(net.parameters())
            groups = [{"params": params}] if one_group else [{"params": [p]} for p in params]
            opt = MemoryOptimizer(groups, "deep", lr=1e-2, foreach=foreach, **hyper)
            x = torch.randn(16, 6, generator=torch.Generator().manual_seed(1))
            for t in range(12):
                opt.zero_grad()
                (net(x + 0.1 * t).sin().sum()).backward()
                opt.step()
            state = [v for p in params for v in opt.state[p].values()]
            return flat_params(net), state

    sizes = []
    step_batch = deep_preset._batched_step
    monkeypatch.setattr(
        deep_preset, "_batched_step", lambda ps, *a: (sizes.append(len(ps)), step_batch(ps, *a))
    )
    batched = run(True, True)
    assert sorted(set(sizes)) == [3, 4]  # three 6x6 weights (one transposed), four biases
    per_tensor, reference = run(True, False), run(False, True)
    for got in (batched, per_tensor):
        torch.testing.assert_close(got[0], reference[0], **LOCKSTEP_TOL)
        for a, b in zip(got[1], reference[1], strict=True):
            torch.testing.assert_close(a, b, **LOCKSTEP_TOL)


def test_the_batched_step_decided_on_the_device_gives_the_host_decisions_bits():
    # sync_free=True on the CPU does what an accelerator does: the counts stay on the device,
    # the write always runs and step 1's is undone by a select. Same bits as the host's
    # decisions (tests/optim/test_syncs.py holds this for every preset on TinyNet, whose
    # tensors all differ in size; these repeat, so they step in batches).
    def run(sync_free):
        torch.manual_seed(0)
        net = torch.nn.Sequential(*(torch.nn.Linear(6, 6) for _ in range(3)))
        opt = MemoryOptimizer(net.parameters(), "deep", lr=1e-2, sync_free=sync_free)
        x = torch.randn(16, 6, generator=torch.Generator().manual_seed(1))
        for t in range(6):
            opt.zero_grad()
            (net(x + 0.1 * t).sin().sum()).backward()
            opt.step()
        return flat_params(net), [v for p in net.parameters() for v in opt.state[p].values()]

    (host, host_state), (device, device_state) = run(False), run(True)
    assert torch.equal(host, device)
    assert all(torch.equal(a, b) for a, b in zip(host_state, device_state, strict=True))


@pytest.mark.parametrize("seed", [1.5, -1, True, "0"])
def test_seed_must_be_a_non_negative_integer(seed):
    # a fractional seed was truncated by int() without a word: seed=1.5 drew seed 1's MLP
    with pytest.raises(ValueError, match="seed"):
        MemoryOptimizer([torch.nn.Parameter(torch.zeros(3, 4))], "deep", seed=seed)


def _spiked_run(foreach, sync_free, n, spike, spike_at=1, steps=6):
    """Two tensors of ``n`` (one batched step on the fast path) and a third of another size:
    one gradient ~``spike`` at step ``spike_at``, ordinary ones around it. Returns the
    parameters, each tensor's RMS memory and, per step after the spike, whether each moved."""
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(size)) for size in (n, n, n + 3)]
    opt = MemoryOptimizer(ps, "deep", lr=1e-2, foreach=foreach, sync_free=sync_free)
    g = torch.Generator().manual_seed(1)
    moved = []
    for t in range(1, steps + 1):
        before = [p.detach().clone() for p in ps]
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g) * (spike if t == spike_at else 1.0)
        opt.step()
        if t > spike_at:
            moved.append([not torch.equal(p.detach(), b) for p, b in zip(ps, before, strict=True)])
    return [p.detach() for p in ps], [opt.state[p]["grad_sq"] for p in ps], moved


@pytest.mark.parametrize(
    "n, spike, spike_at",
    [
        (20, 1e20, 1),  # g^2 overflows float32 (|g| > 1.8e19); r / (1 - rho) at step 1 too
        (20, 1e20, 3),
        (100_000, 1e18, 2),  # g^2 does not, its sum over the coordinates does
    ],
)
def test_a_gradient_spike_does_not_stop_the_tensor_for_good(n, spike, spike_at):
    # mean(g^2) once overflowed: r = inf for good, g_hat = g / inf = 0, the tensor never moved
    # again (torch's Adam steps on through the same spike).
    ref_p, ref_r, ref_moved = _spiked_run(False, False, n, spike, spike_at)
    for foreach, sync_free in ((True, False), (True, True), (False, True)):
        p, r, moved = _spiked_run(foreach, sync_free, n, spike, spike_at)
        assert moved == ref_moved
        for a, b in zip(p + r, ref_p + ref_r, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert all(all(step) for step in ref_moved)
    assert all(torch.isfinite(x).all() for x in ref_p + ref_r)
    assert all(r > 1e30 for r in ref_r)  # the spike is remembered (decaying like Adam's v)


@pytest.mark.parametrize("foreach", [True, False])
def test_an_rms_beyond_the_float_range_saturates_the_memory(foreach):
    # An RMS of ~1e30: (1 - rho) mean(g^2) is beyond float32 whatever the order; r stays at
    # the largest float (from where it decays) instead of inf, and the tensors move on.
    p, r, moved = _spiked_run(foreach, False, 20, 1e30, 1, steps=3)
    top = torch.finfo(torch.float32).max
    assert all(x.item() < top and x.item() > 0.99**2 * top for x in r)
    assert all(all(step) for step in moved) and all(torch.isfinite(x).all() for x in p)


@pytest.mark.parametrize("foreach", [True, False])
def test_the_rms_memory_keeps_its_bits_for_ordinary_gradients(foreach):
    # Below the overflow the guards select the plain mean square and root: the RMS memory is
    # (1 - rho) mean(g^2) to the bit, the first step lr * g / sqrt(mean(g^2)) (to rounding:
    # the skip reads m_hat = ((1 - beta) g_hat) / (1 - beta)).
    p = torch.nn.Parameter(torch.zeros(3, 4))
    g = torch.randn(3, 4, generator=torch.Generator().manual_seed(2)) * 1e6
    opt = MemoryOptimizer([p], "deep", lr=0.1, foreach=foreach)
    p.grad = g.clone()
    opt.step()
    assert torch.equal(opt.state[p]["grad_sq"], g.pow(2).mean() * (1 - 0.99))
    rms = (opt.state[p]["grad_sq"] / (1 - 0.99)).sqrt() + 1e-8
    torch.testing.assert_close(p.detach(), -0.1 * g / rms, rtol=1e-6, atol=0)


@pytest.mark.parametrize("foreach, sync_free", [(False, False), (True, False), (True, True)])
def test_a_spike_beyond_the_float_range_is_normalised_as_in_exact_arithmetic(foreach, sync_free):
    # A 1e30 gradient: r = (1 - rho) mean(g^2) ~ 1e58 saturates float32's memory, which once
    # divided g by a root ~1.8e19 too small (g_hat ~ 5e10: a weight moved by ~1e8 at lr 1e-2).
    # float64 holds r exactly, so it is the reference; float32 must follow it. Tolerance: the
    # normalised steps are O(lr) and agree to float32 rounding of a few ops each (1e-6
    # relative); the ordinary steps after the spike read ~1e-30 in float64 and ~1e-19 in the
    # saturated memory (the memory remembers less than the spike), both far below atol.
    runs = []
    for dtype in (torch.float64, torch.float32):
        torch.manual_seed(0)
        # drawn in float32 and cast: the same numbers in both runs
        ps = [torch.nn.Parameter(torch.randn(size).to(dtype)) for size in (20, 20, 23)]
        opt = MemoryOptimizer(ps, "deep", lr=1e-2, foreach=foreach, sync_free=sync_free)
        g = torch.Generator().manual_seed(1)
        for t in range(1, 4):
            for p in ps:
                p.grad = (torch.randn(p.shape, generator=g) * (1e30 if t == 1 else 1)).to(dtype)
            opt.step()
        runs.append([p.detach() for p in ps])
    for exact, single in zip(*runs, strict=True):
        torch.testing.assert_close(single, exact.float(), rtol=1e-5, atol=1e-6)
