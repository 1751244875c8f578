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
    train,
    two_groups,
)

from assocmem import MemoryOptimizer
from assocmem.optim.presets.delta import delta_momentum_write, unit_rows


@pytest.mark.parametrize("erase", ["tensor", "row"])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0])
def test_foreach_equals_reference_at_every_step(erase, gamma):
    with in_float64():
        fast_model, ref_model = make_model(), make_model()
        kw = dict(lr=1e-2, gamma=gamma, erase=erase, alpha=0.8, eta=0.7, weight_decay=0.01)
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
