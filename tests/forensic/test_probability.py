"""``P(fake)`` from a detector's scores: Platt's map (``calibration.platt_scaling``) and the losses
that judge it (``calibration.probability_losses``)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from assocmem.forensic.calibration import (
    ProbabilityScaling,
    platt_scaling,
    probability_losses,
)

# logits as detectors give them: half-units in [-20, 20] (ties included)
logits = st.lists(st.integers(-40, 40).map(lambda k: k / 2), min_size=1, max_size=40)


def _gradient(scaling: ProbabilityScaling, real, fake) -> tuple[float, float]:
    """The fitted loss's gradient in (intercept, slope): classes weighted 1/2, Platt's targets."""
    real, fake = np.asarray(real, float), np.asarray(fake, float)
    t_fake, t_real = (fake.size + 1) / (fake.size + 2), 1 / (real.size + 2)
    r_fake, r_real = scaling(fake) - t_fake, scaling(real) - t_real
    g_b = 0.5 * r_fake.mean() + 0.5 * r_real.mean()
    g_a = 0.5 * (r_fake * fake).mean() + 0.5 * (r_real * real).mean()
    return float(g_b), float(g_a)


# degenerate draws (all scores equal, one class a single point) make scikit-learn's Newton step
# singular at first; it says so and finishes with L-BFGS, and the gradient checks still hold
SOLVER_FALLBACK = [
    "ignore:The inner solver of NewtonCholeskySolver",
    "ignore:Line search of Newton solver",
]


@pytest.mark.filterwarnings(*SOLVER_FALLBACK)
@settings(max_examples=60, deadline=None)
@given(real=logits, fake=logits)
def test_the_fit_is_the_optimum_of_platts_loss_or_refuses(real, fake):
    try:
        scaling = platt_scaling(real, fake)
    except ValueError as e:
        assert "do not rank fakes above reals" in str(e)
        # refused only where the scores do not put the fakes above the reals on average
        assert np.mean(fake) <= np.mean(real) + 1e-9 or len(set(real + fake)) == 1
        return
    assert scaling.slope > 0 and math.isfinite(scaling.intercept)
    assert np.mean(fake) > np.mean(real)  # the slope's sign is the means' order (docstring)
    # Newton's method stops at a gradient of 1e-12 (on the loss scikit-learn normalises by the
    # weights' sum, 2 here); the probabilities are O(1) and the scores at most 20, so the
    # gradient computed back here in float64 is zero to far better than 1e-8
    g_b, g_a = _gradient(scaling, real, fake)
    assert abs(g_b) < 1e-8 and abs(g_a) < 1e-8 * 20
    p = scaling(real + fake)
    assert ((p > 0) & (p < 1)).all()


@pytest.mark.filterwarnings(*SOLVER_FALLBACK)
@settings(max_examples=30, deadline=None)
@given(
    real=logits,
    fake=logits,
    scale=st.sampled_from([0.25, 3.0]),
    shift=st.sampled_from([-7.0, 11.0]),
)
def test_the_map_does_not_depend_on_the_scores_units(real, fake, scale, shift):
    # the model is linear in the score, so fitting c * s + d gives the same probabilities
    try:
        base = platt_scaling(real, fake)
    except ValueError:
        return
    if base.slope * np.std(real + fake) < 1e-6:
        return  # a slope at 0 to rounding: the moved fit may land on either side and refuse
    moved = platt_scaling([scale * s + shift for s in real], [scale * s + shift for s in fake])
    # both fits are at their optimum to ~1e-12; the parameters' conditioning is that of a
    # two-parameter regression on scores of spread >= 0.5, so they agree to ~1e-9
    assert moved.slope == pytest.approx(base.slope / scale, rel=1e-6)
    expected = base.intercept - base.slope * shift / scale
    assert moved.intercept == pytest.approx(expected, rel=1e-6, abs=1e-6)


def test_separated_scores_get_a_finite_map_at_the_optimum():
    # plain maximum likelihood has no optimum here (the slope would grow without bound)
    real, fake = [0.0, 1.0, 2.0], [5.0, 6.0, 7.0]
    scaling = platt_scaling(real, fake)
    assert math.isfinite(scaling.slope) and scaling.slope > 0
    g_b, g_a = _gradient(scaling, real, fake)
    assert abs(g_b) < 1e-10 and abs(g_a) < 1e-9
    # the classes mirror each other about 3.5 and have equal targets' distances to 0 and 1
    assert scaling([3.5])[0] == pytest.approx(0.5, abs=1e-9)
    # monotone, and no overflow far out on either side
    p = scaling([-1e6, -10.0, 0.0, 10.0, 1e6])
    assert (np.diff(p) >= 0).all() and p[0] == 0.0 and p[-1] == 1.0


def test_platt_refuses_bad_scores():
    with pytest.raises(ValueError, match="needs reals and fakes"):
        platt_scaling([], [1.0])
    with pytest.raises(ValueError, match="needs reals and fakes"):
        platt_scaling([1.0], [])
    with pytest.raises(ValueError, match="NaN or inf"):
        platt_scaling([0.0, float("nan")], [1.0])
    with pytest.raises(ValueError, match="do not rank fakes above reals"):
        platt_scaling([3.0, 4.0], [0.0, 1.0])


def test_probability_losses_of_known_guesses():
    chance = probability_losses([0, 0, 0, 1], [0.5] * 4)
    assert chance["brier"] == pytest.approx(0.25) and chance["log_loss"] == pytest.approx(
        math.log(2)
    )
    right = probability_losses([0, 1], [0.0, 1.0])
    assert right["brier"] == 0.0 and right["log_loss"] < 1e-12
    # classes weighted equally: three times the reals, the same losses
    p_real, p_fake = [0.2, 0.4], [0.7]
    once = probability_losses([0, 0, 1], p_real + p_fake)
    thrice = probability_losses([0] * 6 + [1], p_real * 3 + p_fake)
    assert thrice["brier"] == pytest.approx(once["brier"])
    assert thrice["log_loss"] == pytest.approx(once["log_loss"])
    assert once["brier"] == pytest.approx(0.5 * (0.2**2 + 0.4**2) / 2 + 0.5 * 0.3**2)
    with pytest.raises(ValueError, match="both present"):
        probability_losses([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="differ in length"):
        probability_losses([0, 1], [0.1])
