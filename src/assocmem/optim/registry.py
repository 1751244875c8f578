"""The preset registry: every ``MemoryOptimizer(memory=NAME)`` is an entry here.

A preset is the maths of one optimizer-as-memory, separated from the torch plumbing in
``MemoryOptimizer`` (gradients, weight decay, ``maximize``, non-finite policy, step counters,
state_dict). It supplies:

- ``hyper``: its hyperparameters with defaults and validators;
- ``init_state``: the memory for one parameter (plain tensors, so ``state_dict`` saves them);
- ``reference_step``: one parameter, written straight from the equations with
  :mod:`assocmem.memory` writes and reads (``foreach=False``);
- ``foreach_step``: the fast path over a whole param group; tests hold it equal to the reference;
- ``compiled_step`` (optional): a fast path fused by ``torch.compile``, run when a group sets
  ``compile=True``; tests hold it equal to the reference too;
- ``fused_step`` (optional, with ``fuses``): a fast path in torch's fused kernels, which takes
  the raw gradients and the non-finite flag itself (so ``nonfinite="skip"`` reads nothing on
  the host); tests hold it equal to torch's fused optimizer and to the reference;
- ``reads_state_on_host`` (optional, default yes): whether a step reads its state as a Python
  number; a preset that does not can skip a non-finite step on the device (step, then select)
  and keeps its step counter there;
- ``counts_on_device`` (optional, default no): whether, under ``sync_free``, the step takes its
  count as a device tensor instead (:mod:`assocmem.optim.counts`) and reads nothing on the
  host; such a preset then skips on the device too, its counter on the parameter's device;
- ``check_state`` (optional): what a loaded state must satisfy beyond the keys, shapes and
  finite values ``load_state_dict`` checks for every preset (``non_negative_state`` names the
  entries that must be ``>= 0``, e.g. a second moment).

Both steps receive the step count already incremented (``state["step"]``, a float tensor like
torch's), gradients already negated for ``maximize`` and L2-decayed when decay is coupled, and
only real fp32/fp64 tensors with at least one element: ``MemoryOptimizer`` steps a complex
parameter as its ``torch.view_as_real`` view, an fp16/bf16 one as an fp32 copy (written back
after the step), and skips empty ones.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from assocmem.optim.validate import Check

State = dict[str, Any]
Group = dict[str, Any]


@dataclass(frozen=True)
class Hyper:
    """A hyperparameter: its default, a validator, and one line of documentation."""

    default: Any
    check: Check
    doc: str = ""


class Preset:
    """Base class of a preset; subclasses are registered with :func:`register`."""

    name: ClassVar[str]
    hyper: ClassVar[dict[str, Hyper]] = {}
    # State entries that must hold no negative value (second moments, sums of squares).
    non_negative_state: ClassVar[tuple[str, ...]] = ()
    # Why torch.compile(opt.step) is refused for this preset (it would not give the eager
    # numbers), or None where it does (tests/optim/test_compile_step.py).
    uncompilable: ClassVar[str | None] = None

    def init_state(self, param: Tensor, group: Group) -> State:
        raise NotImplementedError

    def reference_step(self, param: Tensor, grad: Tensor, state: State, group: Group) -> None:
        raise NotImplementedError

    def foreach_step(
        self, params: list[Tensor], grads: list[Tensor], states: list[State], group: Group
    ) -> None:
        """Fast path; the default runs the reference per tensor."""
        for param, grad, state in zip(params, grads, states, strict=True):
            self.reference_step(param, grad, state, group)

    def compiled_step(
        self, params: list[Tensor], grads: list[Tensor], states: list[State], group: Group
    ) -> None:
        """Fast path fused by ``torch.compile`` (``compile=True``); only some presets have one."""
        raise NotImplementedError(f"memory={self.name!r} has no compiled path")

    def fuses(self, group: Group) -> bool:
        """Whether :meth:`fused_step` can step this group's configuration (default: no)."""
        return False

    def fused_step(
        self,
        params: list[Tensor],
        grads: list[Tensor],
        states: list[State],
        group: Group,
        found_inf: dict[Any, Tensor] | None,
    ) -> None:
        """The fast path in torch's fused kernels (:mod:`assocmem.optim.fused`), run instead of
        :meth:`foreach_step` where :meth:`fuses` and the tensors are dense and contiguous.

        Unlike the other steps it gets the raw gradients and applies ``maximize`` and weight
        decay itself (inside the kernel), and ``found_inf`` (a 0/1 flag per device, or
        ``None``): where the flag is 1 it must leave every parameter and state tensor untouched,
        so that ``nonfinite="skip"`` needs no host read. ``state["step"]`` lives on the
        parameter's device where the group fuses, as in torch's fused optimizers.
        """
        raise NotImplementedError(f"memory={self.name!r} has no fused path")

    def reads_state_on_host(self, param: Tensor, group: Group) -> bool:
        """Whether stepping ``param`` reads any of its state as a Python number (the step
        count for a bias correction or a write period, a host-side flag). Default: yes, the
        safe answer.

        Where it does not, its ``step`` counter lives on the parameter's device, and
        ``nonfinite="skip"`` can skip a step there without a host read (step, then select:
        :mod:`assocmem.optim.sync_free`). Where it does, a skip decided on the device could not
        keep that host state as it was, so the flag is read on the host.
        """
        return True

    def squares_grads(self, group: Group) -> bool:
        """Whether the fast path reads ``||g||^2`` of each whole gradient it is handed through
        :func:`assocmem.optim.grad_norms.squared_norm` (default: no). Where it does, the CPU
        non-finite check computes that norm for the step from a smaller size on
        (:data:`assocmem.optim.grad_norms.REUSED`) instead of reading the gradient once more
        in torch's check kernel."""
        return False

    def counts_on_device(self, param: Tensor, group: Group) -> bool:
        """Whether, while :func:`assocmem.optim.sync_free.active`, stepping ``param`` reads
        none of its state on the host after all: it derives what it would read (bias
        corrections, write periods) from its ``step`` counter as tensor ops
        (:mod:`assocmem.optim.counts`). Default: no.

        Only consulted where :meth:`reads_state_on_host` is true. Where it holds, an optimizer
        with ``sync_free`` on keeps the counter on the parameter's device and skips a
        non-finite step there (step, then select); with ``sync_free`` off the preset reads
        its count on the host as before, and the counter stays on the CPU.
        """
        return False

    # Whether the local path (``shards_locally``) gathers a tensor's rows across ranks
    # (``sharded.gather_rows``: muon's Newton-Schulz on the whole matrix), which reads rows
    # sharded over one mesh dimension only; rows sharded over several (FSDP over tensor
    # parallel's ``Shard(0)``) are then stepped the gathered way.
    gathers_rows: ClassVar[bool] = False

    def shards_locally(self, group: Group) -> bool:
        """Whether the fast path steps an FSDP2-sharded tensor from this rank's rows alone.

        True only for a preset whose fast path is elementwise, or completes every whole-tensor
        quantity with :func:`assocmem.optim.sharded.all_sum`; otherwise (the default, always
        correct) ``MemoryOptimizer`` all-gathers each sharded tensor and its state to step it.
        """
        return False

    @classmethod
    def compiles(cls) -> bool:
        """Whether the preset has a :meth:`compiled_step`."""
        return cls.compiled_step is not Preset.compiled_step

    def check_group(self, group: Group) -> None:
        """Cross-argument checks beyond the per-argument validators (override if needed)."""

    def loaded_group(self, loaded: Group, live: Group) -> Group:
        """The group ``load_state_dict`` takes from a state dict's ``loaded`` over the
        optimizer's ``live`` one, before :meth:`check_group` checks it: the checkpoint's keys
        (as in torch) by default. A preset whose group names something outside the state
        (a file that may have moved since) reconciles the two here."""
        return loaded

    def check_step(self, params: list[Tensor], state: Mapping[Tensor, State], group: Group) -> None:
        """Raise if ``group`` cannot be stepped now, before the step changes anything (its step
        counts, decay, memories): e.g. a file the preset reads at every step went missing.
        ``params``: the group's parameters with a gradient; ``state``: the optimizer's
        per-parameter states (a parameter not stepped yet has none). Checks nothing by
        default; called once per group and step, so keep it cheap."""

    def check_param(self, param: Tensor, group: Group) -> str | None:
        """Why ``param`` (its dtype, shape) cannot be stepped with ``group``, or ``None``.

        Checked when a group is added and again before a parameter's first step (a module's
        ``.to(dtype)`` changes its parameters in place after the optimizer was built).
        """
        return None

    def check_state(self, state: State, group: Group) -> str | None:
        """Why a loaded per-parameter ``state`` cannot be stepped with ``group``, or ``None``.

        Called by ``load_state_dict`` after the generic checks (keys, shapes, floating and
        finite tensors, a whole ``step >= 0``). The default checks ``non_negative_state``;
        override to add invariants (and call ``super()``).
        """
        for key in self.non_negative_state:
            if key in state and bool((state[key] < 0).any()):
                return f"{key!r} holds negative values (it is a sum of squares)"
        return None


_REGISTRY: dict[str, Preset] = {}


def register(cls: type[Preset]) -> type[Preset]:
    """Class decorator adding a preset to the registry under ``cls.name``."""
    if cls.name in _REGISTRY:
        raise ValueError(f"preset {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls()
    return cls


def get_preset(name: str) -> Preset:
    """The preset registered as ``name``; an unknown name lists the available ones."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown memory {name!r}; available memories: {', '.join(available_memories())}"
        ) from None


def available_memories(pattern: str = "*") -> list[str]:
    """Names of the registered presets, sorted, optionally filtered by a glob ``pattern``."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))
