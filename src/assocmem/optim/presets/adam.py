"""Adam: two key-less elementwise Hebbian memories, read through bias correction.

    write   m <- beta1 * m + (1 - beta1) * g        (hebbian, eta = 1 - beta1)
            v <- beta2 * v + (1 - beta2) * g^2      (hebbian, value g^2)
    read    u = m_hat / (sqrt(v_hat) + eps),  m_hat = m / (1 - beta1^t),  v_hat = v / (1 - beta2^t)
    step    W <- W - lr * u

With the default decoupled weight decay this is ``torch.optim.AdamW``; with
``decoupled_weight_decay=False`` it is ``torch.optim.Adam``. The fast path follows torch's own
operation order, so the two agree to float rounding.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from assocmem.memory import ElementwiseMemory, hebbian_write, read
from assocmem.optim import validate
from assocmem.optim.registry import Group, Hyper, Preset, State, register


def bias_corrections(beta: float, steps: list[Tensor]) -> list[float]:
    """``1 - beta^t`` per tensor (tensors that first got a gradient late have a smaller t)."""
    return [1 - beta ** float(t) for t in steps]


@register
class Adam(Preset):
    name = "adam"
    hyper = {
        "betas": Hyper(
            (0.9, 0.999), validate.pair_of(validate.unit_interval), "retentions of m and v"
        ),
        "eps": Hyper(1e-8, validate.non_negative, "added to sqrt(v_hat)"),
    }

    def init_state(self, param: Tensor, group: Group) -> State:
        zeros = torch.zeros_like(param, memory_format=torch.preserve_format)
        return {"exp_avg": zeros, "exp_avg_sq": zeros.clone()}

    def reference_step(self, param: Tensor, grad: Tensor, state: State, group: Group) -> None:
        beta1, beta2 = group["betas"]
        t = float(state["step"])
        m = hebbian_write(
            ElementwiseMemory(state["exp_avg"]), None, grad, lr=1 - beta1, retention=beta1
        )
        v = hebbian_write(
            ElementwiseMemory(state["exp_avg_sq"]), None, grad * grad, lr=1 - beta2, retention=beta2
        )
        state["exp_avg"].copy_(m.m)
        state["exp_avg_sq"].copy_(v.m)
        m_hat = read(m) / (1 - beta1**t)
        v_hat = read(v) / (1 - beta2**t)
        param.add_(m_hat / (v_hat.sqrt() + group["eps"]), alpha=-group["lr"])

    def foreach_step(
        self, params: list[Tensor], grads: list[Tensor], states: list[State], group: Group
    ) -> None:
        beta1, beta2 = group["betas"]
        exp_avgs = [s["exp_avg"] for s in states]
        exp_avg_sqs = [s["exp_avg_sq"] for s in states]
        steps = [s["step"] for s in states]
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
        bc1 = bias_corrections(beta1, steps)
        bc2_sqrt = [math.sqrt(b) for b in bias_corrections(beta2, steps)]
        step_sizes = [-group["lr"] / b for b in bc1]
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denom, bc2_sqrt)
        torch._foreach_add_(denom, group["eps"])
        torch._foreach_addcdiv_(params, exp_avgs, denom, step_sizes)
