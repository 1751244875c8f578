"""The library's one training loop: any trainable, any torch.optim optimizer."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from assocmem.training import fit


def quadratic(target: float = 3.0):
    w = torch.zeros(4, requires_grad=True)
    return w, (lambda _batch: ((w - target) ** 2).sum())


def test_tensors_without_evaluation_train_and_record_every_step():
    w, loss = quadratic()
    result = fit([w], loss, itertools.count(1), lambda ps: torch.optim.SGD(ps, lr=0.1), steps=60)
    assert result.status == "ok" and result.steps == 60
    assert [r["step"] for r in result.history] == list(range(1, 61))
    assert all("val_loss" not in r for r in result.history)
    # SGD on (w - 3)^2 contracts the error by (1 - 2 lr) = 0.8 per step: 3 * 0.8^60 ~ 5e-6.
    assert torch.allclose(w, torch.full((4,), 3.0), atol=1e-4)
    assert math.isnan(result.final_val_loss) and math.isnan(result.best_val_loss)
    assert 0 < result.optimizer_seconds <= result.wall_time


def test_a_built_optimizer_is_used_as_is():
    w, loss = quadratic()
    opt = torch.optim.SGD([w], lr=0.1)
    result = fit([w], loss, itertools.count(1), opt, steps=3)
    assert result.optimizer is opt and opt.state_dict()["param_groups"][0]["lr"] == 0.1


def test_early_stopping_restores_the_best_tensors():
    # The validation loss is lowest after step 2 and rises after: with patience 2 the run stops
    # at step 4 and the tensors are those of step 2, bit for bit.
    w = torch.zeros(3, requires_grad=True)
    seen = {}

    def evaluate():
        step = len(seen)
        seen[step] = w.detach().clone()
        return {"val_loss": float((step - 2) ** 2)}

    result = fit(
        [w], lambda _b: -w.sum(), itertools.count(1), lambda ps: torch.optim.SGD(ps, lr=1.0),
        steps=10, eval_every=1, evaluate=evaluate, patience=2,
    )  # fmt: skip
    assert result.stopped_early and result.steps == 4 and result.best_step == 2
    assert torch.equal(w, seen[2]) and not torch.equal(w, seen[4])


def test_non_finite_loss_diverges_without_stepping():
    w = torch.ones(2, requires_grad=True)
    losses = iter([1.0, float("nan")])
    opt = torch.optim.SGD([w], lr=0.1)
    result = fit(
        [w], lambda _b: w.sum() * next(losses), itertools.count(1), opt, steps=5
    )  # fmt: skip
    assert result.diverged and result.steps == 1 and "non-finite train loss" in result.message
    assert torch.equal(w, torch.full((2,), 0.9))  # one step of lr 0.1 on grad 1, then nothing


def test_lbfgs_gets_a_closure_on_the_same_batch():
    w, loss = quadratic()
    opt = torch.optim.LBFGS([w], lr=1.0)
    result = fit([w], loss, itertools.count(1), opt, steps=2)
    assert result.status == "ok" and torch.allclose(w, torch.full((4,), 3.0), atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": -1}, "steps >= 0"),
        ({"steps": 2, "eval_every": 0}, "eval_every >= 1"),
        ({"steps": 2, "patience": 2}, "with an evaluate"),
        ({"steps": 2, "patience": 0, "evaluate": lambda: {"val_loss": 0.0}}, "patience"),
    ],
)
def test_bad_arguments_are_refused(kwargs, match):
    w, loss = quadratic()
    with pytest.raises(ValueError, match=match):
        fit([w], loss, itertools.count(1), lambda ps: torch.optim.SGD(ps, lr=0.1), **kwargs)


def test_nothing_to_train_is_refused():
    frozen = torch.zeros(2)
    with pytest.raises(ValueError, match="no trainable parameters"):
        fit([frozen], lambda _b: frozen.sum(), itertools.count(1), torch.optim.SGD, steps=1)
