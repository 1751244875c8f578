r"""One step of the learned memory on a list of tensors: write, features, learned read.

.. math::
    m, v \leftarrow \mathrm{write}(m, v, g), \quad
    x = \mathrm{features}(m, v, g, W, t), \quad
    u = d_\phi(x)\, e^{s_\phi(x)}

(clamped during the warm-up, :func:`assocmem.meta.network.warmup_clamp`) for every tensor,
by default with one MLP call over the concatenated coordinates of all of them (rows are
independent: batching changes the maths of no row). In the optimizer (no grad), tensors of one
shape at one host step count are also written and featurised stacked
(:func:`assocmem.meta.features.write_batch`, :func:`~assocmem.meta.features.features_batch`),
to the same bits. The caller steps
``W <- W - lr * u``: meta-training builds new tensors (:mod:`assocmem.meta.train`,
differentiable), the ``learned`` preset adds in place (:mod:`assocmem.meta.preset`, no grad,
chunked rows).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from assocmem.meta.config import LearnedConfig
from assocmem.meta.features import (
    MemoryState,
    features_batch,
    write_batch,
)
from assocmem.meta.network import (
    MetaParams,
    Update,
    learned_update,
    learned_update_chunked,
    warmup_clamp,
)
from assocmem.optim import sharded
from assocmem.optim.indices import grouped


class LearnedStep(NamedTuple):
    updates: list[Tensor]  # u, shaped like each parameter
    memories: list[MemoryState]  # the memories after the write
    nonfinite: list[Tensor]  # per tensor: how many coordinates' u was non-finite (zeroed)


def _check_inputs(
    meta_params: MetaParams,
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    memories: Sequence[MemoryState],
    steps: Sequence[float | Tensor],
) -> None:
    """Refuse lists that do not pair up, and dtypes the step cannot run in, by name."""
    lengths = {"params": len(params), "grads": len(grads), "memories": len(memories)}
    lengths["steps"] = len(steps)
    if len(set(lengths.values())) > 1:
        raise ValueError(f"learned_step needs one grad, memory and step per param, got {lengths}")
    dtype = next(iter(meta_params.values())).dtype if meta_params else None
    if dtype not in (torch.float32, torch.float64):
        # in float16 the second moment and eps^2 underflow to 0: every u came out NaN, zeroed
        raise ValueError(
            f"learned_step runs in float32 or float64, the meta-parameters are {dtype}; step "
            "float32 copies of lower-precision tensors (as the learned preset does)"
        )
    for i, (p, g) in enumerate(zip(params, grads, strict=True)):
        if p.dtype != dtype or g.dtype != dtype:
            raise ValueError(
                f"tensor {i} is {p.dtype} (its grad {g.dtype}) and the meta-parameters {dtype}: "
                "cast one to the other ({k: w.to(p.dtype) for k, w in meta_params.items()})"
            )


def learned_step(
    meta_params: MetaParams,
    config: LearnedConfig,
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    memories: Sequence[MemoryState],
    steps: Sequence[float | Tensor],
    *,
    chunk: int | None = None,
    batch: bool = True,
) -> LearnedStep:
    """The learned update of every tensor and its memory after the write.

    Args:
        meta_params: the network (:func:`assocmem.meta.network.init_meta_params`).
        config: the learned memory's configuration.
        params: the tensors before the step.
        grads: their gradients.
        memories: their memories before the write (not modified).
        steps: each tensor's step count ``t >= 1`` including this step: a number, or its
            0-d counter on the device (``sync_free``; nothing is then read on the host).
        chunk: ``None`` makes one differentiable MLP call (meta-training); an int runs the
            network without grad in chunks of that many rows (the optimizer).
        batch: one MLP call over every tensor's rows (``True``) or one call per tensor (the
            preset's reference path). The same maths; the layout of the MLP's input differs,
            so the two agree to float rounding rather than to the bit.

    Returns:
        ``(updates, memories, nonfinite)``: ``u`` shaped like each parameter, the written
        memories, and per tensor the number of coordinates whose ``u`` was non-finite and was
        zeroed (0-dim int64 tensors: counted on the device, no host sync).

    Raises:
        ValueError: the four lists differ in length (extra entries were dropped, a short
            list was an ``IndexError``), or a tensor's dtype is not the meta-parameters', or
            that dtype is not float32/float64.
    """
    _check_inputs(meta_params, params, grads, memories, steps)
    written: list[MemoryState] = [{}] * len(params)
    xs: list[Tensor] = [torch.empty(0)] * len(params)
    for index in _batches(params, steps):
        # Tensors of one shape at one host count: written and featurised stacked, the same
        # bits with a few ops per batch instead of a few dozen per tensor (a lone tensor is
        # a batch of one: write and features themselves).
        some = [grads[i] for i in index]
        mems = write_batch([memories[i] for i in index], some, config)
        feats = features_batch(mems, some, [params[i] for i in index], steps[index[0]], config)
        for i, m, x in zip(index, mems, feats, strict=True):
            written[i], xs[i] = m, x

    def read(x: Tensor) -> Update:
        if chunk is None:
            return learned_update(meta_params, x, config)
        return learned_update_chunked(meta_params, x, config, chunk)

    if batch:
        whole = read(torch.cat(xs))
        sizes = [p.numel() for p in params]
        pieces = list(zip(whole.value.split(sizes), whole.finite.split(sizes), strict=True))
    else:
        pieces = [tuple(read(x)) for x in xs]
    updates = [
        warmup_clamp(u.view_as(p), t, config)
        for (u, _), p, t in zip(pieces, params, steps, strict=True)
    ]
    nonfinite = [(~finite).sum() for _, finite in pieces]
    if sharded.active() and nonfinite:
        # each rank counted its own rows: summed over the shards (one all-reduce), every rank
        # holds the tensor's count, as one process would (a per-rank count read 0 on rank 0,
        # and DCP, which saves a plain 0-d tensor as replicated, resumed another rank's)
        nonfinite = list(sharded.all_sum(torch.stack(nonfinite)).unbind(0))
    return LearnedStep(updates, written, nonfinite)


def _batches(params: Sequence[Tensor], steps: Sequence[float | Tensor]) -> list[list[int]]:
    """Indices grouped by shape, dtype, device and step count, in order of first appearance;
    alone where a count is on the device (``sync_free``: reading it would wait for it) or the
    step is sharded (the mean squares are all-reduced per tensor)."""
    every_alone = sharded.active() or torch.is_grad_enabled()
    keys = (
        i if every_alone or isinstance(t, Tensor) else (tuple(p.shape), p.dtype, p.device, float(t))
        for i, (p, t) in enumerate(zip(params, steps, strict=True))
    )
    return list(grouped(keys).values())
