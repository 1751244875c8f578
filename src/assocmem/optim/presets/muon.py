"""Muon: a Hebbian momentum memory read through Newton-Schulz orthogonalisation.

    write   m <- beta * m + g                          (hebbian, key-less, eta = 1, alpha = beta)
    read    u = g + beta * m  (Nesterov, default) or u = m
            O = NS5(u reshaped to (rows, cols))        (~ U V^T of u = U S V^T)
    step    W <- W - lr * scale(rows, cols) * O

Matrices (``dim >= 2``; conv kernels ``(out, in, kh, kw)`` read as ``(out, in * kh * kw)``) take
the orthogonalised step: every singular direction of the momentum moves by the same amount, the
steepest descent under the spectral norm (Bernstein & Newhouse 2024). ``scale``:

- ``"spectral"`` (default, Keller Jordan's Muon): ``max(1, rows / cols) ** 0.5``, so the
  update's spectral norm per unit input RMS is the same for tall and wide layers;
- ``"rms"`` (Moonshot's Muon, Liu et al. 2025): ``0.2 * sqrt(max(rows, cols))``, which gives the
  update the RMS (~0.2) of a typical AdamW update, so AdamW's ``lr`` and ``weight_decay`` carry
  over and one ``lr`` suits matrices and the Adam fallback alike.

Orthogonalisation is meaningless for vectors and scalars (a vector's "U V^T" is its sign-free
direction), so parameters with ``dim < 2`` (biases, gains, scalars) fall back to Adam with its
own hyperparameters ``adam_betas``, ``adam_eps`` and step ``lr * adam_lr_ratio``; this is
exactly ``MemoryOptimizer(memory="adam")`` (tested). Muon's authors also keep embeddings and
the output head on Adam: ``assocmem.optim.param_groups(model)`` puts those, norms and biases in
a param group with ``memory="adam"``.

Since NS normalises its input, the momentum's scale is irrelevant: Muon's EMA form
``m <- lerp(m, g, 1 - beta)``, ``u = lerp(g, m, beta)`` gives the same update.
"""

from __future__ import annotations

import torch
from torch import Tensor

from assocmem.memory import ElementwiseMemory, hebbian_write
from assocmem.optim import sharded, validate
from assocmem.optim.reads import (
    SCALES,
    foreach_momentum_,
    momentum_read,
    orthogonal_read,
    orthogonal_reads,
)
from assocmem.optim.registry import Group, Hyper, Preset, State, get_preset, register


def orthogonalized(param: Tensor) -> bool:
    """Matrices (and reshaped conv kernels) take the Newton-Schulz read; the rest, including
    empty tensors (nothing to orthogonalise), take the Adam fallback."""
    return param.dim() >= 2 and sharded.whole_numel(param) > 0  # decided alike on every rank


def _adam_group(group: Group) -> Group:
    return {
        "betas": group["adam_betas"],
        "eps": group["adam_eps"],
        "lr": group["lr"] * group["adam_lr_ratio"],
    }


@register
class Muon(Preset):
    name = "muon"
    non_negative_state = ("exp_avg_sq",)  # the Adam fallback's
    hyper = {
        # Named like torch.optim.Muon's argument (beta in the equations).
        "momentum": Hyper(0.95, validate.unit_interval, "retention beta of the momentum memory"),
        "nesterov": Hyper(True, validate.boolean, "read g + beta * m instead of m"),
        "ns_steps": Hyper(5, validate.positive_int, "Newton-Schulz iterations"),
        "scale": Hyper("spectral", validate.one_of(*SCALES), "update scale of matrices"),
        "adam_betas": Hyper(
            (0.9, 0.95), validate.pair_of(validate.unit_interval), "Adam fallback (dim < 2)"
        ),
        "adam_eps": Hyper(1e-8, validate.non_negative, "Adam fallback epsilon"),
        "adam_lr_ratio": Hyper(1.0, validate.non_negative, "Adam fallback step is lr * ratio"),
    }

    def init_state(self, param: Tensor, group: Group) -> State:
        if not orthogonalized(param):
            return get_preset("adam").init_state(param, group)
        return {"momentum": torch.zeros_like(param, memory_format=torch.preserve_format)}

    def shards_locally(self, group: Group) -> bool:
        return True  # the Adam fallback is elementwise; a matrix's read u is gathered

    def reference_step(self, param: Tensor, grad: Tensor, state: State, group: Group) -> None:
        if not orthogonalized(param):
            get_preset("adam").reference_step(param, grad, state, _adam_group(group))
            return
        memory = hebbian_write(
            ElementwiseMemory(state["momentum"]), None, grad, lr=1.0, retention=group["momentum"]
        )
        state["momentum"].copy_(memory.m)
        u = momentum_read(memory, grad, beta=group["momentum"], nesterov=group["nesterov"])
        ortho, scale = orthogonal_read(u, steps=group["ns_steps"], scale=group["scale"])
        param.add_(ortho, alpha=-group["lr"] * scale)

    def foreach_step(
        self, params: list[Tensor], grads: list[Tensor], states: list[State], group: Group
    ) -> None:
        vectors = [i for i, p in enumerate(params) if not orthogonalized(p)]
        if vectors:
            get_preset("adam").foreach_step(
                [params[i] for i in vectors],
                [grads[i] for i in vectors],
                [states[i] for i in vectors],
                _adam_group(group),
            )
        matrices = [i for i, p in enumerate(params) if orthogonalized(p)]
        if not matrices:
            return
        ps = [params[i] for i in matrices]
        updates = foreach_momentum_(
            [states[i]["momentum"] for i in matrices],
            [grads[i] for i in matrices],
            beta=group["momentum"],
            nesterov=group["nesterov"],
        )
        if sharded.active():
            # FSDP2 rows: Newton-Schulz needs the whole matrix. Only the read u is gathered
            # (one all-gather of numel per matrix), each rank orthogonalises it and keeps its
            # rows of O: a third of gathering parameter, gradient and momentum.
            updates = [sharded.gather_rows(u, p) for u, p in zip(updates, ps, strict=True)]
        for index, orthos, scale in orthogonal_reads(
            updates, steps=group["ns_steps"], scale=group["scale"]
        ):
            if sharded.active():
                orthos = [sharded.own_rows(o, ps[j]) for o, j in zip(orthos, index, strict=True)]
            torch._foreach_add_([ps[j] for j in index], orthos, alpha=-group["lr"] * scale)
