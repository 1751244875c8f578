r"""Meta-training: gradient descent on the meta-parameters through truncated inner unrolls.

For a task with inner parameters :math:`\theta`, one truncation of ``K`` inner steps from
:math:`\theta_0` (detached) is

.. math::
    g_k = \nabla_\theta L(\theta_k; b_k), \quad
    \theta_{k+1} = \theta_k - \mathrm{lr}\, u_\phi(\mathrm{features}(g_k, \theta_k, m_k)),
    \qquad \mathcal{L}(\phi) = \frac1K \sum_{k=1}^{K} \log \frac{L(\theta_k; b_k)}{L_0},

with :math:`L_0` the task's loss at its initialisation (a constant: the log makes tasks of any
loss scale mix, and its gradient is already scale-free). With ``objective="validation"`` the
summand is the loss on the task's held-out data instead, :math:`L(\theta_k; b_{val})`
(``Task.val_batch``, the same batch every step): the memory is then rewarded for steps that
generalise, not for fitting the minibatches it saw. The inner step is applied
functionally (``torch.func.functional_call`` on a dict of tensors), so
:math:`\nabla_\phi \mathcal{L}` is exact back-propagation through the unroll, including the
second-order term through :math:`g_k` (``second_order=False`` drops it, Andrychowicz et al.
2016's cheaper choice). Each task runs ``horizon`` inner steps as ``horizon / unroll``
truncations with one meta-update each (truncated BPTT; biased towards short horizons, the
usual trade). Meta-updates: Adam on the mean over ``tasks_per_step`` tasks, gradient norm
clipped at ``clip``; a non-finite meta-loss or meta-gradient skips the update (one task whose
unroll blew up does not wreck the meta-parameters of a long run), and the skip is recorded
(``TrainResult.skipped``, kept in the checkpoints) and warned about, since the meta-loss
history alone looks normal while the meta-parameters do not move.

Checkpoints are written only at task boundaries (every worker starts a fresh task), so a
checkpoint is meta-parameters + Adam state + the task sampler's RNG state + the step, and a
resumed run is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from assocmem.meta.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from assocmem.meta.config import LearnedConfig
from assocmem.meta.features import MemoryState, init_memory
from assocmem.meta.network import MetaParams, init_meta_params
from assocmem.meta.step import learned_step
from assocmem.meta.tasks import (
    FAMILIES,
    HELD_OUT_FAMILIES,
    TRAIN_FAMILIES,
    Params,
    Task,
    sample_task,
)
from assocmem.storage import refuse_shared_sidecar, sidecar_path, strict_json

# TrainConfig fields that may change between an interrupted run and its resumption.
_RESUMABLE_CHANGES = {"meta_steps", "checkpoint_every"}
# What each meta-loss summand scores: the minibatch just drawn, or the task's held-out data.
OBJECTIVES = ("train", "validation")
# Each meta-loss summand is log(L + LOSS_FLOOR * L_0): gains below a millionth of a task's
# initial loss no longer count (its log-ratio is bounded below by log 1e-6, about -13.8), so a
# loss of exactly 0 (a small classifier fitting its minibatch in float32, measured from the
# first meta-steps on the digits and pointer tasks) neither makes the meta-loss -inf nor lets
# one task's last digits dominate the mean.
LOSS_FLOOR = 1e-6


class CheckpointRefused(ValueError):
    """:func:`meta_train` was asked to resume a checkpoint it cannot resume (unreadable, not a
    checkpoint, another config, a longer run, edited). A ``ValueError``, so that callers
    catching that still do; a command tells it apart from a bad argument by its type, not by
    the words of its message."""


@dataclass(frozen=True)
class TrainConfig:
    """Meta-training hyperparameters (see the module docstring for the objective).

    The defaults are a small run, not the shipped memory's recipe: that one is
    ``experiments/conf/meta_train.yaml`` (``meta_steps=3000``, ``horizon=1000``,
    ``objective="validation"``), recorded in the shipped checkpoint's ``default.json``."""

    meta_steps: int = 600
    unroll: int = 20
    horizon: int = 200
    tasks_per_step: int = 4
    families: tuple[str, ...] = TRAIN_FAMILIES
    meta_lr: float = 3e-3
    clip: float = 1.0
    second_order: bool = False
    seed: int = 0
    checkpoint_every: int = 50
    objective: str = "train"

    def __post_init__(self) -> None:
        if isinstance(self.families, str):  # tuple("quadratic") would be its letters
            raise ValueError(f"families must be a sequence of names, got {self.families!r}")
        object.__setattr__(self, "families", tuple(self.families))
        if not self.families:
            raise ValueError("families must name at least one task family")
        for name, least in (
            ("meta_steps", 0), ("unroll", 1), ("horizon", 1), ("tasks_per_step", 1),
            ("checkpoint_every", 1), ("seed", 0),
        ):  # fmt: skip
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        if self.seed >= 2**64:  # manual_seed refuses it ("Overflow when unpacking"), mid-run
            raise ValueError(f"seed must be an integer < 2**64, got {self.seed!r}")
        for name in ("meta_lr", "clip"):
            value = getattr(self, name)
            real = isinstance(value, numbers.Real) and not isinstance(value, bool)
            if not (real and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if not isinstance(self.second_order, bool):
            raise ValueError(f"second_order must be True or False, got {self.second_order!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.horizon % self.unroll:
            raise ValueError(
                f"horizon ({self.horizon}) must be a multiple of unroll ({self.unroll})"
            )
        unknown = set(self.families) - set(FAMILIES)
        if unknown:
            raise ValueError(f"unknown task families {sorted(unknown)}")
        reserved = sorted(set(self.families) & set(HELD_OUT_FAMILIES))
        if reserved:
            warnings.warn(
                f"meta-training on {reserved}, which the project holds out to test learned "
                "memories on tasks they never saw",
                stacklevel=3,
            )

    @property
    def truncations(self) -> int:
        return self.horizon // self.unroll

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """The config of a mapping of fields (absent ones take their defaults); an unknown
        field (a typo such as ``second_ordre``) is refused, never dropped."""
        if not isinstance(d, dict):
            raise ValueError(f"a TrainConfig is a mapping of fields, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def unroll(
    meta_params: MetaParams,
    config: LearnedConfig,
    task: Task,
    params: Params,
    memory: dict[str, MemoryState],
    step: int,
    n_steps: int,
    *,
    second_order: bool = True,
    objective: str = "train",
    floor: float = 0.0,
) -> tuple[Tensor, Params, dict[str, MemoryState], int]:
    """Run ``n_steps`` differentiable inner steps from ``(params, memory, step)``.

    Returns ``(mean log(loss + floor) of theta_1..theta_K, params, memory, step)``, the loss
    being the minibatch's (``objective="train"``) or the task's validation batch's
    (``"validation"``); the mean is differentiable in ``meta_params`` (and in the starting
    ``params`` if they require grad). ``floor > 0`` keeps a loss that reaches exactly 0 (a
    classifier fitting its batch in float32) from making the log, and the meta-gradient, -inf.
    """
    if objective == "validation" and task.val_batch is None:
        raise ValueError(f"task {task.name!r} has no validation data (Task.val_batch)")
    params = {k: v if v.requires_grad else v.detach().requires_grad_() for k, v in params.items()}
    log_losses = []
    for k in range(n_steps + 1):
        loss = task.loss(params, task.batch())
        if k > 0:
            scored = loss if objective == "train" else _validation_loss(task, params)
            log_losses.append(torch.log(scored + floor) if floor else torch.log(scored))
        if k == n_steps:
            break
        grads = torch.autograd.grad(
            loss, list(params.values()), create_graph=second_order, retain_graph=True
        )
        grads = {n: g if second_order else g.detach() for n, g in zip(params, grads, strict=True)}
        step += 1
        names = list(params)
        updates, written, _ = learned_step(
            meta_params,
            config,
            [params[n] for n in names],
            [grads[n] for n in names],
            [memory[n] for n in names],
            [step] * len(names),
        )
        params = {n: params[n] - config.lr * u for n, u in zip(names, updates, strict=True)}
        memory = dict(zip(names, written, strict=True))
    return torch.stack(log_losses).mean(), params, memory, step


def _validation_loss(task: Task, params: Params) -> Tensor:
    assert task.val_batch is not None
    return task.loss(params, task.val_batch())


@dataclass
class _Worker:
    task: Task
    params: Params
    memory: dict[str, MemoryState]
    step: int
    log_loss0: float


@dataclass
class TrainResult:
    meta_params: MetaParams
    meta_step: int
    history: list[float] = field(default_factory=list)  # mean log(L_t / L_0) per meta-step
    # (L: the objective's loss, minibatch or validation)
    seconds: float = 0.0
    # the meta-steps (indices into history) whose meta-update was skipped: a non-finite
    # meta-loss or meta-gradient, the meta-parameters and Adam's state left as they were
    skipped: list[int] = field(default_factory=list)


def _new_worker(train: TrainConfig, config: LearnedConfig, rng: torch.Generator) -> _Worker:
    family = train.families[int(torch.randint(len(train.families), (), generator=rng))]
    task = sample_task(family, int(torch.randint(2**31 - 1, (), generator=rng)))
    params = {k: v.detach().clone() for k, v in task.params.items()}
    with torch.no_grad():
        loss0 = float(task.loss(params, task.batch()))
        if train.objective == "validation":  # the minibatch above is still drawn: same stream
            loss0 = float(_validation_loss(task, params))
    memory = {k: init_memory(v, config) for k, v in params.items()}
    return _Worker(task, params, memory, 0, math.log(max(loss0, 1e-30)))


def _optim_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors = {
        f"optim.{i}.{key}": value
        for i, state in sd["state"].items()
        for key, value in state.items()
    }
    return tensors, {"param_groups": sd["param_groups"]}


# The Adam state of each meta-parameter once it has stepped (torch.optim.Adam, amsgrad off).
_ADAM_STATE = ("exp_avg", "exp_avg_sq", "step")


def _load_optim(
    opt: torch.optim.Optimizer, extra: dict[str, Tensor], groups: Any, steps: int
) -> None:
    """Load the meta-optimizer state of a checkpoint's ``extra`` tensors into ``opt``, refusing
    one that the run recorded beside it could not have left: Adam steps once per meta-step not
    skipped (``steps``), so each meta-parameter holds its moments and a step count of ``steps``
    (none at all when ``steps`` is 0), shaped like its parameter, finite, the second moment
    >= 0, and the file holds nothing else. The header's ``meta_step`` and ``skipped`` are
    checked against the tensors because no digest covers the header: an edited ``meta_step``
    resumed at that step with Adam's bias correction and the task stream of another one."""
    params = [p for group in opt.param_groups for p in group["params"]]
    unknown = sorted(k for k in extra if not (k == "rng.tasks" or k.startswith("optim.")))
    if unknown:
        raise ValueError(f"unknown training-state tensors {unknown}")
    wanted = (
        {f"optim.{i}.{key}" for i in range(len(params)) for key in _ADAM_STATE} if steps else set()
    )
    have = {k for k in extra if k.startswith("optim.")}
    if have != wanted:  # so every name below is optim.<index of a parameter>.<an Adam key>
        missing, other = sorted(wanted - have), sorted(have - wanted)
        raise ValueError(
            f"the meta-optimizer state does not match {steps} Adam steps (meta_step minus the "
            f"skipped ones): missing {missing[:4]}{' ...' if len(missing) > 4 else ''}, "
            f"unexpected {other[:4]}{' ...' if len(other) > 4 else ''}; edited or corrupted"
        )
    state: dict[int, dict[str, Tensor]] = {}
    for name in sorted(have):
        value = extra[name]
        _, i, key = name.split(".", 2)
        if value.is_floating_point() and not bool(value.isfinite().all()):
            raise ValueError(f"the saved meta-optimizer state {name!r} holds NaN or inf")
        if key == "step" and (value.numel() != 1 or float(value) != steps):
            raise ValueError(
                f"{name} is {value.tolist()}, not the {steps} Adam steps the record implies "
                "(meta_step minus the skipped ones); edited or corrupted"
            )
        if key == "exp_avg_sq" and bool((value < 0).any()):
            raise ValueError(f"{name} holds negative values; edited or corrupted")
        if value.dim() and value.shape != params[int(i)].shape:  # torch's load casts only
            raise ValueError(
                f"the saved meta-optimizer state {name!r} has shape {tuple(value.shape)}, "
                f"its parameter {tuple(params[int(i)].shape)}"
            )
        state.setdefault(int(i), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": groups})


def _resume_state(ckpt: Checkpoint, train: TrainConfig, path: Any) -> tuple[int, dict[str, Any]]:
    """The meta-step a checkpoint resumes at and its training record, checked: a file without
    a training state (``export``), one written inside a task, or a corrupt one is refused with
    a ``ValueError`` naming what is wrong."""
    info = ckpt.info
    missing = [k for k in ("train", "meta_step", "optim") if k not in info]
    missing += [k for k in ("rng.tasks",) if k not in ckpt.extra]
    if missing:
        raise ValueError(
            f"{path}: no training state to resume from (it lacks {missing}; a file from "
            "export() holds only the meta-parameters): use another checkpoint path or "
            "resume=False"
        )
    _check_resumable(ckpt, train, path)
    step = info["meta_step"]
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"{path}: meta_step must be a whole number >= 0, got {step!r}")
    history = info.get("history", [None] * step)  # kept by every writer; absent: unchecked
    if not isinstance(history, list) or len(history) != step:
        # one entry per meta-step: the header's meta_step and history are the training state
        # that no digest covers, so an edit to either shows as a mismatch here
        raise ValueError(
            f"{path}: meta_step {step} with {len(history) if isinstance(history, list) else None}"
            " history entries (one per meta-step): edited or corrupted"
        )
    if "history" in info:
        if not all(v is None or _is_real(v) for v in history):
            raise ValueError(f"{path}: history entries must be numbers: edited or corrupted")
        # a non-finite meta-loss (a skipped step) is stored as null (strict JSON)
        info = {**info, "history": [math.nan if v is None else v for v in history]}
    seconds = info.get("seconds", 0.0)
    if not _is_real(seconds) or not 0 <= seconds < math.inf:
        raise ValueError(f"{path}: seconds must be a finite number >= 0, got {seconds!r}")
    skipped = info.get("skipped", [])  # absent from checkpoints written before it was kept
    if not isinstance(skipped, list) or not all(_is_index(s, step) for s in skipped):
        raise ValueError(f"{path}: skipped must be a list of meta-steps < {step}, got {skipped!r}")
    if step % train.truncations:
        # the tasks in flight (their parameters and memories) are not saved: only a task
        # boundary can be resumed bit for bit
        raise ValueError(
            f"{path}: written at meta-step {step}, inside a task (every task runs "
            f"horizon / unroll = {train.truncations} meta-steps), so it cannot be resumed; "
            f"meta_steps that are multiples of {train.truncations} end on a boundary"
        )
    return step, info


def _group_diff(saved: Any, fresh: list[dict[str, Any]]) -> str:
    """The keys where ``saved`` param groups differ from ``fresh`` ones, as ``key: (a, b)``."""
    if not isinstance(saved, list) or len(saved) != len(fresh):
        return f"{saved!r:.200} against {len(fresh)} group(s)"
    return "; ".join(
        f"group {i} {k}: ({s.get(k)!r}, {f.get(k)!r})"
        for i, (s, f) in enumerate(zip(saved, fresh, strict=True))
        for k in sorted(set(s) | set(f) if isinstance(s, dict) else f)
        if not isinstance(s, dict) or s.get(k) != f.get(k)
    )


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_index(value: Any, bound: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < bound


def meta_train(
    config: LearnedConfig,
    train: TrainConfig,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    resume: bool = True,
    progress: bool = True,
    info: dict[str, Any] | None = None,
) -> TrainResult:
    """Meta-train a learned memory; checkpoint to (and resume from) ``checkpoint``.

    Args:
        config: the learned memory's features and network.
        train: the meta-training hyperparameters.
        checkpoint: a ``.safetensors`` path written every ``checkpoint_every`` meta-steps
            (rounded up to a task boundary) and at the end, or, when ``meta_steps`` ends
            inside a task, at the last task boundary (only a boundary can be resumed; a
            warning says so); ``None`` keeps nothing.
        resume: continue from ``checkpoint`` if it exists (it must hold the same ``config``
            and the same ``train`` up to ``meta_steps``/``checkpoint_every``, and no more than
            ``meta_steps`` meta-steps: a longer run is refused with a :class:`CheckpointRefused`,
            as is any checkpoint that cannot be read or resumed).
        progress: show a tqdm bar.
        info: extra JSON-able metadata stored in the checkpoints (e.g. the command).

    Returns:
        The meta-parameters, the meta-step reached, the per-step meta-loss history and the
        meta-steps whose update was skipped (a non-finite meta-loss or meta-gradient; the
        first one of a call is warned about).
    """
    rng = torch.Generator().manual_seed(train.seed)
    meta = init_meta_params(config, rng)
    names = sorted(meta)
    leaves = [meta[k].requires_grad_() for k in names]
    opt = torch.optim.Adam(leaves, lr=train.meta_lr)
    start, history, seconds, skipped = 0, [], 0.0, []
    if checkpoint is not None and resume and Path(checkpoint).exists():
        try:
            ckpt = load_checkpoint(checkpoint, config)
            start, saved = _resume_state(ckpt, train, checkpoint)
        except ValueError as e:  # the loader's and the header's checks: all about this file
            raise CheckpointRefused(str(e)) from None
        if start > train.meta_steps:
            # the file's meta-parameters are those of meta-step ``start``: returning them for a
            # shorter run would silently hand back a longer run than asked for
            raise CheckpointRefused(
                f"{checkpoint}: already trained for {start} meta-steps, more than "
                f"meta_steps={train.meta_steps}; its meta-parameters cannot be those of a "
                f"{train.meta_steps}-step run. Ask for meta_steps >= {start} to continue it, "
                "or use another checkpoint path (or resume=False) for a shorter run"
            )
        fresh = json.loads(json.dumps(opt.state_dict()["param_groups"]))  # as the header has it
        try:  # meta, opt and rng are this call's own: a refusal leaves nothing of the user's
            if saved["optim"]["param_groups"] != fresh:
                # nothing changes the meta-optimizer's settings during a run: saved ones other
                # than train's (an lr 100x meta_lr) were edited into the header, which no
                # digest covers
                raise ValueError(
                    "the meta-optimizer's saved settings are not those train gives (saved, "
                    f"train): {_group_diff(saved['optim']['param_groups'], fresh)}; edited or "
                    "corrupted"
                )
            steps = start - len(saved.get("skipped", []))  # Adam's: one per meta-step taken
            _load_optim(opt, ckpt.extra, saved["optim"]["param_groups"], steps)
            rng.set_state(ckpt.extra["rng.tasks"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise CheckpointRefused(
                f"{checkpoint}: its training state cannot be resumed: {e}"
            ) from None
        with torch.no_grad():
            for k in names:
                meta[k].copy_(ckpt.meta_params[k])
        history = list(saved.get("history", []))
        skipped = list(saved.get("skipped", []))
        seconds = float(saved.get("seconds", 0.0))

    def save(step: int) -> None:
        if checkpoint is None:
            return
        tensors, groups = _optim_tensors(opt)
        tensors["rng.tasks"] = rng.get_state()
        meta_info = {
            **(info or {}),
            "train": train.to_dict(),
            "meta_step": step,
            "history": history,
            "seconds": seconds,
            "skipped": skipped,
            "optim": groups,
        }
        save_checkpoint(checkpoint, meta, config, info=meta_info, extra=tensors)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=train.meta_steps, initial=start, desc="meta-train", dynamic_ncols=True)
    # The tasks in flight are not saved, so only a task boundary can be resumed: a run that
    # ends inside a task leaves the checkpoint at its last boundary (it wrote its final,
    # unresumable state over the last resumable one, and the next run could only restart)
    boundary = train.meta_steps - train.meta_steps % train.truncations
    if boundary != train.meta_steps and checkpoint is not None:
        warnings.warn(
            f"meta_steps={train.meta_steps} ends inside a task (each runs "
            f"{train.truncations} meta-steps): the checkpoint keeps meta-step "
            f"{max(boundary, start)}, the last task boundary, so that it can be resumed; the "
            "final meta-parameters are only returned (export them)",
            stacklevel=2,
        )
    every = max(1, math.ceil(train.checkpoint_every / train.truncations)) * train.truncations
    workers: list[_Worker] = []
    ema = None
    for step in range(start, train.meta_steps):
        t0 = time.perf_counter()
        if step % train.truncations == 0:
            if (step > start and step % every == 0) or (
                step == boundary and (step > start or step == 0)
            ):
                save(step)
            workers = [_new_worker(train, config, rng) for _ in range(train.tasks_per_step)]
        meta_loss = torch.zeros(())
        report = 0.0
        for w in workers:
            loss, params, memory, w.step = unroll(
                meta,
                config,
                w.task,
                w.params,
                w.memory,
                w.step,
                train.unroll,
                second_order=train.second_order,
                objective=train.objective,
                floor=LOSS_FLOOR * math.exp(w.log_loss0),
            )
            meta_loss = meta_loss + loss / len(workers)
            report += (float(loss.detach()) - w.log_loss0) / len(workers)
            w.params = {k: v.detach() for k, v in params.items()}
            w.memory = {k: {n: t.detach() for n, t in m.items()} for k, m in memory.items()}
        opt.zero_grad(set_to_none=True)
        meta_loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(leaves, train.clip)
        if torch.isfinite(norm) and math.isfinite(report):
            opt.step()
        else:
            # Skipped rather than raised: one task's unroll that overflowed should not end a
            # long run. But the history holds only the meta-loss, finite when just the
            # meta-gradient is not (eps^2 underflowing to 0 did that to every step): record
            # the skip, and warn at the first of this call, so that a run whose meta-parameters
            # never move is not silent (one warning, not one per meta-step).
            if all(s < start for s in skipped):  # the first skip of this call
                warnings.warn(
                    f"meta-step {step}: the meta-loss ({report:.4g}) or the meta-gradient norm "
                    f"({float(norm):.4g}) is not finite, so the meta-update was skipped (the "
                    "meta-parameters do not move); later skips are only recorded, in "
                    "TrainResult.skipped",
                    RuntimeWarning,
                    stacklevel=2,
                )
            skipped.append(step)
        history.append(round(report, 5))
        seconds += time.perf_counter() - t0
        ema = report if ema is None else 0.95 * ema + 0.05 * report
        if bar is not None:
            bar.update(1)
            bar.set_postfix(log_loss_ratio=f"{ema:.3f}")
    if bar is not None:
        bar.close()
    final = train.meta_steps  # >= start: a longer saved run is refused above
    if final == boundary:
        save(final)
    meta_params = {k: v.detach().clone() for k, v in meta.items()}
    return TrainResult(meta_params, final, history, seconds, skipped)


def _check_resumable(ckpt: Checkpoint, train: TrainConfig, path: Any) -> None:
    try:
        saved = TrainConfig.from_dict(ckpt.info["train"]).to_dict()
    except ValueError as e:
        raise ValueError(f"{path}: its training config cannot be read: {e}") from None
    now = train.to_dict()
    diff = {
        k: (saved[k], now[k]) for k in now if k not in _RESUMABLE_CHANGES and saved[k] != now[k]
    }
    if diff:
        raise ValueError(
            f"{path}: cannot resume, the training config differs (saved, now): {diff}; "
            "use another checkpoint path or resume=False"
        )


def export(
    path: str | os.PathLike[str],
    meta_params: MetaParams,
    config: LearnedConfig,
    info: dict[str, Any],
) -> None:
    """Write a meta-parameters-only checkpoint and a ``.json`` sidecar with ``info``.

    Raises ``ValueError`` for a ``path`` ending in ``.json``: it would be its own sidecar (the
    memory written, then replaced by the sidecar, without a word); and for one whose sidecar
    another file beside it has (``a`` and ``a.safetensors``: ``storage.sharing_sidecar``)."""
    if Path(path).suffix.lower() == ".json":
        raise ValueError(f"{path}: a learned memory ending in .json would be its own sidecar")
    refuse_shared_sidecar(path)
    record = {"config": config.to_dict(), **info}  # a diverged loss in info is null: strict JSON
    # written as a pair (both files first, then both moved into place): a sidecar that could
    # not be written (a folder at its path) left a new memory beside an old record
    sidecar = (sidecar_path(path), (strict_json.dumps(record, indent=2) + "\n").encode())
    save_checkpoint(path, meta_params, config, info=info, beside=[sidecar])
