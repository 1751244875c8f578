"""Training loops for the forensic workload, usable with any ``torch.optim`` optimizer.

The optimizer is passed as a factory ``params -> Optimizer`` so the caller chooses it (Adam, SGD,
``assocmem.MemoryOptimizer`` with any memory) while the loop decides which parameters train (a
frozen encoder's are never handed to it)::

    from functools import partial
    result = train_detector(det, x, y, xv, yv, partial(torch.optim.Adam, lr=1e-3), steps=500)

Each trainer draws batches from ``generator`` (epochs of random permutations) or from a
DataLoader-like stream and steps through the library's one loop, :func:`assocmem.training.fit`:
its records (``step``, ``time``, ``train_loss``; ``val_loss`` and, for detectors, ``val_auc``
at step 0, every ``eval_every`` steps and at the end), its divergence handling (a non-finite
loss returns ``status="diverged"``) and its early stopping (``patience``, ``restore_best``)
are documented there. With the same global seed (model init) and generator seed the runs are
bit-identical on CPU.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from assocmem.forensic.checks import whole_number
from assocmem.forensic.detector_loss import detector_loss
from assocmem.forensic.masks import MaskedBatch
from assocmem.forensic.models.attribution import FamilyAttribution
from assocmem.forensic.models.one_class import margin_bce, margin_of
from assocmem.forensic.models.pretrain import MaskedPretrainer
from assocmem.training import Logger, OptimizerFactory, TrainResult, fit, trainable_parameters

__all__ = [
    "Logger",
    "OptimizerFactory",
    "TrainResult",
    "batch_indices",
    "logits",
    "pretrain",
    "pretrain_val_loss",
    "score",
    "train_detector",
    "trainable_parameters",
]


# A fixed mask seed for validation: every evaluation sees the same masks, so val losses compare.
VAL_MASK_SEED = 12345


def batch_indices(n: int, batch_size: int, generator: torch.Generator | None) -> Iterator[Tensor]:
    """Endless batches of indices: each epoch a fresh permutation, the last partial batch kept;
    a tail of one index joins the batch before it (one image's batch statistics: BatchNorm1d
    raised mid-run, other norms trained on them), unless ``batch_size`` is 1 or ``n`` is.

    Example:
        >>> import itertools
        >>> [len(b) for b in itertools.islice(batch_indices(9, 4, None), 3)]
        [4, 5, 4]
    """
    if n < 1 or batch_size < 1:
        raise ValueError(f"need n >= 1 and batch_size >= 1, got n={n}, batch_size={batch_size}")
    while True:
        perm = torch.randperm(n, generator=generator)
        batches = list(perm.split(batch_size))
        if len(batches) > 1 and len(batches[-1]) == 1 < batch_size:
            batches[-2:] = [torch.cat(batches[-2:])]
        yield from batches


def _chunks(n: int, batch_size: int) -> Iterator[slice]:
    for i in range(0, n, batch_size):
        yield slice(i, min(i + batch_size, n))


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype float inputs are cast to: the model's (a ``model.double()`` refused float32
    images with "Input type (float) and bias type (double) should be the same")."""
    p = next((p for p in model.parameters() if p.is_floating_point()), None)
    return p.dtype if p is not None else torch.float32


@torch.no_grad()
def pretrain_val_loss(pretrainer: MaskedPretrainer, images: Tensor, batch_size: int = 256) -> float:
    """Mean reconstruction loss on ``images`` with the fixed validation masks."""
    pretrainer.check_images(images)  # an empty set divided by zero
    was_training = pretrainer.training
    pretrainer.eval()
    gen = torch.Generator().manual_seed(VAL_MASK_SEED)
    device, dtype = _model_device(pretrainer), _model_dtype(pretrainer)
    total = 0.0
    for sl in _chunks(images.shape[0], batch_size):
        x = images[sl].to(device=device, dtype=dtype)
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
    average: float | None = None,
    lr_decay: str | None = None,
) -> TrainResult:
    """Masked-reconstruction pretraining for ``steps`` optimizer steps.

    Batches and training masks both come from ``generator``; validation uses fixed masks
    (:data:`VAL_MASK_SEED`) in fixed chunks of 256, so ``val_loss`` is comparable across steps
    and runs. Images are floating point in [0, 1]: non-finite pixels are refused, values
    outside the range warned of (as :func:`train_detector` does), and they are cast to the
    pretrainer's dtype.
    ``train_images`` is an (N, C, H, W) tensor or a DataLoader-like iterable of image batches
    (``batch_size`` then unused; a ``(images, labels)`` batch is accepted and its labels ignored).
    ``average``: evaluate, stop on and return an exponential moving average of the weights with
    this decay (:func:`assocmem.training.fit`). ``lr_decay``: ``"linear"`` decays the learning
    rate to 0 at ``steps`` (:func:`assocmem.training.fit`).
    """
    device, dtype = _model_device(pretrainer), _model_dtype(pretrainer)
    # Checked as train_detector checks its images: NaN/inf pixels ended the run as "diverged"
    # (blaming the optimizer), 0-255 floats pretrained without a word
    from_loader = not isinstance(train_images, Tensor)
    if not from_loader:
        pretrainer.check_images(train_images)
        _require_unit_range("train_images", train_images)
    pretrainer.check_images(val_images)
    _require_unit_range("val_images", val_images)

    def masked_batches() -> Iterator[MaskedBatch]:
        # Masks are drawn once per step, so a closure re-evaluation sees the same ones.
        for batch in _stream(train_images, batch_size, generator):
            images = batch[0] if isinstance(batch, tuple | list) else batch
            pretrainer.check_images(images)  # a loader's batches too
            if from_loader:
                _require_unit_range("train batch images", images)
            # in the model's dtype: a float64 pretrainer refused float32 images (and back)
            yield pretrainer.masker(images.to(device=device, dtype=dtype), generator)

    def evaluate() -> dict[str, float]:
        # one chunking for every run: a band mask's loss is normalised per chunk, so the value
        # depended on the chunk (batch sizes above 256 chunked by themselves)
        return {"val_loss": pretrain_val_loss(pretrainer, val_images)}

    return fit(
        pretrainer, pretrainer.loss_on, masked_batches(), optimizer_factory, steps=steps,
        eval_every=eval_every, evaluate=evaluate, log=log, progress=progress, desc="pretrain",
        patience=patience, restore_best=restore_best, average=average, lr_decay=lr_decay,
    )  # fmt: skip


@torch.no_grad()
def logits(model: nn.Module, images: Tensor, batch_size: int = 256) -> Tensor:
    """Detector logits (N,) in eval mode, computed in chunks; the model's mode is restored.
    ``images`` (or clips) are floating point in [0, 1], cast to the model's dtype; none gives
    an empty result.

    Raises ``ValueError`` for other dtypes and non-finite pixels (they gave NaN scores, never
    flagged and skewing every rate); warns of values outside [0, 1] beyond float rounding
    (0-255 floats, the common slip, are scored at 255 times the scale; a model of one's own
    may take other inputs, so it is said, not refused)."""
    _require_float("images", images)
    if len(images) == 0:
        return torch.zeros(0)
    _require_unit_range("images", images)
    was_training = model.training
    model.eval()
    device, dtype = _model_device(model), _model_dtype(model)
    out = torch.cat(
        [model(images[sl].to(device, dtype)).cpu() for sl in _chunks(len(images), batch_size)]
    )
    model.train(was_training)
    return out


def fake_probability(logit: Tensor) -> Tensor:
    """``P(fake) = sigmoid(logit)``, in float64.

    In float32 the squashing ties scores the logits keep apart: two logits near 0 that differ
    by less than ~2.4e-7 (a quarter of the slope times half an ulp of 0.5) round to one
    probability, and every logit above ~16.6 to exactly 1. Tied scores count half in AUC and
    AP, so a float32 probability would score a detector differently from its own logits (and
    differently on CPUs whose kernels round those logits apart). float64 keeps every distinct
    float32 logit distinct up to ~36.
    """
    return torch.sigmoid(logit.double())


def score(detector: nn.Module, images: Tensor, batch_size: int = 256) -> Tensor:
    """``P(fake)`` per image (:func:`fake_probability`, float64), shape (N,)."""
    return fake_probability(logits(detector, images, batch_size))


def _require_float(name: str, images: Tensor) -> None:
    if not images.is_floating_point():
        raise ValueError(
            f"{name} must be floating point in [0, 1] (uint8 pixels / 255), got {images.dtype}"
        )


# How far outside [0, 1] a float pixel may lie: resampling and float arithmetic overshoot by
# rounding, far less than this; 0-255 values and NaN are far beyond it.
_RANGE_SLACK = 1e-3


def _require_unit_range(name: str, images: Tensor) -> None:
    if images.numel() == 0:  # clips of 0 frames: the model's own check names the layout
        return  # (aminmax raised "cannot compute aminmax over an empty dimension")
    lo, hi = (float(v) for v in torch.aminmax(images.detach()))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name} hold NaN or inf pixels; expected floating point in [0, 1]")
    if lo < -_RANGE_SLACK or hi > 1 + _RANGE_SLACK:
        warnings.warn(
            f"{name} should be in [0, 1], got values in [{lo:.4g}, {hi:.4g}] (uint8 pixels / "
            "255): the detectors here were trained on [0, 1] pixels",
            stacklevel=3,
        )


def _check_images_and_labels(split: str, images: Tensor, labels: Tensor) -> None:
    """Float images (uint8 ones wrapped around in NPR's residual: ``0 - 5`` is 251) and labels
    that are 0 (real) or 1 (fake) (family codes trained a cross-entropy against 2, 5, 7)."""
    _require_float(f"{split}_images", images)
    if not bool(((labels == 0) | (labels == 1)).all()):
        found = sorted({float(v) for v in labels.unique().tolist()})
        raise ValueError(f"{split}_labels must be 0 (real) or 1 (fake), got values {found}")


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
    lr_drops: int = 0,
    average: float | None = None,
    attribution: FamilyAttribution | None = None,
    real_consistency: float = 0.0,
) -> TrainResult:
    """Binary cross-entropy training of a detector returning logits (N,); labels 1 = fake.
    A detector with a ``margin`` attribute (a one-class head) trains and is validated on the
    cross-entropy with that margin (:func:`~assocmem.forensic.models.one_class.margin_bce`).

    Evaluations add ``val_loss`` (BCE) and ``val_auc`` (NaN if the validation set has a single
    class). Only parameters with ``requires_grad`` reach the optimizer, so a frozen encoder
    (linear probe) stays exactly as it was. ``train_images`` may instead be a DataLoader-like
    iterable of ``(images, labels)`` batches, with ``train_labels=None``. Images may be clips
    (N, T, C, H, W) for a clip detector: the loop only ever indexes the first axis.
    ``lr_drops``: learning-rate drops by 10 at a plateau before early stopping (see
    :func:`assocmem.training.fit`). ``average``: evaluate, stop on and return an exponential
    moving average of the weights with this decay (:func:`assocmem.training.fit`).
    ``attribution``: a :class:`~assocmem.forensic.models.attribution.FamilyAttribution` around
    ``detector``; its loss (detection plus family attribution, from the family codes a stream's
    batches carry) is the one trained, its parameters reach the optimizer (build the optimizer
    factory on it), and ``detector`` keeps the trained (or averaged) weights as without it.
    ``real_consistency``: the weight of the logit pairing of each real with its twin view
    (batches of a ``TrainStream(real_twins=True)``; :mod:`assocmem.forensic.detector_loss`,
    which computes every step's loss).
    """
    from sklearn.metrics import roc_auc_score

    if not whole_number(batch_size, 1):
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if isinstance(train_images, Tensor):
        if train_labels is None or train_images.shape[0] != train_labels.shape[0]:
            raise ValueError("train_images and train_labels differ in length")
        _check_images_and_labels("train", train_images, train_labels)
        if len(train_images):
            # as scoring checks them: NaN/inf pixels made the first loss NaN and the run end as
            # "diverged" with the untrained weights; 0-255 floats trained without a word
            _require_unit_range("train_images", train_images)
        if len(train_labels) and len(train_labels.unique()) < 2:
            raise ValueError(
                "train_labels hold one class only: a detector needs reals (0) and fakes (1)"
            )
        train: Any = (train_images, train_labels)
    else:
        if train_labels is not None:
            raise ValueError("pass train_labels=None when train_images is a loader")
        train = train_images
    if val_images.shape[0] != val_labels.shape[0]:
        raise ValueError("val_images and val_labels differ in length")
    if val_images.shape[0] == 0:
        raise ValueError("the validation set is empty: early stopping and val_loss need images")
    _check_images_and_labels("val", val_images, val_labels)
    _require_unit_range("val_images", val_images)
    if attribution is not None and attribution.detector is not detector:
        raise ValueError("attribution must wrap the detector being trained")
    device = _model_device(detector)
    y_val = val_labels.float()
    margin = margin_of(detector)  # a one-class head's (models/one_class.py), else 0

    dtype = _model_dtype(detector)

    from_loader = not isinstance(train_images, Tensor)
    classes_seen: set[int] = set()
    warned = False

    def step_loss(batch: Any) -> Tensor:
        if from_loader:  # a tensor set was checked whole above; a loader's batches one by one
            _check_images_and_labels("train", batch[0], batch[1])
            if len(batch[0]):
                _require_unit_range("train batch images", batch[0])
            classes_seen.update(int(v) for v in batch[1].unique().tolist())
        return detector_loss(
            detector,
            batch,
            attribution=attribution,
            real_consistency=real_consistency,
            device=device,
            dtype=dtype,
        )

    def evaluate() -> dict[str, float]:
        nonlocal warned
        if from_loader and len(classes_seen) == 1 and not warned:
            warned = True
            only = "real" if classes_seen == {0} else "fake"
            warnings.warn(
                f"every training batch so far holds {only} images only: a detector learns "
                "nothing from one class (the loader's data, or its sampler?)",
                stacklevel=3,
            )
        z = logits(detector, val_images, max(batch_size, 256))
        val_loss = float(margin_bce(z, y_val, margin))
        auc = math.nan
        if torch.isfinite(z).all() and 0 < int(y_val.sum()) < len(y_val):
            auc = float(roc_auc_score(y_val.numpy(), z.numpy()))
        return {"val_loss": val_loss, "val_auc": auc}

    batches = _stream(train, batch_size, generator)
    trained = detector if attribution is None else attribution
    return fit(
        trained, step_loss, batches, optimizer_factory, steps=steps, eval_every=eval_every,
        evaluate=evaluate, log=log, progress=progress, desc="detector", patience=patience,
        restore_best=restore_best, lr_drops=lr_drops, average=average,
    )  # fmt: skip
