"""Small tensors of one shape stepped as one stacked tensor: the host's cost per tensor, paid once.

With many small tensors (a deep model's biases and norms) a step is dispatch, not memory
traffic: each tensor costs a dozen calls. Stacking the tensors of one shape, dtype and device
into one tensor per kind (parameters, gradients, each state), stepping the stack with the
same operations along a leading axis and copying the slices back costs a few dozen calls
whatever their number, plus a copy in and out per tensor. Presets whose per-tensor maths is
elementwise with per-tensor sums (``landscape``'s weak form, ``delta``) use it; the sums then
run along the stack's rows instead of one dot product per tensor (float rounding).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from assocmem.optim.indices import grouped

# Below this many elements a tensor's step is dispatch rather than memory traffic, and a copy
# of it costs little.
SMALL = 1 << 14


def stack_groups(tensors: Sequence[Tensor], at_least: int) -> tuple[list[list[int]], list[int]]:
    """``(groups, alone)``: the indices of the small, non-empty tensors of one shape, dtype and
    device that number ``at_least`` or more, one list per group (stepped stacked), and the
    indices of every other tensor, in order (stepped one by one)."""
    keys = [(tuple(t.shape), t.dtype, t.device) if 0 < t.numel() < SMALL else None for t in tensors]
    groups: list[list[int]] = []
    alone: list[int] = []
    for key, index in grouped(keys).items():
        if key is not None and len(index) >= at_least:
            groups.append(index)
        else:
            alone += index
    return groups, sorted(alone)
