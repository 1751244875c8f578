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


def test_a_plateau_drops_the_learning_rate_before_it_stops_the_run():
    # Validation losses 5, 4, 4, 4, 3, 3, 3 (then flat): with patience 2 and one drop, the
    # plateau at steps 2-3 drops every group's lr by 10 at step 3 (the run goes on), step 4
    # improves, and the second plateau (steps 5-6) ends the run at step 6 with step 4's weights.
    w = torch.zeros(2, requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    curve = iter([5.0, 4.0, 4.0, 4.0, 3.0, 3.0, 3.0] + [3.0] * 10)
    lrs = []
    opt = torch.optim.SGD([{"params": [w], "lr": 1.0}, {"params": [b], "lr": torch.tensor(0.5)}])

    def evaluate():
        lrs.append((opt.param_groups[0]["lr"], float(opt.param_groups[1]["lr"])))
        return {"val_loss": next(curve)}

    result = fit(
        [w, b], lambda _b: -(w.sum() + b.sum()), itertools.count(1), opt, steps=20,
        eval_every=1, evaluate=evaluate, patience=2, lr_drops=1,
    )  # fmt: skip
    assert result.lr_drop_steps == [3]
    assert result.stopped_early and result.steps == 6 and result.best_step == 4
    # lr at evaluations 0..6: 1.0 up to the drop at step 3, 0.1 after (the tensor lr in place).
    assert [round(a, 6) for a, _ in lrs] == [1.0] * 4 + [0.1] * 3
    assert [round(c, 6) for _, c in lrs] == [0.5] * 4 + [0.05] * 3
    # Step 4's weights: the gradient of -sum(w) is -1, so three SGD steps at lr 1 and one at
    # lr 0.1 move each entry to 3.1.
    torch.testing.assert_close(w, torch.full((2,), 3.1))


def test_a_drop_gives_the_new_rate_its_own_patience():
    # Validation losses 5, 4, 4, 4, 4, 3, ...: with patience 2 and two drops, the plateau drops
    # the lr at step 3; the new rate gets two evaluations of its own (steps 4, 5) before the
    # next drop could come, and step 5 improves. A counter left at the plateau's count dropped
    # again at step 4, one evaluation into the new rate.
    w = torch.zeros(2, requires_grad=True)
    curve = iter([5.0, 4.0, 4.0, 4.0, 4.0, 3.0] + [3.0] * 20)
    opt = torch.optim.SGD([w], lr=1.0)
    result = fit(
        [w], lambda _b: -w.sum(), itertools.count(1), opt, steps=30,
        eval_every=1, evaluate=lambda: {"val_loss": next(curve)}, patience=2, lr_drops=2,
    )  # fmt: skip
    assert result.lr_drop_steps == [3, 7]
    assert result.best_step == 5


def test_lr_drops_need_patience_and_a_factor_below_one():
    w, loss = quadratic()
    opt = lambda ps: torch.optim.SGD(ps, lr=0.1)  # noqa: E731
    with pytest.raises(ValueError, match="needs patience"):
        fit([w], loss, itertools.count(1), opt, steps=2, lr_drops=1)
    with pytest.raises(ValueError, match="lr_drop_factor"):
        fit([w], loss, itertools.count(1), opt, steps=2, lr_drops=1, lr_drop_factor=1.5)


def test_a_linear_decay_steps_at_lr_times_one_minus_the_steps_done_over_the_budget():
    # -sum(w) has gradient -1 everywhere, so SGD moves each entry by exactly the lr of each
    # step: lr (1 - (t - 1) / T) at step t, summing to lr (T + 1) / 2 over T steps. Two groups
    # (one with a tensor lr, as torch accepts) decay alike, and the lr ends at 0.
    w = torch.zeros(2, requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([{"params": [w], "lr": 1.0}, {"params": [b], "lr": torch.tensor(0.5)}])
    moves = []
    result = fit(
        [w, b], lambda _b: -(w.sum() + b.sum()), itertools.count(1), opt, steps=4,
        log=lambda rec: moves.append(float(w[0].detach())), lr_decay="linear",
    )  # fmt: skip
    assert result.status == "ok" and result.steps == 4
    # per step 1, 0.75, 0.5, 0.25 (dyadic: exact in float32)
    assert moves == [1.0, 1.75, 2.25, 2.5]
    torch.testing.assert_close(b, torch.tensor([0.5 * 2.5]))
    assert opt.param_groups[0]["lr"] == 0.0 and float(opt.param_groups[1]["lr"]) == 0.0


def test_a_decay_is_one_schedule_and_no_other_is_known():
    w, loss = quadratic()
    opt = lambda ps: torch.optim.SGD(ps, lr=0.1)  # noqa: E731
    with pytest.raises(ValueError, match="lr_decay must be one of"):
        fit([w], loss, itertools.count(1), opt, steps=2, lr_decay="cosine")
    with pytest.raises(ValueError, match="use one"):
        fit([w], loss, itertools.count(1), opt, steps=2, lr_decay="linear", lr_drops=1,
            patience=1, evaluate=lambda: {"val_loss": 1.0})  # fmt: skip


def test_non_finite_loss_diverges_without_stepping():
    w = torch.ones(2, requires_grad=True)
    losses = iter([1.0, float("nan")])
    opt = torch.optim.SGD([w], lr=0.1)
    result = fit(
        [w], lambda _b: w.sum() * next(losses), itertools.count(1), opt, steps=5
    )  # fmt: skip
    assert result.diverged and result.steps == 1 and "non-finite train loss" in result.message
    assert torch.equal(w, torch.full((2,), 0.9))  # one step of lr 0.1 on grad 1, then nothing


def test_a_diverging_forward_leaves_no_trace_in_the_batchnorm_statistics():
    # The batch whose loss is NaN still ran a training-mode forward, which wrote NaN into the
    # running statistics; the model leaves as it was after the last step taken.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    data = [torch.randn(8, 3), torch.randn(8, 3), torch.full((8, 3), math.nan)]
    batches = iter(data)
    after_step: dict[str, torch.Tensor] = {}

    def step_loss(x):
        after_step.update({k: v.clone() for k, v in model.state_dict().items()})
        return model(x).square().mean()

    result = fit(model, step_loss, batches, lambda ps: torch.optim.SGD(ps, lr=0.1), steps=3)
    assert result.diverged and result.steps == 2
    state = model.state_dict()
    assert all(torch.isfinite(v.float()).all() for v in state.values())
    # what the third call saw: the weights and statistics after step 2
    assert all(torch.equal(state[k], after_step[k]) for k in state)


def test_lbfgs_gets_a_closure_on_the_same_batch():
    w, loss = quadratic()
    opt = torch.optim.LBFGS([w], lr=1.0)
    result = fit([w], loss, itertools.count(1), opt, steps=2)
    assert result.status == "ok" and torch.allclose(w, torch.full((4,), 3.0), atol=1e-5)


def _lbfgs_bn_run(batches, steps):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 1)
    )
    opt = torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=5)
    result = fit(model, lambda b: model(b).square().mean(), batches, opt, steps=steps)
    return model, opt, result


def test_lbfgs_takes_no_step_on_a_non_finite_loss():
    # LBFGS stepped along the NaN gradient of the batch (weights NaN, BatchNorm statistics
    # NaN) before the loop read the loss; now the model and the optimizer's state are those
    # of the last step taken, as with any other optimizer.
    torch.manual_seed(1)
    x = torch.randn(16, 4)
    bad = x.clone()
    bad[0, 0] = math.nan
    ref_model, ref_opt, _ = _lbfgs_bn_run(iter([x, x]), steps=2)
    model, opt, result = _lbfgs_bn_run(iter([x, x, bad, x]), steps=4)
    assert result.diverged and result.steps == 2 and "non-finite train loss" in result.message
    state, ref = model.state_dict(), ref_model.state_dict()
    assert all(torch.equal(state[k], ref[k]) for k in ref)
    ours, theirs = opt.state_dict()["state"][0], ref_opt.state_dict()["state"][0]
    assert ours["n_iter"] == theirs["n_iter"] and ours["func_evals"] == theirs["func_evals"]
    assert torch.equal(ours["d"], theirs["d"])


def test_lbfgs_undoes_a_step_whose_trial_point_is_non_finite():
    # finite where the step starts, NaN at the line search's trial point (w > 2): the weights
    # had already moved there when the loss came back NaN
    w = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=5)
    result = fit([w], lambda _b: (w - 10).square().sum() + (2 - w).sqrt().sum(),
                 itertools.count(1), opt, steps=3)  # fmt: skip
    assert result.diverged and result.steps == 0 and math.isnan(result.history[-1]["train_loss"])
    assert torch.equal(w, torch.zeros(1)) and opt.state_dict()["state"] == {}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": -1}, "steps >= 0"),
        ({"steps": 2, "eval_every": 0}, "eval_every >= 1"),
        ({"steps": 2, "patience": 2}, "with an evaluate"),
        ({"steps": 2, "patience": 0, "evaluate": lambda: {"val_loss": 0.0}}, "patience"),
        # a bool or a fraction was taken: True stopped "after True evaluations"
        ({"steps": 2, "patience": True, "evaluate": lambda: {"val_loss": 0.0}}, "patience"),
        ({"steps": 2, "patience": 1.5, "evaluate": lambda: {"val_loss": 0.0}}, "patience"),
    ],
)
def test_bad_arguments_are_refused(kwargs, match):
    w, loss = quadratic()
    with pytest.raises(ValueError, match=match):
        fit([w], loss, itertools.count(1), lambda ps: torch.optim.SGD(ps, lr=0.1), **kwargs)


def test_an_optimizer_that_steps_none_of_the_model_is_refused():
    # a built optimizer over another model's parameters ran every step, moved nothing and
    # returned status "ok"; a factory returning something else failed after the first eval
    w, loss = quadratic()
    other = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="none of the model's trainable parameters"):
        fit([w], loss, itertools.count(1), torch.optim.SGD([other], lr=0.1), steps=2)
    with pytest.raises(TypeError, match="not an Optimizer"):
        fit([w], loss, itertools.count(1), lambda ps: list(ps), steps=2)


def test_a_divergence_after_early_stopping_restored_the_best_says_so():
    w = torch.zeros(2, requires_grad=True)
    losses = iter([1.0, 1.0, float("nan")])
    result = fit(
        [w], lambda _b: w.sum() * next(losses), itertools.count(1),
        lambda ps: torch.optim.SGD(ps, lr=0.1), steps=5, patience=3,
        evaluate=lambda: {"val_loss": float(w.detach().square().sum())},
    )  # fmt: skip
    assert result.diverged and result.best_step == 0
    assert "restored the weights of step 0" in result.message
    assert torch.equal(w, torch.zeros(2))  # the best evaluation's, not step 2's


def test_nothing_to_train_is_refused():
    frozen = torch.zeros(2)
    with pytest.raises(ValueError, match="no trainable parameters"):
        fit([frozen], lambda _b: frozen.sum(), itertools.count(1), torch.optim.SGD, steps=1)


class Drift(torch.nn.Module):
    """A weight that SGD on -w moves by +lr per step, and a BatchNorm whose running mean and
    batch count a forward pass in training mode updates."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
        self.norm = torch.nn.BatchNorm1d(2, momentum=None).double()  # running mean: plain mean

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.norm(x) * 0).sum() - self.w.sum()


def manual_average(values: list[float], decay: float) -> float:
    """The loop's average of a sequence of weights, written out: the first value, then
    lerps with the warmed-up decay ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates."""
    avg = values[0]
    for n, v in enumerate(values[1:], start=1):
        d = min(decay, (1 + n) / (10 + n))
        avg = avg + (1 - d) * (v - avg)
    return avg


def test_a_weight_average_is_what_leaves_a_fixed_budget():
    # Raw weights after steps 1..30 are 0.5, 1.0, ..., 15.0 (lr 0.5, gradient -1): the model
    # leaves with their warmed-up EMA (decay 0.9), float64 so the two sums round alike to
    # ~1e-15, and the BatchNorm statistics are averaged with it.
    torch.manual_seed(0)
    model = Drift()
    xs = [torch.full((4, 2), float(k)) + torch.arange(4.0).double()[:, None] for k in range(30)]
    result = fit(
        model, lambda x: model(x), iter(xs), lambda ps: torch.optim.SGD(ps, lr=0.5),
        steps=30, average=0.9,
    )  # fmt: skip
    assert result.status == "ok"
    expected = manual_average([0.5 * k for k in range(1, 31)], 0.9)
    torch.testing.assert_close(model.w.detach(), torch.full((2,), expected, dtype=torch.float64))
    # BatchNorm with momentum=None keeps the running mean of the batch means (k + 1.5): after
    # step s it is the mean over k < s, 1.5 + (s - 1) / 2; the model leaves with its average.
    means = [1.5 + (s - 1) / 2 for s in range(1, 31)]
    torch.testing.assert_close(
        model.norm.running_mean, torch.full((2,), manual_average(means, 0.9), dtype=torch.float64)
    )
    assert int(model.norm.num_batches_tracked) == 30  # integer buffers: the current value


def test_evaluations_and_early_stopping_see_the_averaged_weights():
    # Every evaluation sees the average (not the raw weight), training goes on from the raw
    # weights, and early stopping restores the best evaluation's average.
    torch.manual_seed(0)
    model = Drift()
    seen: list[float] = []
    curve = iter([3.0, 2.0, 1.0, 2.0, 2.0, 2.0])

    def evaluate():
        seen.append(float(model.w[0].detach()))
        return {"val_loss": next(curve)}

    xs = itertools.repeat(torch.ones(4, 2, dtype=torch.float64))
    result = fit(
        model, lambda x: model(x), xs, lambda ps: torch.optim.SGD(ps, lr=1.0), steps=20,
        eval_every=2, evaluate=evaluate, patience=3, average=0.5,
    )  # fmt: skip
    assert result.stopped_early and result.best_step == 4 and result.steps == 10
    raw = [float(k) for k in range(1, 11)]  # the raw weight after each step
    averages = [0.0] + [manual_average(raw[:s], 0.5) for s in (2, 4, 6, 8, 10)]
    assert seen == pytest.approx(averages, rel=1e-12)
    assert seen[2] < raw[3]  # the average lags the raw weight: it is not the raw one
    assert float(model.w[0].detach()) == pytest.approx(averages[2], rel=1e-12)


@pytest.mark.parametrize("average", [0.0, 1.0, 2, -0.5])
def test_a_bad_average_is_refused(average):
    with pytest.raises(ValueError, match="average must be a decay"):
        fit(Drift(), lambda x: x, iter([]), torch.optim.SGD, steps=1, average=average)


def test_an_average_needs_a_module():
    w, loss = quadratic()
    with pytest.raises(ValueError, match="needs an nn.Module"):
        fit([w], loss, itertools.count(1), torch.optim.SGD, steps=1, average=0.9)


def test_a_non_finite_first_evaluation_ends_the_run_before_any_step():
    # a NaN pixel in the validation data: the run trained eval_every steps, then blamed the
    # training ("non-finite validation loss at step 50")
    w, loss = quadratic()
    before = w.detach().clone()
    result = fit(
        [w], loss, itertools.count(1), lambda ps: torch.optim.SGD(ps, lr=0.1), steps=10,
        eval_every=5, evaluate=lambda: {"val_loss": math.nan},
    )  # fmt: skip
    assert result.diverged and result.steps == 0 and "before any step" in result.message
    assert torch.equal(w.detach(), before)


def test_a_step_whose_scalars_overflow_ends_the_run_as_diverged():
    # lr 1e300 on float32 weights: torch cannot convert the step's alpha to float32 and raises
    # "value cannot be converted to type float without overflow", which ended a comparison's
    # sweep with a traceback (a user audit); a run that far past divergence has diverged.
    w, loss = quadratic()
    result = fit([w], loss, itertools.count(1), lambda ps: torch.optim.SGD(ps, lr=1e300), steps=5)
    assert result.status == "diverged" and "overflowed" in result.message
    # any other error of the step is the caller's to see
    with pytest.raises(RuntimeError, match="boom"):

        class Broken(torch.optim.SGD):
            def step(self, closure=None):
                raise RuntimeError("boom")

        fit([w], loss, itertools.count(1), lambda ps: Broken(ps, lr=0.1), steps=2)


def test_a_second_linear_decay_starts_from_the_rate_the_run_starts_at():
    # torch's LambdaLR starts from the initial_lr an earlier scheduler left in the group: a
    # second fit with this optimizer, its rates set to 0.01, decayed from the first run's 1.0
    w, plain = quadratic()
    opt = torch.optim.SGD([w], lr=1.0)
    seen = []

    def loss(batch):  # the rate the coming step takes
        seen.append(opt.param_groups[0]["lr"])
        return plain(batch)

    fit([w], loss, itertools.count(1), opt, steps=4, lr_decay="linear")
    assert seen == [1.0, 0.75, 0.5, 0.25]
    opt.param_groups[0]["lr"] = 0.01
    seen.clear()
    fit([w], loss, itertools.count(1), opt, steps=4, lr_decay="linear")
    assert seen == pytest.approx([0.01, 0.0075, 0.005, 0.0025], rel=1e-12)


def test_batches_that_run_out_end_the_run_with_its_result_and_best_weights():
    # a bare StopIteration escaped: no result, the best weights not restored (a user audit)
    w = torch.zeros(1, requires_grad=True)
    evals = iter([3.0, 1.0, 2.0, 2.5, 2.7])
    result = fit(
        [w], lambda b: (w - b).pow(2).sum(), iter([1.0] * 7),
        lambda ps: torch.optim.SGD(ps, lr=0.1), steps=100, eval_every=2,
        evaluate=lambda: {"val_loss": next(evals)}, patience=5,
    )  # fmt: skip
    assert result.status == "ok" and result.steps == 7
    assert "the batches ran out after step 7 of 100" in result.message
    assert result.best_step == 2  # and its weights are back: those after two steps
    assert w.item() == pytest.approx(1 - 0.8**2, rel=1e-6)


def test_evaluate_that_raises_leaves_the_raw_weights_not_the_average():
    # an exception in evaluate (Ctrl-C, a KeyError) left the averaged weights in the model
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    calls = []

    averaged = {}

    def evaluate():  # runs on the averaged weights, swapped in
        calls.append(1)
        if len(calls) == 3:
            averaged.update({k: v.clone() for k, v in model.state_dict().items()})
            raise KeyboardInterrupt
        return {"val_loss": 1.0 / len(calls)}

    x = torch.randn(8, 2)

    def step_loss(_batch):
        return model(x).pow(2).mean()

    with pytest.raises(KeyboardInterrupt):
        fit(model, step_loss, itertools.count(1), lambda ps: torch.optim.SGD(ps, lr=0.1),
            steps=20, eval_every=2, evaluate=evaluate, average=0.9)  # fmt: skip
    # the raw weights of step 4 are back, not the average the interrupted evaluation saw
    assert not torch.equal(model.weight, averaged["weight"])
    with pytest.raises(ValueError, match="'val_loss'"):
        fit(model, step_loss, itertools.count(1), lambda ps: torch.optim.SGD(ps, lr=0.1),
            steps=2, evaluate=lambda: {"acc": 1.0})  # fmt: skip


def test_whole_number_arguments_take_numpy_integers_and_refuse_bools():
    np = pytest.importorskip("numpy")
    w, loss = quadratic()
    opt = lambda ps: torch.optim.SGD(ps, lr=0.1)  # noqa: E731
    assert fit([w], loss, itertools.count(1), opt, steps=np.int64(3)).steps == 3
    for kw in ({"steps": True}, {"steps": 3, "eval_every": True}, {"steps": 3, "lr_drops": True}):
        with pytest.raises(ValueError):
            fit([w], loss, itertools.count(1), opt, **kw)
    nan = fit([w], loss, itertools.count(1), opt, steps=3, evaluate=lambda: {"val_loss": math.nan})
    assert nan.status == "diverged" and math.isnan(nan.best_val_loss)  # no best: NaN, not inf


@pytest.mark.parametrize("bad", [float("nan"), -math.inf, math.inf])
def test_a_non_finite_validation_loss_is_never_the_best_and_the_best_finite_one_is_restored(bad):
    # -inf passed `loss < best` and became the "best" weights that the diverged run restored
    w = torch.zeros(1, requires_grad=True)
    losses = iter([5.0, 2.0, bad, 1.0])
    snapshots = []

    def evaluate():
        snapshots.append(w.detach().clone())
        return {"val_loss": next(losses)}

    opt = torch.optim.SGD([w], lr=0.1)
    result = fit([w], lambda _b: -w.sum(), itertools.count(1), opt, steps=3, eval_every=1,
                 evaluate=evaluate, patience=5)  # fmt: skip
    assert result.diverged and result.best_step == 1 and result.best_val_loss == 2.0
    assert torch.equal(w.detach(), snapshots[1])  # the weights evaluated at step 1


def test_early_stopping_restores_the_best_tensors_given_as_a_generator():
    # model.parameters(), torch's idiom: the generator was used up listing the trainable
    # tensors, and the best weights were snapshot and restored as an empty list
    layer = torch.nn.Linear(3, 1, bias=False)
    torch.nn.init.zeros_(layer.weight)
    seen = {}

    def evaluate():
        step = len(seen)
        seen[step] = layer.weight.detach().clone()
        return {"val_loss": float((step - 2) ** 2)}

    result = fit(
        layer.parameters(), lambda _b: -layer.weight.sum(), itertools.count(1),
        lambda ps: torch.optim.SGD(ps, lr=1.0), steps=10, eval_every=1, evaluate=evaluate,
        patience=2,
    )  # fmt: skip
    assert result.stopped_early and result.best_step == 2
    assert torch.equal(layer.weight, seen[2]) and not torch.equal(layer.weight, seen[4])


@pytest.mark.parametrize(
    ("metrics", "match"),
    [
        # the loop's own fields: an evaluate's full-set train_loss replaced the batch loss
        ({"val_loss": 0.5, "train_loss": 123.0}, r"returned \['train_loss'\]"),
        ({"val_loss": 0.5, "step": -1}, r"returned \['step'\]"),
        # a tensor or a bool became best_val_loss; a string failed in math.isfinite, unnamed
        ({"val_loss": torch.tensor(0.5)}, "val_loss must be a real number .* got Tensor"),
        ({"val_loss": True}, "val_loss must be a real number .* got bool"),
        ({"val_loss": "0.5"}, "val_loss must be a real number .* got str"),
        ({"val_loss": None}, "val_loss must be a real number .* got NoneType"),
    ],
)
def test_an_evaluate_that_returns_what_the_loop_cannot_record_is_refused(metrics, match):
    w, loss = quadratic()
    with pytest.raises(ValueError, match=match):
        fit([w], loss, itertools.count(1), lambda ps: torch.optim.SGD(ps, lr=0.1), steps=2,
            evaluate=lambda: metrics)  # fmt: skip
    assert torch.equal(w, torch.zeros(4))  # refused at step 0, before any step
