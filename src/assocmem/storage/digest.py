"""The digest that binds a checkpoint's header to its tensors.

Both checkpoint formats (the detectors', :mod:`assocmem.forensic.checkpoint`, and the learned
memory's, :mod:`assocmem.meta.checkpoint`) store a SHA-256 of their tensors in the header and
refuse a file whose tensors no longer match it, so an edited or swapped tensor never drives a
network silently.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch
from torch import Tensor

__all__ = ["weights_digest"]


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
