import copy

import pytest
import torch
from optim_support import LOCKSTEP_TOL, TinyNet, flat_params, in_float64, make_model, train
from torch import nn

from assocmem import MemoryOptimizer
from assocmem.optim.newton_schulz import zeropower_via_newtonschulz5
from assocmem.optim.reads import spectral_scale


class TwinNet(TinyNet):
    """TinyNet plus two same-shaped matrices, so the fast path stacks a batch for NS."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 5)
        self.b = nn.Linear(5, 5, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.conv(x)).flatten(1)
        h = torch.tanh(self.fc(h))
        h = torch.tanh(self.b(torch.tanh(self.a(h))))
        return self.gain * self.out(h).squeeze(-1)


@pytest.mark.parametrize(
    "hyper",
    [
        {},
        {"nesterov": False, "scale": "rms"},
        {"momentum": 0.0, "adam_lr_ratio": 0.1},
        {"ns_coefficients": "polar_express"},
        {"ns_coefficients": "polar_express", "ns_steps": 3, "ns_lower": 1e-2},
        {"gamma": 0.5},
        {"gamma": 0.3, "erase": "row", "nesterov": False},
        {"row_norm": True},
        {"row_norm": True, "row_beta2": 0.0, "scale": "rms"},
        {"gamma": 1.0, "erase": "row", "row_norm": True, "ns_coefficients": "polar_express"},
    ],
)
def test_reference_equals_fast_path_at_every_step(hyper):
    with in_float64():
        torch.manual_seed(0)
        fast_model = TwinNet()
        ref_model = TwinNet()
        ref_model.load_state_dict(fast_model.state_dict())
        fast = MemoryOptimizer(fast_model.parameters(), "muon", lr=0.02, foreach=True, **hyper)
        ref = MemoryOptimizer(ref_model.parameters(), "muon", lr=0.02, foreach=False, **hyper)
        for t in range(20):
            train(fast_model, fast, range(t, t + 1))
            train(ref_model, ref, range(t, t + 1))
            torch.testing.assert_close(
                flat_params(fast_model), flat_params(ref_model), **LOCKSTEP_TOL
            )


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("scale", ["spectral", "rms"])
def test_matrix_updates_are_orthogonal_up_to_scale(foreach, scale):
    model = make_model()
    lr = 1e-2
    opt = MemoryOptimizer(model.parameters(), "muon", lr=lr, foreach=foreach, scale=scale)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, opt, range(1))
    for name in ("fc.weight", "out.weight", "conv.weight"):
        p = dict(model.named_parameters())[name]
        delta = (before[name] - p.detach()).reshape(p.shape[0], -1)
        rows, cols = delta.shape
        sv = torch.linalg.svdvals(delta / (lr * spectral_scale(rows, cols, scale)))
        assert ((sv > 0.5) & (sv < 1.5)).all(), (name, sv)


def test_update_scales():
    assert spectral_scale(20, 5, "spectral") == 2.0
    assert spectral_scale(5, 20, "spectral") == 1.0
    assert spectral_scale(4, 100, "rms") == pytest.approx(2.0)


@pytest.mark.parametrize("foreach", [True, False])
def test_vectors_and_scalars_follow_the_adam_fallback(foreach):
    def model():
        torch.manual_seed(0)
        return nn.ParameterList([nn.Parameter(torch.randn(5)), nn.Parameter(torch.tensor(0.3))])

    def loss(ps, t):
        g = torch.Generator().manual_seed(t)
        x = torch.randn(5, generator=g)
        return ((ps[0] * x).sum() * ps[1] - 1).pow(2)

    a, b = model(), model()
    muon = MemoryOptimizer(
        a,
        "muon",
        lr=2e-2,
        adam_betas=(0.8, 0.99),
        adam_eps=1e-6,
        adam_lr_ratio=0.5,
        weight_decay=0.1,
        foreach=foreach,
    )
    adam = MemoryOptimizer(
        b, "adam", lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.2, foreach=foreach
    )
    for t in range(15):
        for opt, ps in ((muon, a), (adam, b)):
            opt.zero_grad()
            loss(ps, t).backward()
            opt.step()
    # Same numbers up to the decoupled decay factor (lr * wd is 2e-3 in both). (adam_eps is
    # pinned by the eps test below: 1e-6 against 1e-8 is below these tolerances.)
    for p, q in zip(a, b, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert set(muon.state[a[0]]) == {"step", "exp_avg", "exp_avg_sq"}


def test_state_layout_and_round_trip():
    model = make_model()
    opt = MemoryOptimizer(model.parameters(), "muon", lr=0.02)
    train(model, opt, range(3))
    assert set(opt.state[model.conv.weight]) == {"step", "momentum"}
    assert set(opt.state[model.gain]) == {"step", "exp_avg", "exp_avg_sq"}
    clone = make_model()
    clone.load_state_dict(model.state_dict())
    opt2 = MemoryOptimizer(clone.parameters(), "muon", lr=0.02)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    train(model, opt, range(3, 6))
    train(clone, opt2, range(3, 6))
    assert torch.equal(flat_params(model), flat_params(clone))


def _thirty_steps(make) -> torch.Tensor:  # noqa: ANN001
    """Two matrices after 30 steps of ``make(params)`` on a seeded linear + quadratic loss."""
    torch.manual_seed(0)
    ws = [torch.nn.Parameter(torch.randn(6, 4)), torch.nn.Parameter(torch.randn(3, 8))]
    opt = make(ws)
    for t in range(30):
        g = torch.Generator().manual_seed(t)
        loss = sum((w * torch.randn(w.shape, generator=g)).sum() + w.pow(2).sum() for w in ws)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return torch.cat([w.detach().flatten() for w in ws])


@pytest.mark.parametrize("nesterov", [True, False])
def test_matches_torch_muon_up_to_its_bfloat16_orthogonalisation(nesterov):
    """torch.optim.Muon runs Newton-Schulz in bf16; we run it in fp32 (bf16 is ~20x slower on
    CPU and less exact), so the two agree to bf16 rounding, not bit-for-bit."""

    kw = {"lr": 0.02, "weight_decay": 0.1, "momentum": 0.9, "nesterov": nesterov}
    expected = _thirty_steps(lambda ps: torch.optim.Muon(ps, **kw))
    got = _thirty_steps(lambda ps: MemoryOptimizer(ps, "muon", **kw))
    torch.testing.assert_close(got, expected, rtol=0, atol=5e-3)
    assert (got - expected).abs().max() > 0  # fp32 vs bf16: equal would mean we are bf16 too


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("erase", ["tensor", "row"])
def test_delta_rule_erase_writes_the_nested_learning_momentum(foreach, erase):
    """``m <- (beta I - gamma g_hat g_hat^T) m + g`` (per tensor, or per row), then the read."""
    beta, gamma = 0.9, 0.6
    gen = torch.Generator().manual_seed(0)
    w = nn.Parameter(torch.randn(4, 6, generator=gen, dtype=torch.float64))
    opt = MemoryOptimizer([w], "muon", lr=0.1, momentum=beta, gamma=gamma, erase=erase,
                          foreach=foreach)  # fmt: skip
    w.grad = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    opt.step()
    m = opt.state[w]["momentum"].clone()
    torch.testing.assert_close(m, w.grad)  # an empty memory has nothing to erase
    g = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    w.grad = g
    opt.step()
    rows_g, rows_m = (g.reshape(1, -1), m.reshape(1, -1)) if erase == "tensor" else (g, m)
    g_hat = rows_g / torch.linalg.vector_norm(rows_g, dim=1, keepdim=True)
    erased = beta * rows_m - gamma * g_hat * (g_hat * rows_m).sum(dim=1, keepdim=True)
    torch.testing.assert_close(opt.state[w]["momentum"], erased.reshape(4, 6) + g)
    # along g_hat the old memory is kept with factor beta - gamma, the rest with beta
    along = (g_hat * (opt.state[w]["momentum"].reshape(rows_g.shape) - rows_g)).sum(dim=1)
    torch.testing.assert_close(along, (beta - gamma) * (g_hat * rows_m).sum(dim=1))


@pytest.mark.parametrize(
    "hyper",
    [{"ns_coefficients": "polar_express"}, {"gamma": 0.5}, {"row_norm": True}],
)
def test_each_option_changes_the_trajectory(hyper):
    def run(**kw):
        model = make_model()
        train(model, MemoryOptimizer(model.parameters(), "muon", lr=0.02, **kw), range(5))
        return flat_params(model)

    assert (run(**hyper) - run()).abs().max() > 1e-4


@pytest.mark.parametrize("shape", [(16, 32), (40, 24), (3, 16, 32)])
def test_bfloat16_newton_schulz_keeps_the_band_and_the_input_dtype(shape):
    g = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    full = zeropower_via_newtonschulz5(g)
    half = zeropower_via_newtonschulz5(g, dtype=torch.bfloat16)
    assert half.dtype == torch.float32
    s = torch.linalg.svdvals(half)
    # Jordan's quintic puts these matrices' singular values (all above 5 % of ||G||_F) into
    # about [0.68, 1.2] in exact arithmetic; bf16's 2^-8 rounding per product moves them ~1 %
    assert ((s > 0.6) & (s < 1.3)).all(), s
    # entries of O are about 1/sqrt(cols) <= 0.25 here: a few bf16 ulps of them apart
    torch.testing.assert_close(half, full, rtol=0, atol=2e-2)
    assert not torch.equal(half, full)  # the iteration did run in bf16


@pytest.mark.parametrize("nesterov", [True, False])
def test_bfloat16_newton_schulz_agrees_with_torch_muon(nesterov):
    """``ns_dtype="bfloat16"`` iterates as torch.optim.Muon does (bf16, its fused products).
    Not bit-for-bit: our momentum is Hebbian (``m <- beta m + g``), torch's an EMA, and NS's
    input rounds to bf16 differently at the two scales. Bound: each step's O may differ by a few
    bf16 ulps (~2^-6 of entries <= 1), over 30 steps of ``lr * s <= 0.02 * sqrt(2)``: ~0.013."""

    kw = {"lr": 0.02, "weight_decay": 0.1, "momentum": 0.9, "nesterov": nesterov}
    expected = _thirty_steps(lambda ps: torch.optim.Muon(ps, **kw))
    half = _thirty_steps(lambda ps: MemoryOptimizer(ps, "muon", ns_dtype="bfloat16", **kw))
    full = _thirty_steps(lambda ps: MemoryOptimizer(ps, "muon", **kw))
    torch.testing.assert_close(half, expected, rtol=0, atol=1.5e-2)
    assert not torch.equal(half, full)


def test_ns_dtype_is_validated():
    w = torch.nn.Parameter(torch.randn(4, 4))
    with pytest.raises(ValueError, match="ns_dtype"):
        MemoryOptimizer([w], "muon", ns_dtype="float16")


@pytest.mark.parametrize("sync_free", [False, True])
def test_adam_fallback_reference_stays_finite_where_torchs_adam_does(sync_free):
    # Vector gradients of ~4e19 (float32): g g overflows, (1 - beta2) g g does not at the
    # fallback's beta2 = 0.95 (torch's order, the fast path's). The reference (adam's) once
    # squared first: v = inf, and m / inf = 0 stopped the vector for good.
    def run(foreach):
        torch.manual_seed(0)
        ps = [nn.Parameter(torch.randn(20)), nn.Parameter(torch.randn(6, 5))]
        opt = MemoryOptimizer(ps, "muon", lr=1e-2, foreach=foreach, sync_free=sync_free)
        g = torch.Generator().manual_seed(1)
        moved = []
        for _ in range(3):
            before = ps[0].detach().clone()
            for p in ps:
                p.grad = torch.randn(p.shape, generator=g).sign() * 4e19
            opt.step()
            moved.append(not torch.equal(ps[0].detach(), before))
        return [p.detach() for p in ps], opt.state[ps[0]]["exp_avg_sq"], moved

    (ref_p, ref_v, moved), (fast_p, fast_v, _) = run(False), run(True)
    assert torch.isfinite(ref_v).all() and ref_v.max() > 1e38 and all(moved)
    torch.testing.assert_close(ref_v, fast_v)
    for a, b in zip(ref_p, fast_p, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("size", [1e10, 1e20, 1e30])
def test_newton_schulz_is_scale_free_across_the_float_range(size):
    # (Where the norm is within ~1e4 of eps = 1e-7, eps shows, by design: 0 maps to 0.)
    # The Frobenius norm of a float32 matrix overflows from entries ~1.8e19 / sqrt(n): the
    # normalised input was 0 (a zero step) and its orthogonalisation 0. Scale-free maps give
    # the same matrix; tolerance: float32 rounding of the division by the largest entry and
    # its propagation through five quintics (measured ~1e-6; the result is O(1)).
    g = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    expected = zeropower_via_newtonschulz5(g)
    torch.testing.assert_close(zeropower_via_newtonschulz5(g * size), expected, rtol=0, atol=1e-5)
    stacked = torch.stack([g * size, g])  # one huge matrix beside an ordinary one: each its own
    torch.testing.assert_close(
        zeropower_via_newtonschulz5(stacked), torch.stack([expected, expected]), rtol=0, atol=1e-5
    )


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("gamma", [0.0, 0.5])
def test_muon_steps_on_gradients_near_the_float_range(foreach, gamma):
    # The momentum sum m = beta m + g settles near 20 g: past 1.7e37 it overflowed to inf,
    # the step wrote NaN into the weight (nothing skipped) and the state would not load. Now
    # 1e30 gradients step as ordinary ones do (Newton-Schulz is scale-free) and 3e38 ones keep
    # the weight finite with a loadable state.
    def run(size: float) -> tuple[torch.Tensor, dict]:
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.randn(8, 5))
        opt = MemoryOptimizer([p], "muon", lr=0.02, gamma=gamma, foreach=foreach)
        g = torch.randn(8, 5, generator=torch.Generator().manual_seed(1))
        for _ in range(40):
            p.grad = g * size
            opt.step()
        return p.detach(), opt.state_dict()

    ordinary, _ = run(1.0)
    huge, _ = run(1e30)
    torch.testing.assert_close(huge, ordinary, rtol=0, atol=1e-4)
    top, state = run(3e38)
    assert torch.isfinite(top).all()
    fresh = MemoryOptimizer([torch.nn.Parameter(top.clone())], "muon", gamma=gamma)
    fresh.load_state_dict(state)  # finite: loads


@pytest.mark.parametrize("foreach", [False, True])
def test_the_adam_fallback_takes_adam_eps(foreach):
    # eps 0.1 on unit gradients halves the first step; an ignored adam_eps (the default 1e-8)
    # would step lr * adam_lr_ratio * 1
    b, s = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(()))
    opt = MemoryOptimizer([b, s], "muon", lr=0.2, adam_eps=0.1, adam_lr_ratio=0.5, foreach=foreach)
    b.grad, s.grad = torch.full((3,), 0.1), torch.tensor(0.1)
    opt.step()
    # Adam's first step: lr m_hat / (sqrt(v_hat) + eps) = 0.1 * 0.1 / (0.1 + 0.1) = 0.05
    torch.testing.assert_close(b.detach(), torch.full((3,), -0.05))
    torch.testing.assert_close(s.detach(), torch.tensor(-0.05))
