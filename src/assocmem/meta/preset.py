"""The ``learned`` preset: the learned memory behind ``MemoryOptimizer(memory="learned")``.

    write   m_b <- b m_b + (1 - b) g   for b in config.betas;   v <- beta2 v + (1 - beta2) g^2
    read    x = features(m, v, g, W, t)          (per coordinate, scale-free; meta/features.py)
            u = d(x) * exp(s(x))                 (a shared MLP; meta/network.py)
    step    W <- W - lr * u

It lives with the learned memory and registers itself when :mod:`assocmem.meta` is imported
(``import assocmem`` does that), so :mod:`assocmem.optim` knows nothing of meta-learning.
Both paths run :func:`assocmem.meta.step.learned_step`, the step meta-training unrolls.

The network comes from a checkpoint (``checkpoint=None`` is the one shipped in
``assocmem/meta/checkpoints``). ``lr`` multiplies the learned step: the network was
meta-trained at ``lr = config.lr`` (1e-3 for the shipped checkpoint, equal to
``MemoryOptimizer``'s default), so the default reproduces meta-training and ``lr=2e-3`` doubles
every step. The reference path runs the MLP per tensor; the fast path batches every coordinate
of the group into one (chunked) MLP call. Rows are independent, so both give the same numbers
to float rounding (the batched matrix products may split their sums differently: an audit
measured 2.4e-7 apart in float32).

A group's first step records the memory file's ``network_sha256`` (its meta-parameters and
config, :func:`assocmem.meta.checkpoint.network_digest`) under the group key
``checkpoint_sha256``, so the optimizer's state dict names the memory it was saved with:
``load_state_dict`` refuses a state whose memory file now holds another memory (replaced or
edited), and a step refuses a file that changed during training. A state dict saved before
the key existed loads unchecked, and records the file's digest at its next step.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from assocmem.meta.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
from assocmem.meta.config import LearnedConfig
from assocmem.meta.features import init_memory
from assocmem.meta.network import MetaParams, chunk_rows
from assocmem.meta.step import learned_step
from assocmem.optim import sync_free
from assocmem.optim.registry import Group, Hyper, Preset, State, register

# (path, file version, dtype, device) -> (meta-parameters cast, config, the file's network
# digest)
_CACHE: dict[tuple[Any, ...], tuple[MetaParams, LearnedConfig, str]] = {}
# The group key under which a learned group records the network digest of its memory file
# (its first step writes it); a state dict then carries it, and a load whose file has another
# digest is refused (Learned.check_group).
DIGEST_KEY = "checkpoint_sha256"


def _checkpoint_or_none(x: Any) -> str | None:
    if x is None or isinstance(x, (str, os.PathLike)):
        return None
    return f"must be None (the shipped checkpoint) or a path, got {x!r}"


def _loaded(
    checkpoint: str | os.PathLike[str] | None, dtype: torch.dtype, device: torch.device
) -> tuple[MetaParams, LearnedConfig, str]:
    path = Path(DEFAULT_CHECKPOINT if checkpoint is None else checkpoint).resolve()
    if not path.exists():
        raise FileNotFoundError(f"learned memory checkpoint {path} does not exist")
    # A file replaced in place changes its ctime (which no copy can preserve, unlike mtime:
    # `cp -p` and `rsync -t` carry it over), or its inode or size
    info = path.stat()
    version = (info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_dev, info.st_size)
    key = (str(path), version, dtype, str(device))
    if key not in _CACHE:
        # Loading checks the tensors' shapes against a freshly initialised network, which
        # draws from torch's global RNG: fork it, so building an optimizer leaves a seeded
        # run's random numbers alone.
        with torch.random.fork_rng(devices=[]):
            ckpt = load_checkpoint(path)
        meta = {k: v.to(dtype=dtype, device=device) for k, v in ckpt.meta_params.items()}
        # The file's own dtype was checked finite; cast to the one it runs in, a float64
        # 1e39 is inf in float32, and every coordinate would step by the bound with no count.
        overflown = sorted(k for k, v in meta.items() if not bool(torch.isfinite(v).all()))
        if overflown:
            stored = ckpt.meta_params[overflown[0]].dtype
            raise ValueError(
                f"learned memory checkpoint {path}: meta-parameters {overflown} are not finite "
                f"in {dtype}, the dtype it runs in (stored as {stored})"
            )
        _CACHE[key] = (meta, ckpt.config, ckpt.network_sha256)
    return _CACHE[key]


def load_learned(
    checkpoint: str | os.PathLike[str] | None, dtype: torch.dtype, device: torch.device
) -> tuple[MetaParams, LearnedConfig]:
    """Meta-parameters (cast to ``dtype``/``device``) and config, cached per file version."""
    meta, config, _ = _loaded(checkpoint, dtype, device)
    return meta, config


def _checked(group: Group) -> tuple[LearnedConfig, str]:
    """The config and network digest of the group's memory file, read (and cached) as
    :func:`load_learned` reads it, in float32 on the CPU: any error of the file (missing,
    corrupt, edited, not finite where the memory runs) is raised here, whatever dtype and
    device the parameters have."""
    _, config, digest = _loaded(group["checkpoint"], torch.float32, torch.device("cpu"))
    return config, digest


def _checked_config(group: Group) -> LearnedConfig:
    return _checked(group)[0]


def _recorded_digest(group: Group) -> str | None:
    recorded = group.get(DIGEST_KEY)
    if recorded is None:
        return None
    if not isinstance(recorded, str) or len(recorded) != 64:
        raise ValueError(
            f"{DIGEST_KEY} must be the 64 hex digits of a learned memory's network_sha256, got "
            f"{recorded!r}"
        )
    return recorded


@register
class Learned(Preset):
    name = "learned"
    non_negative_state = ("second_moment",)
    # Measured on torch 2.13 (float32 TinyNet, 3 steps): its 0-d parameter ended 2e-2 away
    # from the eager run while every state tensor agreed; the cause is not found.
    uncompilable = "a compiled step moved a 0-d parameter 2e-2 away from the eager step"
    hyper = {
        "checkpoint": Hyper(
            None,
            _checkpoint_or_none,
            "safetensors file of the learned memory (a relative path is found from the working "
            "directory at every step); None = shipped. The step is lr * d * e^s: the file's "
            "config.lr reproduces its meta-training, and the default lr (1e-3) is the shipped "
            "file's, so pass a custom file's own",
        ),
    }

    def loaded_group(self, loaded: Group, live: Group) -> Group:
        # A state dict names the memory file by the path it had when saved. Shipped elsewhere
        # (another folder, machine or user), that path is gone while this optimizer's group
        # names the file where it is now: the recorded digest tells whether it is the same
        # memory, and then the state resumes with it.
        saved, here = loaded.get("checkpoint"), live.get("checkpoint")
        if not isinstance(saved, (str, os.PathLike)):  # None (shipped), or refused by its check
            return loaded
        if Path(saved).exists() or saved == here:
            return loaded
        recorded = _recorded_digest(loaded)
        try:
            _, digest = _checked(live)
        except (OSError, ValueError):
            digest = None
        # (no digest recorded: saved before the group's first step, so no state ran any memory)
        if recorded is None or digest == recorded:
            return {**loaded, "checkpoint": here}
        raise ValueError(
            f"the state was saved with learned memory checkpoint {saved}, which does not exist "
            f"here, and this optimizer's memory file {here or DEFAULT_CHECKPOINT} is not that "
            f"memory (recorded {DIGEST_KEY} {recorded[:16]}..., the file's "
            f"{'unreadable' if digest is None else digest[:16] + '...'}): build the optimizer "
            "with checkpoint= the moved file, or set the state dict's param group 'checkpoint' "
            "to it"
        )

    def check_group(self, group: Group) -> None:
        # Fail at construction, not at the first step, on a missing or mismatched file; and at
        # load_state_dict (which checks the loaded group here before replacing anything) on a
        # memory file other than the one the state was saved with.
        _, digest = _checked(group)
        recorded = _recorded_digest(group)
        if recorded is not None and recorded != digest:
            raise ValueError(
                f"learned memory checkpoint {group['checkpoint'] or DEFAULT_CHECKPOINT} is not "
                f"the memory this optimizer state was saved with: its network_sha256 "
                f"{digest[:16]}... differs from the recorded {DIGEST_KEY} {recorded[:16]}... "
                "(the file was replaced or edited since, or the group names another memory file "
                "than the state's). Its momenta and steps would resume "
                "under a different network: restore the memory file the state was saved with, "
                "or start a new optimizer for this one"
            )

    def check_step(self, params: list[Tensor], state: Mapping[Tensor, State], group: Group) -> None:
        # The file is read at every step (a relative path from the working directory): if it
        # went missing or now holds another memory, say so before the step counts or decays
        # anything, so that a retry after restoring it resumes exactly.
        config, digest = _checked(group)
        recorded = _recorded_digest(group)
        if recorded is None:
            # the first step records the memory it runs, so that state_dict() carries it
            group[DIGEST_KEY] = digest
        elif recorded != digest:
            raise ValueError(
                f"learned memory checkpoint {group['checkpoint'] or DEFAULT_CHECKPOINT} now "
                f"holds another memory (network_sha256 {digest[:16]}..., the optimizer "
                f"stepped with {recorded[:16]}...): the file changed during training, or the "
                "group's checkpoint now names another memory file. Restore it, or start a new "
                "optimizer for the new memory"
            )
        for p in params:
            held = state.get(p)
            if held and held["momenta"].shape[0] != len(config.betas):
                raise ValueError(
                    f"learned memory checkpoint {group['checkpoint'] or DEFAULT_CHECKPOINT} now "
                    f"holds a memory of {len(config.betas)} momenta, the optimizer's state "
                    f"{held['momenta'].shape[0]}: the file changed during training, or the "
                    "group's checkpoint now names another memory file. Restore it, or start a "
                    "new optimizer for the new memory"
                )

    def init_state(self, param: Tensor, group: Group) -> State:
        _, config = load_learned(group["checkpoint"], param.dtype, param.device)
        # Coordinates whose learned update came out non-finite and was zeroed: counted, on the
        # device, so a memory that stalls (e.g. a second moment overflowed to inf) shows it.
        counter = torch.zeros((), dtype=torch.int64, device=param.device)
        return {**init_memory(param, config), "nonfinite_updates": counter}

    def shards_locally(self, group: Group) -> bool:
        return True  # the features' tensor-wide mean squares are all-reduced

    def counts_on_device(self, param: Tensor, group: Group) -> bool:
        return True  # bias corrections, time features and warm-up bound as tensor ops

    def reference_step(self, param: Tensor, grad: Tensor, state: State, group: Group) -> None:
        self._step([param], [grad], [state], group, batch=False)

    def foreach_step(
        self, params: list[Tensor], grads: list[Tensor], states: list[State], group: Group
    ) -> None:
        if len({(p.dtype, p.device) for p in params}) > 1:
            return super().foreach_step(params, grads, states, group)
        self._step(params, grads, states, group, batch=True)

    def _step(
        self, params: list[Tensor], grads: list[Tensor], states: list[State], group: Group,
        *, batch: bool,
    ) -> None:  # fmt: skip
        meta, config = load_learned(group["checkpoint"], params[0].dtype, params[0].device)
        memories = [{"momenta": s["momenta"], "second_moment": s["second_moment"]} for s in states]
        # the counters on the device under sync_free (nothing read on the host), else numbers
        steps = [s["step"] if sync_free.active() else float(s["step"]) for s in states]
        updates, written, nonfinite = learned_step(
            meta,
            config,
            params,
            grads,
            memories,
            steps,
            chunk=chunk_rows(params[0].device),
            batch=batch,
        )
        for state, memory, bad in zip(states, written, nonfinite, strict=True):
            state["momenta"].copy_(memory["momenta"])
            state["second_moment"].copy_(memory["second_moment"])
            state["nonfinite_updates"].add_(bad)
        torch._foreach_add_(params, updates, alpha=-group["lr"])
