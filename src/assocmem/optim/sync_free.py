"""Decisions made on the device instead of the host, so that ``step()`` never waits for it.

On an accelerator, reading a device value on the host (``bool(t)``, ``t.item()``) waits until
the queue has computed it: the host stops issuing work, and the device idles once it has
caught up. Two decisions of a step depend on device values:

- ``nonfinite="skip"``: did any gradient hold NaN/inf? Groups that step through torch's fused
  kernels hand the flag to the kernel (:mod:`assocmem.optim.fused`). The other groups, where
  their preset reads nothing of its state on the host (``Preset.reads_state_on_host``), *step,
  then select*: :func:`snapshot` copies every tensor the step may write, the step runs, and
  :func:`keep_where_skipped_` writes the copies back where the flag is set. ``torch.where``
  copies bits, so a skipped step leaves every bit as it was, even where the step wrote NaN.
- ``delta``'s overflow-safe overlap: whether a tensor's plain sums overflowed. With
  :func:`active`, the preset computes the safe form for every tensor and selects it on the
  device instead of asking the host whether any tensor needs it.

Both cost passes over memory that the host decision does not: the snapshot reads and writes
every written tensor once and the select reads two and writes one (and the snapshot needs
their memory while the step runs); delta's safe form is several passes over ``g`` and ``m``.
On the CPU a host read costs nothing (nothing is queued); on an accelerator which is cheaper,
a wait per step or these passes, was not measured here (no GPU). So ``MemoryOptimizer``
decides on the host by default (``sync_free=False``); ``sync_free=True`` opts in (the tests
do, on the CPU), ``None`` opts in where a gradient lives on an accelerator. docs/api.md
("Host reads per step") has the measured costs.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

# Per thread, whether the step in progress decides on the device. A threading.local (as in
# assocmem.optim.sharded): torch.compile traces its reads without a graph break.
_STEP = threading.local()


@contextlib.contextmanager
def deciding_on_device(on: bool) -> Iterator[None]:
    """Inside, :func:`active` is ``on``: presets make their data-dependent choices on the
    device (compute both, select) rather than reading a flag on the host."""
    outer = active()
    _STEP.on = on
    try:
        yield
    finally:
        _STEP.on = outer


def active() -> bool:
    """Whether the step in progress must not read device values on the host."""
    return getattr(_STEP, "on", False)


def on_accelerator(tensors: Sequence[Tensor]) -> bool:
    """Whether any of ``tensors`` lives off the CPU, where a host read would wait for it."""
    # is_cpu: a flag, where t.device.type builds a device and a string (~0.3 us a tensor)
    return not all(t.is_cpu for t in tensors)


# Device types whose torch build stages host memory as pinned and copies it asynchronously.
PINNED_DEVICES = ("cuda", "xpu")


def host_constants(values: Sequence[float], like: Tensor) -> Tensor:
    """``values`` (numbers known on the host) as a vector of ``like``'s dtype on its device,
    without waiting for the device.

    ``torch.tensor(values, device=...)`` copies from pageable host memory, and torch makes such
    a copy blocking: it synchronises the device's stream (``memcpy_and_sync``), a full stall
    per call. On CUDA (and XPU) the values go through pinned memory with ``non_blocking=True``:
    the copy is queued like a kernel (torch keeps the pinned block until it has run); on other
    devices each value is a fill kernel there. The same numbers every way (each value rounded
    to the dtype as ``torch.tensor`` rounds it).
    """
    if like.device.type == "cpu":
        return torch.tensor(values, dtype=like.dtype)
    if like.device.type in PINNED_DEVICES:
        staged = torch.tensor(values, dtype=like.dtype, pin_memory=True)
        return staged.to(like.device, non_blocking=True)
    # elsewhere (e.g. mps, without a pinned-memory allocator): fill kernels on the device
    return torch.stack([like.new_full((), v) for v in values])


def snapshot(tensors: Sequence[Tensor]) -> list[Tensor]:
    """A copy of each tensor, to be selected back by :func:`keep_where_skipped_`."""
    return [t.clone() for t in tensors]


def keep_where_skipped_(
    tensors: Sequence[Tensor], saved: Sequence[Tensor], skipped: dict[torch.device, Tensor]
) -> None:
    """Where the step was skipped (``skipped[device]``, a 0-d bool), write each saved copy back
    over its tensor, in place; elsewhere leave the step's values. One ``where`` per tensor:
    a select copies bits (a blend ``t + f (old - t)`` would turn a NaN the step wrote into
    NaN either way)."""
    for t, old in zip(tensors, saved, strict=True):
        torch.where(skipped[t.device], old, t, out=t)


def as_conditions(found: dict[torch.device, Tensor]) -> dict[torch.device, Tensor]:
    """The non-finite flags (float ``(1,)`` per device, 0 or 1) as 0-d bool conditions."""
    return {device: flag.reshape(()) > 0 for device, flag in found.items()}
