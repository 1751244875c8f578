"""torch's fused optimizer kernels (Adam, AdamW, SGD), as the fast paths of ``adam``,
``momentum``, and the configurations of ``delta`` and ``cms`` that are momentum or Adam, call them.

One pass over memory per tensor, where the foreach path makes one per operation, and each
takes a ``found_inf`` flag on the parameters' device: when it is 1 the kernel leaves the
parameter and its state untouched, which is how ``nonfinite="skip"`` skips a step without
reading the flag on the host (``MemoryOptimizer.step``). The kernels index raw memory, so
they take dense contiguous tensors only (:func:`fusable`).

Inside ``torch.compile(opt.step)`` they run eagerly: torch 2.13's functionalization fails an
internal assert on ``_fused_adam_``. The same numbers, at the price of a graph break.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from assocmem.optim.indices import grouped


@functools.cache
def supported_devices() -> tuple[str, ...]:
    """Device types with fused optimizer kernels (torch's own list, fixed for a process)."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    return tuple(_get_fused_kernels_supported_devices())


def fusable(tensors: Sequence[Tensor], alike: Sequence[Tensor] = ()) -> bool:
    """Whether the fused kernels can take ``tensors`` and ``alike``: dense, contiguous,
    floating, on a device type that has them. Contiguous matters: the kernels index raw
    memory, and torch 2.13's CPU fused Adam and SGD kernels step a parameter and gradient of
    different strides (either one transposed) silently wrong (one-off check against the
    foreach kernels: off by 0.8 in five steps), where both transposed is right.

    ``alike``: tensors that share the dtype, device and layout of the ``tensors`` they belong
    to (their gradients, which torch checks on assignment, and their state, which
    ``load_state_dict`` casts to its parameter; a fused step count is a float32 scalar), of
    which only contiguity is asked. Checked on every tensor of every step (a model of 300
    tensors asks about ~1500), so it is the host's cost per tensor that matters: ``alike`` by
    one ``map`` (~0.05 us a tensor), ``tensors`` by a plain loop with the CPU and CUDA tested
    by flags before the device object is built (~0.25 us each)."""
    if not all(map(Tensor.is_contiguous, alike)):
        return False
    devices = supported_devices()
    on_cpu, on_cuda = "cpu" in devices, "cuda" in devices
    strided = torch.strided
    for t in tensors:
        if not (
            t.is_contiguous()
            and t.is_floating_point()
            and t.layout == strided
            and (on_cpu if t.is_cpu else on_cuda if t.is_cuda else t.device.type in devices)
        ):
            return False
    return True


def fusable_indices(tensors: Sequence[Tensor], alike: Sequence[Sequence[Tensor]]) -> list[int]:
    """The positions of ``tensors`` that :func:`fusable` takes together with their ``alike``
    tensors (one sequence per kind, each aligned with ``tensors``: gradients, state): asked of
    all of them at once first, the usual answer, then tensor by tensor."""
    if fusable(tensors, alike=[t for kind in alike for t in kind]):
        return list(range(len(tensors)))
    return [i for i, t in enumerate(tensors) if fusable([t], alike=[kind[i] for kind in alike])]


def by_device_and_dtype(tensors: Sequence[Tensor]) -> list[list[int]]:
    """Indices of ``tensors`` grouped by device and dtype: a kernel call takes one of each."""
    return list(grouped((t.device, t.dtype) for t in tensors).values())


def adam_(decoupled: bool, *args: Any, **kwargs: Any) -> None:
    """``torch._fused_adamw_`` (decoupled weight decay) or ``torch._fused_adam_``."""
    kernel = torch._fused_adamw_ if decoupled else torch._fused_adam_
    _run(kernel, *args, **kwargs)


def sgd_(*args: Any, **kwargs: Any) -> None:
    """``torch._fused_sgd_``."""
    _run(torch._fused_sgd_, *args, **kwargs)


def momentum_sgd_(
    params: list[Tensor],
    grads: list[Tensor],
    buffers: list[Tensor],
    group: dict[str, Any],
    found_inf: dict[Any, Tensor] | None,
    *,
    momentum: float,
    write_rate: float,
    lr: float,
    nesterov: bool = False,
) -> None:
    """``m <- momentum m + write_rate g``, ``W <- W - lr m`` by ``torch._fused_sgd_``, with the
    group's L2 weight decay and ``maximize`` (see :func:`momentum_fuses`).

    ``momentum``, ``delta`` with ``gamma = 0`` and a one-level ``cms`` are this one write; they
    all step through it, so that they stay equal to the bit (torch's fused SGD rounds the
    last few elements of a tensor differently from its foreach SGD).
    """
    for index in by_device_and_dtype(params):
        device = params[index[0]].device
        # dampening = 1 - write_rate; is_first_step=False: the buffer starts at 0, and
        # 0 * momentum + g is g to the bit, the value torch copies in at its first step.
        sgd_(
            [params[i] for i in index],
            [grads[i] for i in index],
            [buffers[i] for i in index],
            weight_decay=group["weight_decay"], momentum=momentum, lr=lr,
            dampening=1 - write_rate, nesterov=nesterov, maximize=group["maximize"],
            is_first_step=False, found_inf=None if found_inf is None else found_inf[device],
        )  # fmt: skip


def momentum_fuses(group: dict[str, Any], momentum: float) -> bool:
    """Whether :func:`momentum_sgd_` can take the group: the kernel has L2 weight decay only,
    and with ``momentum == 0`` it would leave the buffer unwritten (torch keeps none), where the
    presets store ``g`` in it."""
    decoupled = group["decoupled_weight_decay"] and group["weight_decay"] != 0
    return momentum > 0 and not decoupled


def _run(kernel: Any, *args: Any, **kwargs: Any) -> None:
    if torch.compiler.is_compiling():
        _eagerly(kernel, *args, **kwargs)
    else:  # no wrapper eagerly: it is called once per block
        kernel(*args, **kwargs)


@torch.compiler.disable
def _eagerly(kernel: Any, *args: Any, **kwargs: Any) -> None:
    kernel(*args, **kwargs)
