"""Test-time views: a detector's logit averaged over the eight symmetries of a square.

The training stream flips and rotates each *real* crop by a multiple of 90 degrees before a
family turns it into a fake (``data.stream``), so the content is seen in every orientation but
every generator trace in its own: a rotated view shows the detector a rotated trace it never
trained on. The averaging still helps where the traces are close to symmetric under the group:
a nearest or transposed-convolution up-sampler repeats on a ``2 x 2`` cell and the JPEG grid is
``8 x 8``, and both grids map onto themselves when the side is a multiple of 8 (the 32-pixel
patches and tiles are; ``tiling`` aligns tiles to the model's grid). Measured, not derived:
on ``npr_dct_dropout`` (docs/results.md, "Forensic detectors", rows with ``d4 views``) the
mean logit over the eight views raised the held-out and the seen mean AUC on every seed,
at eight times the inference cost and with no retraining.

The mean is of logits, not probabilities, as the tiles of an image are combined
(``tiling.combine``): a calibrated threshold is set on the same averaged logit
(``protocol.zero_shot_report`` calibrates on whatever score function it is given), and a
detector checkpoint names the views its threshold was calibrated under (``checkpoint``'s
``views``), which ``Detector`` then scores each tile with.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from assocmem.forensic.train import logits

__all__ = ["VIEWS", "dihedral", "view_logits", "view_mean"]

# Names of the view sets: ``one`` is the image as it is, ``d4`` its eight dihedral views.
VIEWS = ("one", "d4")


def dihedral(images: Tensor) -> list[Tensor]:
    """The eight D4 views of (..., H, W) images: rotations by 0, 90, 180, 270 degrees, each
    without and with a horizontal flip (the identity first)."""
    views = []
    for quarter_turns in range(4):
        turned = torch.rot90(images, quarter_turns, dims=(-2, -1))
        views += [turned, turned.flip(-1)]
    return views


def view_mean(forward: Callable[[Tensor], Tensor], images: Tensor, views: str = "one") -> Tensor:
    """``forward(images)`` averaged over ``views`` of the images: the mean of the stacked
    per-view outputs (``one``: the output itself). One computation for calibration
    (:func:`view_logits`) and for scoring (``Detector``), so both compute the same function;
    their batches differ, and kernels round by batch shape, so a score can differ in its last
    float32 bits (~1e-7 relative) between the two (``calibration.threshold_at_fpr``)."""
    if views not in VIEWS:
        raise ValueError(f"views must be one of {VIEWS}, got {views!r}")
    if views == "one":
        return forward(images)
    return torch.stack([forward(v) for v in dihedral(images)]).mean(0)


def view_logits(
    model: nn.Module, images: Tensor, views: str = "one", batch_size: int = 256
) -> Tensor:
    """Logits (N,) of ``model`` on ``images`` (N, C, H, W), averaged over ``views``."""
    return view_mean(lambda x: logits(model, x, batch_size), images, views)
