"""Training loops for the forensic workload, usable with any ``torch.optim`` optimizer.

The optimizer is passed as a factory ``params -> Optimizer`` so the caller chooses it (Adam, SGD,
``assocmem.MemoryOptimizer`` with any memory) while the loop decides which parameters train (a
frozen encoder's are never handed to it)::

    from functools import partial
    result = train_detector(det, x, y, xv, yv, partial(torch.optim.Adam, lr=1e-3), steps=500)

Each loop draws batches from ``generator`` (epochs of random permutations), logs one record per
step through ``log`` (``step``, ``time`` = wall seconds since the start, ``train_loss``, plus
``val_loss`` and, for detectors, ``val_auc`` at step 0 (no ``train_loss``), every ``eval_every``
steps and at the end; ``time`` excludes evaluations, so it is comparable across eval schedules),
and stops
cleanly when a loss is not finite, returning ``status="diverged"`` instead of raising. With the
same global seed (model init) and generator seed the runs are bit-identical on CPU.

Early stopping: with ``patience=k`` a loop ends once ``k`` evaluations in a row have not lowered
the best validation loss, and the model leaves the loop with the weights of its best evaluation,
whether it stopped early or ran out of steps (``restore_best``, default: on with ``patience``,
off for a fixed budget, whose final weights are the point); the result records ``best_step``
and ``best_val_loss`` either way.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import Parameter

from assocmem.forensic.masks import MaskedBatch
from assocmem.forensic.models.pretrain import MaskedPretrainer

OptimizerFactory = Callable[[Iterable[Parameter]], torch.optim.Optimizer]
Logger = Callable[[dict[str, Any]], None]

# A fixed mask seed for validation: every evaluation sees the same masks, so val losses compare.
VAL_MASK_SEED = 12345


@dataclass
class TrainResult:
    """Outcome of a loop: ``status`` is ``"ok"`` or ``"diverged"``; ``history`` holds the
    per-step records that were passed to ``log``."""

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

    @property
    def diverged(self) -> bool:
        return self.status == "diverged"


def trainable_parameters(model: nn.Module) -> list[Parameter]:
    """Parameters with ``requires_grad`` (a frozen encoder's are excluded)."""
    return [p for p in model.parameters() if p.requires_grad]


def batch_indices(n: int, batch_size: int, generator: torch.Generator | None) -> Iterator[Tensor]:
    """Endless batches of indices: each epoch a fresh permutation, the last partial batch kept."""
    if n < 1 or batch_size < 1:
        raise ValueError(f"need n >= 1 and batch_size >= 1, got n={n}, batch_size={batch_size}")
    while True:
        perm = torch.randperm(n, generator=generator)
        yield from perm.split(batch_size)


def _chunks(n: int, batch_size: int) -> Iterator[slice]:
    for i in range(0, n, batch_size):
        yield slice(i, min(i + batch_size, n))


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _progress(steps: int, enabled: bool, desc: str) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=steps, desc=desc, leave=False)


@torch.no_grad()
def pretrain_val_loss(pretrainer: MaskedPretrainer, images: Tensor, batch_size: int = 256) -> float:
    """Mean reconstruction loss on ``images`` with the fixed validation masks."""
    was_training = pretrainer.training
    pretrainer.eval()
    gen = torch.Generator().manual_seed(VAL_MASK_SEED)
    device = _model_device(pretrainer)
    total = 0.0
    for sl in _chunks(images.shape[0], batch_size):
        x = images[sl].to(device)
        total += float(pretrainer.loss(x, gen)) * x.shape[0]
    pretrainer.train(was_training)
    return total / images.shape[0]


def _stream(
    data: Tensor | tuple[Tensor, ...] | Iterable[Any],
    batch_size: int,
    generator: torch.Generator | None,
) -> Iterator[Any]:
    """Endless batches: tensors are indexed by :func:`batch_indices`; any other iterable (a
    DataLoader) is re-iterated epoch after epoch and its batches passed through as they come."""
    if isinstance(data, Tensor):
        for idx in batch_indices(data.shape[0], batch_size, generator):
            yield data[idx]
    elif isinstance(data, tuple) and all(isinstance(t, Tensor) for t in data):
        for idx in batch_indices(data[0].shape[0], batch_size, generator):
            yield tuple(t[idx] for t in data)
    else:
        while True:
            empty = True
            for batch in data:
                empty = False
                yield batch
            if empty:
                raise ValueError("the training loader yielded no batch")


def _loop(
    model: nn.Module,
    step_loss: Callable[[Any], Tensor],
    evaluate: Callable[[], dict[str, float]],
    batches: Iterator[Any],
    optimizer_factory: OptimizerFactory,
    steps: int,
    eval_every: int,
    log: Logger | None,
    progress: bool,
    desc: str,
    patience: int | None = None,
    restore_best: bool | None = None,
) -> TrainResult:
    if steps < 0 or eval_every < 1:
        raise ValueError(f"need steps >= 0 and eval_every >= 1, got {steps}, {eval_every}")
    if patience is not None and patience < 1:
        raise ValueError(f"patience must be None or >= 1 evaluations, got {patience}")
    if restore_best is None:  # early stopping restores the best weights; a fixed budget does not
        restore_best = patience is not None
    params = trainable_parameters(model)
    if not params:
        raise ValueError("the model has no trainable parameters")
    optimizer = optimizer_factory(params)
    history: list[dict[str, Any]] = []
    bar = _progress(steps, progress, desc)
    start = time.perf_counter()
    train_loss = val_loss = math.nan
    status, message, done = "ok", "", 0

    def record(rec: dict[str, Any]) -> None:
        history.append(rec)
        if log is not None:
            log(rec)

    eval_time = 0.0

    def timed_evaluate() -> dict[str, float]:
        nonlocal eval_time
        t0 = time.perf_counter()
        out = evaluate()
        eval_time += time.perf_counter() - t0
        return out

    def elapsed() -> float:
        return time.perf_counter() - start - eval_time

    best = {"step": 0, "val_loss": math.inf, "state": None, "stale": 0}

    def remember(step: int, loss: float) -> None:
        """Track the best evaluation; a copy of its weights is kept only if we may restore."""
        if loss < best["val_loss"]:
            best.update(step=step, val_loss=loss, stale=0)
            if restore_best:
                best["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            best["stale"] += 1

    # Step 0: the untrained model, so curves start at initialisation.
    initial = timed_evaluate()
    val_loss = initial["val_loss"]
    remember(0, val_loss)
    record({"step": 0, "time": elapsed(), **initial})
    stopped_early = False
    model.train()
    # Line-search optimizers (LBFGS) re-evaluate the loss on the same batch through a closure.
    needs_closure = isinstance(optimizer, torch.optim.LBFGS)
    for step in range(1, steps + 1):
        batch = next(batches)
        if needs_closure:

            def closure(batch: Any = batch) -> Tensor:
                optimizer.zero_grad(set_to_none=True)
                loss = step_loss(batch)
                loss.backward()
                return loss.detach()

            train_loss = float(optimizer.step(closure))
        else:
            optimizer.zero_grad(set_to_none=True)
            loss = step_loss(batch)
            train_loss = float(loss.detach())
            if math.isfinite(train_loss):
                loss.backward()
                optimizer.step()
        if not math.isfinite(train_loss):
            status, message = "diverged", f"non-finite train loss {train_loss} at step {step}"
            record({"step": step, "time": elapsed(), "train_loss": train_loss})
            break
        done = step
        rec: dict[str, Any] = {"step": step, "time": elapsed(), "train_loss": train_loss}
        evaluated = step % eval_every == 0 or step == steps
        if evaluated:
            rec.update(timed_evaluate())
            val_loss = rec["val_loss"]
            remember(step, val_loss)
            model.train()
        record(rec)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{train_loss:.4g}", val=f"{val_loss:.4g}")
        if not math.isfinite(val_loss):
            status, message = "diverged", f"non-finite validation loss at step {step}"
            break
        if evaluated and patience is not None and best["stale"] >= patience:
            stopped_early = True
            message = (
                f"early stop at step {step}: {patience} evaluations without a lower val_loss "
                f"than {best['val_loss']:.4g} (step {best['step']})"
            )
            break
    if bar is not None:
        bar.close()
    if restore_best and best["state"] is not None:
        model.load_state_dict(best["state"])
    return TrainResult(
        status, done, train_loss, val_loss, time.perf_counter() - start, history, message,
        best_step=best["step"], best_val_loss=best["val_loss"], stopped_early=stopped_early,
    )  # fmt: skip


def pretrain(
    pretrainer: MaskedPretrainer,
    train_images: Tensor | Iterable[Tensor],
    val_images: Tensor,
    optimizer_factory: OptimizerFactory,
    steps: int,
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    *,
    eval_every: int = 50,
    log: Logger | None = None,
    progress: bool = False,
    patience: int | None = None,
    restore_best: bool | None = None,
) -> TrainResult:
    """Masked-reconstruction pretraining for ``steps`` optimizer steps.

    Batches and training masks both come from ``generator``; validation uses fixed masks
    (:data:`VAL_MASK_SEED`), so ``val_loss`` is comparable across steps and runs.
    ``train_images`` is an (N, C, H, W) tensor or a DataLoader-like iterable of image batches
    (``batch_size`` then unused; a ``(images, labels)`` batch is accepted and its labels ignored).
    """
    device = _model_device(pretrainer)

    def masked_batches() -> Iterator[MaskedBatch]:
        # Masks are drawn once per step, so a closure re-evaluation sees the same ones.
        for batch in _stream(train_images, batch_size, generator):
            images = batch[0] if isinstance(batch, tuple | list) else batch
            yield pretrainer.masker(images.to(device), generator)

    def evaluate() -> dict[str, float]:
        return {"val_loss": pretrain_val_loss(pretrainer, val_images, max(batch_size, 256))}

    return _loop(
        pretrainer, pretrainer.loss_on, evaluate, masked_batches(), optimizer_factory, steps,
        eval_every, log, progress, "pretrain", patience, restore_best,
    )  # fmt: skip


@torch.no_grad()
def logits(model: nn.Module, images: Tensor, batch_size: int = 256) -> Tensor:
    """Detector logits (N,) in eval mode, computed in chunks; the model's mode is restored."""
    was_training = model.training
    model.eval()
    device = _model_device(model)
    out = torch.cat([model(images[sl].to(device)).cpu() for sl in _chunks(len(images), batch_size)])
    model.train(was_training)
    return out


def score(detector: nn.Module, images: Tensor, batch_size: int = 256) -> Tensor:
    """``P(fake) = sigmoid(logit)`` per image, shape (N,)."""
    return torch.sigmoid(logits(detector, images, batch_size))


def train_detector(
    detector: nn.Module,
    train_images: Tensor | Iterable[tuple[Tensor, Tensor]],
    train_labels: Tensor | None,
    val_images: Tensor,
    val_labels: Tensor,
    optimizer_factory: OptimizerFactory,
    steps: int,
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    *,
    eval_every: int = 50,
    log: Logger | None = None,
    progress: bool = False,
    patience: int | None = None,
    restore_best: bool | None = None,
) -> TrainResult:
    """Binary cross-entropy training of a detector returning logits (N,); labels 1 = fake.

    Evaluations add ``val_loss`` (BCE) and ``val_auc`` (NaN if the validation set has a single
    class). Only parameters with ``requires_grad`` reach the optimizer, so a frozen encoder
    (linear probe) stays exactly as it was. ``train_images`` may instead be a DataLoader-like
    iterable of ``(images, labels)`` batches, with ``train_labels=None``. Images may be clips
    (N, T, C, H, W) for a clip detector: the loop only ever indexes the first axis.
    """
    from sklearn.metrics import roc_auc_score

    if isinstance(train_images, Tensor):
        if train_labels is None or train_images.shape[0] != train_labels.shape[0]:
            raise ValueError("train_images and train_labels differ in length")
        train: Any = (train_images, train_labels)
    else:
        if train_labels is not None:
            raise ValueError("pass train_labels=None when train_images is a loader")
        train = train_images
    if val_images.shape[0] != val_labels.shape[0]:
        raise ValueError("val_images and val_labels differ in length")
    device = _model_device(detector)
    y_val = val_labels.float()

    def step_loss(batch: Any) -> Tensor:
        images, labels = batch[0], batch[1]  # a stream's batches also carry family codes
        out = detector(images.to(device))
        return F.binary_cross_entropy_with_logits(out, labels.to(out.device, out.dtype))

    def evaluate() -> dict[str, float]:
        z = logits(detector, val_images, max(batch_size, 256))
        val_loss = float(F.binary_cross_entropy_with_logits(z, y_val))
        auc = math.nan
        if torch.isfinite(z).all() and 0 < int(y_val.sum()) < len(y_val):
            auc = float(roc_auc_score(y_val.numpy(), z.numpy()))
        return {"val_loss": val_loss, "val_auc": auc}

    batches = _stream(train, batch_size, generator)
    return _loop(
        detector, step_loss, evaluate, batches, optimizer_factory, steps, eval_every, log,
        progress, "detector", patience, restore_best,
    )  # fmt: skip
