"""Checkpoints of learned memories: safetensors tensors + a JSON header, never pickle.

Layout of a file:

- tensors ``meta.<name>``: the meta-parameters (:func:`assocmem.meta.network.init_meta_params`);
- training checkpoints add ``optim.<i>.<key>`` (the meta-optimizer's state) and ``rng.<name>``
  (``torch.Generator`` states as uint8 tensors), so meta-training resumes bit-exactly;
- metadata ``{"assocmem": json}`` with ``format``, ``version``, ``config`` (the
  :class:`~assocmem.meta.config.LearnedConfig`) and free-form ``info`` (training config,
  step, the command that made it).

:func:`load_checkpoint` refuses, with a ``ValueError`` naming the difference, a file of another
format version, a config that is invalid or other than the network it is loaded into, or
tensors of the wrong names, shape or dtype or holding non-finite values, so a checkpoint can
never silently drive a different (or broken) network; a path that is no regular file is refused
without being opened.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from assocmem.meta.config import LearnedConfig
from assocmem.meta.network import MetaParams, init_meta_params
from assocmem.storage import read_safetensors, write_safetensors

FORMAT = "assocmem.learned_memory"
FORMAT_VERSION = 1
DEFAULT_CHECKPOINT = Path(__file__).with_name("checkpoints") / "default.safetensors"


@dataclass
class Checkpoint:
    """What a checkpoint file holds, in memory."""

    meta_params: MetaParams
    config: LearnedConfig
    info: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Tensor] = field(default_factory=dict)  # optim.* and rng.* tensors


def save_checkpoint(
    path: str | os.PathLike[str],
    meta_params: MetaParams,
    config: LearnedConfig,
    *,
    info: dict[str, Any] | None = None,
    extra: dict[str, Tensor] | None = None,
) -> None:
    """Write ``meta_params`` (and optional ``extra`` tensors) with their config, atomically.

    Non-finite meta-parameters are refused here, as :func:`load_checkpoint` would refuse
    them: a file is never written that cannot be read back."""
    _check_shapes(meta_params, config)
    bad = sorted(k for k, v in meta_params.items() if not bool(torch.isfinite(v).all()))
    if bad:
        raise ValueError(f"meta-parameters {bad} hold NaN or inf; nothing was written")
    tensors = {f"meta.{k}": v.detach().contiguous().cpu() for k, v in meta_params.items()}
    for k, v in (extra or {}).items():
        if not (k.startswith("optim.") or k.startswith("rng.")):
            raise ValueError(f"extra tensor names must start with 'optim.' or 'rng.', got {k!r}")
        tensors[k] = v.detach().contiguous().cpu()
    header = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "config": config.to_dict(),
        "info": info or {},
    }
    path = Path(path)
    write_safetensors(path, tensors, header)


def load_checkpoint(
    path: str | os.PathLike[str] | None = None, config: LearnedConfig | None = None
) -> Checkpoint:
    """Read a checkpoint; ``path=None`` is the shipped default.

    Args:
        path: a ``.safetensors`` file written by :func:`save_checkpoint`.
        config: the network the parameters are meant for; ``None`` accepts the saved one.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a regular file (a directory or FIFO is never opened), not safetensors,
            not an assocmem checkpoint, another format version, a malformed header, a missing or
            invalid config (see :class:`LearnedConfig`: e.g. non-finite bounds, non-positive
            time scales), a config different from ``config``, or tensors whose names, shapes,
            dtypes or values (non-finite) do not fit the config.
    """
    path = Path(DEFAULT_CHECKPOINT if path is None else path)
    metadata, tensors = read_safetensors(path, "learned-memory checkpoint")
    if "assocmem" not in metadata:
        raise ValueError(f"{path} is not an assocmem learned-memory checkpoint (no header)")
    try:
        header = json.loads(metadata["assocmem"])
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: the checkpoint's JSON header is malformed ({e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the checkpoint's header is {type(header).__name__}, not a dict")
    if header.get("format") != FORMAT:
        raise ValueError(f"{path}: format {header.get('format')!r}, expected {FORMAT!r}")
    if type(header.get("version")) is not int or header["version"] != FORMAT_VERSION:  # no bools
        raise ValueError(
            f"{path}: checkpoint format version {header.get('version')!r}, this assocmem reads "
            f"version {FORMAT_VERSION}"
        )
    if "config" not in header:
        raise ValueError(f"{path}: the checkpoint's header has no 'config'")
    try:
        saved = LearnedConfig.from_dict(header["config"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: invalid config in the checkpoint: {e}") from None
    info = header.get("info", {})
    if not isinstance(info, dict):
        raise ValueError(f"{path}: the checkpoint's 'info' is {type(info).__name__}, not a dict")
    if config is not None and saved != config:
        diff = {
            k: (v, config.to_dict()[k])
            for k, v in saved.to_dict().items()
            if v != config.to_dict()[k]
        }
        raise ValueError(
            f"{path}: checkpoint config does not match the network it is loaded into; "
            f"differences (saved, expected): {diff}"
        )
    meta = {k[len("meta.") :]: v for k, v in tensors.items() if k.startswith("meta.")}
    _check_shapes(meta, saved, where=str(path))
    for k, v in meta.items():
        if not v.is_floating_point() or not bool(v.isfinite().all()):
            raise ValueError(
                f"{path}: meta-parameter {k!r} must be finite floating point, got "
                f"{v.dtype} with {int((~v.isfinite()).sum()) if v.is_floating_point() else 0} "
                "non-finite values"
            )
    extra = {k: v for k, v in tensors.items() if not k.startswith("meta.")}
    stray = sorted(k for k in extra if not k.startswith(("optim.", "rng.")))
    if stray:
        raise ValueError(f"{path}: unexpected tensors {stray} (expected meta.*, optim.*, rng.*)")
    return Checkpoint(meta, saved, info, extra)


def _check_shapes(meta: MetaParams, config: LearnedConfig, where: str = "meta_params") -> None:
    # on the meta device: shapes without memory (an edited header asking for hidden sizes of
    # 10^6 is refused, not allocated) and without drawing from any generator
    with torch.device("meta"):
        expected = init_meta_params(config)
    if set(meta) != set(expected):
        raise ValueError(
            f"{where}: meta-parameter names {sorted(meta)} do not match the config's "
            f"{sorted(expected)}"
        )
    for k, v in expected.items():
        if tuple(meta[k].shape) != tuple(v.shape):
            raise ValueError(
                f"{where}: meta-parameter {k!r} has shape {tuple(meta[k].shape)}, the config "
                f"expects {tuple(v.shape)}"
            )
