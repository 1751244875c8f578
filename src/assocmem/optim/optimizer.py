"""``MemoryOptimizer``: every preset of the registry behind one ``torch.optim.Optimizer``."""

from __future__ import annotations

import contextlib
import math
import operator
import os
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator
from copy import deepcopy
from itertools import chain
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from assocmem.optim import (
    fused,
    grad_norms,
    packed_steps,
    sharded,
    sync_free,
    torch_state,
    validate,
)
from assocmem.optim.indices import grouped
from assocmem.optim.registry import Group, Preset, available_memories, get_preset
from assocmem.optim.stacks import SMALL

# Options every preset shares; the preset's own hyperparameters come from its registry entry.
_COMMON = {
    "lr": validate.learning_rate,
    "weight_decay": validate.non_negative,
    "decoupled_weight_decay": validate.boolean,
    "maximize": validate.boolean,
    "foreach": lambda x: (
        None if x is None or isinstance(x, bool) else f"must be a bool or None, got {x!r}"
    ),
    "compile": validate.boolean,
}
NONFINITE_POLICIES = ("skip", "raise", "ignore")
# torch.optim.Adam's options that pick its kernels or a variant no preset has, with the value
# that turns each off: accepted at it (a config written for torch.optim.Adam spells them out,
# ``amsgrad: false``) and dropped, refused at any other value (what it would ask of us).
_TORCH_OFF = {
    "amsgrad": (False, "no preset keeps AMSGrad's running maximum of the second moment"),
    "fused": (None, "the preset picks its kernels (adam takes torch's fused one where it can)"),
    "capturable": (False, "see sync_free= for steps without host reads on an accelerator"),
    "differentiable": (
        False,
        "steps are not differentiable through (torch.func for meta-learning)",
    ),
}
# Stepped through an fp32 master copy: fp16 cannot hold eps = 1e-8 or a squared gradient above
# 256, bf16's 8-bit mantissa loses the sums (norms) the memories are built from, and steps
# below half an ulp of the parameter vanish, which leaves landscape's secant pairs
# s = W_t - W_{t-1} mostly zero (its bf16 step kept cosine 0.1-0.3 to the fp32 one).
LOW_PRECISION = (torch.float16, torch.bfloat16)
MASTER = "master_param"
SKIPPED = "skipped_steps"  # the optimizer-wide count, also saved in each param group


class MemoryOptimizer(Optimizer):
    r"""An optimizer whose state is an associative memory over gradients.

    ``memory`` names a preset (``assocmem.available_memories()``); each preset writes the
    current gradient into its memory and steps with what it reads back (docs/theory.md has the
    equations). It is a regular ``torch.optim.Optimizer``: param groups (each may even name its
    own ``memory``), ``add_param_group``, ``step(closure)``, ``zero_grad``, ``state_dict`` and
    every ``torch.optim.lr_scheduler`` (``group["lr"]`` is read at every step).

    Args:
        params: parameters or param-group dicts.
        memory: preset name, e.g. ``"adam"``, ``"momentum"``, ``"delta"``, ``"muon"``.
        lr: step size.
        weight_decay: decay coefficient. With ``decoupled_weight_decay=True`` (default, AdamW
            semantics) ``W <- W * (1 - lr * weight_decay)`` before the memory step; with
            ``False`` it is L2, ``g <- g + weight_decay * W`` before the write (torch's
            ``SGD``/``Adam`` semantics).
        maximize: ascend instead of descend (the gradient is negated before the write).
        foreach: ``True``/``None`` the fast multi-tensor path, ``False`` the per-tensor reference
            written from the equations. Both give the same numbers to rounding at every step
            (tested); a long run amplifies that rounding where the update is chaotic in its
            inputs (``learned``'s MLP: 7e-7 apart at step 20, 4e-2 at step 50 on a tiny net).
        compile: ``True`` runs the preset's update fused by ``torch.compile`` (one pass per
            tensor; presets with ``Preset.compiles()``: ``cms`` without Newton-Schulz, ``delta``,
            ``landscape`` diagonal and weak). The
            first step compiles (~15 s cold on a 2-core CPU); same numbers to float rounding.
        nonfinite: what to do when any gradient holds NaN/inf: ``"skip"`` (default) leaves
            every parameter and memory untouched and counts the step in ``skipped_steps``
            (where it is decided: ``sync_free``);
            ``"raise"`` raises ``FloatingPointError`` (also untouched); ``"ignore"`` does no
            check (fastest; NaN then propagates as in torch.optim).
        sync_free: whether ``step()`` may read device values on the host (each read makes the
            host wait for an accelerator's queue). ``False`` (default): the non-finite skip
            reads one flag per device and step, except in groups whose fused kernel takes it
            (``adam``, ``momentum``), and ``delta`` asks once whether an overlap needs its
            overflow-safe form; on the CPU these reads cost nothing. ``True``: no read where
            the presets allow it: the other groups step, then select the old values where the
            flag is set, and ``delta`` selects its overflow-safe overlap on the device, at the
            price of extra passes over the state every step (measured on the CPU: ``delta``
            5-6x, ``momentum`` off its kernel 1.8x at 6M parameters; docs/api.md). Opt in on
            an accelerator when a wait per step costs more than that (not measured: no GPU
            here). ``None``: ``True`` when a gradient lives on an accelerator, else ``False``.
            ``adam`` off its fused kernel and muon's Adam fallback then take their step count
            as a device tensor (``assocmem.optim.counts``, torch's capturable form); ``cms``,
            ``deep``, ``landscape`` and ``learned`` read theirs on the host, so they still
            read the flag (docs/api.md, "Host reads per step").
        **hyper: the preset's hyperparameters (see ``MemoryOptimizer.hyperparameters(memory)``).

    Parameters of any floating dtype work: fp32/fp64 are stepped as they are; fp16/bf16 through
    an fp32 master copy kept in the state (``state["master_param"]``, 4 bytes per coordinate),
    with fp32 state: the parameter is the fp32 trajectory rounded to its dtype, and a change
    made to it outside the optimizer is picked up at the next step. A complex parameter is
    stepped as its real view ``torch.view_as_real(p)`` (so it equals optimizing that real
    view; its state is real). Empty parameters are not moved. Parameters sharded by FSDP2
    (``fully_shard``, ``DTensor``) are stepped shard by shard, and the state goes through
    ``torch.distributed.checkpoint`` (docs/api.md, "Sharded training").

    Example:
        >>> import torch
        >>> from assocmem import MemoryOptimizer
        >>> model = torch.nn.Linear(4, 1)
        >>> opt = MemoryOptimizer(model.parameters(), memory="adam", lr=1e-2)
        >>> loss = model(torch.randn(8, 4)).pow(2).mean()
        >>> loss.backward()
        >>> opt.step()
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        memory: str = "adam",
        lr: float = 1e-3,
        *,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = True,
        maximize: bool = False,
        foreach: bool | None = None,
        compile: bool = False,
        nonfinite: str = "skip",
        sync_free: bool | None = False,
        **hyper: Any,
    ) -> None:
        preset = get_preset(memory)
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
        if sync_free is not None and not isinstance(sync_free, bool):
            raise ValueError(f"sync_free must be a bool or None, got {sync_free!r}")
        _drop_torch_off_options(hyper)
        _reject_unknown(hyper, preset, memory)
        defaults = {name: h.default for name, h in preset.hyper.items()}
        defaults.update(_plain_values(hyper))
        defaults.update(
            memory=memory,
            lr=lr,
            weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay,
            maximize=maximize,
            foreach=foreach,
            compile=compile,
        )
        # Every argument is checked before any parameter is looked at, as torch.optim does.
        _check_group(defaults, preset)
        self.nonfinite = nonfinite
        self.sync_free = sync_free
        self.skipped_steps = 0
        # per group (by id): its step counters packed into one vector (packed_steps)
        self._step_packs: dict[int, packed_steps.StepPack] = {}
        super().__init__(params, defaults)

    @property
    def skipped_steps(self) -> int:
        """Steps skipped for a non-finite gradient. Counted on the device where the skip is
        decided there (the fused presets): reading it waits for the steps queued so far."""
        on_device = self.__dict__.get("_skipped_on_device")
        return self._skipped_on_host + (int(on_device) if on_device is not None else 0)

    @skipped_steps.setter
    def skipped_steps(self, value: int) -> None:
        self._skipped_on_host = int(value)
        self._skipped_on_device: Tensor | None = None

    @staticmethod
    def hyperparameters(memory: str) -> dict[str, Any]:
        """The preset's own hyperparameters and their defaults."""
        return {name: h.default for name, h in get_preset(memory).hyper.items()}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; a group naming another ``memory`` gets that preset's defaults.

        Like torch, a group may carry extra keys of its own (e.g. ``"name"``), but a
        hyperparameter that belongs to a different preset (``betas`` on a ``momentum`` group)
        is a mistake and raises ``ValueError``.
        """
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        param_group = _plain_values(param_group)
        memory = param_group.get("memory", self.defaults["memory"])
        preset = get_preset(memory)
        _reject_foreign(param_group, preset, memory)
        if memory != self.defaults["memory"]:
            param_group = {**self.hyperparameters(memory), **param_group}
        params = param_group.get("params")
        if not isinstance(params, (Tensor, set)) and params is not None:
            param_group = {**param_group, "params": list(params)}  # a generator is read once
        # Checked before the group joins, so a refused group leaves the optimizer as it was.
        merged = {**self.defaults, **param_group}
        _check_group(merged, preset)
        tensors = _tensors(param_group.get("params"))
        for p in tensors:
            _check_param(p, merged, preset)
        _refuse_duplicates(tensors)
        super().add_param_group(param_group)
        # torch fills a new group from ``self.defaults``, the default preset's hyperparameters
        # among them; a group of another preset must not carry those (a ``momentum`` key on an
        # ``adam`` group would be cycled by OneCycleLR and never read).
        added = self.param_groups[-1]
        for name in _foreign_names(preset):
            added.pop(name, None)

    def __getstate__(self) -> dict[str, Any]:
        # torch's keeps defaults, state and param_groups: a deepcopy or pickle of the
        # optimizer reset the constructor's non-group settings to their defaults (a copy of a
        # nonfinite="raise" optimizer skipped NaN steps silently)
        state = super().__getstate__()
        state.update(
            nonfinite=self.nonfinite, sync_free=self.sync_free, skipped_steps=self.skipped_steps
        )
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("nonfinite", "skip")
        self.__dict__.setdefault("sync_free", False)
        self.__dict__.setdefault("_skipped_on_host", self.__dict__.pop("skipped_steps", 0))
        self.__dict__.setdefault("_skipped_on_device", None)
        self.__dict__.setdefault("_step_packs", {})
        for per_param in self.state.values():  # a plain-number step, as torch.optim converts it
            if "step" in per_param and not isinstance(per_param["step"], Tensor):
                per_param["step"] = _step_tensor(per_param["step"])

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Write the current gradients into the memories and step; returns the closure's loss."""
        if torch.compiler.is_compiling() and _any_sharded(self.param_groups):
            return _step_eagerly(self, closure)
        return self._step(closure)

    def _step(self, closure: Callable[[], float] | None) -> float | None:
        """:meth:`step`'s body (torch wraps ``step`` itself with the step hooks, which a step
        run eagerly from a compiled one must not call twice)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        gathered = [_with_grads(group) for group in self.param_groups]
        if torch.compiler.is_compiling():  # read while dynamo traces; eagerly never called
            reason = _uncompilable(self.param_groups, gathered, self.state)
            if reason is not None:
                _refuse(reason)
        # A group that cannot step now says so before anything is counted, decayed or written
        # (a step that raised halfway left the step counts and decayed weights behind).
        for group, (params, _) in zip(self.param_groups, gathered, strict=True):
            if params:
                get_preset(group["memory"]).check_step(params, self.state, group)
        if not self.state and _makes_state_only(self.param_groups, gathered):
            # torch.distributed.checkpoint's get_optimizer_state_dict on an optimizer that has
            # not stepped makes its state with a step at lr 0 on zero gradients
            # (_init_optim_state). The parameters stayed, but the memories counted that step and
            # wrote the zeros: a run saved before its first step drifted from one never saved
            # (`learned` by 0.5 in 4 steps, as far as it moved in all). Only the state is made.
            for group, (params, _) in zip(self.param_groups, gathered, strict=True):
                self._init_states(group, params)
            return loss
        all_grads = [_real(g) for _, grads in gathered for g in grads]
        on_device = self.sync_free
        if on_device is None:  # a host read costs nothing on the CPU: nothing is queued
            on_device = sync_free.on_accelerator(all_grads)
        with grad_norms.kept_for_step(), _without_autocast(all_grads):
            return self._check_and_step(gathered, all_grads, on_device, loss)

    def _check_and_step(
        self,
        gathered: list[tuple[list[Tensor], list[Tensor]]],
        all_grads: list[Tensor],
        on_device: bool,
        loss: float | None,
    ) -> float | None:
        found = None
        if self.nonfinite != "ignore":
            reused = _norms_the_step_reads(self.param_groups, gathered)
            flags = _nonfinite_flags(all_grads, host_reads=not on_device, reused=reused)
            if (
                flags
                and self.nonfinite == "skip"
                # On the CPU the host decides even for the kernels: a read of one number waits
                # for nothing there, where the flag's broadcast, the counters' corrections and
                # the device-side skip count cost (at 0.1M parameters 45 us of `adam`'s 220 us
                # step on the bench_step model, interleaved).
                and (on_device or sync_free.on_accelerator(all_grads))
                and _skips_on_device(self.param_groups, gathered, select=on_device)
            ):
                # The kernels read the flag on the device, and the other groups select their
                # old values where it is set; nothing waits for the gradients here.
                found = _on_every_device(flags)
                self._count_skipped(found)
            elif any(bool(f) for f in flags):  # decided on the host: one read per device
                self._skipped_on_host += 1
                if self.nonfinite == "raise":
                    raise FloatingPointError(
                        "non-finite gradient; parameters and their states were left untouched "
                        "(the step is counted in skipped_steps)"
                    )
                return loss
        with sync_free.deciding_on_device(on_device):
            for group, (params, grads) in zip(self.param_groups, gathered, strict=True):
                if params:
                    self._step_group(group, params, grads, found)
        return loss

    # Run eagerly: dynamo drops attribute writes made on the optimizer inside a compiled
    # step, so under torch.compile(opt.step) the skip happened and was never counted.
    @torch.compiler.disable
    def _count_skipped(self, found: dict[torch.device, Tensor]) -> None:
        flag = next(iter(found.values()))
        skipped = flag.reshape(()).to(torch.int64)
        if self._skipped_on_device is not None:
            skipped = skipped + self._skipped_on_device.to(flag.device)
        self._skipped_on_device = skipped

    def _init_states(self, group: Group, params: list[Tensor]) -> None:
        """The state of each of ``params`` that has none, as its first step makes it."""
        preset = get_preset(group["memory"])
        for p in params:
            if not self.state[p]:
                _check_param(p, group, preset)
                self.state[p].update(_first_state(preset, p, group, self.sync_free))

    def _step_group(
        self,
        group: Group,
        params: list[Tensor],
        grads: list[Tensor],
        found: dict[torch.device, Tensor] | None = None,
    ) -> None:
        preset = get_preset(group["memory"])
        states, work = [], []
        for p in params:
            state = self.state[p]
            if not state:
                self._init_states(group, [p])
            elif (MASTER in state) != (p.dtype in LOW_PRECISION):
                _match_precision(state, _real(p))  # model.half() / .float() after a step
            elif MASTER in state:  # the parameter may have been changed outside the optimizer
                _resync_master(state[MASTER], _real(p))
            states.append(state)
            work.append(state.get(MASTER, _real(p)))
        packs = self._step_packs
        pack = packed_steps.count_step_(states, [s["step"] for s in states], packs.get(id(group)))
        if pack is not None:
            packs[id(group)] = pack
        if found is not None:  # a skipped step does not count, as in torch's fused Adam
            steps = [s["step"] for s in states]
            torch._foreach_sub_(steps, [_flag_on(found, s.device).reshape(()) for s in steps])
        # An empty tensor has nothing to step (and a mean over it is NaN): the preset never
        # sees it; it keeps its empty state and its step count.
        if all(map(Tensor.numel, work)):  # the usual case, without a list copy per kind
            kept, kept_work, kept_states = range(len(work)), work, states
            kept_grads = _working_all(grads)
        else:
            kept = [i for i, w in enumerate(work) if w.numel() > 0]
            if not kept:
                return
            kept_work = [work[i] for i in kept]
            kept_grads = [_working(grads[i]) for i in kept]
            kept_states = [states[i] for i in kept]
        if isinstance(group["lr"], Tensor):  # torch accepts a tensor lr; presets take a float
            group = {**group, "lr": group["lr"].item()}
        for key, index in sharded.by_layout(kept_work):
            ws, gs, ss = ([xs[j] for j in index] for xs in (kept_work, kept_grads, kept_states))
            if key is None:
                # one device at a time: a preset's per-tensor sums are stacked into one
                # vector (delta's overlaps), which cannot hold a CPU and a CUDA tensor
                for on in _by_device(ws):
                    self._step_tensors(
                        group, preset, *([xs[j] for j in on] for xs in (ws, gs, ss)), found
                    )
            elif (
                group["foreach"] is not False
                and preset.shards_locally(group)
                and sharded.steps_locally(key)
                and (not preset.gathers_rows or sharded.row_mesh_dims(key) <= 1)
            ):
                local_ws = [sharded.local(w) for w in ws]
                with sharded.reducing(key, list(zip(local_ws, ws, strict=True))):
                    self._step_tensors(
                        group,
                        preset,
                        local_ws,
                        [sharded.local(g) for g in gs],
                        [sharded.local_state(s) for s in ss],
                        found,
                    )
            else:
                self._step_gathered(group, preset, ws, gs, ss, found)
        for i in kept:
            if MASTER in states[i]:
                _real(params[i]).copy_(states[i][MASTER])

    def _step_gathered(
        self,
        group: Group,
        preset: Preset,
        params: list[Tensor],
        grads: list[Tensor],
        states: list[dict[str, Any]],
        found: dict[torch.device, Tensor] | None = None,
    ) -> None:
        """Sharded tensors whose memory needs them whole: all-gathered one at a time (so at most
        one whole tensor's state is held), stepped as in one process, each rank keeping its
        slice (docs/api.md, "Sharded training")."""
        for p, g, state in zip(params, grads, states, strict=True):
            whole_state = sharded.gathered_state(state)
            # An fp16/bf16 parameter steps its fp32 master, which is a state entry itself.
            same = [k for k, v in state.items() if v is p]
            whole_p = whole_state[same[0]] if same else p.full_tensor()
            self._step_tensors(group, preset, [whole_p], [g.full_tensor()], [whole_state], found)
            sharded.keep_shard(p, whole_p)
            for key, value in state.items():
                if sharded.is_sharded(value):
                    sharded.keep_shard(value, whole_state[key])

    def _step_tensors(
        self,
        group: Group,
        preset: Preset,
        params: list[Tensor],
        grads: list[Tensor],
        states: list[dict[str, Any]],
        found: dict[torch.device, Tensor] | None = None,
    ) -> None:
        if group["compile"] and group["foreach"] is not False:
            # Small tensors take the eager fast path: compiled, their step is guards and calls
            # (and every tensor unrolled into the graph lengthens the cold compile). A 0-d one
            # always does: torch 2.13's inductor miscompiles the in-place updates of a 0-d
            # float64 tensor in landscape's compiled bodies (it stored a wrong previous
            # gradient and parameter, measured with COMPILED_FROM = 0; float32 was right).
            eagerly = [_stepped_eagerly(p) for p in params]
            small = [i for i, e in enumerate(eagerly) if e]
            if small:
                eager = {**group, "compile": False}
                chosen = ([xs[i] for i in small] for xs in (params, grads, states))
                self._step_tensors(eager, preset, *chosen, found)
                large = [i for i, e in enumerate(eagerly) if not e]
                if not large:
                    return
                params, grads, states = ([xs[i] for i in large] for xs in (params, grads, states))
        if (
            group["foreach"] is not False
            and not group["compile"]
            and preset.fuses(group)
            and fused.fusable(params, alike=_grads_and_state(grads, states))
        ):
            preset.fused_step(params, grads, states, group, found)
            return
        if found is None:
            self._step_unfused(group, preset, params, grads, states)
        elif sync_free.active() and not any(_reads_on_host(preset, p, group, True) for p in params):
            # Step, then select the old values where the flag is set (sync_free.py).
            written = _written_tensors(params, states)
            saved = sync_free.snapshot(written)
            self._step_unfused(group, preset, params, grads, states)
            sync_free.keep_where_skipped_(written, saved, sync_free.as_conditions(found))
        elif not any(bool(f) for f in found.values()):
            # A fused group's tensors the kernel cannot take (non-contiguous), with sync_free
            # off or a preset that reads its step count on the host: the flag is read on the
            # host after all.
            self._step_unfused(group, preset, params, grads, states)

    def _step_unfused(
        self,
        group: Group,
        preset: Preset,
        params: list[Tensor],
        grads: list[Tensor],
        states: list[dict[str, Any]],
    ) -> None:
        """Maximize, weight decay and the preset's own step (reference, compiled or foreach)."""
        if group["maximize"]:
            grads = torch._foreach_neg(grads)
        wd, lr = group["weight_decay"], group["lr"]
        if wd != 0:
            if group["decoupled_weight_decay"]:
                torch._foreach_mul_(params, 1 - lr * wd)
            else:
                grads = torch._foreach_add(grads, params, alpha=wd)
        # the two cases above hand the preset new gradient tensors: _replaces_grads
        if group["foreach"] is False:
            for p, g, s in zip(params, grads, states, strict=True):
                preset.reference_step(p, g, s, group)
        elif group["compile"]:
            preset.compiled_step(params, grads, states, group)
        else:
            preset.foreach_step(params, grads, states, group)

    def state_dict(self) -> dict[str, Any]:
        # torch's state_dict runs the post-hooks last; ours finishes the dict first, so a hook
        # sees (and may restructure) the dict this method returns, as with torch.optim.
        hooks = self._optimizer_state_dict_post_hooks
        self._optimizer_state_dict_post_hooks = OrderedDict()
        try:
            sd = super().state_dict()
        finally:
            self._optimizer_state_dict_post_hooks = hooks
        # a packed counter is a view of its group's vector: the checkpoint gets its own copies
        # (of every counter, and a dict per parameter, so the saved counts stay put)
        sd["state"] = {k: packed_steps.unpacked(v) for k, v in sd["state"].items()}
        sd["assocmem"] = {"skipped_steps": self.skipped_steps}
        # torch.distributed.checkpoint's get/set_optimizer_state_dict keep only "state" and
        # "param_groups": the count rides along in every group too, so a DCP resume keeps it.
        for group in sd["param_groups"]:
            group[SKIPPED] = self.skipped_steps
        for post_hook in hooks.values():
            result = post_hook(self, sd)
            if result is not None:
                sd = result
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict saved by an optimizer with the same groups, presets and shapes.

        Everything is checked before anything is replaced: the groups' hyperparameters by the
        validators ``__init__`` uses, each state's keys and shapes, that its tensors are finite
        floating tensors, its ``step`` a whole number ``>= 0`` (a plain number is accepted and
        made a tensor, as torch does), the preset's own invariants (``Preset.check_state``, e.g.
        no negative second moment) and the ``assocmem`` entry (``skipped_steps``). A refusal
        raises ``ValueError`` naming the group, parameter and key, and leaves the optimizer
        exactly as it was, so a mismatched or corrupt checkpoint never silently resumes. State
        tensors are cast to the dtype and device the optimizer would create them with (the
        parameter's, fp32 for fp16/bf16 parameters; a checkpoint moved between fp32 and
        fp16/bf16 parameters gets or loses the fp32 master copy). A sum of squares that a
        finite gradient overflowed to ``+inf`` loads (torch's Adam reaches it too).

        A state dict of ``torch.optim.Adam``/``AdamW`` loads into groups of ``memory="adam"``
        and one of ``torch.optim.SGD`` into ``memory="momentum"``, the presets that equal them
        (``assocmem.optim.torch_state``): a run switches optimizers without losing its moments.
        """
        state_dict = dict(state_dict)  # shallow, like torch's: hooks may edit it
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        # Under FSDP2 each rank checks its own shards: all ranks refuse together, or a caller
        # that catches the refusal goes on with ranks holding different states (and a rank that
        # raised alone left the others waiting at the next collective).
        refusal: Exception | None = None
        try:
            state, groups, skipped = self._checked_state_dict(state_dict)
        except Exception as e:  # noqa: BLE001 (re-raised below, after the ranks agree)
            refusal = e
        params = [p for group in self.param_groups for p in group["params"]]
        if sharded.any_rank(refusal is not None, params):
            if refusal is not None:
                raise refusal
            raise ValueError(
                "another rank refused this state dict (its own shards; its error says why): "
                "nothing was loaded on any rank"
            )
        # Nothing was changed above; from here on nothing can fail.
        self.__setstate__({"state": state, "param_groups": groups})
        self.skipped_steps = skipped
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def _checked_state_dict(
        self, state_dict: dict[str, Any]
    ) -> tuple[defaultdict[Tensor, dict[str, Any]], list[Group], int]:
        """``state_dict``'s per-parameter state, param groups and skipped-step count, checked
        and cast (:meth:`load_state_dict`); raises ``ValueError`` and changes nothing."""
        if torch_state.is_torch_state_dict(state_dict):
            state_dict = torch_state.translated(
                state_dict, [group["memory"] for group in self.param_groups]
            )
        skipped = _skipped_steps(_skipped_entry(state_dict))
        for key in ("state", "param_groups"):
            if not isinstance(state_dict.get(key), (dict, list) if key == "param_groups" else dict):
                raise ValueError(f"state dict has no valid {key!r} entry")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"state dict has {len(saved_groups)} param groups, optimizer has "
                f"{len(self.param_groups)}"
            )
        # One deep copy of all groups, as torch makes: groups that shared an object when saved
        # (a tensor lr they inherited from the constructor, which a scheduler updates in place)
        # share its copy; copied group by group, a resumed run's groups went separate ways.
        copied = deepcopy(saved_groups)
        groups = [
            _loaded_group(i, saved, group)
            for i, (saved, group) in enumerate(zip(copied, self.param_groups, strict=True))
        ]
        id_map = dict(
            zip(
                chain.from_iterable(saved["params"] for saved in saved_groups),
                chain.from_iterable(group["params"] for group in groups),
                strict=True,
            )
        )
        where = {
            saved_id: (gi, pi)
            for gi, saved in enumerate(saved_groups)
            for pi, saved_id in enumerate(saved["params"])
        }
        state: defaultdict[Tensor, dict[str, Any]] = defaultdict(dict)
        for saved_id, saved_state in state_dict["state"].items():
            if saved_id not in id_map:
                raise ValueError(
                    f"state dict holds state for parameter id {saved_id!r}, which no param "
                    "group lists"
                )
            gi, pi = where[saved_id]
            state[id_map[saved_id]] = _loaded_state(
                f"param group {gi}, parameter {pi}",
                saved_state,
                id_map[saved_id],
                groups[gi],
                self.sync_free,
            )
        return state, groups, skipped


def _uncompilable(
    groups: list[Group], gathered: list[tuple[list[Tensor], list[Tensor]]], state: Any
) -> str | None:
    """Why ``torch.compile(opt.step)`` would compute something else than eager, or ``None``.

    A preset may declare itself uncompilable (``Preset.uncompilable``). And torch 2.13's
    AOTAutograd drops in-place writes to 0-d float64 tensors that enter the graph (a float64
    scalar parameter, or a preset's scalar state such as deep's RMS): the step would silently
    leave them unchanged (a float64 learned step moved 0.09 off the eager one). Read while
    dynamo traces, on metadata only, so it costs no graph break.
    """
    for group, (params, _) in zip(groups, gathered, strict=True):
        preset = get_preset(group["memory"])
        if params and preset.uncompilable is not None:
            return (
                f"torch.compile of MemoryOptimizer.step is not supported for "
                f"memory={preset.name!r} ({preset.uncompilable}); step it eagerly"
            )
        for p in params:
            # before its first step: the state that step will create (traced once, so cheap)
            own = state.get(p) or _fresh_state(preset, p.detach(), group)
            tensors = [p, *(v for v in own.values() if isinstance(v, Tensor))]
            if any(t.dim() == 0 and t.dtype == torch.float64 for t in tensors):
                return (
                    "torch.compile of MemoryOptimizer.step cannot step float64 scalars (0-d "
                    "parameters or state): torch's AOTAutograd drops in-place writes to them. "
                    "Step such a model eagerly, or in float32."
                )
    return None


def _any_sharded(groups: list[Group]) -> bool:
    """Whether a group holds a ``DTensor`` (FSDP2): read while dynamo traces only."""
    return any(sharded.is_sharded(p) for group in groups for p in group["params"])


# A compiled step of sharded parameters runs eagerly: torch 2.13's AOTAutograd cache keys the
# graph that steps a DTensor's local piece by the DTensor (its global shape and placements),
# not by the piece, which differs between ranks when a dimension does not split evenly. A
# rank that found another rank's graph in the cache ran it on its own piece and failed
# ("expected size 3==2"), the other rank waiting in a collective until gloo's timeout. The
# step's cost under FSDP2 is its collectives and per-tensor work, which eager pays anyway.
@torch.compiler.disable
def _step_eagerly(opt: MemoryOptimizer, closure: Callable[[], float] | None) -> float | None:
    with torch.no_grad():
        return opt._step(closure)


# Run eagerly from the compiled step: a raise inside the traced graph is only a graph break,
# after which dynamo would run (and miscompile) the rest anyway.
@torch.compiler.disable
def _refuse(reason: str) -> None:
    raise RuntimeError(reason)


def _drop_torch_off_options(hyper: dict[str, Any]) -> None:
    """Remove torch.optim.Adam's kernel/variant options set to off (``fused=False`` too) from
    ``hyper``; refuse one that asks for something (``amsgrad=True``), saying why."""
    for name, (off, why) in _TORCH_OFF.items():
        if name not in hyper:
            continue
        value = hyper.pop(name)
        if value is off or value is False:
            continue
        raise ValueError(f"{name}={value!r} is not supported: {why}; leave {name} out")


def _reject_unknown(hyper: dict[str, Any], preset: Preset, memory: str) -> None:
    unknown = sorted(set(hyper) - set(preset.hyper) - set(_COMMON))
    if unknown:
        raise ValueError(
            f"unknown hyperparameter(s) {unknown} for memory={memory!r}; "
            f"it takes {sorted(preset.hyper) + sorted(_COMMON)}"
        )


def _foreign_names(preset: Preset) -> set[str]:
    """The hyperparameter names of every other preset that ``preset`` does not take."""
    others = {name for m in available_memories() for name in get_preset(m).hyper}
    return others - set(preset.hyper)


def _reject_foreign(group: Group, preset: Preset, memory: str) -> None:
    foreign = sorted(set(group) & _foreign_names(preset))
    if foreign:
        raise ValueError(
            f"hyperparameter(s) {foreign} do not belong to memory={memory!r}; "
            f"it takes {sorted(preset.hyper) + sorted(_COMMON)}"
        )


def _check_group(group: Group, preset: Preset) -> None:
    checks = {**_COMMON, **{name: h.check for name, h in preset.hyper.items()}}
    for name, check in checks.items():
        if name not in group:
            raise ValueError(f"missing {name}: memory={preset.name!r} needs it")
        if (msg := check(group[name])) is not None:
            raise ValueError(f"invalid {name}: {msg}")
    if group["compile"]:
        if not preset.compiles():
            have = [m for m in available_memories() if get_preset(m).compiles()]
            raise ValueError(
                f"invalid compile: memory={preset.name!r} has no compiled path "
                f"(compile=True is available for: {', '.join(have)})"
            )
        if group["foreach"] is False:
            raise ValueError(
                "invalid compile: compile=True is a fast path, foreach=False the reference"
            )
    preset.check_group(group)


def _check_param(param: Tensor, group: Group, preset: Preset) -> None:
    if (msg := preset.check_param(param, group)) is not None:
        raise ValueError(
            f"memory={preset.name!r} cannot step a {param.dtype} parameter of shape "
            f"{tuple(param.shape)}: {msg}"
        )


def _refuse_duplicates(tensors: list[Tensor]) -> None:
    """A tensor listed twice in one group would be stepped twice a step, in an order the
    reference and fast paths do not share (their results differed by up to 0.1); torch warns
    that this "will cause an error" in future: refused now."""
    first: dict[int, int] = {}
    for i, p in enumerate(tensors):
        if id(p) in first:
            raise ValueError(
                f"a parameter group lists the same tensor twice (params[{first[id(p)]}] and "
                f"params[{i}]); pass each parameter once"
            )
        first[id(p)] = i


def _tensors(params: Any) -> list[Tensor]:
    """The tensors of a group's ``params``: a tensor, or a list of tensors or (name, tensor)."""
    if isinstance(params, Tensor):
        return [params]
    if not isinstance(params, list):
        return []
    out = []
    for p in params:
        if isinstance(p, tuple) and len(p) == 2:
            p = p[1]
        if isinstance(p, Tensor):
            out.append(p)
    return out


@contextlib.contextmanager
def _without_autocast(grads: list[Tensor]) -> Iterator[None]:
    """Autocast off on the gradients' devices while the step runs: a training step wrapped
    whole in ``torch.autocast`` (``scaler.step(opt)`` inside it) would otherwise run the
    memories' matrix products in bf16/fp16 (Newton-Schulz, the learned memory's network, the
    reference paths' ``M @ k``), or make deep's ``addmm_`` of an fp32 memory by a bf16
    product raise halfway through a step. torch's optimizers are elementwise, which autocast
    leaves alone; the closure, run before, keeps the caller's autocast."""
    with contextlib.ExitStack() as stack:
        for device_type in sorted({g.device.type for g in grads}):
            try:
                enabled = torch.is_autocast_enabled(device_type)
            except RuntimeError:  # a device type autocast does not know ("meta"): never on
                continue
            if enabled:
                stack.enter_context(torch.autocast(device_type, enabled=False))
        yield


def _loaded_group(i: int, saved: Any, group: Group) -> Group:
    """The group ``saved`` (the caller's deep copy of the state dict's) makes of ``group``,
    checked like a constructor argument.

    A checkpoint from before a hyperparameter existed lacks it: the group keeps this
    optimizer's value. Other keys are the checkpoint's alone, as in torch.
    """
    if not isinstance(saved, dict) or not isinstance(saved.get("params"), list):
        raise ValueError(f"param group {i} of the state dict is not a dict with a 'params' list")
    if len(saved["params"]) != len(group["params"]):
        raise ValueError(
            f"param group {i}: state dict holds {len(saved['params'])} parameters, "
            f"optimizer has {len(group['params'])}"
        )
    if "memory" not in saved:
        raise ValueError(
            f"param group {i} of the state dict names no memory: it was not saved by "
            "MemoryOptimizer (of torch's optimizers, Adam/AdamW load into memory='adam' and "
            "SGD into memory='momentum')"
        )
    if saved.get("memory") != group["memory"]:
        raise ValueError(
            f"param group {i}: state dict was saved with memory={saved.get('memory')!r}, "
            f"this optimizer uses memory={group['memory']!r}"
        )
    preset = get_preset(group["memory"])
    # Groups saved before add_param_group stopped copying the default preset's
    # hyperparameters into groups of other presets may carry them: they were never read.
    dropped = {"params", SKIPPED, *_foreign_names(preset)}
    loaded = _plain_values({k: v for k, v in saved.items() if k not in dropped})  # a copy
    loaded["params"] = group["params"]
    # Only hyperparameters (and torch's param_names) fall back to the live group: its other keys
    # (a label, a scheduler's initial_lr) are replaced by the checkpoint's, as in torch.
    for key in ("param_names", *_COMMON, *preset.hyper):
        if key in group:
            loaded.setdefault(key, group[key])
    try:
        loaded = preset.loaded_group(loaded, group)
        _check_group(loaded, preset)
    except ValueError as err:
        raise ValueError(f"param group {i} of the state dict: {err}") from None
    return loaded


def _loaded_state(
    where: str, saved: Any, param: Tensor, group: Group, sync_free_setting: bool | None
) -> dict[str, Any]:
    """``saved`` checked against what a fresh step would create for ``param``, and cast to it.

    Raises ``ValueError`` on other keys or shapes, a non-floating or non-finite tensor, a
    ``step`` that is not a whole number ``>= 0`` or a broken preset invariant.
    """
    if not isinstance(saved, dict):
        raise ValueError(f"{where}: state must be a dict, got {type(saved).__name__}")
    if not saved:
        return {}
    preset = get_preset(group["memory"])
    try:
        _check_param(param, group, preset)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    expected = _fresh_state(preset, param.detach(), group)
    # A checkpoint moved between fp32 and fp16/bf16 parameters: an fp16/bf16 parameter's fp32
    # master copy is made from the parameter, as at its first step; an fp32 parameter needs
    # none (the parameter, restored from the model's checkpoint, is what goes on). Every other
    # state is fp32 either way.
    if MASTER in expected and MASTER not in saved:
        saved = {**saved, MASTER: expected[MASTER]}
    elif MASTER in saved and MASTER not in expected:
        saved = {k: v for k, v in saved.items() if k != MASTER}
    if set(saved) != {"step", *expected}:
        raise ValueError(
            f"{where}: saved state keys {sorted(map(str, saved))} do not match "
            f"memory={group['memory']!r}'s {sorted(['step', *expected])}"
        )
    if (msg := validate.count(saved["step"])) is not None:
        raise ValueError(f"{where}: invalid state 'step': {msg}")
    step = _step_tensor(saved["step"], _step_device(preset, param, group, sync_free_setting))
    if not bool(torch.isfinite(step)):  # a whole 1e39 is a float32 counter of inf
        raise ValueError(f"{where}: invalid state 'step': {saved['step']!r} overflows float32")
    loaded: dict[str, Any] = {"step": step}
    # The preset's invariants are checked on the values as saved, in the dtype they were written
    # in: a curvature clamped to float32(h_min) reads just under h_min once widened to float64.
    # Narrowing keeps them (rounding is monotone, and the step clamps to the narrowed bounds).
    as_saved: dict[str, Any] = {"step": step}
    for key, want in expected.items():
        value = saved[key]
        if not isinstance(want, Tensor):
            loaded[key] = as_saved[key] = deepcopy(value)
            continue
        # A floating state (a memory) must load as floating; a counter (an integer tensor,
        # e.g. the learned memory's nonfinite_updates) as an integer.
        kind = "floating" if want.is_floating_point() else "integer"
        if (
            not isinstance(value, Tensor)
            or value.is_floating_point() != want.is_floating_point()
            or value.is_complex()
            or value.dtype == torch.bool
        ):
            got = f"a {value.dtype} tensor" if isinstance(value, Tensor) else repr(value)
            raise ValueError(f"{where}: state {key!r} must be a {kind} tensor, got {got}")
        if tuple(value.shape) != tuple(want.shape):
            raise ValueError(
                f"{where}: state {key!r} has shape {tuple(value.shape)}, expected "
                f"{tuple(want.shape)} for a parameter of shape {tuple(param.shape)}"
            )
        if sharded.layout(value) != sharded.layout(want):  # None: a plain tensor
            if sharded.layout(value) is None:
                # a one-process checkpoint on every rank: each keeps its slice (as torch's
                # set_optimizer_state_dict(full_state_dict=True) does); loaded whole, a fused
                # kernel read rows of another rank's shard, and other presets failed mid-step
                value = sharded.sharded_like(value, want)
            else:
                raise ValueError(
                    f"{where}: state {key!r} is laid out as {sharded.layout(value)}, its "
                    f"parameter as {sharded.layout(want)}: load a sharded checkpoint with "
                    "torch.distributed.checkpoint (set_optimizer_state_dict)"
                )
        # checked after the cast: a float64 1e300 is finite, and inf once it is float32
        cast = value.to(dtype=want.dtype, device=want.device)
        if not bool(torch.isfinite(cast).all()) and not _overflowed_square(preset, key, cast):
            overflows = bool(torch.isfinite(value).all())
            why = f"overflows {want.dtype}" if overflows else "holds NaN or inf"
            raise ValueError(f"{where}: state {key!r} {why}")
        if kind == "integer" and bool((value < 0).any()):
            raise ValueError(f"{where}: state {key!r} is a count and must be >= 0")
        loaded[key], as_saved[key] = cast, value
    if (msg := preset.check_state(as_saved, group)) is not None:
        raise ValueError(f"{where}: invalid state: {msg}")
    return loaded


def _overflowed_square(preset: Preset, key: str, value: Tensor) -> bool:
    """Whether the non-finite entries of ``value`` are ``+inf`` in a sum of squares: a finite
    gradient of 1e30 overflows Adam's second moment, here as in torch (the step is not
    skipped: every gradient was finite), and the run goes on, so its checkpoints must load.
    NaN, and ``-inf`` or ``inf`` anywhere else, stay refused."""
    return key in preset.non_negative_state and bool(
        (torch.isfinite(value) | (value == math.inf)).all()
    )


def _skipped_entry(state_dict: dict[str, Any]) -> Any:
    """Where a state dict keeps ``skipped_steps``: its ``assocmem`` entry, or (after a round
    trip through DCP's ``get/set_optimizer_state_dict``) its first param group."""
    if "assocmem" in state_dict:
        return state_dict["assocmem"]
    groups = state_dict.get("param_groups")
    if isinstance(groups, list) and groups and isinstance(groups[0], dict) and SKIPPED in groups[0]:
        return {"skipped_steps": groups[0][SKIPPED]}
    return {}


def _skipped_steps(extra: Any) -> int:
    """The ``assocmem`` entry of a state dict, parsed before anything is replaced."""
    if not isinstance(extra, dict):
        raise ValueError(f"state dict entry 'assocmem' must be a dict, got {extra!r}")
    value = extra.get("skipped_steps", 0)
    if (msg := validate.count(value)) is not None:
        raise ValueError(f"state dict entry 'assocmem': invalid skipped_steps: {msg}")
    return int(value)


def _match_precision(state: dict[str, Any], param: Tensor) -> None:
    """A parameter cast between fp32 and fp16/bf16 after its first step (``model.half()``)
    keeps its memory, which is fp32 either way: it gets an fp32 master copy made from it, as
    at a first step, or, cast up to fp32, loses the copy and is stepped itself."""
    if param.dtype in LOW_PRECISION:
        state[MASTER] = param.float()
    else:
        del state[MASTER]


def _resync_master(master: Tensor, param: Tensor) -> None:
    """Take ``param`` (fp16/bf16) into its fp32 ``master`` if anything outside the optimizer
    changed it since the last step (the master rounds to something else): the whole tensor, as
    a user's ``p.copy_(...)`` or ``mul_`` means. ``torch.equal`` answers on the host, a wait per
    tensor and step on an accelerator; deciding on the device (``sync_free``) selects instead,
    to the same bits, at the price of a pass over both."""
    if sync_free.active():
        changed = (master.to(param.dtype) != param).any()
        torch.where(changed, param.to(master.dtype), master, out=master)
    elif not torch.equal(master.to(param.dtype), param):
        master.copy_(param)


def _step_tensor(step: Any, device: torch.device | str = "cpu") -> Tensor:
    return torch.tensor(float(step), dtype=torch.float32, device=device)


def _step_device(
    preset: Preset, param: Tensor, group: Group, sync_free_setting: bool | None
) -> torch.device:
    """Where a parameter's ``step`` counter lives: on the CPU, as in torch.optim, except where
    the group steps through a fused kernel, which reads it (Adam) and whose on-device skip
    takes it back (as torch's fused optimizers keep it), and where the preset does not read it
    on the host (:func:`_reads_on_host`; ``sync_free`` ``True`` or ``None``, which is on
    wherever a parameter is off the CPU), so that a skip decided on the device can take it
    back without a copy. A preset that reads the count as a Python number keeps it on the CPU
    in every other configuration."""
    if preset.fuses(group) or not _reads_on_host(preset, _real(param), group, sync_free_setting):
        return param.device
    return torch.device("cpu")


def _reads_on_host(
    preset: Preset, param: Tensor, group: Group, sync_free_setting: bool | None
) -> bool:
    """Whether stepping ``param`` reads its state as a Python number: the preset says so
    (``Preset.reads_state_on_host``) and, with ``sync_free`` on (or ``None``), does not take
    its count on the device instead (``Preset.counts_on_device``)."""
    if not preset.reads_state_on_host(param, group):
        return False
    return sync_free_setting is False or not preset.counts_on_device(param, group)


def _grads_and_state(grads: list[Tensor], states: list[dict[str, Any]]) -> list[Tensor]:
    """Every tensor a step reads or writes beside the parameters: gradients and tensor state."""
    return [*grads, *(v for s in states for v in s.values() if isinstance(v, Tensor))]


def _written_tensors(params: list[Tensor], states: list[dict[str, Any]]) -> list[Tensor]:
    """Every tensor a step may write: the parameters and each tensor of their state, once
    (an fp16/bf16 parameter's work tensor is its master copy, a state entry too), but the
    ``step`` counters, which ``_step_group`` advances by ``1 - flag`` itself."""
    seen: set[int] = set()
    out = []
    for t in chain(params, (v for s in states for k, v in s.items() if k != "step")):
        if isinstance(t, Tensor) and id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def _real(t: Tensor) -> Tensor:
    """A complex tensor as its real view ``(..., 2)``; a real one as itself."""
    return torch.view_as_real(t) if t.is_complex() else t


# compile=True compiles the update of tensors of at least this many elements; smaller ones
# step on the eager fast path. Below it a step is dispatch, not memory traffic
# (assocmem.optim.stacks), and compiled it was slower: with 300 tensors of 8 x 8 and 8 (the
# bench_step model "many") cms stepped in 3.16x torch's fused Adam compiled against 2.38x
# eager, after a cold compile of ~3.5 min (the graph unrolls every tensor).
COMPILED_FROM = SMALL


def _stepped_eagerly(param: Tensor) -> bool:
    """Whether ``compile=True`` steps ``param`` on the eager fast path (see its caller)."""
    return param.numel() < COMPILED_FROM or param.dim() == 0


def _by_device(tensors: list[Tensor]) -> list[list[int]]:
    """Indices of ``tensors`` grouped by device, in order of first appearance (one group for
    a model on one device, the usual case)."""
    return list(grouped(t.device for t in tensors).values())


# Run eagerly even inside torch.compile(opt.step): torch 2.13's inductor returns one buffer for
# equal fresh outputs (two `zeros.clone()`, every parameter's `torch.zeros(())` step), so state
# built in a compiled graph aliased: landscape's prev_grad and prev_param were one tensor (its
# compiled step came out wrong from step 2), cms's step list held one tensor per tensor stepped
# (torch._fused_adam_ asserted). Built once per parameter, so the graph break costs nothing.
@torch.compiler.disable
def _first_state(
    preset: Preset, param: Tensor, group: Group, sync_free_setting: bool | None
) -> dict[str, Any]:
    """``step`` and :func:`_fresh_state`: a parameter's state, created at its first step."""
    device = _step_device(preset, param, group, sync_free_setting)
    step = torch.zeros((), dtype=torch.float32, device=device)
    return {"step": step, **_fresh_state(preset, param, group)}


def _fresh_state(preset: Preset, param: Tensor, group: Group) -> dict[str, Any]:
    """The state of a parameter before its first step (without ``step``): the preset's
    memory, and for an fp16/bf16 parameter its fp32 master copy, which the preset steps."""
    real = _real(param)
    if real.dtype not in LOW_PRECISION:
        return preset.init_state(real, group)
    master = real.float()
    return {MASTER: master, **preset.init_state(master, group)}


def _working(t: Tensor) -> Tensor:
    """The tensor a preset steps for ``t``: its real view, in fp32 if ``t`` is fp16/bf16."""
    t = _real(t)
    return t.float() if t.dtype in LOW_PRECISION else t


_dtype = operator.attrgetter("dtype")


def _working_all(tensors: list[Tensor]) -> list[Tensor]:
    """:func:`_working` of each of ``tensors``: asked of their dtypes once first, since in the
    usual case (real fp32 or fp64 tensors) each is itself."""
    if all(not d.is_complex and d not in LOW_PRECISION for d in set(map(_dtype, tensors))):
        return tensors
    return [_working(t) for t in tensors]


def _with_grads(group: Group) -> tuple[list[Tensor], list[Tensor]]:
    params = [p for p in group["params"] if p.grad is not None]
    grads = [p.grad for p in params]
    if any(g.is_sparse for g in grads):
        raise RuntimeError(
            f"memory={group['memory']!r} does not support sparse gradients; "
            "use dense embeddings (sparse=False) or torch.optim.SparseAdam"
        )
    return params, grads


def _skips_on_device(
    groups: list[Group], gathered: list[tuple[list[Tensor], list[Tensor]]], *, select: bool
) -> bool:
    """Whether every group that steps takes the non-finite flag on the device: a fused path,
    or (``select``, the ``sync_free`` steps) a preset that reads none of its parameters'
    state on the host, whose step is undone by a select where the flag is set.

    A tensor the kernels cannot take (non-contiguous) still falls back to a host read of the
    flag when its turn comes (``_step_tensors``) if its preset reads its step count on the
    host, so this only decides where to start.
    """

    def on_device(group: Group, params: list[Tensor]) -> bool:
        preset = get_preset(group["memory"])
        if group["foreach"] is not False and not group["compile"] and preset.fuses(group):
            return True
        return select and not any(_reads_on_host(preset, _real(p), group, True) for p in params)

    return all(
        on_device(group, params)
        for group, (params, _) in zip(groups, gathered, strict=True)
        if params
    )


def _flag_on(found: dict[torch.device, Tensor], device: torch.device) -> Tensor:
    """The flag on ``device``; copied there if no gradient lives on it (a counter left on the
    CPU by a group whose configuration changed: correct, at the price of a wait)."""
    if device in found:
        return found[device]
    return next(iter(found.values())).to(device)


def _on_every_device(flags: list[Tensor]) -> dict[torch.device, Tensor]:
    """The non-finite flag (1 if any device's is) on each device: a kernel reads its own."""
    if len(flags) == 1:
        return {flags[0].device: flags[0]}
    # Non-blocking only onto an accelerator: a non-blocking copy to the CPU may not have
    # landed when the CPU reads it.
    return {
        f.device: torch.stack(
            [g.to(f.device, non_blocking=f.device.type != "cpu") for g in flags]
        ).amax(0)
        for f in flags
    }


def _replaces_grads(group: Group) -> bool:
    """Whether :meth:`MemoryOptimizer._step_unfused` hands the preset new gradient tensors
    instead of the ``.grad`` ones: ``maximize`` negates them, L2 weight decay adds ``wd W``."""
    return group["maximize"] or (group["weight_decay"] != 0 and not group["decoupled_weight_decay"])


def _norms_the_step_reads(
    groups: list[Group], gathered: list[tuple[list[Tensor], list[Tensor]]]
) -> set[int]:
    """The ids of the gradients whose ``<g, g>`` the step will read (``Preset.squares_grads``):
    those its fast path is handed as they are, with no ``maximize`` or L2 decay making new
    tensors of them (:mod:`assocmem.optim.grad_norms`)."""
    ids: set[int] = set()
    for group, (_, grads) in zip(groups, gathered, strict=True):
        if (
            grads
            and group["foreach"] is not False
            and not group["compile"]
            and not _replaces_grads(group)
            and get_preset(group["memory"]).squares_grads(group)
        ):
            ids.update(id(g) for g in grads)
    return ids


def _plain_values(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with a path object (``pathlib.Path``, any ``os.PathLike``) as its ``str``:
    ``param_groups`` go into the state dict, and ``torch.load``'s default (``weights_only``)
    refuses a pickled ``PosixPath``; and a tuple or list of one-element floating tensors
    (torch's Adam takes ``betas=(tensor(0.9), tensor(0.999))`` and its checkpoints keep them)
    as Python floats, the numbers the presets compute with. The parameters themselves are
    left alone, and so is a tensor ``lr`` (schedulers update it in place)."""

    def plain(key: str, value: Any) -> Any:
        if key == "params":
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, (tuple, list)) and any(_scalar_tensor(x) for x in value):
            return type(value)(float(x) if _scalar_tensor(x) else x for x in value)
        return value

    return {k: plain(k, v) for k, v in values.items()}


def _scalar_tensor(x: Any) -> bool:
    return isinstance(x, Tensor) and x.numel() == 1 and x.is_floating_point()


def _overlaps_itself(t: Tensor) -> bool:
    """Whether two elements of ``t`` are one memory location (a stride 0 over a dimension of
    size > 1, as ``expand`` makes)."""
    return any(stride == 0 and size > 1 for stride, size in zip(t.stride(), t.shape, strict=True))


def _makes_state_only(
    groups: list[Group], gathered: list[tuple[list[Tensor], list[Tensor]]]
) -> bool:
    """Whether a step on an optimizer without state is torch's state-making one: every group's
    lr is 0 and every gradient is zero (``_init_optim_state`` sets both). Read once, before the
    first step; every rank of a sharded model decides together (its own shards, then a flag
    all-reduced over their meshes), so no rank steps while another only makes state."""
    if torch.compiler.is_compiling() or not any(params for params, _ in gathered):
        return False
    if any(float(group["lr"]) != 0.0 for group in groups):  # a tensor lr: one read, once
        return False
    grads = [g for _, gs in gathered for g in gs]
    moved = any(bool(sharded.local(_real(g)).any()) for g in grads)
    return not sharded.any_rank(moved, grads)


def _nonfinite_flags(
    grads: list[Tensor], *, host_reads: bool = False, reused: Collection[int] = ()
) -> list[Tensor]:
    # torch's GradScaler check: one fused pass per device that flags any NaN/inf. Its
    # "unscale" multiplies by exactly 1, which leaves every gradient bit as it was. On the
    # bench_step models it measured 2x cheaper than per-tensor aminmax at 0.1M parameters and
    # as cheap at 6M; a plain isfinite() would allocate a mask per tensor.
    # A sharded gradient is checked on this rank's piece; the flag is then max-reduced over its
    # mesh, so every rank skips (or steps) together.
    local = grads if sharded.plain(grads) else [sharded.local(g) for g in grads]
    flags = []
    for device, index in grouped(g.device for g in local).items():
        group = [local[i] for i in index]
        # The kernel takes float32 flags whatever torch's default dtype is (float64 tests).
        found = torch.zeros(1, device=device, dtype=torch.float32)
        unit = torch.ones(1, device=device, dtype=torch.float32)
        if host_reads and device.type == "cpu" and not torch.compiler.is_compiling():
            group = grad_norms.settle_large(group, reused)  # large ones by <g, g>, read back
        # The kernel writes its "unscale" back, which a gradient whose elements share memory
        # (an expanded one: stride 0) refuses; those few are checked by a plain reduction.
        # is_contiguous() first: a contiguous tensor never overlaps itself, and the stride scan
        # in Python costs ~1 us a tensor, every step.
        shared = [g for g in group if not g.is_contiguous() and _overlaps_itself(g)]
        if shared:
            group = [g for g in group if all(g is not s for s in shared)]
            for g in shared:
                torch.maximum(found, torch.isfinite(g).logical_not().any(), out=found)
        if group:
            torch._amp_foreach_non_finite_check_and_unscale_(group, found, unit)
        flags.append(sharded.any_flag(found, grads))
    return flags
