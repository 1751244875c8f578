"""The LR grid's extension rule: extend past an edge optimum, the same bound for everyone."""

import math

import pytest

from experiments.lr_grid import best_factor, edge_side, next_factor

GRID = [0.1, 0.3, 1.0, 3.0, 10.0]


def losses(best: float, diverged: tuple[float, ...] = ()) -> dict[float, float]:
    """A bowl in log-lr around ``best``; ``diverged`` factors are inf."""
    return {
        f: math.inf if f in diverged else 1.0 + math.log(f / best) ** 2 for f in GRID
    }  # fmt: skip


def test_interior_optimum_is_not_extended():
    assert edge_side(losses(1.0)) is None
    assert next_factor(losses(1.0), 0, 2) is None


def test_edge_optimum_extends_one_grid_step_on_its_side():
    # The step is the ratio of the two outermost factors on that side: 0.1/0.3 and 10/3.
    assert next_factor(losses(0.01), 0, 2) == pytest.approx(0.1 / 3)
    assert next_factor(losses(100.0), 0, 2) == pytest.approx(100 / 3)


def test_extensions_stop_at_the_bound_and_when_the_optimum_moves_inside():
    results = losses(0.01)
    assert next_factor(results, 2, 2) is None  # bound reached
    assert next_factor(results, 0, 0) is None  # no extension budget
    results[0.1 / 3] = 0.5  # the extension found the bottom...
    results[0.1 / 9] = 0.6  # ...and a point beyond it is worse: interior, done
    assert edge_side(results) is None and next_factor(results, 2, 5) is None


def test_simulated_sweep_reaches_the_optimum_of_a_bowl_beyond_the_grid():
    """Driving the rule as compare.tune does: the best ends interior, within the bound."""

    def loss(f: float) -> float:
        return (math.log(f) - math.log(0.02)) ** 2

    results = {f: loss(f) for f in GRID}
    done = 0
    while (f := next_factor(results, done, 4)) is not None:
        results[f] = loss(f)
        done += 1
    assert done == 2 and edge_side(results) is None
    assert best_factor(results) == pytest.approx(0.1 / 3)


def test_divergence_counts_as_infinite_and_all_diverged_extends_downwards():
    high_diverged = losses(100.0, diverged=(10.0,))  # best finite is 3.0, interior of the tried
    assert best_factor(high_diverged) == 3.0 and next_factor(high_diverged, 0, 2) is None
    all_diverged = {f: math.inf for f in GRID}
    assert best_factor(all_diverged) is None and edge_side(all_diverged) == "low"
    assert next_factor(all_diverged, 0, 2) == pytest.approx(0.1 / 3)
    nan = {0.1: math.nan, 0.3: math.nan, 1.0: 2.0}
    assert best_factor(nan) == 1.0 and edge_side(nan) == "high"


def test_ties_go_to_the_smaller_factor():
    assert best_factor({0.3: 1.0, 1.0: 1.0, 3.0: 2.0}) == 0.3


def test_a_one_point_grid_without_extensions_just_stops():
    # what the comparison's config check tells a one-point grid to use (lr_extensions=0):
    # it raised "needs at least two factors" after the first tuning run
    assert next_factor({1.0: 1.0}, 0, 0) is None


@pytest.mark.parametrize(
    ("results", "done", "bound", "match"),
    [
        ({1.0: 1.0}, 0, 2, "at least two factors"),
        ({0.0: 1.0, 1.0: 2.0}, 0, 2, "finite numbers > 0"),
        ({1.0: 1.0, 3.0: 2.0}, -1, 2, ">= 0"),
    ],
)
def test_bad_input_is_named(results, done, bound, match):
    with pytest.raises(ValueError, match=match):
        next_factor(results, done, bound)
    with pytest.raises(ValueError, match="no tuning results"):
        edge_side({})
