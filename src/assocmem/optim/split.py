"""The Muon-style param split: orthogonalised steps on hidden matrices, Adam on the rest.

Muon (Jordan et al. 2024) and the orthogonalised ``cms`` configurations (``m3_config``) are
meant for the *hidden* weight matrices of a network. An orthogonalised update moves every
singular direction of a matrix by the same amount, the steepest descent under the spectral norm
of a layer that maps a dense input to a dense output. That reading does not fit:

- ``embedding``: a lookup table (``nn.Embedding``/``EmbeddingBag``): each step touches the
  rows of the tokens in the batch, its input is one-hot, not dense;
- ``head``: the output layer, whose output is the loss's input (logits, reconstructed pixels),
  not a hidden activation; Muon's authors keep it on Adam;
- ``norm``: the gains and shifts of normalisation layers;
- ``bias``: biases (vectors: nothing to orthogonalise);
- ``other``: every other parameter: vectors and scalars (layer scales, the quadratic's point),
  and matrices that are not the weight of a linear, conv or attention layer (learned positions,
  class tokens, the weights of ``nn.RNN``/``LSTM``/``GRU``, gated or not, their projections
  included), and the weights of grouped and depthwise convs (``groups > 1``: a stack of
  independent maps, one per group), which are tables or stacks, not single maps.

Each parameter gets exactly one role (:func:`param_roles`); :func:`param_groups` puts the
``hidden`` ones in one param group and every other role in a second one, by default stepped by
the ``adam`` preset. ``hidden`` is the weight of an ``nn.Linear``, ``nn.Bilinear``, ``nn.Conv*``,
``nn.ConvTranspose*`` or ``nn.MultiheadAttention`` (its ``*_weight`` matrices) that is not the
head, an input layer on dense data included (the first ``Linear`` of an MLP, a ViT's patch
projection, a conv stem). ``nn.MultiheadAttention``'s packed ``in_proj_weight`` (Q, K and V
stacked, ``3E x E``) is orthogonalised as one matrix, as ``torch.optim.Muon`` and Muon's
reference treat any 2-D tensor (with ``kdim``/``vdim`` set torch stores the three apart, each
then its own). The head is the last such layer in the order the model registers its modules
(``model.modules()``), frozen or not, unless it belongs to a repeated block (``layers.1.ff``
beside ``layers.0.ff``): a model without an output layer of its own (an
``nn.TransformerEncoder``, logits as ``F.linear`` of a tied embedding) has no head. Both rules
are heuristics: ``roles=`` overrides them by name pattern or predicate.

A parameter shared by several modules (tied embedding and head) is one parameter and lands in
one group: it is ``embedding`` if any owner is an embedding, else ``head`` if any owner is the
head, else its first owner decides. Parameters with ``requires_grad=False`` land in the group
of their role too (optimizers skip a parameter without a gradient, so this is harmless and a
later unfreeze just trains); ``trainable_only=True`` leaves them out.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

ROLES = ("hidden", "embedding", "head", "norm", "bias", "other")
# What each role's group is called in the returned param groups (the ``"name"`` entry).
GROUP_OF = {role: "hidden" if role == "hidden" else "rest" for role in ROLES}

Overrides = Mapping[str, str] | Callable[[str, Tensor], str | None]

# Layers whose weight is a map between dense activations (conv kernels read as
# ``(out, in * kh * kw)``, as the orthogonalised presets do).
_MAPS = (
    nn.Linear,
    nn.Bilinear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.MultiheadAttention,
)
_EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)
_NORMS = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, InstanceNorm*, SyncBatchNorm, lazy ones
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
    nn.LocalResponseNorm,
)


def param_roles(model: nn.Module, roles: Overrides | None = None) -> dict[str, str]:
    """The role (one of :data:`ROLES`) of every parameter of ``model``, by its name.

    Names are those of ``model.named_parameters()`` (a shared parameter appears once, under its
    first name). ``roles`` overrides the automatic rule: a mapping from ``fnmatch`` patterns of
    parameter names to roles (a shared parameter matches under any of its names), or a function
    ``(name, param) -> role or None`` (``None``: keep the automatic role).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: an override names an unknown role, a pattern matches no parameter, or a
            shared parameter's names match patterns of different roles.

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
        >>> param_roles(model)["0.weight"], param_roles(model)["2.weight"]
        ('hidden', 'head')
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"param_roles needs an nn.Module (its module types give the roles), got "
            f"{type(model).__name__}; wrap loose tensors in an nn.ParameterList"
        )
    owners = _owners(model)
    head = _head(model)
    out = {}
    for name, param in model.named_parameters():
        out[name] = _auto_role(param, owners[id(param)], head)
    if roles is not None:
        _apply_overrides(out, dict(model.named_parameters()), owners, roles)
    return out


def param_groups(
    model: nn.Module,
    *,
    hidden: Mapping[str, Any] | None = None,
    rest: Mapping[str, Any] | None = None,
    roles: Overrides | None = None,
    trainable_only: bool = False,
) -> list[dict[str, Any]]:
    """Param groups for a Muon-style optimizer: hidden matrices in one, the rest in another.

    Returns ``[{"name": "hidden", "params": [...], **hidden}, {"name": "rest", "params": [...],
    **rest}]``, leaving out a group with no parameter. ``rest`` defaults to ``{"memory":
    "adam"}``: with :class:`~assocmem.MemoryOptimizer` (each group may name its own ``memory``)
    the hidden group takes the optimizer's preset and the rest is Adam. Set the rest group's
    ``lr`` (and ``betas``) yourself: it otherwise inherits the optimizer's, which is a Muon
    step size (~0.02), large for Adam. The ``"name"`` entry is only a label (torch keeps extra
    group keys). Roles are :func:`param_roles`'s, ``roles`` overrides them.

    Args:
        model: the module whose parameters are split.
        hidden: extra entries of the hidden group (e.g. ``{"lr": 0.02}``).
        rest: entries of the rest group, over the default ``{"memory": "adam"}`` (a rest
            group without its own ``memory`` is Adam; name one to step it otherwise).
        roles: overrides of the automatic roles (see :func:`param_roles`).
        trainable_only: leave out parameters with ``requires_grad=False``.

    Example:
        >>> from torch import nn
        >>> from assocmem import MemoryOptimizer
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2))
        >>> groups = param_groups(model, rest={"memory": "adam", "lr": 1e-3})
        >>> [(g["name"], len(g["params"])) for g in groups]
        [('hidden', 1), ('rest', 3)]
        >>> opt = MemoryOptimizer(groups, memory="muon", lr=0.02)
    """
    # merged into the default: rest={"lr": 2e-3}, what the docs invite, put the tied
    # embedding and head, norms and biases on the optimizer's Muon (a user audit)
    rest = {"memory": "adam", **(rest or {})}
    options = {"hidden": dict(hidden or {}), "rest": rest}
    for group, entries in options.items():
        if "params" in entries or "name" in entries:
            raise ValueError(f"{group}= sets group options; 'params' and 'name' are chosen here")
    assigned = param_roles(model, roles)
    named = dict(model.named_parameters())
    by_group: dict[str, list[Tensor]] = {"hidden": [], "rest": []}
    for name, role in assigned.items():
        param = named[name]
        if trainable_only and not param.requires_grad:
            continue
        by_group[GROUP_OF[role]].append(param)
    return [
        {"name": group, "params": params, **options[group]}
        for group, params in by_group.items()
        if params
    ]


def _owners(model: nn.Module) -> dict[int, list[tuple[str, nn.Module, str]]]:
    """Every ``(module name, module, attribute)`` holding each parameter, in module order."""
    owners: dict[int, list[tuple[str, nn.Module, str]]] = {}
    for mod_name, module in model.named_modules(remove_duplicate=False):
        for attr, param in module._parameters.items():
            if param is not None:
                owners.setdefault(id(param), []).append((mod_name, module, attr))
    return owners


def _is_map_weight(module: nn.Module, attr: str) -> bool:
    if not isinstance(module, _MAPS):
        return False
    if isinstance(module, nn.MultiheadAttention):
        return attr.endswith("_weight")  # in_proj_weight or q/k/v_proj_weight
    if getattr(module, "groups", 1) > 1:
        # a grouped (depthwise) conv's weight is a stack of independent maps, one per group:
        # orthogonalised as one matrix, a channel's update moved with another's gradient
        return False
    return attr == "weight"


def _head(model: nn.Module) -> nn.Module | None:
    """The output layer: the last linear/conv/attention layer in registration order, unless
    that layer belongs to a repeated block (its name, block indices aside, names another layer:
    ``layers.1.linear2`` beside ``layers.0.linear2``). A model without an output layer of its
    own (an ``nn.TransformerEncoder``, a language model whose logits are ``F.linear`` of the
    tied embedding) then has no head: its last block's layer is as hidden as the others' (it
    was put on Adam as the head)."""
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, _MAPS)]
    if not layers:
        return None
    name, last = layers[-1]
    pattern = _block_pattern(name)
    if any(_block_pattern(other) == pattern for other, _ in layers[:-1]):
        return None
    return last


def _block_pattern(name: str) -> tuple[str, ...]:
    """A module name with its block indices (a number followed by more of the name) as ``#``:
    ``layers.1.linear2`` -> ``layers.#.linear2``; a last number stays (``2`` in a
    ``Sequential`` is the third layer, not a block)."""
    parts = name.split(".")
    return tuple("#" if p.isdigit() and i < len(parts) - 1 else p for i, p in enumerate(parts))


def _auto_role(param: Tensor, owners: list[tuple[str, nn.Module, str]], head) -> str:
    if any(isinstance(module, _EMBEDDINGS) for _, module, _ in owners):
        return "embedding"
    if head is not None and any(module is head for _, module, _ in owners):
        return "head"
    if any(isinstance(module, _NORMS) for _, module, _ in owners):
        return "norm"
    _, module, attr = owners[0]
    if param.dim() >= 2 and _is_map_weight(module, attr):
        return "hidden"
    if param.dim() < 2 and "bias" in attr:
        return "bias"
    return "other"


def _apply_overrides(
    out: dict[str, str],
    named: dict[str, Tensor],
    owners: dict[int, list[tuple[str, nn.Module, str]]],
    roles: Overrides,
) -> None:
    def check(role: Any, where: str) -> str:
        if role not in ROLES:
            raise ValueError(f"{where}: unknown role {role!r}; roles are {', '.join(ROLES)}")
        return role

    if callable(roles):
        for name, param in named.items():
            role = roles(name, param)
            if role is not None:
                out[name] = check(role, f"roles({name!r})")
        return
    if not isinstance(roles, Mapping):
        raise TypeError(
            f"roles must be a mapping of name patterns to roles or a function, got {roles!r}"
        )
    # Every name a parameter has (a tied weight is both "embed.weight" and "head.weight").
    aliases = {
        name: [f"{m}.{a}" if m else a for m, _, a in owners[id(param)]]
        for name, param in named.items()
    }
    used = set()
    for name in named:
        chosen = {}
        for pattern, role in roles.items():
            if any(fnmatch.fnmatchcase(alias, pattern) for alias in aliases[name]):
                chosen[pattern] = check(role, f"roles[{pattern!r}]")
                used.add(pattern)
        if len(set(chosen.values())) > 1:
            raise ValueError(
                f"parameter {name!r} (also {', '.join(aliases[name])}) matches patterns of "
                f"different roles: {chosen}"
            )
        if chosen:
            out[name] = next(iter(chosen.values()))
    if unused := [p for p in roles if p not in used]:
        raise ValueError(f"roles pattern(s) {unused} match no parameter of the model")
