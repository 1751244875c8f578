"""The held-out evaluation: its first-step measurement, and what it claims about the
checkpoint (a family it was trained on is refused; the provenance is its record)."""

from __future__ import annotations

import pytest
import torch

from assocmem.meta import LearnedConfig, init_meta_params, save_checkpoint
from assocmem.meta.tasks import sample_task
from assocmem.meta.train import TrainConfig
from experiments import meta_evaluate
from experiments.meta_evaluate import first_step_movement


def _first_gradient(family: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """|g| and |W| of every weight at the task's first step (the same draws as the measurement)."""
    task = sample_task(family, seed)
    params = {k: v.clone().requires_grad_() for k, v in task.params.items()}
    task.loss(params, task.batch()).backward()
    grads = torch.cat([p.grad.abs().flatten() for p in params.values()])
    return grads, torch.cat([p.detach().abs().flatten() for p in params.values()])


def test_adams_first_step_moves_every_weight_by_lr():
    # Adam's first update is m_hat / (sqrt(v_hat) + eps) = g / (|g| + eps): lr |g| / (|g| + eps)
    # per weight, up to float32 rounding: of W - lr u (an ulp of the larger |W|, over lr) and
    # of the update's own chain of operations (bias corrections, sqrt, eps, lr / bc1: a few
    # ulps of a number near 1, 2^-20 covers eight).
    lr = 1e-2
    moved = first_step_movement("breast_cancer_mlp", 1000, lambda ps: torch.optim.Adam(ps, lr=lr))
    g, w = _first_gradient("breast_cancer_mlp", 1000)
    expected = g / (g + 1e-8)
    assert bool((expected > 0.5).float().mean() > 0.9)  # most weights get a gradient
    tolerance = 2.0**-23 * (w + lr) / lr + 2.0**-20
    assert bool(((moved - expected).abs() <= tolerance).all())


def test_sgds_first_step_is_the_gradient():
    lr = 0.5
    moved = first_step_movement("logistic", 3, lambda ps: torch.optim.SGD(ps, lr=lr))
    g, w = _first_gradient("logistic", 3)
    tolerance = 2.0**-23 * (w + lr * g) / lr
    assert bool(((moved - g).abs() <= tolerance).all())


# --- what the evaluation claims about the checkpoint ------------------------------------------

TINY = LearnedConfig(hidden=(4,))


def _checkpoint(path, info):
    save_checkpoint(path, init_meta_params(TINY, torch.Generator().manual_seed(0)), TINY, info=info)
    return str(path)


def _no_runs(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a run started before the refusal")

    monkeypatch.setattr(meta_evaluate, "evaluate_on_task", refuse)
    monkeypatch.setattr(meta_evaluate, "first_step_movement", refuse)


def test_a_family_the_shipped_checkpoint_was_trained_on_is_refused(monkeypatch, capsys):
    _no_runs(monkeypatch)
    with pytest.raises(SystemExit) as exit_:
        meta_evaluate.main(["--family", "digits_mlp"])
    assert exit_.value.code == 2
    assert "meta-trained on 'digits_mlp'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--steps", "0"], "--steps must be >= 1, got 0"),  # was read as the horizon
        (["--long-steps", "0"], "--long-steps must be >= 1"),  # was 10x the horizon
        (["--seeds", "0"], "--seeds must be >= 1"),  # a StatisticsError after the runs
        (["--steps", "-3"], "--steps must be >= 1, got -3"),  # fit's ValueError
        (["--lr-extensions", "-1"], "--lr-extensions must be >= 0"),
    ],
)
def test_counts_below_one_are_usage_errors(monkeypatch, capsys, argv, message):
    _no_runs(monkeypatch)
    with pytest.raises(SystemExit) as exit_:
        meta_evaluate.main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_a_family_a_checkpoint_was_trained_on_is_refused_whatever_it_is(
    tmp_path, monkeypatch, capsys
):
    _no_runs(monkeypatch)
    # as t5 of the audit: a memory meta-trained on the family that is usually held out
    record = {**TrainConfig().to_dict(), "families": ["breast_cancer_mlp"], "horizon": 4}
    path = _checkpoint(tmp_path / "bc.safetensors", {"train": record})
    with pytest.raises(SystemExit) as exit_:
        meta_evaluate.main(["--checkpoint", path, "--family", "breast_cancer_mlp"])
    assert exit_.value.code == 2
    assert "no held-out evaluation" in capsys.readouterr().err


def _run(tmp_path, path, family, *extra):
    out = tmp_path / "results.md"
    meta_evaluate.main(
        ["--checkpoint", path, "--family", family, "--seeds", "1", "--write", str(out), *extra]
    )
    return out.read_text()


def test_the_provenance_is_the_checkpoints_record(tmp_path):
    record = {**TrainConfig().to_dict(), "families": ["quadratic"], "horizon": 4}
    record["objective"] = "validation"
    path = _checkpoint(tmp_path / "q.safetensors", {"train": record})
    text = _run(tmp_path, path, "breast_cancer_mlp", "--steps", "2", "--long-steps", "8")
    assert "meta-trained with 4-step horizons on `quadratic` (validation objective)" in text
    assert "`breast_cancer_mlp` was not among them" in text
    assert "Held-out task `breast_cancer_mlp`" in text and "2× horizon" in text
    assert "nan ±" not in text  # breast_cancer_mlp has a validation loss: reported


def test_without_a_record_nothing_is_claimed_held_out(tmp_path, monkeypatch, capsys):
    path = _checkpoint(tmp_path / "none.safetensors", {})
    _no_runs(monkeypatch)
    with pytest.raises(SystemExit) as exit_:  # no horizon to default the steps to
        meta_evaluate.main(["--checkpoint", path, "--family", "logistic"])
    assert exit_.value.code == 2 and "--steps" in capsys.readouterr().err
    monkeypatch.undo()
    text = _run(tmp_path, path, "logistic", "--steps", "2", "--long-steps", "4")
    assert "records no meta-training configuration" in text
    assert "may not be held out" in text
    assert "held-out" not in text.lower() and "were held out" not in text
    assert "horizons on" not in text  # no made-up provenance
    # logistic has no eval_loss: said, not printed as nan
    assert "no validation loss for this family" in text and "nan ±" not in text


def test_a_best_lr_on_the_grids_edge_is_tuned_past_it_and_said(monkeypatch):
    # Adam's best was the top of its grid (0.03, unextended) and the table called it tuned
    # Adam (an audit); the sweep now extends past an edge as the comparisons do, and says where
    # its best lies
    tried = []

    def fake(family, seed, make, steps):
        lr = make
        tried.append(lr)
        return {"train_loss": (lr - 0.1) ** 2}  # the optimum, 0.1, lies past 0.03

    monkeypatch.setattr(meta_evaluate, "evaluate_on_task", fake)
    grid = (1e-3, 3e-3, 1e-2, 3e-2)
    best, runs, note = meta_evaluate._sweep("f", [0], 5, "adam", lambda lr: lr, grid, 2)
    assert sorted(set(tried)) == [1e-3, 3e-3, 1e-2, 3e-2, 0.09, 0.27]
    assert best == 0.09 and runs == [{"train_loss": (0.09 - 0.1) ** 2}]
    assert note == "adam: best lr 0.09 of 6 tried (2 past the grid's edges)"
    tried.clear()
    best, _, note = meta_evaluate._sweep("f", [0], 5, "adam", lambda lr: lr, grid, 1)
    assert best == 0.09 and note.endswith("still at the high edge: a better lr may lie beyond it")
    best, _, note = meta_evaluate._sweep("f", [0], 5, "adam", lambda lr: lr, (0.05, 0.1, 0.3), 2)
    assert best == 0.1 and note == "adam: best lr 0.1 of 3 tried (0 past the grid's edges)"
