"""The digest that binds a checkpoint's header to its tensors.

Both checkpoint formats (the detectors', :mod:`assocmem.forensic.checkpoint`, and the learned
memory's, :mod:`assocmem.meta.checkpoint`) store a SHA-256 of their tensors in the header and
refuse a file whose tensors no longer match it, so an edited or swapped tensor never drives a
network silently.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["bound_digest", "weights_digest"]


def weights_digest(tensors: Mapping[str, Tensor]) -> str:
    """SHA-256 (hex) of ``tensors`` by name: each name, dtype, shape and raw bytes, in name
    order, so the same tensors give the same digest on any machine (it reads stored bytes,
    computes nothing)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def bound_digest(weights_sha256: str, fields: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a :func:`weights_digest` and ``fields`` (what the network computes with
    beside its tensors: a detector's architecture and views, a learned memory's config) as
    compact sorted JSON, so an edit to either is seen."""
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(f"{weights_sha256}\0{text}".encode()).hexdigest()
