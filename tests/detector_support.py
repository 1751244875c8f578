"""A tiny untrained detector checkpoint, for tests of the checkpoint format and the CLI."""

from __future__ import annotations

from pathlib import Path

import torch

from assocmem.forensic.checkpoint import build_model, save_detector
from assocmem.forensic.views import view_logits

ARCH_KWARGS = {"widths": [4, 8], "norm": "batch"}


def save_tiny_detector(path: Path, n_val: int = 40, views: str = "one") -> Path:
    """An NPR with 4 and 8 channels (fast), calibrated on its logits under ``views`` of ``n_val``
    noise patches."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = build_model("npr", ARCH_KWARGS).eval()
    with torch.no_grad():
        val = view_logits(model, torch.rand(n_val, 3, 32, 32, generator=gen), views)
    save_detector(
        path,
        model,
        architecture="npr",
        arch_kwargs=ARCH_KWARGS,
        patch_size=32,
        val_real_logits=val,
        target_fpr=0.05,
        views=views,
        info={"command": "tests/detector_support.py"},
    )
    return path
