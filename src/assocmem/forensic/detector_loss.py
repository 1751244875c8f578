"""A detector's training loss on one batch, in one place for the training loop and the race.

The loss a detector trains on is the binary cross-entropy of its logit (with a one-class head's
margin, :func:`~assocmem.forensic.models.one_class.margin_bce`), plus, with a
:class:`~assocmem.forensic.models.attribution.FamilyAttribution` around it, the family head's
cross-entropy from the batch's family codes. With ``real_consistency = w > 0`` it also asks a
real crop to score the same whatever post-processing it went through: a stream made with
``TrainStream(real_twins=True)`` carries, for each real of the batch (in row order), a second
view of that crop under an independent draw of the same post-processing, and the loss adds

    w * mean over the reals of (z(real) - z(twin))^2,

``z`` the detector's logit: adversarial logit pairing's form (Kannan, Kurakin and Goodfellow,
2018), here between processings of one photo crop rather than between an image and its
adversarial twin. The twins pass through the network in the same forward as the batch, so both
views of a crop are normalised alike (a BatchNorm layer's batch statistics, and so its running
ones, then include the twins), and they are in neither cross-entropy.

Batches are the stream's ``(images, labels, family codes[, twins])``, labels 1 = fake.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from assocmem.forensic.models.attribution import FamilyAttribution
from assocmem.forensic.models.one_class import margin_bce, margin_of

__all__ = ["detector_loss", "logit_pairing"]


def logit_pairing(logits: Tensor, twin_logits: Tensor) -> Tensor:
    """Mean squared difference of two views' logits, (N,) each; 0 for no rows."""
    if logits.shape != twin_logits.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and twins {tuple(twin_logits.shape)}")
    if logits.numel() == 0:
        return logits.sum()  # no reals in the batch: nothing to pair, and a graph all the same
    return (logits - twin_logits).pow(2).mean()


def detector_loss(
    detector: nn.Module,
    batch: Sequence[Tensor],
    *,
    attribution: FamilyAttribution | None = None,
    real_consistency: float = 0.0,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """The training loss of ``detector`` on ``batch`` (see the module docstring), its tensors
    moved to ``device`` (default: where they are) and its images cast to ``dtype`` (default:
    as they are; the detector's own, for a float64 one)."""
    if attribution is not None and attribution.detector is not detector:
        raise ValueError("attribution must wrap the detector being trained")
    # math, not a tensor: this runs every step
    if not (math.isfinite(real_consistency) and real_consistency >= 0):
        raise ValueError(f"real_consistency must be a finite weight >= 0, got {real_consistency}")
    images, labels = batch[0].to(device, dtype), batch[1].to(device)
    if attribution is not None and len(batch) < 3:
        raise ValueError("attribution needs batches with family codes (a TrainStream)")
    twins, real = None, None
    if real_consistency:
        if len(batch) < 4:
            raise ValueError(
                "real_consistency needs batches with twin views of the reals "
                "(TrainStream(real_twins=True))"
            )
        twins, real = batch[3].to(device, dtype), labels == 0
        n_real = int(real.sum())
        if twins.shape[0] != n_real or twins.shape[1:] != images.shape[1:]:
            raise ValueError(
                f"twins {tuple(twins.shape)} must be one image per real of the batch "
                f"({n_real} of shape {tuple(images.shape[1:])})"
            )
        images = torch.cat([images, twins])
    n = labels.shape[0]
    if attribution is not None:
        logit, scores = attribution.outputs(images)
        loss = attribution.loss_of(logit[:n], scores[:n], labels, batch[2])
    else:
        logit = detector(images)
        loss = margin_bce(logit[:n], labels, margin_of(detector))
    if twins is not None:
        loss = loss + real_consistency * logit_pairing(logit[:n][real], logit[n:])
    return loss
