"""``fit``: step an optimizer on batches, evaluate on a schedule, stop early, restore the best.

One record per step goes to ``log`` and into ``TrainResult.history``: ``step``, ``time`` (wall
seconds of training since the start, evaluations excluded, so it compares across evaluation
schedules), ``train_loss``, plus whatever ``evaluate()`` returns (at least ``val_loss``) at step
0 (no ``train_loss``), every ``eval_every`` steps and at the last step. A non-finite training or
validation loss ends the run with ``status="diverged"`` instead of raising, and so does a step
whose scalars overflow the parameters' dtype (an lr of 1e38: torch's "cannot be converted to
type float without overflow"; that step may have written some tensors). An iterator of
batches that runs out ends the run there. An exception (Ctrl-C included) propagates; one
raised inside ``evaluate`` leaves the raw weights in the model, never the average it was
shown. A non-finite
training loss takes no step, and the forward that produced it leaves nothing behind either:
the BatchNorm running statistics it updated are put back, so the model is that of the last
step taken (``TrainResult.steps``), unless early stopping restores its best evaluation's
weights (``restore_best``), which the run's ``message`` then says.

Early stopping: with ``patience=k`` the run ends once ``k`` evaluations in a row have not lowered
the best validation loss, and the model leaves with the weights of its best evaluation whether
it stopped early or ran out of steps (``restore_best``: default on with ``patience``, off for a
fixed budget, whose final weights are the point). ``best_step``/``best_val_loss`` are recorded
either way. Only the weights (and buffers) go back: ``TrainResult.optimizer`` keeps the state of
the last step taken (a copy of it at every improvement would double the memory a run holds), so
a second ``fit`` with it starts from the best weights with the last step's memories.

Learning-rate drops on a plateau (``lr_drops=n``, CNNDetection's recipe): when ``patience``
evaluations in a row have not improved, the run does not end while drops remain; every group's
learning rate is multiplied by ``lr_drop_factor`` instead, the count of stale evaluations starts
again, and training goes on from the current weights and optimizer state. The run ends at the
next plateau after the last drop (or at ``steps``). A noisy validation curve at a high learning
rate then gets the lower-noise steps it needs before the loop gives up on it.

Learning-rate decay (``lr_decay="linear"``): every group's learning rate falls linearly from its
value at the start to 0 at ``steps`` (``lr_t = lr (1 - (t - 1) / steps)`` at step ``t``; torch's
``LambdaLR``), the schedule most Muon recipes run with. It needs a fixed budget to decay over, so
it does not combine with ``lr_drops``; early stopping still keeps the best evaluation.

Weight averaging (``average=decay``, Polyak averaging as an exponential moving average of the
weights, BatchNorm statistics included): the loop keeps ``W_avg <- d_n W_avg + (1 - d_n) W``
after every step, with ``d_n = min(decay, (1 + n) / (10 + n))`` after ``n`` updates (the
usual warm-up, so the average is not dominated by the initial weights early on). Evaluations,
early stopping and the weights the model leaves with are the averaged ones; training steps from
the raw ones. An average has the noise of single steps smoothed out, so its validation curve
is the smoother one to stop on (``torch.optim.swa_utils.AveragedModel`` keeps it).

The optimizer is a factory ``params -> Optimizer`` (the loop then hands it exactly the
trainable parameters) or an optimizer already built; ``TrainResult.optimizer`` is the one used.
Line-search optimizers (``torch.optim.LBFGS``) get a closure that re-evaluates the same batch;
a non-finite loss at any of its evaluations undoes the whole step (weights, statistics and the
optimizer's state), as a non-finite loss takes no step with any other optimizer.
"""

from __future__ import annotations

import copy
import math
import numbers
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

OptimizerFactory = Callable[[Iterable[Tensor]], torch.optim.Optimizer]
LR_DECAYS = (None, "linear")
Logger = Callable[[dict[str, Any]], None]
Trainable = nn.Module | Sequence[Tensor]
# the fields every record gets from the loop; evaluate() may not return them
RECORD_FIELDS = frozenset({"step", "time", "train_loss"})


@dataclass
class TrainResult:
    """Outcome of :func:`fit`: ``status`` is ``"ok"`` or ``"diverged"``; ``history`` holds the
    records that were passed to ``log``; ``optimizer_seconds`` is the time spent inside
    ``optimizer.step`` (the optimizer's own cost, without forward and backward)."""

    status: str
    steps: int
    final_train_loss: float
    final_val_loss: float
    wall_time: float
    history: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""
    best_step: int = 0
    best_val_loss: float = math.nan
    stopped_early: bool = False
    optimizer_seconds: float = 0.0
    lr_drop_steps: list[int] = field(default_factory=list)
    optimizer: torch.optim.Optimizer | None = field(default=None, repr=False, compare=False)

    @property
    def diverged(self) -> bool:
        return self.status == "diverged"


def trainable_parameters(model: Trainable) -> list[Tensor]:
    """The tensors that train: those with ``requires_grad`` (a frozen encoder's are excluded)."""
    params = model.parameters() if isinstance(model, nn.Module) else model
    return [p for p in params if p.requires_grad]


class _NonFiniteEvaluation(Exception):
    """A closure's loss was not finite: the line-search step is abandoned and undone."""

    def __init__(self, loss: float) -> None:
        super().__init__(loss)
        self.loss = loss


def _snapshot(model: Trainable) -> Any:
    # A module's state_dict includes its buffers (BatchNorm statistics belong to the weights).
    if isinstance(model, nn.Module):
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
    return [p.detach().clone() for p in model]


@torch.no_grad()
def _restore(model: Trainable, snapshot: Any) -> None:
    if isinstance(model, nn.Module):
        model.load_state_dict(snapshot)
    else:
        for p, saved in zip(model, snapshot, strict=True):
            p.copy_(saved)


def _running_statistics(model: Trainable) -> list[Tensor]:
    """The BatchNorm running statistics a training-mode forward of ``model`` updates."""
    if not isinstance(model, nn.Module):
        return []
    stats = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
            stats += [
                t for t in (m.running_mean, m.running_var, m.num_batches_tracked) if t is not None
            ]
    return stats


def _train_mode(model: Trainable, mode: bool = True) -> None:
    if isinstance(model, nn.Module):
        model.train(mode)


@torch.no_grad()
def _scale_learning_rates(opt: torch.optim.Optimizer, factor: float) -> None:
    # A tensor lr (capturable / compiled setups) is scaled in place, so a compiled step that
    # closed over it sees the new value; a float lr is replaced.
    for group in opt.param_groups:
        if isinstance(group["lr"], Tensor):
            group["lr"].mul_(factor)
        else:
            group["lr"] = group["lr"] * factor


def warmed_decay(decay: float) -> Callable[[list[Tensor], list[Tensor], Tensor], None]:
    """An ``AveragedModel`` ``multi_avg_fn``: EMA with decay ``min(decay, (1 + n) / (10 + n))``
    after ``n`` updates (``n`` is read on the host: the loop already reads the loss every step)."""

    @torch.no_grad()
    def update(averaged: list[Tensor], current: list[Tensor], n: Tensor) -> None:
        count = float(n)
        d = min(decay, (1.0 + count) / (10.0 + count))
        if torch.is_floating_point(averaged[0]) or torch.is_complex(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1.0 - d)
        else:  # integer buffers (BatchNorm's batch count): the current value
            torch._foreach_copy_(averaged, current)

    return update


def _averager(model: Trainable, decay: float | None) -> Any:
    if decay is None:
        return None
    if not isinstance(model, nn.Module):
        raise ValueError("average needs an nn.Module (its buffers are averaged with it)")
    if not (isinstance(decay, float) and 0.0 < decay < 1.0):
        raise ValueError(f"average must be a decay in (0, 1), got {decay!r}")
    from torch.optim.swa_utils import AveragedModel

    return AveragedModel(model, multi_avg_fn=warmed_decay(decay), use_buffers=True)


def _count_at_least(x: Any, least: int) -> bool:
    """``x`` a whole number ``>= least``: an int or numpy integer, not a bool (``True`` ran one
    step where ``patience=True`` was refused)."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool) and x >= least


def _progress(steps: int, enabled: bool, desc: str) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=steps, desc=desc, leave=False)


def fit(
    model: Trainable | Iterable[Tensor],
    step_loss: Callable[[Any], Tensor],
    batches: Iterator[Any],
    optimizer: torch.optim.Optimizer | OptimizerFactory,
    *,
    steps: int,
    eval_every: int = 50,
    evaluate: Callable[[], dict[str, float]] | None = None,
    log: Logger | None = None,
    progress: bool = False,
    desc: str = "train",
    patience: int | None = None,
    restore_best: bool | None = None,
    lr_drops: int = 0,
    lr_drop_factor: float = 0.1,
    average: float | None = None,
    lr_decay: str | None = None,
) -> TrainResult:
    """Train ``model`` for up to ``steps`` steps of ``step_loss(next(batches))``.

    Args:
        model: an ``nn.Module`` or tensors (its ``requires_grad`` ones train): a list, or an
            iterable such as ``module.parameters()``, listed once.
        step_loss: the training loss of one batch (a scalar tensor to backpropagate).
        batches: an iterator of batches (``itertools.count(1)`` for step-indexed tasks); one that
            runs out ends the run there (status ``"ok"``, the message says so; the last
            evaluation is the one before).
        optimizer: a factory ``params -> Optimizer`` or a built optimizer.
        evaluate: returns metrics with ``val_loss``; ``None`` runs without evaluations (then
            ``patience`` and ``restore_best`` do not apply and ``final_val_loss`` is NaN).
        patience, restore_best: early stopping, as in the module docstring.
        lr_drops, lr_drop_factor: learning-rate drops at a plateau before stopping, as in the
            module docstring (they need ``patience``).
        average: EMA decay of the weights that are evaluated, stopped on and returned
            (module docstring); ``None`` evaluates the raw weights.
        lr_decay: ``"linear"`` decays every group's learning rate to 0 at ``steps`` (module
            docstring); ``None`` keeps it.
    """
    if not (_count_at_least(steps, 0) and _count_at_least(eval_every, 1)):
        raise ValueError(f"need steps >= 0 and eval_every >= 1, got {steps!r}, {eval_every!r}")
    if patience is not None and (evaluate is None or not _count_at_least(patience, 1)):
        raise ValueError(
            f"patience must be None or >= 1 evaluations (with an evaluate), got {patience!r}"
        )
    if not _count_at_least(lr_drops, 0) or not 0.0 < lr_drop_factor < 1.0:
        raise ValueError(
            f"need lr_drops >= 0 and 0 < lr_drop_factor < 1, got {lr_drops!r}, {lr_drop_factor!r}"
        )
    if lr_drops and patience is None:
        raise ValueError("lr_drops needs patience (a drop happens where early stopping would)")
    if lr_decay not in LR_DECAYS:
        raise ValueError(f"lr_decay must be one of {LR_DECAYS}, got {lr_decay!r}")
    if lr_decay is not None and lr_drops:
        raise ValueError("lr_decay and lr_drops both set the learning rate: use one")
    if restore_best is None:  # early stopping restores the best weights; a fixed budget does not
        restore_best = patience is not None
    if not isinstance(model, (nn.Module, Sequence)):
        # model.parameters(), torch's idiom, is a generator: trainable_parameters used it up,
        # and the best weights were snapshot and restored as an empty list (nothing restored)
        model = list(model)
    params = trainable_parameters(model)
    if not params:
        raise ValueError("the model has no trainable parameters")
    averaged = _averager(model, average)
    opt = optimizer if isinstance(optimizer, torch.optim.Optimizer) else optimizer(params)
    if not isinstance(opt, torch.optim.Optimizer):
        raise TypeError(f"the optimizer factory returned {type(opt).__name__}, not an Optimizer")
    stepped = {id(p) for group in opt.param_groups for p in group["params"]}
    if not any(id(p) in stepped for p in params):
        # a built optimizer over another model's parameters trained nothing, "ok" all the same
        raise ValueError("the optimizer holds none of the model's trainable parameters")
    schedule = _lr_schedule(opt, lr_decay, steps)
    history: list[dict[str, Any]] = []
    bar = _progress(steps, progress, desc)
    start = time.perf_counter()
    eval_time = opt_time = 0.0
    train_loss = val_loss = math.nan
    status, message, done, stopped_early = "ok", "", 0, False
    best: dict[str, Any] = {"step": 0, "val_loss": math.inf, "state": None, "stale": 0}
    drop_steps: list[int] = []

    def record(rec: dict[str, Any]) -> None:
        history.append(rec)
        if log is not None:
            log(rec)

    def elapsed() -> float:
        return time.perf_counter() - start - eval_time

    def timed_evaluate(step: int) -> dict[str, float]:
        """Evaluate, then track the best evaluation (its weights only if we may restore)."""
        nonlocal eval_time
        t0 = time.perf_counter()
        raw = None
        if averaged is not None:  # evaluate the average: swap it in, then the raw weights back
            raw = _snapshot(model)
            _restore(model, averaged.module.state_dict())
        try:
            metrics = evaluate()  # type: ignore[misc]
            if not isinstance(metrics, Mapping) or "val_loss" not in metrics:
                raise ValueError(
                    f"evaluate() must return a mapping with 'val_loss', got {metrics!r:.200}"
                )
            # the loop's own fields: an evaluate's "train_loss" (a full-set loss) replaced the
            # batch loss in the record, and gave step 0 one
            if taken := sorted(RECORD_FIELDS & set(metrics)):
                raise ValueError(
                    f"evaluate() returned {taken}, which the loop records itself; name them "
                    "otherwise (e.g. 'full_train_loss')"
                )
            loss = metrics["val_loss"]
            # a tensor or a bool became TrainResult's best_val_loss; a string failed in isfinite
            if isinstance(loss, bool) or not isinstance(loss, numbers.Real):
                raise ValueError(
                    f"evaluate()'s val_loss must be a real number (a tensor's .item()), got "
                    f"{type(loss).__name__} {loss!r:.50}"
                )
            # finite only: -inf passed `<` and became the "best" weights a diverged run restored
            if math.isfinite(loss) and loss < best["val_loss"]:
                best.update(step=step, val_loss=loss, stale=0)
                if restore_best:
                    best["state"] = _snapshot(model)
            else:
                best["stale"] += 1
        finally:
            # the raw weights back whatever happened, Ctrl-C in evaluate included (the average
            # was left in the model)
            if raw is not None:
                _restore(model, raw)
        eval_time += time.perf_counter() - t0
        _train_mode(model)
        return metrics

    # Step 0: the untrained model, so curves start at initialisation.
    last = steps
    if evaluate is not None:
        initial = timed_evaluate(0)
        val_loss = initial["val_loss"]
        record({"step": 0, "time": elapsed(), **initial})
        if not math.isfinite(val_loss):  # before any step: the data, not the training
            status = "diverged"
            message = "non-finite validation loss at step 0, before any step: the validation data?"
            last = 0  # it trained eval_every steps before saying so
    _train_mode(model)
    statistics = _running_statistics(model)
    needs_closure = isinstance(opt, torch.optim.LBFGS)
    for step in range(1, last + 1):
        try:
            batch = next(batches)
        except StopIteration:
            # a finite iterator: the run ends as one of its length would, early stopping's best
            # weights restored (a bare StopIteration escaped, the result and the best lost)
            message = f"the batches ran out after step {step - 1} of {steps}"
            break
        if needs_closure:
            # A line search moves the weights between its evaluations, so a non-finite one
            # (the first, or one at a trial point) is undone from a copy of the weights, their
            # statistics and the optimizer's state taken before the step (small next to the
            # step's up to max_iter forward-backward passes).
            saved = _snapshot(model), copy.deepcopy(opt.state_dict())

            def closure(batch: Any = batch) -> Tensor:
                opt.zero_grad(set_to_none=True)
                loss = step_loss(batch)
                value = loss.detach()
                if not torch.isfinite(value):  # LBFGS reads each loss on the host anyway
                    raise _NonFiniteEvaluation(float(value))
                loss.backward()
                return value

            t0 = time.perf_counter()
            try:
                train_loss = float(opt.step(closure))
            except _NonFiniteEvaluation as bad:
                train_loss = bad.loss
                _restore(model, saved[0])
                opt.load_state_dict(saved[1])
            opt_time += time.perf_counter() - t0
        else:
            opt.zero_grad(set_to_none=True)
            before = [t.clone() for t in statistics]  # a few vectors: cheap next to a forward
            loss = step_loss(batch)
            train_loss = float(loss.detach())
            if math.isfinite(train_loss):
                loss.backward()
                t0 = time.perf_counter()
                try:
                    opt.step()
                except RuntimeError as e:
                    # torch's "value cannot be converted to type float without overflow": the
                    # step's scalars (lr x a bias correction, say) exceed the parameters' dtype,
                    # an lr far past divergence (1e38). A diverged run, as a non-finite loss
                    # is, where it ended a sweep with a traceback.
                    if "without overflow" not in str(e):
                        raise
                    status = "diverged"
                    message = f"the step at step {step} overflowed its dtype's range ({e})"
                    record({"step": step, "time": elapsed(), "train_loss": train_loss})
                    break
                opt_time += time.perf_counter() - t0
            else:  # the forward ran on the batch that diverged: undo what it wrote
                with torch.no_grad():
                    for t, saved in zip(statistics, before, strict=True):
                        t.copy_(saved)
        if not math.isfinite(train_loss):
            status, message = "diverged", f"non-finite train loss {train_loss} at step {step}"
            record({"step": step, "time": elapsed(), "train_loss": train_loss})
            break
        # a step was taken: advance what follows the steps
        if schedule is not None:
            schedule.step()
        if averaged is not None:
            averaged.update_parameters(model)
        done = step
        rec: dict[str, Any] = {"step": step, "time": elapsed(), "train_loss": train_loss}
        evaluated = evaluate is not None and (step % eval_every == 0 or step == steps)
        if evaluated:
            rec.update(timed_evaluate(step))
            val_loss = rec["val_loss"]
        record(rec)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{train_loss:.4g}", val=f"{val_loss:.4g}")
        if evaluated and not math.isfinite(val_loss):
            status, message = "diverged", f"non-finite validation loss at step {step}"
            break
        if evaluated and patience is not None and best["stale"] >= patience:
            if len(drop_steps) < lr_drops:  # a plateau: drop the lr and go on
                _scale_learning_rates(opt, lr_drop_factor)
                drop_steps.append(step)
                best["stale"] = 0
                continue
            stopped_early = True
            message = (
                f"early stop at step {step}: {patience} evaluations without a lower val_loss "
                f"than {best['val_loss']:.4g} (step {best['step']})"
            )
            break
    if bar is not None:
        bar.close()
    if restore_best and best["state"] is not None:
        _restore(model, best["state"])
        if status == "diverged":  # the model is not the last step's: say whose it is
            message += f"; restored the weights of step {best['step']}, the best evaluation"
    elif averaged is not None:  # a fixed budget with averaging leaves with the average
        _restore(model, averaged.module.state_dict())
    return TrainResult(
        status, done, train_loss, val_loss, time.perf_counter() - start, history, message,
        best_step=best["step"],
        # NaN where no evaluation was finite (inf read as a best that was never measured)
        best_val_loss=best["val_loss"] if math.isfinite(best["val_loss"]) else math.nan,
        stopped_early=stopped_early, optimizer_seconds=opt_time, lr_drop_steps=drop_steps,
        optimizer=opt,
    )  # fmt: skip


def _lr_schedule(
    opt: torch.optim.Optimizer, lr_decay: str | None, steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """torch's ``LambdaLR`` for ``lr_decay`` (called after every step), or ``None``. Step ``t``
    runs at ``lr (1 - (t - 1) / steps)``: the first at the full rate, the last at ``lr / steps``."""
    if lr_decay is None or steps == 0:
        return None
    for group in opt.param_groups:
        # from the rate the run starts at: torch's schedulers start from an ``initial_lr`` an
        # earlier scheduler left in the group (a second fit with this optimizer, its rates set
        # to 0.01 in between, decayed from the first run's 1.0)
        lr = group["lr"]
        group["initial_lr"] = lr.clone() if isinstance(lr, Tensor) else lr
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda done: max(0.0, 1.0 - done / steps))
