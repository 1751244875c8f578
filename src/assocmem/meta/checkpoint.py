"""Checkpoints of learned memories: safetensors tensors + a JSON header, never pickle.

Layout of a file:

- tensors ``meta.<name>``: the meta-parameters (:func:`assocmem.meta.network.init_meta_params`);
- training checkpoints add ``optim.<i>.<key>`` (the meta-optimizer's state) and ``rng.<name>``
  (``torch.Generator`` states as uint8 tensors), so meta-training resumes bit-exactly;
- metadata ``{"assocmem": json}`` with ``format``, ``version``, ``config`` (the
  :class:`~assocmem.meta.config.LearnedConfig`, every field of it), free-form ``info``
  (training config, step, the command that made it) and, since version 2, two digests:

  - ``network_sha256``: :func:`network_digest` of the ``meta.*`` tensors and the config,
    everything the memory computes with. A header edited to another ``warmup``, ``lr`` or
    ``betas``, or tensors swapped, transposed or cast, change it;
  - ``extra_sha256``: :func:`weights_digest` of the ``optim.*`` and ``rng.*`` tensors (those of
    no tensors where there are none), what a training run resumes from.

  Like the detectors' digests they guard against accidents (an edited header, another run's
  tensors, a bad copy), not against someone who edits the tensors and the digest together;
  ``info`` is a record for people and is not covered (a resumed meta-training run checks the
  fields of it that it reads against each other and its config: ``train.py``).

:func:`load_checkpoint` refuses, with a ``ValueError`` naming the difference, a file of another
format version, a config that is invalid, incomplete or other than the network it is loaded
into, tensors of the wrong names, shape or dtype or holding non-finite values, and (version 2)
tensors or a config whose digest is not the one the header recorded, so a checkpoint can never
silently drive a different (or broken) network; a path that is no regular file is refused
without being opened.

Version-1 files (written before the digests) are still read, with an
:class:`UnverifiedCheckpointWarning`: they hold no digest, so edits to them cannot be detected
(a v1 header that names a digest is refused: no v1 writer made one). Their config may lack
``warmup`` (read as 0, as version 1 always did); a version-2 config must name every field.
Re-saving one with :func:`save_checkpoint` writes version 2.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from assocmem.meta.config import LearnedConfig
from assocmem.meta.network import MetaParams, init_meta_params
from assocmem.storage import read_safetensors, strict_json, write_safetensors
from assocmem.storage.digest import bound_digest, weights_digest

FORMAT = "assocmem.learned_memory"
# 2 added the digests ``network_sha256`` and ``extra_sha256`` and requires every config field
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
DEFAULT_CHECKPOINT = Path(__file__).with_name("checkpoints") / "default.safetensors"


@dataclass
class Checkpoint:
    """What a checkpoint file holds, in memory."""

    meta_params: MetaParams
    config: LearnedConfig
    info: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Tensor] = field(default_factory=dict)  # optim.* and rng.* tensors

    @property
    def network_sha256(self) -> str:
        """:func:`network_digest` of the meta-parameters and config: the memory's identity,
        computed from the tensors (a version-1 file has one too, though it stores none)."""
        return network_digest(self.meta_params, self.config)


class UnverifiedCheckpointWarning(UserWarning):
    """A checkpoint without digests (format version 1) was read: edits cannot be detected."""


def network_digest(meta_params: Mapping[str, Tensor], config: LearnedConfig) -> str:
    """SHA-256 (hex) of the meta-parameters' :func:`weights_digest` (names without the file's
    ``meta.`` prefix) and the config as compact sorted JSON: everything the memory computes
    with. The header's ``network_sha256``; the learned preset records it in an optimizer's
    state dict to know the memory file it was saved with."""
    return bound_digest(weights_digest(meta_params), config.to_dict())


def save_checkpoint(
    path: str | os.PathLike[str],
    meta_params: MetaParams,
    config: LearnedConfig,
    *,
    info: dict[str, Any] | None = None,
    extra: dict[str, Tensor] | None = None,
    beside: Sequence[tuple[Path, bytes]] = (),
) -> None:
    """Write ``meta_params`` (and optional ``extra`` tensors) with their config, atomically;
    ``beside``: other files written as a pair with it (a sidecar: ``write_safetensors``).

    Meta-parameters that are not floating point (integer, complex) or not finite are refused
    here, as :func:`load_checkpoint` would refuse them: a file is never written that cannot be
    read back. A non-finite number in ``info`` (a diverged loss) is stored as ``null``, as in
    every JSON the project writes (``storage.strict_json``)."""
    _check_shapes(meta_params, config)
    kinds = {k: v.dtype for k, v in meta_params.items() if not v.is_floating_point()}
    if kinds:
        raise ValueError(
            f"meta-parameters must be floating point, got {kinds}; nothing was written"
        )
    bad = sorted(k for k, v in meta_params.items() if not bool(torch.isfinite(v).all()))
    if bad:
        raise ValueError(f"meta-parameters {bad} hold NaN or inf; nothing was written")
    tensors = {f"meta.{k}": v.detach().contiguous().cpu() for k, v in meta_params.items()}
    for k, v in (extra or {}).items():
        if not (k.startswith("optim.") or k.startswith("rng.")):
            raise ValueError(f"extra tensor names must start with 'optim.' or 'rng.', got {k!r}")
        tensors[k] = v.detach().contiguous().cpu()
    meta_tensors = {k: v for k, v in tensors.items() if k.startswith("meta.")}
    extra_tensors = {k: v for k, v in tensors.items() if not k.startswith("meta.")}
    header = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "config": config.to_dict(),
        "info": strict_json.finite_or_null(info or {}),
        "network_sha256": network_digest(_unprefixed(meta_tensors), config),
        "extra_sha256": weights_digest(extra_tensors),
    }
    path = Path(path)
    write_safetensors(path, tensors, header, beside=beside)


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
        TypeError: ``config`` is not a :class:`LearnedConfig` (a dict was an AttributeError
            after the file was read).
    """
    if config is not None and not isinstance(config, LearnedConfig):
        raise TypeError(
            f"config must be a LearnedConfig or None, got {type(config).__name__} (for a dict, "
            "LearnedConfig.from_dict(d))"
        )
    path = Path(DEFAULT_CHECKPOINT if path is None else path)
    metadata, tensors = read_safetensors(path, "learned-memory checkpoint")
    if "assocmem" not in metadata:
        raise ValueError(f"{path} is not an assocmem learned-memory checkpoint (no header)")
    try:
        header = json.loads(metadata["assocmem"], object_pairs_hook=strict_json.unique_keys)
    except (ValueError, RecursionError) as e:  # malformed, too deep, a 5000-digit number
        raise ValueError(f"{path}: the checkpoint's JSON header is malformed ({e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the checkpoint's header is {type(header).__name__}, not a dict")
    if header.get("format") != FORMAT:
        raise ValueError(f"{path}: format {header.get('format')!r}, expected {FORMAT!r}")
    version = header.get("version")
    if type(version) is not int or version not in READABLE_VERSIONS:  # no bools
        raise ValueError(
            f"{path}: checkpoint format version {version!r}, this assocmem reads versions "
            f"{list(READABLE_VERSIONS)}"
        )
    if "config" not in header:
        raise ValueError(f"{path}: the checkpoint's header has no 'config'")
    if version >= 2 and isinstance(header["config"], dict):
        # every field named: a missing one must not silently take its default (a deleted
        # ``warmup`` ran the memory without the warm-up it was meta-trained with)
        lacking = sorted({f.name for f in fields(LearnedConfig)} - set(header["config"]))
        if lacking:
            raise ValueError(
                f"{path}: the checkpoint's config lacks {lacking}; a version-{version} "
                "checkpoint names every field, so it was edited"
            )
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
    meta = _unprefixed({k: v for k, v in tensors.items() if k.startswith("meta.")})
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
    _check_digests(path, header, meta, saved, extra)
    return Checkpoint(meta, saved, info, extra)


_DIGESTS = ("network_sha256", "extra_sha256")


def _check_digests(
    path: Path,
    header: dict[str, Any],
    meta: MetaParams,
    config: LearnedConfig,
    extra: dict[str, Tensor],
) -> None:
    """Refuse tensors or a config other than the ones the header's digests were computed on
    (version 2); warn that a version-1 file, which has none, is unverified."""
    named = [k for k in _DIGESTS if k in header]
    if header["version"] < 2:
        if named:
            raise ValueError(
                f"{path}: a version-1 header names {named}, which came with version 2; the "
                "file was edited"
            )
        warnings.warn(
            f"{path}: a version-1 learned-memory checkpoint, written before checkpoints held "
            "a digest: an edit to its tensors or config cannot be detected. Re-save it with "
            "assocmem.meta.save_checkpoint to add one",
            UnverifiedCheckpointWarning,
            stacklevel=3,
        )
        return
    lacking = [k for k in _DIGESTS if k not in header]
    if lacking:
        raise ValueError(
            f"{path}: the version-2 header lacks {lacking}: edited or corrupted (the digests "
            "are written with every version-2 checkpoint)"
        )
    if header["network_sha256"] != network_digest(meta, config):
        raise ValueError(
            f"{path}: edited or corrupted: the meta-parameters or the config are not the ones "
            "the checkpoint was saved with (their SHA-256 differs from network_sha256), so it "
            "would drive a different network than the one meta-trained"
        )
    if header["extra_sha256"] != weights_digest(extra):
        raise ValueError(
            f"{path}: edited or corrupted: the optim.* and rng.* tensors are not the ones the "
            "checkpoint was saved with (their SHA-256 differs from extra_sha256)"
        )


def _unprefixed(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k[len("meta.") :]: v for k, v in tensors.items()}


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
