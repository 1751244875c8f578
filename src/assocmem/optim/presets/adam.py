"""Adam: two key-less elementwise Hebbian memories, read through bias correction.

    write   m <- beta1 * m + (1 - beta1) * g        (hebbian, eta = 1 - beta1)
            v <- beta2 * v + (1 - beta2) * g^2      (hebbian, value g^2)
    read    u = m_hat / (sqrt(v_hat) + eps),  m_hat = m / (1 - beta1^t),  v_hat = v / (1 - beta2^t)
    step    W <- W - lr * u

With the default decoupled weight decay this is ``torch.optim.AdamW``; with
``decoupled_weight_decay=False`` it is ``torch.optim.Adam``. The fast path is torch's fused
Adam kernel (``torch.optim.Adam(fused=True)``'s, to the bit); tensors it cannot take
(non-contiguous ones) go through torch's foreach Adam, op for op (``fused=False``'s bits).

The reference is written from the equations, with torch's order where the equations' own
would overflow first: ``(1 - beta2) g^2`` as ``((1 - beta2) g) g`` where ``g g`` alone
overflows (``|g|`` above ~1.8e19 in float32), ``sqrt(v_hat)`` as ``sqrt(v) / sqrt(1 - beta2^t)``
where ``v / (1 - beta2^t)`` does (:func:`assocmem.optim.reads.second_moment_value`,
:func:`~assocmem.optim.reads.adam_denominator`). So ``v`` overflows where torch's kernels' does
(from ~5.8e20 at ``beta2 = 0.999``), and an ordinary step keeps its bits.

Under ``sync_free`` both paths take the step count as a tensor on the parameter's device
(:mod:`assocmem.optim.counts`, torch's ``capturable`` form), so that they read nothing on the
host, with the host path's bits.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from assocmem.memory import ElementwiseMemory, hebbian_write, read
from assocmem.optim import counts, fused, sync_free, validate
from assocmem.optim.blocks import blocks, indexed_blocks, split_by_step
from assocmem.optim.reads import adam_denominator, bias_corrected, second_moment_value
from assocmem.optim.registry import Group, Hyper, Preset, State, register


@register
class Adam(Preset):
    name = "adam"
    non_negative_state = ("exp_avg_sq",)
    hyper = {
        "betas": Hyper(
            (0.9, 0.999), validate.pair_of(validate.unit_interval), "retentions of m and v"
        ),
        "eps": Hyper(1e-8, validate.non_negative, "added to sqrt(v_hat)"),
    }

    def init_state(self, param: Tensor, group: Group) -> State:
        zeros = torch.zeros_like(param, memory_format=torch.preserve_format)
        return {"exp_avg": zeros, "exp_avg_sq": zeros.clone()}

    def shards_locally(self, group: Group) -> bool:
        return True  # elementwise

    def counts_on_device(self, param: Tensor, group: Group) -> bool:
        return True  # its bias corrections as tensor ops under sync_free (counts.py)

    def fuses(self, group: Group) -> bool:
        return True  # Adam is the kernel's own equation, weight decay and maximize included

    def fused_step(
        self,
        params: list[Tensor],
        grads: list[Tensor],
        states: list[State],
        group: Group,
        found_inf: dict[Any, Tensor] | None,
    ) -> None:
        beta1, beta2 = group["betas"]
        for index in fused.by_device_and_dtype(params):
            device = params[index[0]].device
            fused.adam_(
                group["decoupled_weight_decay"],
                [params[i] for i in index],
                [grads[i] for i in index],
                [states[i]["exp_avg"] for i in index],
                [states[i]["exp_avg_sq"] for i in index],
                [],
                [states[i]["step"] for i in index],
                lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
                eps=group["eps"], amsgrad=False, maximize=group["maximize"],
                found_inf=None if found_inf is None else found_inf[device],
            )  # fmt: skip

    def reference_step(self, param: Tensor, grad: Tensor, state: State, group: Group) -> None:
        beta1, beta2 = group["betas"]
        # the count on the device under sync_free: bias_corrected takes a 0-d tensor too
        t = counts.as_counts([state["step"]])[0] if sync_free.active() else float(state["step"])
        m = hebbian_write(
            ElementwiseMemory(state["exp_avg"]), None, grad, lr=1 - beta1, retention=beta1
        )
        # the write's rate in its value, (1 - beta2) g^2 taken in torch's order where g^2 alone
        # overflows (reads.second_moment_value), so that v overflows where torch's does
        v = hebbian_write(
            ElementwiseMemory(state["exp_avg_sq"]),
            None,
            second_moment_value(grad, 1 - beta2),
            lr=1.0,
            retention=beta2,
        )
        state["exp_avg"].copy_(m.m)
        state["exp_avg_sq"].copy_(v.m)
        update = bias_corrected(read(m), beta1, t) / adam_denominator(
            read(v), beta2, t, group["eps"]
        )
        param.add_(update, alpha=-group["lr"])

    def foreach_step(
        self, params: list[Tensor], grads: list[Tensor], states: list[State], group: Group
    ) -> None:
        # torch's foreach Adam, op for op (so the two agree to the bit), run on cache-sized
        # blocks (assocmem.optim.blocks) with the bias corrections of each step count.
        beta1, beta2 = group["betas"]
        lists = [params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]]
        if sync_free.active():
            _foreach_counted_on_device(lists, [s["step"] for s in states], group)
            return
        for t, index in split_by_step([float(s["step"]) for s in states]).items():
            step_size = -group["lr"] / (1 - beta1**t)
            bc2_sqrt = math.sqrt(1 - beta2**t)
            for p, g, m, v in blocks(lists, index):
                torch._foreach_lerp_(m, g, 1 - beta1)
                torch._foreach_mul_(v, beta2)
                torch._foreach_addcmul_(v, g, g, 1 - beta2)
                denom = torch._foreach_sqrt(v)
                torch._foreach_div_(denom, bc2_sqrt)
                torch._foreach_add_(denom, group["eps"])
                torch._foreach_addcdiv_(p, m, denom, step_size)


def _foreach_counted_on_device(
    lists: list[list[Tensor]], steps: list[Tensor], group: Group
) -> None:
    """:meth:`Adam.foreach_step` with its step sizes and bias corrections as 0-d tensors made
    from the counters on their device (no host read), one per tensor.

    The same passes with the same roundings: ``addcdiv(p, m, d, value=s)`` computes
    ``p + (s m) / d``, so ``s m`` is formed first (``addcdiv`` takes a tensor value only as a
    Python number) and added with value 1: one pass more than the host path, as torch's
    capturable Adam spends on its ``div_(denom, step_size)``.
    """
    beta1, beta2 = group["betas"]
    t = counts.as_counts(steps)
    step_size = counts.like(counts.quotients(-group["lr"], counts.corrections(beta1, t)), lists[0])
    bc2_sqrt = counts.like(torch._foreach_sqrt(counts.corrections(beta2, t)), lists[0])
    for index, (p, g, m, v) in indexed_blocks(lists):
        torch._foreach_lerp_(m, g, 1 - beta1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, g, g, 1 - beta2)
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, [bc2_sqrt[i] for i in index])
        torch._foreach_add_(denom, group["eps"])
        torch._foreach_addcdiv_(p, torch._foreach_mul(m, [step_size[i] for i in index]), denom)
