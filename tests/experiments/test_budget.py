"""The budget check: how much the validation loss still fell at the end, against seed noise."""

import math

import pytest

from experiments.budget import budget_verdict, tail_fall


def curve(values: list[float], every: int = 10) -> list[dict]:
    records = [{"step": i * every, "val_loss": v} for i, v in enumerate(values)]
    records.insert(1, {"step": 1, "train_loss": 9.0})  # training-only records are skipped
    return records


def test_tail_fall_is_measured_from_the_start_of_the_last_fifth():
    # Steps 0..100; the tail starts at step 80 (value 1.5); final value 1.0.
    values = [5.0, 4.0, 3.0, 2.5, 2.2, 2.0, 1.9, 1.7, 1.5, 1.2, 1.0]
    assert tail_fall(curve(values)) == pytest.approx(0.5)
    assert tail_fall(curve(values), tail=0.5) == pytest.approx(1.0)  # from step 50 (2.0)


def test_window_is_at_least_the_tail_when_evaluations_are_sparse():
    # Evaluations at 0, 60, 100: the last one at or before step 80 is step 60.
    history = [{"step": 0, "val_loss": 3.0}, {"step": 60, "val_loss": 2.0},
               {"step": 100, "val_loss": 1.5}]  # fmt: skip
    assert tail_fall(history) == pytest.approx(0.5)


def test_a_rising_curve_has_a_negative_fall_and_unusable_curves_give_none():
    assert tail_fall(curve([2.0, 1.0, 1.5])) == pytest.approx(-0.5, abs=1e-12)
    assert tail_fall(curve([2.0])) is None
    assert tail_fall(curve([2.0, math.inf, 1.0])) is None
    with pytest.raises(ValueError, match="tail must be in"):
        tail_fall(curve([2.0, 1.0]), tail=0.0)


def test_verdict_compares_the_fall_with_the_seed_spread():
    finals = [1.0, 1.2, 1.1]  # std 0.1
    assert budget_verdict([0.05, 0.07], finals).endswith("flattened")
    assert "still falling" in budget_verdict([0.3, 0.5], finals)
    assert "no spread" in budget_verdict([0.3], [1.0])
    assert "no evaluation curve" in budget_verdict([], finals)


def test_a_loss_that_rose_beyond_the_seed_spread_is_not_called_flattened():
    # 0.1 -> ~2 over the last fifth, spread of the finals 0.07: it rose, far beyond noise
    verdict = budget_verdict([-1.9, -2.0], [2.0, 2.1])
    assert "flattened" not in verdict and "fell" not in verdict
    assert verdict.startswith("rose 1.95 over the last 20% of its steps (mean over 2 seeds)")
    assert "more than the seed spread of its final loss (0.0707): not converged" in verdict
    # a rise within the seed spread is noise, as a fall within it is
    assert budget_verdict([-0.05, -0.07], [1.0, 1.2, 1.1]).endswith("flattened")


def test_the_verdict_names_the_window_it_measured_over():
    # evaluations at steps 0 and 20 only: the fall is the whole run's, and the report read
    # "over the last 20% of its steps ... still falling" (an audit)
    from experiments.budget import tail_window

    sparse = [{"step": 0, "val_loss": 3.0}, {"step": 20, "val_loss": 1.0}]
    assert tail_window(sparse) == 1.0
    assert tail_window(curve([3.0, 2.0, 1.0, 0.5, 0.4, 0.3])) == pytest.approx(0.2)
    assert tail_window(curve([2.0])) is None
    verdict = budget_verdict([2.0, 2.1], [1.0, 1.2], window=1.0)
    assert verdict.startswith("fell 2.05 over the last 100% of its steps (its evaluations are")
    assert "too sparse for the last 20%" in verdict
    assert "sparse" not in budget_verdict([2.0, 2.1], [1.0, 1.2])  # the tail itself
