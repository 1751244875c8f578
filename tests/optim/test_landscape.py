"""The ``landscape`` preset: a secant memory that recalls inverse curvature."""

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
from assocmem.memory import MatrixMemory, delta_write, read
from assocmem.optim import optimizer
from assocmem.optim.presets.landscape import (
    diagonal_write,
    lowrank_direction,
    lowrank_read,
    lowrank_write,
    scalar_write,
    secant_trusted,
    weak_read,
    weak_secant_write,
)


def spd(dim, cond, *, dense, seed=0):
    gen = torch.Generator().manual_seed(seed)
    eig = torch.logspace(0, torch.log10(torch.tensor(float(cond))).item(), dim, dtype=torch.float64)
    if not dense:
        return torch.diag(eig)
    Q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
    return Q @ torch.diag(eig) @ Q.T


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"form": "diagonal"},
        {"form": "diagonal", "beta": 0.9, "rho": 0.5},
        # secants above h_max (asserted below), clamped on the fast path's multi-tensor
        # blocks; h0 below h_max, so a curvature at h_max was clamped there, not left at h0
        {"form": "diagonal", "h0": 0.01, "h_max": 0.02},
        {"form": "lowrank"},
        {"form": "lowrank", "rank": 2, "beta": 0.5},
        {"form": "diagonal", "period": 3},
        {"period": 4, "beta": 0.5, "form": "lowrank"},
        {"form": "scalar"},
        {"form": "scalar", "period": 3, "beta": 0.5, "rho": 0.5},
        {"form": "weak"},
        {"form": "weak", "beta": 0.9, "rho": 0.5, "sigma": 0.1},
    ],
)
def test_foreach_equals_reference_at_every_step(kw):
    with in_float64():
        fast_model, ref_model = make_model(), make_model()
        kw = dict(lr=1e-2, weight_decay=0.01, **kw)
        fast = MemoryOptimizer(two_groups(fast_model, 1e-2), "landscape", foreach=True, **kw)
        ref = MemoryOptimizer(two_groups(ref_model, 1e-2), "landscape", foreach=False, **kw)
        assert_lockstep(fast_model, fast, ref_model, ref, 30, **LOCKSTEP_TOL)
    if "h_max" in kw:  # the bound binds: the reference clamps some coordinate to it
        ref_h = torch.cat([ref.state[q]["curvature"].flatten() for q in ref_model.parameters()])
        fast_h = torch.cat([fast.state[p]["curvature"].flatten() for p in fast_model.parameters()])
        assert ref_h.max() == kw["h_max"] and fast_h.max() <= kw["h_max"]


def test_diagonal_memory_recalls_inverse_curvature():
    a = torch.logspace(-2, 3, 12, dtype=torch.float64)  # diagonal Hessian, condition 1e5
    H = torch.ones(12, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    for _ in range(40):  # rho < 1: each write moves H a fraction of the way to s / y
        s = torch.randn(12, generator=gen, dtype=torch.float64)
        H = diagonal_write(
            H, s, a * s, torch.ones(12, dtype=torch.bool), rho=0.5, h_min=1e-4, h_max=1e4
        )
    y = torch.randn(12, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(H * y, y / a, rtol=1e-6, atol=0)


def test_diagonal_write_skips_masked_and_clamps():
    H = torch.tensor([1.0, 1.0, 1.0])
    s, y = torch.tensor([1.0, 1.0, 1e3]), torch.tensor([2.0, 1.0, 1.0])
    new = diagonal_write(H, s, y, torch.tensor([True, False, True]), rho=1.0, h_min=0.1, h_max=10.0)
    assert new.tolist() == [0.5, 1.0, 10.0]


@pytest.mark.parametrize("rho", [1.0, 0.5])
@pytest.mark.parametrize(("dtype", "scale"), [(torch.float32, 1e20), (torch.float64, 1e160)])
@pytest.mark.parametrize(
    "path",
    [
        "foreach",
        "sync_free",
        pytest.param(
            "compile",
            marks=[
                pytest.mark.slow,
                # the eager fallback would give the numbers without testing compiled code
                pytest.mark.filterwarnings("error:torch.compile could not build:RuntimeWarning"),
            ],
        ),
    ],
)
def test_diagonal_reference_follows_the_fast_path_where_y_squared_overflows(
    monkeypatch, path, dtype, scale, rho
):
    """Finite gradients whose change ``y`` has ``y^2`` beyond the dtype's range (``|y|`` above
    1.8e19 in float32, 1.3e154 in float64), among ordinary coordinates: the reference's rate
    ``rho / y^2`` is 0 there and its delta write was ``0 * inf``, NaN in ``H`` and the
    parameters from the second step on (the compiled body shares it). It now steps toward
    ``s / y`` itself there, as the fast path does: every path stays finite and agrees with the
    reference (to the rounding of the ordinary coordinates' writes, compounded over 6 steps:
    measured within 4 eps)."""
    monkeypatch.setattr(optimizer, "COMPILED_FROM", 0)  # compile=True: compile even small ones
    out = {}
    for mode in (path, "reference"):
        gen = torch.Generator().manual_seed(0)
        shapes = [(4, 5), (5,), ()]
        params = [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=dtype)) for s in shapes]
        kw = {"compile": True} if mode == "compile" else {"foreach": mode != "reference"}
        opt = MemoryOptimizer(
            params, "landscape", form="diagonal", lr=1e-2, rho=rho, sync_free=mode == "sync_free",
            **kw,
        )  # fmt: skip
        for _ in range(6):
            for p in params:  # every third coordinate ordinary, the others huge
                huge = torch.arange(p.numel()).reshape(p.shape) % 3 != 0
                p.grad = torch.randn(p.shape, generator=gen, dtype=dtype)
                p.grad[huge] *= scale
            opt.step()
        out[mode] = [t for p in params for t in (p.detach(), opt.state[p]["curvature"])]
        H = opt.state[params[0]]["curvature"]
        assert ((H != 1.0) & (torch.arange(20).reshape(4, 5) % 3 != 0)).any()  # huge y written
    for fast, ref in zip(out[path], out["reference"], strict=True):
        assert torch.isfinite(fast).all() and torch.isfinite(ref).all()
        torch.testing.assert_close(fast, ref, rtol=1000 * torch.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize(("rank", "pairs"), [(6, 6), (8, 20)])
def test_lowrank_memory_recalls_inverse_hessian(rank, pairs):
    dim = 6
    A = spd(dim, 1e3, dense=True)
    S, Y = torch.zeros(rank, dim, dtype=torch.float64), torch.zeros(rank, dim, dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    count = 0
    for _ in range(pairs):  # beyond the budget the oldest pairs are dropped
        s = torch.randn(dim, generator=gen, dtype=torch.float64)
        count = lowrank_write(S, Y, count, s, A @ s)
    assert count == min(rank, pairs)
    for _ in range(3):
        y = torch.randn(dim, generator=gen, dtype=torch.float64)
        torch.testing.assert_close(
            lowrank_read(S, Y, count, 0.3, y), torch.linalg.solve(A, y), rtol=1e-6, atol=1e-9
        )


def test_lowrank_read_is_the_delta_write_memory():
    # With orthogonal keys, sequential Broyden delta writes from h0 I (eta = 1 / |y|^2) build
    # exactly the multisecant memory the factored form reads.
    dim, m, h0 = 7, 3, 0.5
    gen = torch.Generator().manual_seed(2)
    Q, _ = torch.linalg.qr(torch.randn(dim, m, generator=gen, dtype=torch.float64))
    Y = (Q * torch.tensor([2.0, 0.5, 3.0], dtype=torch.float64)).T  # orthogonal, unequal norms
    S = torch.randn(m, dim, generator=gen, dtype=torch.float64)
    dense = MatrixMemory(h0 * torch.eye(dim, dtype=torch.float64))
    for s, y in zip(S, Y, strict=True):
        dense = delta_write(dense, y, s, lr=1 / y.dot(y).item())
    for y, s in zip(Y, S, strict=True):
        torch.testing.assert_close(read(dense, y), s)  # every secant condition holds
    d = torch.randn(dim, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(lowrank_read(S, Y, m, h0, d), read(dense, d))


def test_lowrank_direction_keeps_a_gain_up_to_h_max_and_falls_back_above_it():
    # one pair with s = c y along e1: H d = c d for d = e1, a gain of c. The guard bounds
    # |H d|^2 <= h_max^2 |d|^2, i.e. a gain of at most h_max (100): 50 is kept, 101 is not
    e1 = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    bounds = {"h0": 1.0, "h_min": 0.01, "h_max": 100.0}
    for c, want in ((50.0, 50.0 * e1), (101.0, 1.0 * e1)):  # above the bound: h0 d
        out = lowrank_direction((c * e1)[None], e1[None], 1, e1, **bounds)
        assert torch.equal(out, want), (c, out)


@pytest.mark.parametrize(("dtype", "power"), [(torch.float32, 70), (torch.float64, 520)])
def test_lowrank_read_of_keys_that_overflow_their_gram_is_the_unscaled_read(dtype, power):
    """``H`` is unchanged when every stored pair ``(s_j, y_j)`` is scaled alike. Scaled by
    2^70 (float32) or 2^520 (float64), the keys' Gram ``Y Y^T`` overflows their dtype and its
    pseudo-inverse raised (``LinAlgError``); the read then forms it in float64 from the keys
    rescaled by a power of two, and recalls what the unscaled window recalls."""
    gen = torch.Generator().manual_seed(5)
    S, Y = (torch.randn(4, 9, generator=gen, dtype=dtype) for _ in range(2))
    d = torch.randn(9, generator=gen, dtype=dtype)
    c = 2.0**power
    assert not torch.isfinite((c * Y) @ (c * Y).mT).any()
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 0}
    for pairs in (1, 4):
        got = lowrank_read(c * S, c * Y, pairs, 0.5, d)
        torch.testing.assert_close(got, lowrank_read(S, Y, pairs, 0.5, d), **tol)


def quadratic(A, w, b, c):
    return 0.5 * (w @ A @ w + 3 * b * b + 50 * c.sum() ** 2)


@pytest.mark.parametrize(("dtype", "scale"), [(torch.float32, 1e20), (torch.float64, 1e160)])
def test_lowrank_form_steps_gradients_that_overflow_the_gram_and_trains_on(dtype, scale):
    """Finite gradients of ~1e20 (float32; 1e160 in float64) store pairs whose keys' Gram
    overflows the dtype (in one-element tensors: in larger ones the noise test's ``||g||``
    overflows as well and rejects the pair): the read's pseudo-inverse raised, with the step
    partly applied, and so did every later step while such a pair was in the window. Now no
    step raises, nothing non-finite is stored, the foreach path gives the reference's bits,
    and once ordinary gradients return (a quadratic: dense on ``w``, ``3 b^2 / 2`` and
    ``50 c^2 / 2``) it trains on: the loss converges."""
    A = spd(8, 1e3, dense=True).to(dtype)
    out = {}
    for foreach in (True, False):
        gen = torch.Generator().manual_seed(0)
        shapes = [(8,), (), (1, 1)]
        params = [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=dtype)) for s in shapes]
        opt = MemoryOptimizer(
            params, "landscape", form="lowrank", lr=1 / scale, rank=8, h0=1e-3, h_min=1e-4,
            foreach=foreach,
        )  # fmt: skip
        overflowed = False
        for _ in range(6):  # huge gradients, at an lr that keeps the moves near 1
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen, dtype=dtype) * scale
            opt.step()
            for p in params:
                st = opt.state[p]
                Y = st["secant_y"][: int(st["pairs"])]
                overflowed |= not bool(torch.isfinite(Y @ Y.mT).all())
                assert all(torch.isfinite(v).all() for v in (p, *st.values()))
        assert overflowed
        opt.param_groups[0]["lr"] = 1.0
        start = quadratic(A, *params).item()
        for _ in range(80):
            opt.zero_grad()
            quadratic(A, *params).backward()
            opt.step()
        assert quadratic(A, *params).item() < 1e-8 * start
        out[foreach] = [t for p in params for t in (p.detach(), *opt.state[p].values())]
    assert all(torch.equal(a, b) for a, b in zip(out[True], out[False], strict=True))


@given(
    cond=st.floats(1.0, 1e4),
    seed=st.integers(0, 2**16),
)
def test_scalar_memory_recalls_a_step_inside_the_inverse_spectrum(cond, seed):
    """One write stores s^T A s / s^T A^2 s (Barzilai-Borwein): a Rayleigh quotient of A^-1
    under the weight A s, so it lies in [1 / lambda_max, 1 / lambda_min]; for A = c I it
    is exactly 1 / c."""
    A = spd(6, cond, dense=True, seed=seed)
    s = torch.randn(6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    h = scalar_write(torch.tensor(1.0, dtype=torch.float64), s, A @ s, torch.tensor(True),
                     rho=1.0, h_min=1e-9, h_max=1e9)  # fmt: skip
    eig = torch.linalg.eigvalsh(A)
    assert 1 / eig[-1] * (1 - 1e-9) <= h <= 1 / eig[0] * (1 + 1e-9)
    y = A @ s  # h minimises 1/2 ||h y - s||^2: the recall error is orthogonal to the key
    assert abs(torch.dot(h * y - s, y)) <= 1e-9 * torch.dot(s, y)
    h_iso = scalar_write(torch.tensor(1.0, dtype=torch.float64), s, 3.0 * s, torch.tensor(True),
                         rho=1.0, h_min=1e-9, h_max=1e9)  # fmt: skip
    torch.testing.assert_close(h_iso, torch.tensor(1 / 3, dtype=torch.float64))


def test_scalar_write_keeps_h_on_an_untrusted_pair_and_clamps():
    s, y = torch.tensor([1.0, 2.0]), torch.tensor([-1.0, -2.0])  # s^T y < 0: negative curvature
    assert not secant_trusted(s, y, y, torch.zeros(2), 1e-6)
    h = torch.tensor(0.5)
    assert scalar_write(h, s, y, torch.tensor(False), rho=1.0, h_min=0.1, h_max=10.0) == 0.5
    tiny_y = torch.tensor([1e-3, 0.0])  # a secant of 1000, above h_max
    assert secant_trusted(s, tiny_y, tiny_y, torch.zeros(2), 1e-6)
    assert scalar_write(h, s, tiny_y, torch.tensor(True), rho=1.0, h_min=0.1, h_max=10.0) == 10.0
    assert not secant_trusted(s, tiny_y, tiny_y + 1e9, torch.full((2,), 1e9), 1e-6)  # noise


def test_scalar_form_beats_the_best_fixed_step_on_a_dense_quadratic():
    dim = 20
    A = spd(dim, 1e3, dense=True).float()
    w = torch.nn.Parameter(torch.randn(dim, generator=torch.Generator().manual_seed(0)))
    v = w.detach().clone()
    opt = MemoryOptimizer([w], "landscape", lr=1.0, form="scalar", h0=1e-3, h_min=1e-4)
    start = 0.5 * (w @ A @ w).item()
    for _ in range(200):
        opt.zero_grad()
        (0.5 * w @ A @ w).backward()
        opt.step()
    for _ in range(200):  # gradient descent at its best fixed step, 2 / (L + mu)
        v = v - 2 / (1e3 + 1) * (A @ v)
    final, final_gd = (0.5 * w @ A @ w).item(), (0.5 * v @ A @ v).item()
    assert final < 1e-6 * start and final < 1e-4 * final_gd


@pytest.mark.parametrize(("form", "dense"), [("diagonal", False), ("lowrank", True)])
def test_converges_on_an_ill_conditioned_quadratic(form, dense):
    dim = 8
    A = spd(dim, 1e3, dense=dense).float()
    w = torch.nn.Parameter(torch.randn(dim))
    opt = MemoryOptimizer([w], "landscape", lr=1.0, form=form, rank=dim, h0=1e-3, h_min=1e-4)
    start = 0.5 * (w @ A @ w).item()
    for _ in range(60):
        opt.zero_grad()
        loss = 0.5 * w @ A @ w
        loss.backward()
        opt.step()
    assert (0.5 * w @ A @ w).item() < 1e-8 * start
    # and gradient descent at its best fixed step (2 / (L + mu)) is nowhere near after as many steps
    v = w.detach().clone().normal_()
    start_gd = 0.5 * (v @ A @ v).item()
    for _ in range(60):
        v = v - 2 / (1e3 + 1) * (A @ v)
    assert (0.5 * v @ A @ v).item() > 1e-3 * start_gd


@given(
    dim=st.integers(1, 12),
    seed=st.integers(0, 2**16),
    log_scale=st.floats(-20, 20),
    rho=st.floats(0.05, 1.0),
)
def test_weak_write_is_the_least_change_that_recalls_the_weak_secant(dim, seed, log_scale, rho):
    """After one write ``d^T B d`` has moved a fraction ``rho`` of the way to ``-d^T y`` (all of
    it at ``rho = 1``), and ``B`` changed only along ``d * d``: the least change (Frobenius)
    that does so. Any scale of ``d``: the write rescales it, so ``d^4`` never overflows."""
    gen = torch.Generator().manual_seed(seed)
    B = torch.randn(dim, generator=gen, dtype=torch.float64)
    d = torch.randn(dim, generator=gen, dtype=torch.float64) * 10.0**log_scale
    y = torch.randn(dim, generator=gen, dtype=torch.float64) * 10.0**-log_scale
    new = weak_secant_write(B, d, y, rho=rho)
    before, target = d @ (B * d), -(d @ y)
    # float64 sums of dim terms, each rounded: relative error a few ulp per term
    tol = 1e-12 * (abs(before) + abs(target) + (d * d) @ (B.abs() + (new - B).abs()))
    assert abs(d @ (new * d) - (before + rho * (target - before))) <= tol
    change, key = new - B, d * d
    # new - B subtracts numbers of B's size: each element of the change carries ~eps |B|
    atol = 8 * torch.finfo(B.dtype).eps * B.abs().max().item()
    torch.testing.assert_close(change, (change @ key) / (key @ key) * key, rtol=1e-9, atol=atol)


@pytest.mark.parametrize("scale", [1e-30, 1.0, 1e30])
def test_weak_fast_path_follows_the_reference_at_any_scale_and_dtype_mix(scale):
    """The fast path (three dot products and an ``addcmul`` per tensor, the scalars of each
    dtype as one vector) against the reference's matrix-memory write, float32 and float64
    tensors in one group, gradients from 1e-30 to 1e30 (``d^4`` of the reference's key would
    under- or overflow without its rescaling; the fast path rescales the same way). Only the
    order of the sums differs: a few ulp per step in each scalar, compounded because every
    step divides by ``B`` and the next write reads that step, so 20 steps stay within 1000 eps
    (measured: 4e-6 in float32, 1e-15 in float64)."""
    out = {}
    for foreach in (True, False):
        gen = torch.Generator().manual_seed(0)
        a = torch.nn.Parameter(torch.ones(5, 4))
        b = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
        opt = MemoryOptimizer([a, b], "landscape", lr=0.1, foreach=foreach)
        for _ in range(20):  # noise at the scale, plus a curvature 0.5 so B has one to learn
            a.grad = torch.randn(5, 4, generator=gen) * scale + 0.5 * a.detach()
            b.grad = torch.randn(3, generator=gen, dtype=torch.float64) * scale + 0.5 * b.detach()
            opt.step()
        out[foreach] = [a.detach(), b.detach(), opt.state[a]["hessian"], opt.state[b]["hessian"]]
    assert (out[False][2] != 0).any() and (out[False][3] != 0).any()  # both memories written
    for fast, ref in zip(out[True], out[False], strict=True):
        assert torch.isfinite(fast).all()
        eps = torch.finfo(ref.dtype).eps
        torch.testing.assert_close(fast, ref, rtol=1000 * eps, atol=0)


def test_weak_fast_path_steps_small_and_large_tensors_to_the_same_bits(monkeypatch):
    """Tensors under ``SMALL`` elements take ``max|d|`` and the read through foreach calls for
    all of them, larger ones per tensor (``aminmax``, in-place passes): the same operations,
    so routing every tensor either way gives the same bits (a strided and an empty tensor
    among them, float32 and float64, the gradient of one tensor zero at one step)."""
    from assocmem.optim.presets import landscape_weak_fast

    out = {}
    for small in (0, 1 << 30):  # every tensor per tensor, then every tensor through foreach
        monkeypatch.setattr(landscape_weak_fast, "SMALL", small)
        gen = torch.Generator().manual_seed(0)
        params = [
            torch.nn.Parameter(torch.randn(4, 6, generator=gen).t()),  # strided
            torch.nn.Parameter(torch.randn(7, generator=gen)),
            torch.nn.Parameter(torch.zeros(0)),
            torch.nn.Parameter(torch.randn(3, 3, dtype=torch.float64, generator=gen)),
        ]
        opt = MemoryOptimizer(params, "landscape", lr=0.1)
        for t in range(8):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype) + 0.5 * p.detach()
            params[1].grad.zero_() if t == 3 else None
            opt.step()
        out[small] = [t.clone() for p in params for t in (p.detach(), *opt.state[p].values())]
    assert all(torch.equal(a, b) for a, b in zip(out[0], out[1 << 30], strict=True))


@pytest.mark.parametrize("sync_free", [False, True])
def test_weak_fast_path_stacks_small_tensors_of_one_shape_and_follows_the_reference(
    monkeypatch, sync_free
):
    """Small tensors of one shape step as one stacked tensor per kind (from ``STACK_MIN`` of
    them; 2 here to keep the test small): 0-d, 1-D and 2-D ones, float32 and float64, a
    strided one among them (copied back through its strides), the rates as host floats or
    device tensors. The sums run along the stack's rows instead of dot products, so against
    the reference they differ as the per-tensor path does (its test above): within 1000 eps
    after 20 steps."""
    from assocmem.optim.presets import landscape_weak_fast

    stacked = spy_stacked(monkeypatch, landscape_weak_fast)

    def make(gen):
        def randn(*shape, dtype=torch.float64):
            return torch.nn.Parameter(torch.randn(shape, generator=gen, dtype=dtype))

        return [
            *(randn(3, 5) for _ in range(3)),
            *(randn() for _ in range(2)),
            *(randn(4, dtype=torch.float32) for _ in range(3)),
            torch.nn.Parameter(randn(5, 3).detach().t()),  # strided, stacked with the (3, 5)
        ]

    out = {}
    for foreach in (None, False):
        gen = torch.Generator().manual_seed(0)
        params = make(gen)
        opt = MemoryOptimizer(params, "landscape", lr=0.1, foreach=foreach, sync_free=sync_free)
        for _ in range(20):  # noise plus a curvature 0.5, so every memory has one to learn
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype) + 0.5 * p.detach()
            opt.step()
        out[foreach] = [t for p in params for t in (p.detach(), opt.state[p]["hessian"])]
    assert sorted(stacked[:3]) == [2, 3, 4]  # (), (4,) and (3, 5) stacked
    for fast, ref in zip(out[None], out[False], strict=True):
        assert torch.isfinite(fast).all()
        torch.testing.assert_close(fast, ref, rtol=1000 * torch.finfo(ref.dtype).eps, atol=0)


def test_weak_write_of_a_zero_or_non_finite_direction_keeps_the_memory():
    B = torch.tensor([0.5, -1.0, 2.0])
    assert torch.equal(weak_secant_write(B, torch.zeros(3), torch.ones(3), rho=1.0), B)
    bad = torch.tensor([1.0, float("inf"), 0.0])
    assert torch.equal(weak_secant_write(B, bad, torch.ones(3), rho=1.0), B)
    assert torch.equal(weak_read(B, torch.ones(3), 1.0), torch.tensor([1.0, 1.0, 0.5]))


def test_weak_form_learns_lr_times_the_curvature_and_converges_on_a_diagonal_quadratic():
    """f(w) = 1/2 w^T A w, A diagonal (condition 1e3), no momentum, lr = sigma = 1: the memory
    settles at ``lr A`` (the weak secant of an exact quadratic, written along ever-new
    directions) wherever ``lr a > sigma``, so the step there is Newton's (and at ``lr a = 1``
    the floor's step is Newton's too): the loss falls below 1e-12 of its start, where gradient
    descent at its best fixed step keeps more than a tenth of it (its flat coordinates shrink
    by about 1 - 2 a / 1001 per step) after as many steps."""
    a = torch.logspace(0, 3, 10, dtype=torch.float64)
    w = torch.nn.Parameter(torch.ones(10, dtype=torch.float64))
    opt = MemoryOptimizer([w], "landscape", lr=1.0, form="weak", beta=0.0)
    start = 0.5 * (a * w * w).sum().item()
    for _ in range(100):
        opt.zero_grad()
        (0.5 * (a * w * w).sum()).backward()
        opt.step()
    assert 0.5 * (a * w * w).sum().item() < 1e-12 * start
    stiff = a > 1  # where the read divides by B
    torch.testing.assert_close(opt.state[w]["hessian"][stiff], a[stiff], rtol=0.02, atol=0)
    v = torch.ones(10, dtype=torch.float64)
    for _ in range(100):
        v = v - 2 / (1e3 + 1) * (a * v)
    assert 0.5 * (a * v * v).sum().item() > 0.1 * start  # 0.36 of it


def test_weak_form_step_is_bounded_by_lr_times_momentum_over_sigma():
    w = torch.nn.Parameter(torch.zeros(6))
    opt = MemoryOptimizer([w], "landscape", lr=0.1, form="weak", beta=0.5, sigma=0.5)
    gen = torch.Generator().manual_seed(4)
    for k in range(30):
        before = w.detach().clone()
        w.grad = torch.randn(6, generator=gen) * 10.0 ** (k % 9 - 4)
        opt.step()
        bound = 0.1 * opt.state[w]["momentum"].abs() / 0.5
        # the measured step w - before is rounded to w's ulp (w grows to ~1e3 here)
        rounding = 2 * torch.finfo(w.dtype).eps * w.detach().abs()
        assert ((w.detach() - before).abs() <= bound * (1 + 1e-6) + rounding).all()


@pytest.mark.parametrize("form", ["diagonal", "lowrank", "scalar", "weak"])
def test_never_nan_on_hostile_gradients(form):
    w = torch.nn.Parameter(torch.ones(4, 3))
    opt = MemoryOptimizer([w], "landscape", lr=1e-1, form=form, beta=0.5)
    gen = torch.Generator().manual_seed(3)
    streams = [torch.zeros(4, 3), torch.zeros(4, 3), torch.full((4, 3), 1e-30), torch.ones(4, 3)]
    streams += [torch.ones(4, 3), -torch.ones(4, 3) * 1e6, torch.full((4, 3), 1e-38)]
    streams += [torch.randn(4, 3, generator=gen) * 10 ** float(k % 7 - 3) for k in range(20)]
    for g in streams:
        w.grad = g.clone()
        opt.step()
        assert torch.isfinite(w).all()
        assert all(torch.isfinite(v).all() for v in opt.state[w].values())
    if form in ("diagonal", "scalar"):
        H = opt.state[w]["curvature"]
        assert (H >= 1e-2).all() and (H <= 1e2).all()


@pytest.mark.parametrize("foreach", [False, True])
def test_period_writes_once_per_period_a_pair_spanning_it(foreach):
    """On f(w) = sum(w^4) / 4 the secant s / y = (w - w') / (w^3 - w'^3) depends on both ends:
    the memory changes only at steps 1 + k * period (k >= 1), to the secant over the period."""
    w = torch.nn.Parameter(torch.tensor([1.0, -0.8, 0.6, 1.2], dtype=torch.float64))
    period = 3
    opt = MemoryOptimizer(
        [w], "landscape", lr=0.1, form="diagonal", period=period, y_tol=0.0, foreach=foreach
    )
    seen, previous = [], torch.ones(4, dtype=torch.float64)
    for t in range(1, 11):
        seen.append(w.detach().clone())  # where the gradient of step t is taken
        opt.zero_grad()
        (w**4 / 4).sum().backward()
        opt.step()
        H = opt.state[w]["curvature"].clone()
        if t > 1 and (t - 1) % period == 0:
            now, then = seen[-1], seen[-1 - period]
            torch.testing.assert_close(H, (now - then) / (now**3 - then**3))
        else:
            assert torch.equal(H, previous), t
        previous = H


@pytest.mark.parametrize("form", ["diagonal", "scalar"])
def test_period_save_load_mid_period_continues_bit_identically(form):
    def run(steps, opt=None, model=None):
        model = model or make_model()
        opt = opt or MemoryOptimizer(model.parameters(), "landscape", lr=1e-2, period=4, form=form)
        train(model, opt, steps)
        return model, opt

    reference, _ = run(range(11))
    model, opt = run(range(6))  # two steps into the second period
    resumed = make_model(seed=1)
    resumed.load_state_dict(model.state_dict())
    resumed_opt = MemoryOptimizer(resumed.parameters(), "landscape", lr=1e-2, period=4, form=form)
    resumed_opt.load_state_dict(opt.state_dict())
    run(range(6, 11), resumed_opt, resumed)
    assert torch.equal(flat_params(resumed), flat_params(reference))


def test_lr_zero_writes_no_curvature():
    w = torch.nn.Parameter(torch.ones(5))
    opt = MemoryOptimizer([w], "landscape", lr=0.0, form="diagonal")
    for k in range(4):
        w.grad = torch.randn(5) * (k + 1)
        opt.step()
    assert torch.equal(opt.state[w]["curvature"], torch.ones(5))  # s = 0: no secant to learn


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        (dict(form="full"), "form"),
        (dict(h0=0.0), "h0"),
        (dict(h0=1e3), "h0"),
        (dict(h_max=-1.0), "h_max"),
        (dict(rank=0), "rank"),
        (dict(rho=1.5), "rho"),
        (dict(beta=1.0), "beta"),
        (dict(y_tol=-1.0), "y_tol"),
        (dict(period=0), "period"),
        (dict(period=2.5), "period"),
        (dict(form="weak", period=2), "period"),
        (dict(form="lowrank", rho=0.5), "rho"),  # it was silently ignored
        (dict(form="weak", sigma=0.0), "sigma"),
    ],
)
def test_invalid_hyperparameters_name_the_argument(kw, name):
    with pytest.raises(ValueError, match=name):
        MemoryOptimizer(make_model().parameters(), "landscape", **kw)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_needs_a_noise_floor_above_the_gradients_rounding(dtype):
    # y = g_t - g_{t-1} of bf16 gradients is mostly their rounding: at the default y_tol the
    # bf16 step kept cosine 0.1-0.3 to the fp32 one. Refused with the y_tol that works.
    floor = 2 * torch.finfo(dtype).eps
    w = torch.nn.Parameter(torch.zeros(4, 3, dtype=dtype))
    with pytest.raises(ValueError, match=f"y_tol >= 2 \\* eps = {floor:g}"):
        MemoryOptimizer([w], "landscape", form="diagonal")
    opt = MemoryOptimizer([w], "landscape", form="diagonal", y_tol=floor)
    w.grad = torch.ones_like(w)
    opt.step()
    model = torch.nn.Linear(3, 2)
    late = MemoryOptimizer(model.parameters(), "landscape", form="diagonal")
    model.to(dtype)  # after the optimizer was built: refused before the first step
    model(torch.ones(1, 3, dtype=dtype)).sum().backward()
    with pytest.raises(ValueError, match="y_tol"):
        late.step()
    # The weak form (the default) has no per-coordinate noise floor: its one equation per
    # tensor sums the rounding away, so it steps low precision as it is.
    MemoryOptimizer([w], "landscape")


@pytest.mark.parametrize(
    ("key", "value", "form"),
    [("has_prev", 0.5, "diagonal"), ("pairs", 5.0, "lowrank"), ("pairs", 1.5, "lowrank")],
)
def test_load_refuses_broken_counters(key, value, form):
    model = make_model()
    opt = MemoryOptimizer(model.parameters(), "landscape", form=form, rank=4)
    train(model, opt, range(3))
    saved = opt.state_dict()
    before = {k: v.clone() for k, v in opt.state[model.fc.weight].items()}
    corrupt = {**saved, "state": {**saved["state"]}}
    corrupt["state"][0] = {**saved["state"][0], key: torch.tensor(value)}
    with pytest.raises(ValueError, match=key):
        opt.load_state_dict(corrupt)
    for k, v in opt.state[model.fc.weight].items():
        assert torch.equal(v, before[k])


@pytest.mark.parametrize("form", ["diagonal", "scalar"])
def test_loaded_curvature_outside_its_bounds_is_refused(form):
    # Every write clamps H into [h_min, h_max] (h0 starts there), which bounds the step by
    # lr * h_max * |g|; a checkpoint whose H leaves the bounds would step past that.
    w = torch.nn.Parameter(torch.ones(3))
    opt = MemoryOptimizer([w], "landscape", form=form, lr=1e-3)
    for g in (1.0, 2.0):
        w.grad = torch.full((3,), g)
        opt.step()
    saved = opt.state_dict()
    MemoryOptimizer([w], "landscape", form=form, lr=1e-3).load_state_dict(saved)
    for bad in (1e6, 1e-4, float("inf")):
        tampered = opt.state_dict()
        tampered["state"][0]["curvature"] = torch.full_like(saved["state"][0]["curvature"], bad)
        fresh = MemoryOptimizer([w], "landscape", form=form, lr=1e-3)
        with pytest.raises(ValueError, match="curvature"):
            fresh.load_state_dict(tampered)
        assert fresh.state_dict()["state"] == {}
