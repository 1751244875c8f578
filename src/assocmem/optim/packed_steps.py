"""Step counters packed into one vector, so that counting a step is one kernel on the CPU.

Like torch.optim, ``MemoryOptimizer`` keeps each parameter's step count as a 0-d tensor of
its own (``state["step"]``; state dicts load either way). Counting a step is then
``torch._foreach_add_(steps, 1)``, which on the CPU runs one small op per tensor, ~1.5 us
each: 0.46 ms of a 300-tensor model's step, as much as the rest of torch's fused Adam step on
it (one-off, this machine; torch pays it too). An accelerator runs that list in one kernel.

So where every count of a group's step is a plain float32 0-d CPU tensor, :func:`count_step_`
replaces them once by views of one vector (``vector.unbind()``: each state still holds a 0-d
float32 tensor with its own value) and from then on counts with one ``vector.add_(1)``
(~2 us): the same float32 additions, so the same counts. It checks by identity that the
step's counters are still the pack's views, in the same order (~10 us at 300 tensors); when
they are not (a parameter without a gradient this step, a state loaded or replaced, a group
grown), it counts the old way, repacking first if some counter is not in the pack yet (a
repack, ~0.2 ms at 300 tensors, costs less than the per-tensor count it replaces).

A view shares its vector's storage: :func:`unpacked` gives a state dict its own copies (of
every counter, packed or not), so a checkpoint never holds the vector (or, through one view,
all of it) per parameter.
Under ``torch.compile`` the counters are not packed (a compiled step counts as torch does).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

# Below this many counters a pack saves less than its identity check costs.
PACK_FROM = 4


@dataclass
class StepPack:
    """One group's counters as views of ``vector``, in the order they were packed."""

    vector: Tensor
    views: tuple[Tensor, ...]
    members: frozenset[int] = field(init=False)  # ids of the views (they live as long as this)

    def __post_init__(self) -> None:
        self.members = frozenset(map(id, self.views))

    def holds_exactly(self, steps: list[Tensor]) -> bool:
        return len(steps) == len(self.views) and all(map(operator.is_, steps, self.views))

    def holds(self, steps: list[Tensor]) -> bool:
        return all(id(s) in self.members for s in steps)


def _packable(steps: list[Tensor]) -> bool:
    return len(steps) >= PACK_FROM and all(
        type(s) is Tensor
        and s.is_cpu
        and s.dtype == torch.float32
        and s.dim() == 0
        and not s.requires_grad
        for s in steps
    )


def count_step_(
    states: list[dict[str, Any]], steps: list[Tensor], pack: StepPack | None
) -> StepPack | None:
    """Add one to every ``steps[i]`` (``states[i]["step"]``), packing them first where that
    pays (module docstring). Returns the group's pack to keep for the next step."""
    if pack is not None and pack.holds_exactly(steps):
        pack.vector.add_(1)
        return pack
    if torch.compiler.is_compiling() or not _packable(steps) or (pack and pack.holds(steps)):
        torch._foreach_add_(steps, 1)
        return pack
    vector = torch.stack(steps)
    views = vector.unbind()
    for state, view in zip(states, views, strict=True):
        state["step"] = view
    vector.add_(1)
    return StepPack(vector, views)


def unpacked(per_param: dict[str, Any]) -> dict[str, Any]:
    """``per_param`` (a parameter's state) as a new dict whose ``step`` is a copy of its own,
    packed or not (a checkpoint's counter does not move with the next step, and a key added to
    the checkpoint's dict is not added to the optimizer's); the other tensors are the state's
    own, as in torch's state dict, and the state itself is left as it is."""
    step = per_param.get("step")
    return {**per_param, "step": step.clone()} if isinstance(step, Tensor) else dict(per_param)
