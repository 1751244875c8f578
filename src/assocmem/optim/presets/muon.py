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
``m <- lerp(m, g, 1 - beta)``, ``u = lerp(g, m, beta)`` gives the same update. The sum form
settles near ``g / (1 - beta)``, so it leaves float32's range for gradients ~20x below its
largest float: ``m`` is then held at the top of the range (finite, its checkpoint loads) and
NS divides a read whose norm would overflow by its largest entry first (scale-free: a 1e30
gradient steps as a unit one).

Options (all off by default, so the default is Keller Jordan's Muon):

- ``ns_coefficients="polar_express"`` (with ``ns_lower``): an optimal quintic per Newton-Schulz
  iteration (Amsel et al. 2025, :mod:`assocmem.optim.polar_express`) instead of one repeated;
  a tighter band around 1 at the same number of matmuls, or the same band in fewer;
- ``gamma > 0``: the momentum memory is written with the delta rule instead of the Hebbian
  rule (Nested Learning's combination of the two memories): before storing ``g`` it erases
  what it holds along ``g_hat``,
  ``m <- (beta I - gamma g_hat g_hat^T) m + g`` (``erase="tensor"`` or per ``"row"``;
  :func:`assocmem.optim.presets.delta.delta_momentum_write`), then the same read and NS;
- ``ns_dtype="bfloat16"``: Newton-Schulz iterates in bf16, as Keller Jordan's Muon and
  ``torch.optim.Muon`` do (the default, ``"float32"``, is fp32, fp64 for fp64 parameters):
  for accelerators, where bf16 matrix products are several times faster; on a CPU far slower;
- ``row_norm=True``: each row (output neuron) of the orthogonalised update is divided by the
  root of a running mean square of that row, the update's Frobenius norm kept
  (NorMuon, Li et al. 2025, :mod:`assocmem.optim.neuron_norm`; second moment ``row_beta2``).

Under FSDP2 (:mod:`assocmem.optim.sharded`) Newton-Schulz needs each matrix whole;
``ns_placement`` says where it runs. ``"all"`` (default): the read ``u`` is all-gathered and
every rank orthogonalises every matrix, keeping its rows. ``"owner"``: matrix ``j`` (in the
order of the param group) is gathered onto rank ``j mod W`` alone, orthogonalised there, and
its rows are scattered back: about ``2 / W`` of the all-gather's traffic and ``1 / W`` of its
Newton-Schulz work per rank (the same traffic at ``W = 2``), at two collectives per matrix
instead of one. Both give the same numbers; outside FSDP2 the option changes nothing.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from assocmem.memory import ElementwiseMemory, hebbian_write
from assocmem.optim import sharded, validate
from assocmem.optim.neuron_norm import foreach_row_normalize_, row_normalized
from assocmem.optim.newton_schulz import COEFFICIENTS
from assocmem.optim.polar_express import LOWER
from assocmem.optim.presets.delta import delta_momentum_write, delta_write_
from assocmem.optim.reads import (
    SCALES,
    foreach_momentum_,
    momentum_read,
    orthogonal_read,
    orthogonal_reads,
    saturate_,
    spectral_scale,
)
from assocmem.optim.registry import Group, Hyper, Preset, State, get_preset, register

# ns_dtype: the dtype Newton-Schulz iterates in. "float32" is at least fp32 (fp64 parameters
# iterate in fp64, so float64 tests check the algorithm); "bfloat16" is what Keller Jordan's Muon
# and torch.optim.Muon do, for accelerators (on a CPU bf16 matrix products are far slower).
NS_DTYPES: dict[str, torch.dtype | None] = {"float32": None, "bfloat16": torch.bfloat16}


def orthogonalized(param: Tensor) -> bool:
    """Matrices (and reshaped conv kernels) take the Newton-Schulz read; the rest, including
    empty tensors (nothing to orthogonalise), take the Adam fallback."""
    return param.dim() >= 2 and sharded.whole_numel(param) > 0  # decided alike on every rank


# Where Newton-Schulz runs under FSDP2: on every rank (all-gather), or on one rank per matrix.
NS_PLACEMENTS = ("all", "owner")


def _adam_group(group: Group) -> Group:
    return {
        "betas": group["adam_betas"],
        "eps": group["adam_eps"],
        "lr": group["lr"] * group["adam_lr_ratio"],
    }


@register
class Muon(Preset):
    name = "muon"
    non_negative_state = ("exp_avg_sq", "row_sq")  # the Adam fallback's, the row norm's
    hyper = {
        # Named like torch.optim.Muon's argument (beta in the equations).
        "momentum": Hyper(0.95, validate.unit_interval, "retention beta of the momentum memory"),
        "nesterov": Hyper(True, validate.boolean, "read g + beta * m instead of m"),
        "ns_steps": Hyper(5, validate.positive_int, "Newton-Schulz iterations"),
        "scale": Hyper("spectral", validate.one_of(*SCALES), "update scale of matrices"),
        "ns_coefficients": Hyper(
            "jordan", validate.one_of(*COEFFICIENTS), "one quintic repeated, or one per step"
        ),
        "ns_lower": Hyper(
            LOWER, validate.open_unit_interval, "polar_express: smallest relative s.v. lifted"
        ),
        "gamma": Hyper(
            0.0, validate.closed_unit_interval, "delta-rule erase of the momentum (0: Hebbian)"
        ),
        "erase": Hyper(
            "tensor", validate.one_of("tensor", "row"), "erase along g per tensor or per row"
        ),
        "row_norm": Hyper(False, validate.boolean, "normalise each row of O (NorMuon)"),
        "row_beta2": Hyper(0.95, validate.unit_interval, "retention of the rows' mean square"),
        "ns_dtype": Hyper(
            "float32",
            validate.one_of(*NS_DTYPES),
            "dtype of Newton-Schulz (bfloat16: accelerators)",
        ),
        "ns_placement": Hyper(
            "all", validate.one_of(*NS_PLACEMENTS), "FSDP2: NS on every rank, or on one per matrix"
        ),
        "adam_betas": Hyper(
            (0.9, 0.95), validate.pair_of(validate.unit_interval), "Adam fallback (dim < 2)"
        ),
        "adam_eps": Hyper(1e-8, validate.non_negative, "Adam fallback epsilon"),
        "adam_lr_ratio": Hyper(1.0, validate.non_negative, "Adam fallback step is lr * ratio"),
    }

    def init_state(self, param: Tensor, group: Group) -> State:
        if not orthogonalized(param):
            return get_preset("adam").init_state(param, group)
        state = {"momentum": torch.zeros_like(param, memory_format=torch.preserve_format)}
        if group["row_norm"]:
            state["row_sq"] = torch.zeros(param.shape[0], dtype=param.dtype, device=param.device)
        return state

    def reads_state_on_host(self, param: Tensor, group: Group) -> bool:
        # Matrices: momentum and Newton-Schulz, no step count. The Adam fallback of the other
        # tensors reads its step count for the bias corrections.
        return not orthogonalized(param)

    def counts_on_device(self, param: Tensor, group: Group) -> bool:
        return True  # the Adam fallback's, as adam's (assocmem.optim.counts)

    def squares_grads(self, group: Group) -> bool:
        # the delta-rule momentum's whole-tensor erase reads ||g||^2 of each matrix
        return group["gamma"] > 0 and group["erase"] == "tensor"

    gathers_rows = True  # a matrix's read is gathered whole for Newton-Schulz

    def shards_locally(self, group: Group) -> bool:
        # The Adam fallback is elementwise; a matrix's read u is gathered. The erase's and the
        # row norm's whole-tensor sums are not all-reduced here: those options step gathered.
        return group["gamma"] == 0 and not group["row_norm"]

    def reference_step(self, param: Tensor, grad: Tensor, state: State, group: Group) -> None:
        if not orthogonalized(param):
            get_preset("adam").reference_step(param, grad, state, _adam_group(group))
            return
        beta = group["momentum"]
        if group["gamma"] > 0:
            m = delta_momentum_write(
                state["momentum"], grad, alpha=beta, gamma=group["gamma"], eta=1.0,
                erase=group["erase"],
            )  # fmt: skip
            memory = ElementwiseMemory(m)
        else:
            memory = hebbian_write(
                ElementwiseMemory(state["momentum"]), None, grad, lr=1.0, retention=beta
            )
        # the sum settles near g / (1 - beta): held finite past the dtype's range
        saturate_([memory.m])  # in place: both writes return a new tensor
        state["momentum"].copy_(memory.m)
        u = momentum_read(memory, grad, beta=beta, nesterov=group["nesterov"])
        ortho, scale = orthogonal_read(
            u,
            steps=group["ns_steps"],
            scale=group["scale"],
            coefficients=group["ns_coefficients"],
            lower=group["ns_lower"],
            dtype=NS_DTYPES[group["ns_dtype"]],
        )
        if group["row_norm"]:
            ortho, v = row_normalized(ortho, state["row_sq"], beta2=group["row_beta2"])
            state["row_sq"].copy_(v)
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
        bufs = [states[i]["momentum"] for i in matrices]
        gs = [grads[i] for i in matrices]
        if group["gamma"] > 0:
            updates = _foreach_delta_momentum_(bufs, gs, group)
        else:
            updates = foreach_momentum_(
                bufs, gs, beta=group["momentum"], nesterov=group["nesterov"], saturate=True
            )
        if sharded.active() and group["ns_placement"] == "owner":
            _orthogonal_steps_by_owner(ps, updates, group)
            return
        if sharded.active():
            # FSDP2 rows: Newton-Schulz needs the whole matrix. Only the read u is gathered
            # (one all-gather of numel per matrix), each rank orthogonalises it and keeps its
            # rows of O: a third of gathering parameter, gradient and momentum.
            updates = [sharded.gather_rows(u, p) for u, p in zip(updates, ps, strict=True)]
        for index, orthos, scale in _group_reads(updates, group):
            if group["row_norm"]:
                row_sqs = [states[matrices[j]]["row_sq"] for j in index]
                orthos = foreach_row_normalize_(orthos, row_sqs, beta2=group["row_beta2"])
            if sharded.active():
                orthos = [sharded.own_rows(o, ps[j]) for o, j in zip(orthos, index, strict=True)]
            torch._foreach_add_([ps[j] for j in index], orthos, alpha=-group["lr"] * scale)


def _group_reads(
    updates: list[Tensor], group: Group
) -> list[tuple[list[int], list[Tensor], float]]:
    """:func:`orthogonal_reads` of ``updates`` with the group's Newton-Schulz settings."""
    return orthogonal_reads(
        updates,
        steps=group["ns_steps"],
        scale=group["scale"],
        coefficients=group["ns_coefficients"],
        lower=group["ns_lower"],
        dtype=NS_DTYPES[group["ns_dtype"]],
    )


def _orthogonal_steps_by_owner(ps: list[Tensor], updates: list[Tensor], group: Group) -> None:
    """FSDP2, ``ns_placement="owner"``: matrix ``j``'s read is gathered onto rank
    ``j mod W``, orthogonalised there (one batched Newton-Schulz per shape over the matrices a
    rank owns), and its rows scattered back; every rank then steps its rows. The assignment
    depends only on the order of the matrices, the same on every rank."""
    world = sharded.shard_world(ps[0])
    owners = [j % world for j in range(len(ps))]
    wholes = [
        sharded.gather_rows_to(u, p, owner) for u, p, owner in zip(updates, ps, owners, strict=True)
    ]
    mine = [j for j, whole in enumerate(wholes) if whole is not None]
    orthos: dict[int, Tensor] = {}
    for index, pieces, _ in _group_reads([wholes[j] for j in mine], group):
        orthos.update((mine[k], o) for k, o in zip(index, pieces, strict=True))
    by_scale: dict[float, list[tuple[Tensor, Tensor]]] = {}
    for j, (u, p) in enumerate(zip(updates, ps, strict=True)):
        local = sharded.scatter_rows(orthos.get(j), p, owners[j], like=u)
        # every rank knows the whole matrix's shape, so its scale, without receiving it
        scale = spectral_scale(sharded.whole_rows(p), math.prod(p.shape[1:]), group["scale"])
        by_scale.setdefault(scale, []).append((p, local))
    for scale, pairs in by_scale.items():
        torch._foreach_add_(
            [p for p, _ in pairs], [o for _, o in pairs], alpha=-group["lr"] * scale
        )


def _foreach_delta_momentum_(bufs: list[Tensor], grads: list[Tensor], group: Group) -> list[Tensor]:
    """The fast path of the delta-rule write ``m <- beta m + (1 - gamma c) g`` (``c`` the
    overlap ``<g, m> / ||g||^2`` per tensor or per row: the erase along ``g_hat`` folded into
    the gradient's write rate, as in the ``delta`` preset), in place, then the momentum read."""
    beta = group["momentum"]
    delta_write_(bufs, grads, alpha=beta, gamma=group["gamma"], eta=1.0, erase=group["erase"])
    saturate_(bufs)
    return torch._foreach_add(grads, bufs, alpha=beta) if group["nesterov"] else bufs
