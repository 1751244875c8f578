"""torch's fused optimizer kernels (Adam, AdamW, SGD), as the ``adam``, ``momentum`` and ``cms``
fast paths call them.

One pass over memory per tensor, where the foreach path makes one per operation, and each
takes a ``found_inf`` flag on the parameters' device: when it is 1 the kernel leaves the
parameter and its state untouched, which is how ``nonfinite="skip"`` skips a step without
reading the flag on the host (``MemoryOptimizer.step``). The kernels index raw memory, so
they take dense contiguous tensors only (:func:`fusable`).

Inside ``torch.compile(opt.step)`` they run eagerly: torch 2.13's functionalization fails an
internal assert on ``_fused_adam_``. The same numbers, at the price of a graph break.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def supported_devices() -> tuple[str, ...]:
    """Device types with fused optimizer kernels (torch's own list)."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    return tuple(_get_fused_kernels_supported_devices())


def fusable(tensors: Sequence[Tensor]) -> bool:
    """Whether the fused kernels can take ``tensors``: dense, contiguous, floating, on a device
    type that has them (the kernels index raw memory)."""
    devices = supported_devices()
    return all(
        t.layout == torch.strided
        and t.is_contiguous()
        and t.is_floating_point()
        and t.device.type in devices
        for t in tensors
    )


def by_device_and_dtype(tensors: Sequence[Tensor]) -> list[list[int]]:
    """Indices of ``tensors`` grouped by device and dtype: a kernel call takes one of each."""
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = defaultdict(list)
    for i, t in enumerate(tensors):
        groups[(t.device, t.dtype)].append(i)
    return list(groups.values())


def adam_(decoupled: bool, *args: Any, **kwargs: Any) -> None:
    """``torch._fused_adamw_`` (decoupled weight decay) or ``torch._fused_adam_``."""
    kernel = torch._fused_adamw_ if decoupled else torch._fused_adam_
    _run(kernel, *args, **kwargs)


def sgd_(*args: Any, **kwargs: Any) -> None:
    """``torch._fused_sgd_``."""
    _run(torch._fused_sgd_, *args, **kwargs)


def _run(kernel: Any, *args: Any, **kwargs: Any) -> None:
    if torch.compiler.is_compiling():
        _eagerly(kernel, *args, **kwargs)
    else:  # no wrapper eagerly: it is called once per block
        kernel(*args, **kwargs)


@torch.compiler.disable
def _eagerly(kernel: Any, *args: Any, **kwargs: Any) -> None:
    kernel(*args, **kwargs)
