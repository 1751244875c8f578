"""Momentum: a key-less elementwise Hebbian memory of past gradients.

    write   m <- beta * m + g                 (hebbian, key = 1, eta = 1, alpha = beta)
    read    u = m            (Nesterov: u = g + beta * m)
    step    W <- W - lr * u

The hyperparameter ``momentum`` is beta. Equals ``torch.optim.SGD(momentum=beta, nesterov=...)``
(with ``decoupled_weight_decay=False`` for its L2 weight decay): its fast path is torch's
fused SGD kernel, ``SGD(fused=True)``'s bits, where that applies (``momentum > 0``, no
decoupled weight decay, contiguous tensors); elsewhere torch's foreach SGD's. torch
initialises the buffer to ``g`` on the first step; with ``m_0 = 0`` the write above gives the
same value, so no special case is needed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from assocmem.memory import ElementwiseMemory, hebbian_write
from assocmem.optim import fused, validate
from assocmem.optim.reads import foreach_momentum_, momentum_read
from assocmem.optim.registry import Group, Hyper, Preset, State, register


@register
class Momentum(Preset):
    name = "momentum"
    hyper = {
        # Named like torch.optim.SGD's argument so schedulers that cycle momentum (OneCycleLR,
        # CyclicLR) drive it.
        "momentum": Hyper(0.9, validate.unit_interval, "retention beta of the gradient memory"),
        "nesterov": Hyper(False, validate.boolean, "read g + beta * m instead of m"),
    }

    def init_state(self, param: Tensor, group: Group) -> State:
        return {"momentum_buffer": torch.zeros_like(param, memory_format=torch.preserve_format)}

    def shards_locally(self, group: Group) -> bool:
        return True  # elementwise

    def reads_state_on_host(self, param: Tensor, group: Group) -> bool:
        return False  # no step count: the write and the read are the same every step

    def fuses(self, group: Group) -> bool:
        return fused.momentum_fuses(group, group["momentum"])

    def fused_step(
        self,
        params: list[Tensor],
        grads: list[Tensor],
        states: list[State],
        group: Group,
        found_inf: dict[Any, Tensor] | None,
    ) -> None:
        buffers = [s["momentum_buffer"] for s in states]
        fused.momentum_sgd_(
            params, grads, buffers, group, found_inf,
            momentum=group["momentum"], write_rate=1.0, lr=group["lr"],
            nesterov=group["nesterov"],
        )  # fmt: skip

    def reference_step(self, param: Tensor, grad: Tensor, state: State, group: Group) -> None:
        memory = hebbian_write(
            ElementwiseMemory(state["momentum_buffer"]),
            None,
            grad,
            lr=1.0,
            retention=group["momentum"],
        )
        state["momentum_buffer"].copy_(memory.m)
        update = momentum_read(memory, grad, beta=group["momentum"], nesterov=group["nesterov"])
        param.add_(update, alpha=-group["lr"])

    def foreach_step(
        self, params: list[Tensor], grads: list[Tensor], states: list[State], group: Group
    ) -> None:
        updates = foreach_momentum_(
            [s["momentum_buffer"] for s in states],
            grads,
            beta=group["momentum"],
            nesterov=group["nesterov"],
        )
        torch._foreach_add_(params, updates, alpha=-group["lr"])
