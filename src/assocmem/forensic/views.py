"""Test-time views: a detector's logit averaged over the eight symmetries of a square.

The training stream shows every crop under a random horizontal flip and a rotation by a
multiple of 90 degrees (``data.stream.augment``), so a detector has met all eight views of the
dihedral group D4 in training, and the traces it reads map onto themselves under them: NPR's
``2 x 2`` cells and the ``8 x 8`` JPEG grid stay on their grids when the side is a multiple of 8
(the 32-pixel patches and tiles are). A detector's logit still differs from view to view (it is
not invariant by construction, and a trace is a faint signal); their mean is a
lower-variance score of the same image at eight times the inference cost, with no retraining.

The mean is of logits, not probabilities, as the tiles of an image are combined
(``tiling.combine``): a calibrated threshold is set on the same averaged logit
(``protocol.zero_shot_report`` calibrates on whatever score function it is given), and a
detector checkpoint names the views its threshold was calibrated under (``checkpoint``'s
``views``), which ``Detector`` then scores each tile with.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from assocmem.forensic.train import logits

__all__ = ["VIEWS", "dihedral", "view_logits"]

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


def view_logits(
    model: nn.Module, images: Tensor, views: str = "one", batch_size: int = 256
) -> Tensor:
    """Logits (N,) of ``model`` on ``images`` (N, C, H, W), averaged over ``views``."""
    if views not in VIEWS:
        raise ValueError(f"views must be one of {VIEWS}, got {views!r}")
    if views == "one":
        return logits(model, images, batch_size)
    return torch.stack([logits(model, v, batch_size) for v in dihedral(images)]).mean(0)
