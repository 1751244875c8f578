"""The ``compile=True`` path of ``cms`` (:mod:`assocmem.optim.presets.cms` has the equations).

The eager fast path (``cms_fast.py``) is made of torch's kernels: the accumulator's add, the
carried levels' add and subtract around torch's fused Adam, and the non-finite check stream
each tensor through memory ~17 times a step where the equations need 11 (reads of ``W, g``,
every level, accumulator and ``s``; writes of ``W``, the levels due, the accumulators, ``s``).
Here the reference's own equations, written once per tensor, are fused by ``torch.compile``
into one loop that reads and writes each of them once (docs/results.md, step cost).

What changes between steps enters as data, so a schedule never recompiles: ``lr``, every
level's retention, write scale and read scale ``w_k / c_k``, ``beta2``'s bias correction and
``eps`` are 0-d float64 tensors made by the host from the step count (as Python floats would
be). What shapes the graph is a constant: the number of levels, which of them keep an
accumulator, which are due for a write at this step (a level written every ``f`` steps makes
two graphs, due and not due), and ``normalize``.

Elementwise configurations only: Newton-Schulz reads whole matrices (``orthogonalize=True``
is refused by :meth:`CMS.check_group`). A step under ``sync_free`` (no host read of the count)
or on FSDP2 shards takes the eager fast path instead: the same numbers to float rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor

from assocmem.optim import sharded, sync_free
from assocmem.optim.blocks import select, split_by_step
from assocmem.optim.compiled import compiled
from assocmem.optim.presets.cms import accumulates, level_etas
from assocmem.optim.presets.cms_fast import buffers, foreach_step, level_read_scales
from assocmem.optim.reads import corrected_root, second_moment_value
from assocmem.optim.registry import Group, State


def compiled_step(
    params: list[Tensor], grads: list[Tensor], states: list[State], group: Group
) -> None:
    """One ``cms`` step of every tensor of the group, fused by torch.compile, in place."""
    if sync_free.active() or sharded.active():
        foreach_step(params, grads, states, group)
        return
    etas = level_etas(group)
    # write scale of level k: its eta, over f_k when it is written with the f_k-step sum
    write_scales = [
        eta / freq if accumulates(group, k) else eta
        for k, (eta, freq) in enumerate(zip(etas, group["freqs"], strict=True))
    ]

    def number(x: float) -> Tensor:
        return torch.tensor(x, dtype=torch.float64)

    every = buffers(params, grads, states, group)
    for t_float, index in split_by_step([float(s["step"]) for s in states]).items():
        t = int(t_float)
        chosen = select(every, index)
        compiled(level_step)(
            chosen.params,
            chosen.grads,
            list(chosen.levels),
            list(chosen.accs),
            chosen.second,
            [number(a) for a in group["alphas"]],
            [number(w) for w in write_scales],
            [number(r) for r in level_read_scales(t, group)],  # w_k / c_k
            lr=number(group["lr"]),
            beta2=number(group["beta2"]),
            bc2=number(1 - group["beta2"] ** t),
            eps=number(group["eps"]),
            due=tuple(t % f == 0 for f in group["freqs"]),
        )


def level_step(
    params: list[Tensor],
    grads: list[Tensor],
    levels: list[list[Tensor]],
    accs: list[list[Tensor] | None],
    second: list[Tensor] | None,
    alphas: list[Tensor],
    write_scales: list[Tensor],
    read_scales: list[Tensor],
    *,
    lr: Tensor,
    beta2: Tensor,
    bc2: Tensor,
    eps: Tensor,
    due: tuple[bool, ...],
) -> None:
    """The reference step's equations for each tensor, in place: the body of ``compile=True``.

    ``levels[k][i]`` is level ``k`` of tensor ``i`` and ``accs[k]`` its accumulators (None for
    a level written with ``g_t``); ``second`` Adam's second moments (None: no normalisation).
    Level ``k`` is written where ``due[k]``: ``L <- alpha L + scale v`` with ``v`` the
    accumulated sum (``scale = eta / f``) or ``g``; the read is ``sum_k read_scales[k] L_k``,
    through ``sqrt(s / bc2) + eps`` when normalised.
    """
    for i, (p, g) in enumerate(zip(params, grads, strict=True)):
        update = torch.zeros_like(p)
        for k, level in enumerate(levels):
            memory, value = level[i], g
            acc = accs[k]
            if acc is not None:
                value = acc[i] + g
            if due[k]:
                memory_now = memory * alphas[k] + value * write_scales[k]
                memory.copy_(memory_now)
                if acc is not None:
                    acc[i].zero_()
            else:
                memory_now = memory
                if acc is not None:
                    acc[i].copy_(value)
            update = update + read_scales[k] * memory_now
        if second is not None:
            # torch's order where the equation's overflows first, as the eager paths
            moment = second[i] * beta2 + second_moment_value(g, 1 - beta2)
            second[i].copy_(moment)
            update = update / (corrected_root(moment, bc2) + eps)
        p.sub_(lr * update)
