"""A ``torch.optim`` checkpoint read as the state of the preset that equals its optimizer.

A user who swaps ``torch.optim.Adam`` for ``MemoryOptimizer(memory="adam")`` in the middle of
a run holds checkpoints of the former. Two presets are the same equations as a torch optimizer
(tested bit for bit on the fast path), and their state is the same tensors under the same keys:

- ``torch.optim.Adam`` / ``AdamW`` -> ``memory="adam"``: ``exp_avg``, ``exp_avg_sq`` and
  ``step`` as they are; AMSGrad's ``max_exp_avg_sq`` has no place in the preset, so
  ``amsgrad=True`` is refused.
- ``torch.optim.SGD`` -> ``memory="momentum"``: ``momentum_buffer`` as it is (torch keeps
  ``None`` while ``momentum == 0``, the preset a buffer it rewrites before reading; so no
  state). SGD's weight decay is L2, so the group gets ``decoupled_weight_decay=False``, and
  ``dampening != 0`` (a write rate other than 1) is refused. torch's SGD counts no steps: the
  counter starts at 0, which nothing in the momentum preset reads.

Options that choose torch's kernels (``foreach``, ``fused``, ``capturable``,
``differentiable``) are not hyperparameters and are dropped: the group keeps this optimizer's.
Everything produced here is then checked by ``MemoryOptimizer.load_state_dict`` like any
checkpoint of its own. Pure functions on dicts: nothing here touches an optimizer.
"""

from __future__ import annotations

from typing import Any

import torch

# The keys by which a param group of each torch optimizer is recognised (torch 2.x writes
# every constructor argument into the group). RAdam and NAdam share Adam's betas and eps but
# have no ``amsgrad``; Adagrad, RMSprop and ASGD have no ``dampening``. ``maximize`` and
# ``differentiable`` (in every torch optimizer's groups since 1.13) tell torch's own from
# optimizers of other libraries built on SGD's arguments (torch_optimizer's SGDW, decoupled
# decay; timm's LARS, a trust ratio), which would otherwise load as SGD, silently other
# equations.
_TORCH_KEYS = frozenset({"maximize", "differentiable"})
_SIGNATURES = {
    "adam": frozenset({"lr", "betas", "eps", "weight_decay", "amsgrad"}) | _TORCH_KEYS,
    "momentum": frozenset({"lr", "momentum", "dampening", "nesterov", "weight_decay"})
    | _TORCH_KEYS,
}
_SOURCES = {"adam": "torch.optim.Adam/AdamW", "momentum": "torch.optim.SGD"}
# Kernel choices of torch's optimizers, not hyperparameters: the group keeps its own.
_KERNEL_OPTIONS = frozenset({"foreach", "fused", "capturable", "differentiable"})


def torch_kind(group: Any) -> str | None:
    """The preset a saved param group of a torch optimizer translates to, or ``None``.

    ``None`` also for any group that names a ``memory`` (saved by ``MemoryOptimizer``).
    """
    if not isinstance(group, dict) or "memory" in group:
        return None
    for memory, keys in _SIGNATURES.items():
        if keys <= group.keys():
            return memory
    return None


def is_torch_state_dict(state_dict: dict[str, Any]) -> bool:
    """Whether every param group of ``state_dict`` is one :func:`torch_kind` recognises."""
    groups = state_dict.get("param_groups")
    return (
        isinstance(groups, list) and bool(groups) and all(torch_kind(g) is not None for g in groups)
    )


def translated(state_dict: dict[str, Any], memories: list[str]) -> dict[str, Any]:
    """``state_dict`` of a torch optimizer as ``MemoryOptimizer`` saves it, for groups whose
    presets are ``memories`` (one per group, this optimizer's).

    Raises ``ValueError`` naming the group when a group's torch optimizer does not equal the
    preset it would load into, or uses an option the preset cannot represent.
    """
    groups = state_dict["param_groups"]
    if len(groups) != len(memories):
        raise ValueError(
            f"state dict has {len(groups)} param groups, optimizer has {len(memories)}"
        )
    new_groups = []
    kind_of: dict[Any, str] = {}
    for i, (saved, memory) in enumerate(zip(groups, memories, strict=True)):
        kind = torch_kind(saved)
        if kind is None:
            raise ValueError(f"param group {i} of the state dict is not a torch.optim group")
        if kind != memory:
            raise ValueError(
                f"param group {i}: the state dict is {_SOURCES[kind]}'s, which loads into "
                f"memory={kind!r}; this group uses memory={memory!r}"
            )
        new_groups.append(_group(i, saved, kind))
        params = saved.get("params")
        for pid in params if isinstance(params, list) else []:
            kind_of[pid] = kind
    state = state_dict.get("state")
    new_state = (
        {pid: _state(s, kind_of.get(pid)) for pid, s in state.items()}
        if isinstance(state, dict)
        else state
    )
    return {**state_dict, "state": new_state, "param_groups": new_groups}


def _group(i: int, saved: dict[str, Any], kind: str) -> dict[str, Any]:
    group = {k: v for k, v in saved.items() if k not in _KERNEL_OPTIONS}
    if kind == "adam":
        if group.pop("amsgrad"):
            raise ValueError(
                f"param group {i}: torch.optim.Adam with amsgrad=True keeps a max_exp_avg_sq "
                "that memory='adam' has no place for"
            )
        if "decoupled_weight_decay" not in group:
            # torch before 2.6 did not save it, and Adam's and AdamW's groups look alike.
            if group["weight_decay"] != 0:
                raise ValueError(
                    f"param group {i}: the state dict does not say whether its weight decay "
                    "is Adam's (L2) or AdamW's (decoupled); set its 'decoupled_weight_decay' "
                    "before loading"
                )
            group["decoupled_weight_decay"] = True
    else:
        if group.pop("dampening") != 0:
            raise ValueError(
                f"param group {i}: torch.optim.SGD with dampening != 0 writes the gradient at "
                "rate 1 - dampening; memory='momentum' writes it at rate 1"
            )
        group["decoupled_weight_decay"] = False
    group["memory"] = kind
    return group


def _state(saved: Any, kind: str | None) -> Any:
    if not isinstance(saved, dict):
        return saved
    # torch keeps a complex parameter's moments complex; the presets keep them as the
    # parameter's real view (a complex number is two real coordinates to every preset)
    saved = {k: _real_view(v) for k, v in saved.items()}
    if kind != "momentum":
        return saved
    if saved.get("momentum_buffer") is None:
        return {}  # momentum 0, or never stepped: the preset makes its buffer on its first step
    return {"step": torch.tensor(0.0), **saved}


def _real_view(value: Any) -> Any:
    return (
        torch.view_as_real(value)
        if isinstance(value, torch.Tensor) and value.is_complex()
        else value
    )
