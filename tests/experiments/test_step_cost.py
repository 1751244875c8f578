"""Time-to-target from steps x an interleaved step cost, and that measurement itself."""

import math

import pytest
import torch

from experiments.report import task_table
from experiments.step_cost import TrainingStep, measure, time_to_target
from experiments.tasks.classic import Quadratic


def test_time_to_target_is_steps_times_the_step_cost():
    assert time_to_target([100, None, 300], 0.25) == [25.0, 75.0]
    assert time_to_target([None, None], 0.25) == []


def test_time_ratio_is_the_steps_ratio_times_the_cost_ratio():
    steps, base = [120, 180], [200, 300, 250]
    ratio = sum(time_to_target(steps, 3e-3)) / 2 / (sum(time_to_target(base, 2e-3)) / 3)
    # Float rounding only: a handful of products and sums of numbers near 1.
    assert ratio == pytest.approx((150 / 250) * (3e-3 / 2e-3), rel=1e-12)


@pytest.mark.parametrize("cost", [0.0, -1e-3, math.nan, math.inf, None])
def test_a_cost_that_is_not_a_positive_number_is_refused(cost):
    with pytest.raises(ValueError, match="step_seconds"):
        time_to_target([10], cost)


def test_negative_steps_are_refused():
    with pytest.raises(ValueError, match="steps-to-target"):
        time_to_target([-1], 1e-3)


def test_measure_times_every_candidate_and_each_really_trains():
    candidates = {}
    for name, lr in (("slow", 1e-3), ("fast", 1e-2)):
        task = Quadratic(seed=0, dim=8, condition=10.0)
        candidates[name] = (task, torch.optim.SGD(task.parameters(), lr=lr))
    before = {n: t.value().item() for n, (t, _) in candidates.items()}
    costs = measure(candidates, samples=3, span=2)
    assert set(costs) == {"slow", "fast"}
    for name, cost in costs.items():
        assert len(cost["samples_s"]) == 3 and cost["span"] == 2
        assert min(cost["samples_s"]) <= cost["q1_s"] <= cost["median_s"] <= cost["q3_s"]
        assert cost["q3_s"] <= max(cost["samples_s"])
        task = candidates[name][0]
        assert task.value().item() < before[name]  # the timed steps were training steps


def test_a_training_step_is_batch_forward_backward_and_step():
    task = Quadratic(seed=0, dim=8, condition=10.0)
    calls = []

    class Recording(torch.optim.SGD):
        def step(self, closure=None):
            calls.append(task.w.grad.clone())
            return super().step(closure)

    stepper = TrainingStep(task, Recording(task.parameters(), lr=1e-2))
    start = task.w.detach().clone()
    stepper.step()
    # The gradient the optimizer saw is the loss's at the start (A (w - w*)), and it was used.
    assert torch.allclose(calls[0], task.A @ (start - task.optimum))
    assert torch.allclose(task.w, start - 1e-2 * calls[0])
    assert stepper.count == 1


def run(status: str, evals: list[tuple[int, float]], **final) -> tuple[dict, list[dict]]:
    history = [{"step": s, "wall": 99.0 * s, "val_loss": v} for s, v in evals]
    summary = {
        "status": status,
        "final": {"val_loss": evals[-1][1] if status == "ok" else math.inf, **final},
        "state_bytes_per_param": 8.0,
    }
    return summary, history


def entry(runs, best_lr=0.01, extensions=(), edge=None) -> dict:
    grid = {str(best_lr): 1.0, "0.1": 2.0, **{str(e["lr"]): 3.0 for e in extensions}}
    return {
        "protocol": {"best_lr": best_lr, "grid": grid, "extensions": list(extensions),
                     "edge": edge},
        "runs": runs,
    }  # fmt: skip


def test_report_table_has_spreads_and_derives_time_from_the_measured_cost():
    optimizers = {
        "adam": entry([run("ok", [(0, 9.0), (10, 2.0), (20, 1.0)]) for _ in range(3)]),
        "muon": entry(
            [
                run("ok", [(0, 9.0), (10, 0.9), (20, 0.5)]),
                run("ok", [(0, 9.0), (10, 2.0), (20, 0.8)]),
                run("diverged", [(0, 9.0)]),
            ],
            extensions=[{"factor": 30.0, "lr": 0.3, "side": "high"}],
            edge="high",
        ),
    }
    costs = {
        "adam": {"median_s": 0.002, "q1_s": 0.0019, "q3_s": 0.0021},
        "muon": {"median_s": 0.004, "q1_s": 0.0038, "q3_s": 0.0042},
    }
    lines, target = task_table(optimizers, "adam", costs)
    assert target == 1.0
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {
        r.split("|")[1].strip(): [c.strip() for c in r.strip("|").split("|")] for r in lines[2:]
    }
    adam, muon = rows["adam"], rows["muon"]
    col = header.index
    assert adam[col("final val_loss")] == "1 ± 0"
    assert muon[col("final val_loss")] == "0.65 ± 0.21 (1 diverged)"
    assert muon[col("reached target")] == "2/3"
    assert muon[col("steps-to-target")] == "15 ± 7.1"  # seeds hit at 10 and 20
    # Time = steps x the measured cost (not the runs' wall clock, 99 s per step here).
    assert adam[col("time-to-target s")] == "0.04 ± 0"
    assert muon[col("time-to-target s")] == "0.06 ± 0.028"
    ratios = [i for i, h in enumerate(header) if h == "×Adam"]
    assert [muon[i] for i in ratios] == ["0.75", "1.50"]  # steps 15/20; time 0.06/0.04
    assert muon[col("step ms (IQR)")] == "4 (3.8–4.2)"
    assert muon[col("LR grid")] == "2 pts, +1 high, best at high edge"
    assert adam[col("LR grid")] == "2 pts"


def test_report_table_without_a_measured_cost_prints_no_time():
    optimizers = {"adam": entry([run("ok", [(0, 2.0), (5, 1.0)])])}
    lines, _ = task_table(optimizers, "adam")
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    row = [c.strip() for c in lines[2].strip("|").split("|")]
    assert row[header.index("time-to-target s")] == "—"
    assert row[header.index("final val_loss")] == "1 (n=1)"
