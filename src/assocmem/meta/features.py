r"""Per-coordinate features of a learned memory: pure functions of its state and the gradient.

The memory of one parameter tensor ``W`` holds ``B`` momenta at several timescales and a second
moment (all key-less elementwise Hebbian memories, like Adam's):

.. math::
    m_b \leftarrow \beta_b m_b + (1-\beta_b) g, \qquad
    v \leftarrow \beta_2 v + (1-\beta_2) g^2 .

Each coordinate ``i`` is then described by ``F`` numbers (``x in {g, m_hat_b}``, hats are bias
corrected, ``rms(y) = sqrt(mean_tensor(y^2))``):

- ``x_i / sqrt(v_hat_i + eps^2)``: Adam-normalised (invariant to the loss scale per coordinate);
- ``x_i / rms(x)``: normalised by the tensor's RMS, as in small_fc_lopt (keeps the relative size
  of a coordinate inside its tensor, which the Adam normalisation erases);
- ``W_i / rms(W)``: the parameter value relative to its tensor;
- ``sqrt(v_hat_i) / rms(sqrt(v_hat))``: relative gradient scale (a curvature proxy);
- ``tanh(t / tau)`` for each ``tau``: where in training we are.

Every feature is invariant to rescaling the loss (and the parameter feature to rescaling the
tensor), so one network serves tensors of any scale. Features are clamped to
``[-feature_clip, feature_clip]``. All functions are pure and differentiable (twice, which the
meta-gradient needs), so meta-training can unroll them.

Shapes legend: ``n`` coordinates of one tensor, ``F`` features, ``B`` momenta.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from assocmem.memory import ElementwiseMemory, hebbian_write, read
from assocmem.meta.config import LearnedConfig
from assocmem.optim import counts, sharded, sync_free
from assocmem.optim.reads import bias_corrected

MemoryState = dict[str, Tensor]

# Floor under a mean square: tiny enough not to break scale invariance for any sane tensor,
# and a normal fp32 number (so no denormal slow paths).
_TINY = 1e-30


def init_memory(param: Tensor, config: LearnedConfig) -> MemoryState:
    """Empty memories for one parameter: ``momenta (B, *shape)`` and ``second_moment``."""
    zeros = torch.zeros_like(param, memory_format=torch.contiguous_format)
    return {
        "momenta": zeros.unsqueeze(0).repeat(len(config.betas), *([1] * param.dim())),
        "second_moment": zeros.clone(),
    }


def write(state: MemoryState, grad: Tensor, config: LearnedConfig) -> MemoryState:
    """Hebbian writes of ``g`` into every momentum and of ``g^2`` into the second moment.

    Key-less for the momenta (one retention per timescale, broadcast over the stack); the
    second moment is written as value ``(1 - beta2) g`` under key ``g`` at rate 1, which is
    ``(1 - beta2) g^2`` in the operation order the shipped checkpoint was meta-trained with.
    (:func:`write_batch` of one tensor.)
    """
    return write_batch([state], [grad], config)[0]


def time_embedding(step: float, config: LearnedConfig) -> list[float]:
    """``tanh(t / tau)`` for each timescale (the same for every coordinate)."""
    return [math.tanh(step / tau) for tau in config.time_scales]


def step_constants(
    step: float | Tensor, config: LearnedConfig, like: Tensor
) -> tuple[Tensor, Tensor]:
    """``1 - b^t`` per momentum ``(B,)`` and ``tanh(t / tau)`` per timescale, in ``like``'s dtype
    on its device.

    ``step`` is a Python number (computed on the host, put on the device without a blocking
    copy by :func:`assocmem.optim.sync_free.host_constants`) or a
    0-d count tensor (``sync_free``: the count lives on the device and is never read on the
    host), from which the same float64 operations run as tensor ops and are cast to ``like``'s
    dtype (:mod:`assocmem.optim.counts`; ``tanh`` is the device's, within an ulp of the host's
    in float64, so a float32 constant may differ only where the float64 value lies within an
    ulp of a float32 rounding boundary)."""
    if not isinstance(step, Tensor):
        t = float(step)
        return (
            _host_vector([1.0 - b**t for b in config.betas], like),
            _host_vector(time_embedding(t, config), like),
        )
    (t,) = counts.as_counts([step])
    corr = [counts.corrections(b, [t])[0] for b in config.betas]
    time = [torch.tanh(t / tau) for tau in config.time_scales]
    return _device_vector(corr, like), _device_vector(time, like)


def features(
    state: MemoryState, grad: Tensor, param: Tensor, step: float | Tensor, config: LearnedConfig
) -> Tensor:
    """The ``(n, F)`` feature matrix of one tensor, after ``state`` was written with ``grad``.

    Args:
        state: the memory *after* :func:`write` (so step ``t`` is already in it).
        grad: this step's gradient, shaped like ``param``.
        param: the parameter before the step.
        step: ``t >= 1``, the number of writes so far (bias correction and time embedding): a
            number, or a 0-d count tensor on the device (:func:`step_constants`).
        config: the learned memory's configuration.

    Returns:
        ``(param.numel(), config.num_features)``, in the order documented in the module
        (:func:`features_batch` of one tensor).
    """
    return features_batch([state], [grad], [param], step, config)[0]


def write_batch(
    states: Sequence[MemoryState], grads: Sequence[Tensor], config: LearnedConfig
) -> list[MemoryState]:
    """:func:`write` of tensors of one shape, dtype and device at once: the same elementwise
    operations on their stacked memories (so the same bits), a few ops instead of a few per
    tensor. The memories returned are views into the stacked result."""
    grad = _stacked(list(grads))  # (T, *shape)
    betas = _host_vector(list(config.betas), grad).view(1, -1, *([1] * grads[0].dim()))
    momenta = hebbian_write(
        ElementwiseMemory(_stacked([s["momenta"] for s in states])),
        None,
        grad.unsqueeze(1),
        lr=1 - betas,
        retention=betas,
    )
    second = hebbian_write(
        ElementwiseMemory(_stacked([s["second_moment"] for s in states])),
        grad,
        (1 - config.beta2) * grad,
        lr=1.0,
        retention=config.beta2,
    )
    return [
        {"momenta": m, "second_moment": v}
        for m, v in zip(read(momenta).unbind(), read(second).unbind(), strict=True)
    ]


def features_batch(
    states: Sequence[MemoryState],
    grads: Sequence[Tensor],
    params: Sequence[Tensor],
    step: float | Tensor,
    config: LearnedConfig,
) -> list[Tensor]:
    """:func:`features` of tensors of one size, dtype and device at one step count, at once:
    the elementwise operations on stacked rows, the tensor-wide mean squares per tensor (so
    every feature has the bits it has alone); returns each tensor's ``(n, F)`` matrix (a view).
    ``step`` is a number, or (one tensor, ``sync_free``) its count on the device."""
    rows, n = len(params), params[0].numel()
    grad = _stacked([g.reshape(n) for g in grads])  # (T, n)
    corr, time = step_constants(step, config, grad)
    m_hat = _stacked([s["momenta"].reshape(len(config.betas), n) for s in states])
    m_hat = m_hat / corr.view(1, -1, 1)
    t = counts.as_counts([step])[0] if isinstance(step, Tensor) else float(step)
    v_hat = bias_corrected(
        _stacked([s["second_moment"].reshape(n) for s in states]), config.beta2, t
    )
    signals = torch.cat([grad.view(rows, 1, n), m_hat], dim=1)  # (T, 1 + B, n)
    root_v = torch.sqrt(v_hat + config.eps**2)  # (T, n)
    adam_normalised = signals / root_v.view(rows, 1, n)
    p = _stacked([q.reshape(n) for q in params]).view(rows, 1, n)
    means = [
        _mean_squares(sig, q, r)
        for sig, q, r in zip(signals.unbind(), p.unbind(), root_v.unbind(), strict=True)
    ]
    ms_signals, ms_param, ms_root_v, stalled = (torch.stack(m) for m in zip(*means, strict=True))
    rms_normalised = signals * torch.rsqrt(ms_signals + _TINY)
    param_feature = p * torch.rsqrt(ms_param.view(rows, 1, 1) + _TINY)
    curvature = (root_v * torch.rsqrt(ms_root_v.view(rows, 1) + _TINY)).view(rows, 1, n)
    time = time.view(1, -1, 1).expand(rows, -1, n)
    x = torch.cat([adam_normalised, rms_normalised, param_feature, curvature, time], dim=1)
    # a coordinate with a non-finite square stalls (NaN features: its update is zeroed and
    # counted, as when the tensor-wide means took it in), and only that coordinate
    x = x.masked_fill(stalled.view(rows, 1, n), math.nan)
    x = x.clamp(-config.feature_clip, config.feature_clip)
    return [xi.T for xi in x.unbind()]


# ``betas=()`` and ``time_scales=()`` are valid configs (no momenta, no time features): their
# constants are then empty vectors, which ``torch.stack`` refuses ("non-empty TensorList"), so
# both helpers build the empty vector themselves, as ``torch.tensor([])`` gives it on the host.
def _host_vector(values: list[float], like: Tensor) -> Tensor:
    """``values`` as a ``(len(values),)`` vector of ``like``'s dtype on its device."""
    return sync_free.host_constants(values, like) if values else like.new_empty(0)


def _device_vector(values: list[Tensor], like: Tensor) -> Tensor:
    """0-d count-dtype constants stacked and cast to ``like``'s dtype on its device."""
    if not values:
        return like.new_empty(0)
    return torch.stack(values).to(like.dtype).to(like.device)


def _stacked(tensors: list[Tensor]) -> Tensor:
    """``torch.stack``, but one tensor as a view (no copy: the path of every tensor alone)."""
    return tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors)


def _mean_squares(
    signals: Tensor, p: Tensor, root_v: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The tensor-wide mean squares under the RMS features: of each signal ``(1 + B, 1)``, of
    the parameter and of ``sqrt(v_hat)``, over their **finite** squares only; and ``(n,)``, which
    coordinates have a square that is not finite (:func:`features_batch` stalls them).

    One coordinate whose square is not finite (a NaN under ``nonfinite="ignore"``, or a finite
    gradient over ~1.8e19 in float32, whose square, and then ``v``, overflow for good) made the
    mean ``inf`` or NaN and every other coordinate's RMS features 0 or NaN: the whole tensor
    stalled or drifted, where Adam loses that coordinate only. Over finite squares the bits are
    those of ``mean`` when every square is finite (a sum over ``n``).

    When the optimizer steps an FSDP2 shard (:mod:`assocmem.optim.sharded`), the rank's sums
    of finite squares and their counts are all-reduced (``2 (B + 3)`` floats per tensor) so
    every shard is normalised by the whole tensor's RMS, as in one process.
    """
    squares = [signals.square(), p.square().view(1, -1), root_v.square().view(1, -1)]
    finite = [torch.isfinite(sq) for sq in squares]
    sums = torch.cat(
        [torch.where(ok, sq, 0).sum(dim=1) for sq, ok in zip(squares, finite, strict=True)]
    )
    counts = torch.cat([ok.sum(dim=1) for ok in finite]).to(sums.dtype)
    if sharded.active():
        both = sharded.all_sum(torch.cat([sums, counts]))
        sums, counts = both[: len(sums)], both[len(sums) :]
    # a tensor without a finite square (or an empty one) gets 0, and the floor _TINY
    means = sums / counts.clamp(min=1)
    stalled = ~torch.cat(finite).all(dim=0)
    return means[:-2].view(-1, 1), means[-2], means[-1], stalled
