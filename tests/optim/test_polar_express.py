"""Polar Express coefficients: the generator, the exact band, and the Newton-Schulz output."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from assocmem.optim.newton_schulz import NS_COEFFS, schedule, zeropower_via_newtonschulz5
from assocmem.optim.polar_express import (
    PUBLISHED,
    SAFETY,
    optimal_quintic,
    polar_express_coefficients,
    quintic,
    singular_value_band,
)


def test_generator_reproduces_the_published_table():
    # The published table has 16 significant digits; our fp64 Remez stops at |dE| <= 1e-15 and
    # each of the 5 iterations carries the previous interval's error through a slope below 10,
    # so the tables agree to ~1e-15 * 10^5 at worst.
    ours = polar_express_coefficients(5)
    assert len(ours) == len(PUBLISHED)
    for p, q in zip(ours, PUBLISHED, strict=True):
        for x, y in zip(p, q, strict=True):
            assert x == pytest.approx(y, rel=0, abs=1e-10)


@given(lo=st.floats(1e-3, 0.9), width=st.floats(0.05, 1.0))
def test_optimal_quintic_equioscillates(lo, width):
    hi = min(1.0, lo + width)
    p = optimal_quintic(lo, hi)
    s = torch.linspace(lo, hi, 20_001, dtype=torch.float64)
    a, b, c = p
    err = a * s + b * s**3 + c * s**5 - 1
    worst = float(err.abs().max())
    # Minimax: the error at both ends equals the largest error anywhere, with opposite signs
    # (the interior extrema carry the other two alternations). The grid's spacing only
    # matters in the max, where the derivative is zero: second order, far below 1e-9.
    assert abs(quintic(p, lo) - 1) == pytest.approx(worst, rel=1e-6)
    assert abs(quintic(p, hi) - 1) == pytest.approx(worst, rel=1e-6)
    assert (quintic(p, lo) - 1) * (quintic(p, hi) - 1) < 0
    # ... and it is better than Jordan's quintic and the classic (15, -10, 3)/8 on [lo, hi].
    for other in (NS_COEFFS, (15 / 8, -10 / 8, 3 / 8)):
        oa, ob, oc = other
        assert worst <= float((oa * s + ob * s**3 + oc * s**5 - 1).abs().max()) + 1e-12


@pytest.mark.parametrize("coefficients", ["jordan", "polar_express"])
@pytest.mark.parametrize("steps", [1, 3, 5])
def test_band_is_the_exact_image_of_the_interval(coefficients, steps):
    quintics, _ = schedule(coefficients, steps)
    s = torch.linspace(1e-3, 1.0, 200_001, dtype=torch.float64)
    for p in quintics:
        s = quintic(p, s)
    lo, hi = singular_value_band(quintics, 1e-3)
    # Every sampled value lies inside; the extremes are attained up to the grid's resolution
    # (step 5e-6 times the composition's slope, at most ~10^5 for 5 steps from 1e-3).
    assert lo - 1e-12 <= float(s.min()) and float(s.max()) <= hi + 1e-12
    assert float(s.min()) - lo < 1e-3 and hi - float(s.max()) < 1e-3


def test_documented_bands():
    jordan = [NS_COEFFS] * 5
    # Jordan's 5 steps: [0.68, 1.14] above 1% of ||G||_F; values near 1e-3 are not lifted yet.
    lo, hi = singular_value_band(jordan, 1e-2)
    assert 0.68 < lo < 0.69 and 1.13 < hi < 1.14
    assert singular_value_band(jordan, 1e-3)[0] < 0.5
    # Polar Express, 5 steps: [0.858, 1.142] from 1e-3 up (its design interval).
    lo, hi = singular_value_band(polar_express_coefficients(5), 1e-3)
    assert 0.858 < lo < 0.86 and 1.14 < hi < 1.142
    # Fewer steps for the same job: designed for 1e-2, 4 steps give [0.98, 1.02] above 1e-2,
    # a band 13x narrower than Jordan's 5 steps, with one matmul triple fewer.
    lo4, hi4 = singular_value_band(polar_express_coefficients(4, 1e-2), 1e-2)
    assert lo4 > 0.98 and hi4 < 1.02


def with_spectrum(shape, s, generator):
    *batch, r, c = shape
    k = min(r, c)
    U = torch.linalg.qr(torch.randn(*batch, r, r, generator=generator, dtype=s.dtype)).Q
    V = torch.linalg.qr(torch.randn(*batch, c, c, generator=generator, dtype=s.dtype)).Q
    return U[..., :k] @ torch.diag_embed(s) @ V[..., :k].mT


@given(
    rows=st.integers(1, 32),
    cols=st.integers(1, 32),
    batch=st.lists(st.integers(1, 3), max_size=1),
    seed=st.integers(0, 2**16),
    log_scale=st.floats(0, 3),  # ||G||_F >> eps = 1e-7
    config=st.sampled_from([("jordan", 5, 1e-2), ("polar_express", 5, 1e-3),
                            ("polar_express", 4, 1e-2), ("polar_express", 3, 1e-2)]),
)  # fmt: skip
def test_singular_values_land_in_the_documented_band(rows, cols, batch, seed, log_scale, config):
    coefficients, steps, lower = config
    gen = torch.Generator().manual_seed(seed)
    k = min(rows, cols)
    # Singular values spread over [1 / spread, 1]: the smallest is then at least ``lower`` times
    # the normaliser (1 + safety) ||G||_F, since ||s|| <= sqrt(32) max(s): the band's premise.
    spread = 1 / (lower * (1 + SAFETY) * math.sqrt(32))
    s = torch.exp(torch.rand(*batch, k, generator=gen, dtype=torch.float64) * -math.log(spread))
    G = with_spectrum((*batch, rows, cols), s * 10**log_scale, gen)
    quintics, factor = schedule(coefficients, steps, lower)
    relative = s / (factor * torch.linalg.vector_norm(s, dim=-1, keepdim=True))
    assert float(relative.min()) >= lower  # the premise of the band
    band_lo, band_hi = singular_value_band(quintics, lower)
    sv = torch.linalg.svdvals(zeropower_via_newtonschulz5(G, steps, coefficients=coefficients,
                                                          lower=lower))  # fmt: skip
    # fp64: the iteration's rounding, amplified by the composition's slope (< 1e4), stays
    # far below 1e-8.
    assert float(sv.min()) >= band_lo - 1e-8 and float(sv.max()) <= band_hi + 1e-8, sv


def test_polar_express_is_the_published_iteration_after_the_safety_normalisation():
    G = torch.randn(6, 10, dtype=torch.float64)
    O = zeropower_via_newtonschulz5(G, coefficients="polar_express")
    X = G / (torch.linalg.matrix_norm(G) * (1 + SAFETY) + 1e-7)
    for a, b, c in PUBLISHED:
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    torch.testing.assert_close(O, X)
    with pytest.raises(ValueError, match="coefficients"):
        zeropower_via_newtonschulz5(G, coefficients="cubic")
