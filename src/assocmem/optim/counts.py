"""Step counts as tensors on the device, for steps that must not read them (``sync_free``).

A preset that reads its step count as a Python number (``float(state["step"])``) makes the
host wait for the queue on an accelerator, and a skip decided on the device (step, then
select: :mod:`assocmem.optim.sync_free`) could not take that count back. Under
:func:`assocmem.optim.sync_free.active` the presets that count on the device
(``Preset.counts_on_device``: ``adam``'s foreach and reference paths, muon's Adam fallback,
``learned``, ``deep``, ``cms``'s fast path, ``landscape``'s eager diagonal form) derive their
per-step constants from the counter itself, as torch's ``capturable=True`` Adam does: one
0-d tensor per parameter for a bias correction ``1 - beta^t``. :func:`due` and
:func:`floor_divide` give a write period's mask ``t % P == 0`` and a level's write count the
same way. With ``sync_free`` off every
preset reads the count on the host as before, so their bits and speed are as they were.

Why the same bits as the host path: the host computes each constant in Python floats (IEEE
float64) and a torch op casts it to the tensor's dtype. Here every constant is computed in
float64 by the same sequence of operations, then cast to the tensor's dtype (:func:`like`)
before it meets the tensor, as the host's float would be. Additions, multiplications and
divisions round alike everywhere (IEEE). Two functions do not:

- ``pow``: torch's CPU ``pow`` of a single element calls the C library's, as Python's ``**``
  does (same bits, tested), but its vectorised loop (Sleef) differs from it in the last
  float64 bit for about 1% of exponents. So the counts are never stacked into one vector: each
  stays a 0-d tensor, and the lists go through ``torch._foreach_*`` (one kernel per list on an
  accelerator, one small op per tensor on the CPU), as in torch's capturable Adam.
- ``sqrt`` (Adam's ``sqrt(1 - beta2^t)``): torch's CPU ``sqrt`` of float64 is within an ulp
  but not always the correctly rounded one that Python's ``math.sqrt`` returns (3447 of the
  first 10^6 values of ``1 - 0.999^t`` differ by an ulp; 0.9999: 34995). Rounded to float32,
  none of them differs (measured for ``t <= 10^6`` and beta2 in 0.95, 0.98, 0.99, 0.999,
  0.9999): a float32 constant can differ only where the float64 value lies within an ulp of
  a float32 rounding boundary, about one value in 2^28. So float32 parameters get the host's
  bits; float64 parameters may differ from them by an ulp of that constant, a relative
  ``2^-52`` of the step (about ``1.1e-16``).

On an accelerator ``pow`` and ``sqrt`` are the device's own (within an ulp or two of
float64), with the same consequence. A device without float64 (MPS) computes in float32:
``1 - beta^t`` then carries the rounding of ``beta`` to float32, amplified by
``t beta^t / (1 - beta^t)`` (relative ``1.3e-5`` at ``t = 1``, ``beta = 0.999``), as torch's
capturable Adam does everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def count_dtype(device: torch.device) -> torch.dtype:
    """The dtype per-step constants are computed in: float64 (the host's Python float),
    float32 on a device that has no float64 (MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def as_counts(steps: Sequence[Tensor]) -> list[Tensor]:
    """Each step counter as a 0-d tensor of :func:`count_dtype` on its own device (a copy: the
    constants computed from it may be written in place)."""
    return [s.to(count_dtype(s.device), copy=True).reshape(()) for s in steps]


def corrections(retention: float, counts: Sequence[Tensor]) -> list[Tensor]:
    """``1 - retention^t`` per count (the weight an EMA started at zero has given its values
    after ``t`` writes), computed as the host computes ``1 - retention**t``."""
    out = torch._foreach_pow(retention, list(counts))
    # 1 - x as -(x - 1): both subtractions are exact roundings of the same value, negated.
    torch._foreach_sub_(out, 1)
    torch._foreach_neg_(out)
    return list(out)


def quotients(numerator: float, denominators: Sequence[Tensor]) -> list[Tensor]:
    """``numerator / d`` per ``d``, one IEEE division each (a tensor's ``__rtruediv__`` would
    multiply by the reciprocal: two roundings)."""
    out = torch._foreach_mul(list(denominators), 0.0)
    torch._foreach_add_(out, numerator)
    torch._foreach_div_(out, list(denominators))
    return list(out)


def like(constants: Sequence[Tensor], tensors: Sequence[Tensor]) -> list[Tensor]:
    """Each constant cast to its tensor's dtype and device, as a Python float is cast when an
    op takes it (so that a 0-d tensor does not raise a 0-d parameter's op to float64)."""
    return [
        c if c.dtype == t.dtype and c.device == t.device else c.to(t.dtype).to(t.device)
        for c, t in zip(constants, tensors, strict=True)
    ]


def due(counts: Sequence[Tensor], period: int, offset: int = 0) -> list[Tensor]:
    """``(t - offset) % period == 0`` per count, as 0-d bools: a write period's mask, for
    ``torch.where`` instead of a branch. Counts are whole numbers below 2^53 (float64) or
    2^24 (float32), so the remainder is exact."""
    shifted = torch._foreach_sub(list(counts), offset) if offset else list(counts)
    return [torch.remainder(t, period) == 0 for t in shifted]


def floor_divide(counts: Sequence[Tensor], period: int) -> list[Tensor]:
    """``t // period`` per count, as the host's integer division (torch's floor division
    takes the remainder first, so it is exact for whole counts)."""
    return [torch.div(t, period, rounding_mode="floor") for t in counts]
