r"""The learned read: a small MLP shared by every coordinate, mapping features to a step.

For a coordinate with features ``x`` (``F`` numbers, :mod:`assocmem.meta.features`):

.. math::
    h = \mathrm{MLP}_\phi(x), \quad o = W_{out} h + b_{out} + W_{skip} x \in \mathbb{R}^2, \\
    d = D \tanh(o_0 / D), \quad s = S \tanh(\lambda_s o_1 / S), \quad
    u = d \, e^{s}, \qquad W \leftarrow W - \mathrm{lr} \cdot u .

During a warm-up of ``T = config.warmup`` steps (off when 0), ``u`` at step ``t < T`` is then
clamped to ``[-c_t, c_t]``, ``c_t = D e^S t / T`` (:func:`warmup_clamp`): a memory whose network
learned large first steps (short unrolls reward them) cannot move a weight by more than
``lr D e^S / T`` on its first step.

``d`` is the direction, ``s`` the log-magnitude (small_fc_lopt's ``direction * exp(magnitude *
exp_mult) * step_mult`` with ``step_mult = lr``). The tanh bounds cap any single step at
``lr * D * e^S``, and a non-finite ``u`` becomes 0, so a bad input can stall a coordinate but
never blow up a parameter; the preset counts those coordinates in each parameter's
``nonfinite_updates`` state, so a stall is never silent. A coordinate with nothing in its
memory (gradient and every momentum exactly 0, i.e. its Adam-normalised features are 0) gets
``u = 0``: as torch.optim's rules, zero gradients from the start move nothing, where the
network would otherwise step from the parameter, curvature and time features alone (~0.3 lr
per step for the shipped checkpoint). The linear skip starts as a copy of the Adam-direction
feature and the MLP's output layer starts near zero, so an untrained memory is Adam(lr);
meta-training learns the corrections. Meta-parameters are a flat ``dict[str, Tensor]``, which
is what ``safetensors`` stores and ``torch.func`` differentiates.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from assocmem.meta.config import LearnedConfig
from assocmem.optim import counts

MetaParams = dict[str, Tensor]

# Rows per MLP call in the optimizer's no-grad path: bounds the (rows, hidden) activations.
CHUNK_ROWS = 1 << 16
# Off the CPU each chunk is ~30 kernel launches: at 1 << 16 rows an H200 stepped 6M parameters
# in 50 ms, ~2700 launches (docs/results.md). 1 << 20 rows is 128 MB per fp32 activation of
# the default width 32.
ACCELERATOR_CHUNK_ROWS = 1 << 20


def chunk_rows(device: torch.device) -> int:
    """Rows per no-grad MLP call on ``device``: cache-sized on the CPU, larger elsewhere."""
    return CHUNK_ROWS if device.type == "cpu" else ACCELERATOR_CHUNK_ROWS


def init_meta_params(
    config: LearnedConfig,
    generator: torch.Generator | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    out_scale: float = 1e-2,
) -> MetaParams:
    """Fresh meta-parameters: He-uniform hidden layers, a small output layer, an Adam skip."""
    sizes = (config.num_features, *config.hidden)
    params: MetaParams = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        bound = math.sqrt(6.0 / fan_in)
        w = torch.rand(fan_out, fan_in, generator=generator, dtype=dtype) * 2 - 1
        params[f"layers.{i}.weight"] = w * bound
        params[f"layers.{i}.bias"] = torch.zeros(fan_out, dtype=dtype)
    w_out = torch.randn(2, sizes[-1], generator=generator, dtype=dtype) * out_scale
    params["out.weight"] = w_out / math.sqrt(sizes[-1])
    params["out.bias"] = torch.zeros(2, dtype=dtype)
    skip = torch.zeros(2, config.num_features, dtype=dtype)
    skip[0, config.init_skip] = 1.0
    params["skip.weight"] = skip
    return params


def num_meta_params(params: MetaParams) -> int:
    return sum(p.numel() for p in params.values())


class Update(NamedTuple):
    """The learned update of each row and which rows' raw update was finite."""

    value: Tensor  # (N,): u, with non-finite rows (and rows with empty memories) set to 0
    finite: Tensor  # (N,) bool: False where u was NaN/inf and was zeroed (counted by the preset)


def learned_update(meta_params: MetaParams, features: Tensor, config: LearnedConfig) -> Update:
    """The update ``u = d * exp(s)`` for each row of ``features`` (``(N, F) -> (N,)``).

    Differentiable in ``meta_params`` and ``features``; the caller steps ``W <- W - lr * u``.
    """
    h = features
    for i in range(len(config.hidden)):
        h = torch.relu(
            torch.nn.functional.linear(
                h, meta_params[f"layers.{i}.weight"], meta_params[f"layers.{i}.bias"]
            )
        )
    out = torch.nn.functional.linear(h, meta_params["out.weight"], meta_params["out.bias"])
    out = out + torch.nn.functional.linear(features, meta_params["skip.weight"])
    bound_d, bound_s = config.direction_bound, config.log_scale_bound
    direction = bound_d * torch.tanh(out[:, 0] / bound_d)
    log_scale = bound_s * torch.tanh(config.exp_mult * out[:, 1] / bound_s)
    update = direction * torch.exp(log_scale)
    signals = features[:, : 1 + len(config.betas)]  # g and m_hat_b, Adam-normalised
    finite = torch.isfinite(update)
    moved = finite & (signals != 0).any(dim=1)
    return Update(torch.where(moved, update, torch.zeros_like(update)), finite)


def _ramp(step: float | Tensor, config: LearnedConfig) -> float | Tensor:
    """``D e^S t / T`` for a Python count or a 0-d float64 count tensor: the same operations
    in the same order, so both round alike."""
    return config.direction_bound * math.exp(config.log_scale_bound) * step / config.warmup


def warmup_limit(step: float, config: LearnedConfig) -> float | None:
    """``c_t``, the largest ``|u|`` allowed at step ``t`` during the warm-up; ``None`` when
    nothing is clamped (no warm-up, or ``t >= T``, where the tanh bounds already hold)."""
    if config.warmup <= 0 or step >= config.warmup:
        return None
    return _ramp(step, config)


def warmup_clamp(update: Tensor, step: float | Tensor, config: LearnedConfig) -> Tensor:
    """``update`` clamped to ``[-c_t, c_t]`` at step ``t`` (:func:`warmup_limit`).

    ``step`` may be a 0-d count tensor on the device (``sync_free``): ``c_t`` is then computed
    there by the same float64 operations, and is infinite from ``T`` on (a clamp to
    ``[-inf, inf]`` changes no bit), so nothing is read on the host."""
    if not isinstance(step, Tensor):
        limit = warmup_limit(step, config)
        return update if limit is None else update.clamp(-limit, limit)
    if config.warmup <= 0:
        return update
    (t,) = counts.as_counts([step])
    limit = torch.where(t >= config.warmup, torch.full_like(t, math.inf), _ramp(t, config))
    limit = limit.to(update.dtype).to(update.device)
    return update.clamp(-limit, limit)


@torch.no_grad()
def learned_update_chunked(
    meta_params: MetaParams, features: Tensor, config: LearnedConfig, chunk: int = CHUNK_ROWS
) -> Update:
    """:func:`learned_update` in row chunks (no grad), so activations stay ``O(chunk)``."""
    if features.shape[0] <= chunk:
        return learned_update(meta_params, features, config)
    parts = [learned_update(meta_params, part, config) for part in features.split(chunk)]
    return Update(torch.cat([u.value for u in parts]), torch.cat([u.finite for u in parts]))
