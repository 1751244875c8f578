"""Detection heads on an encoder: linear probe, MLP head, frozen or fine-tuned.

(``EncoderDetector`` is a network; ``assocmem.forensic.Detector`` is the product that tiles
images, applies a checkpoint's threshold and views, and may hold any detector network.)

``EncoderDetector(encoder, head, freeze=True)`` is the probe protocol: the encoder's parameters
get ``requires_grad=False``, its forward runs under ``no_grad`` and it stays in eval mode even
when the detector is put in train mode, so only the head learns. ``freeze=False`` is full
fine-tuning: the encoder's parameters get ``requires_grad=True`` (a probe built on the same
encoder before had frozen them, and a fine-tune then trained the head alone). Freezing is in
place, on the encoder itself: one shared with a pretrainer trains again only after
``encoder.requires_grad_(True)`` (or a ``fine_tune`` of it); probe a copy
(``linear_probe(copy.deepcopy(encoder))``) to look at features mid-pretraining. Every detector
returns one logit per image, ``(N,)``; ``sigmoid(logit) = P(fake)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LinearHead(nn.Sequential):
    """LayerNorm then ``w^T z + b``: the normalisation lets one learning rate fit encoders whose
    embedding scales differ (a standard linear-probe practice, e.g. MAE's BatchNorm probe)."""

    def __init__(self, dim: int) -> None:
        super().__init__(nn.LayerNorm(dim), nn.Linear(dim, 1))


class MLPHead(nn.Sequential):
    """LayerNorm, ``dim -> hidden -> 1`` with GELU."""

    def __init__(self, dim: int, hidden: int = 64) -> None:
        super().__init__(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1))


class EncoderDetector(nn.Module):
    """``logit = head(encoder(x))``, shape (N,)."""

    def __init__(self, encoder: nn.Module, head: nn.Module, freeze: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.freeze = freeze
        # both ways on purpose: the encoder may have been frozen (or not) by an earlier detector
        self.encoder.requires_grad_(not freeze)
        if freeze:
            self.encoder.eval()

    def train(self, mode: bool = True) -> EncoderDetector:
        super().train(mode)
        if self.freeze:
            self.encoder.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        if self.freeze:
            with torch.no_grad():
                z = self.encoder(x)
        else:
            z = self.encoder(x)
        return self.head(z).squeeze(-1)


def linear_probe(encoder: nn.Module) -> EncoderDetector:
    """Frozen ``encoder`` + :class:`LinearHead`."""
    return EncoderDetector(encoder, LinearHead(encoder.embed_dim), freeze=True)


def mlp_probe(encoder: nn.Module, hidden: int = 64) -> EncoderDetector:
    """Frozen ``encoder`` + :class:`MLPHead`."""
    return EncoderDetector(encoder, MLPHead(encoder.embed_dim, hidden), freeze=True)


def fine_tune(encoder: nn.Module, head: nn.Module | None = None) -> EncoderDetector:
    """Trainable ``encoder`` + head (linear by default)."""
    return EncoderDetector(encoder, head or LinearHead(encoder.embed_dim), freeze=False)
