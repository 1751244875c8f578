"""NPR: a detector of the up-sampling trace, fed the neighbouring-pixel residual.

Generators up-sample feature maps; inside each up-sampled ``2 x 2`` block the pixels are tied
to each other (copied, interpolated or convolved from one source value), which real cameras do
not do. NPR (Tan et al., "Rethinking the Up-Sampling Operations in CNN-based Generative Network
for Generalizable Deepfake Detection", CVPR 2024) exposes that tie with one fixed operation,

    NPR(x) = x - up_nearest(down_nearest(x, 1/2), 2),

i.e. each pixel minus the top-left pixel of its ``2 x 2`` block, and trains a small CNN on the
residual instead of the image, so content hardly reaches the classifier. The paper uses the
first stages of a ResNet-50 on 224 px; here the same residual feeds :class:`SmallCNN`, sized for
32 px patches on a CPU (~0.15M parameters).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from assocmem.forensic.models.baselines import SmallCNN

__all__ = ["NPR", "NPRWithPixels", "neighbouring_pixel_residual"]


def neighbouring_pixel_residual(x: Tensor) -> Tensor:
    """``x - up(down(x))`` with nearest resampling by 2: zero at each block's top-left pixel,
    the difference to it elsewhere. ``x`` (N, C, H, W) with even H and W."""
    if x.shape[-1] % 2 or x.shape[-2] % 2:
        raise ValueError(f"NPR needs even height and width, got {tuple(x.shape[-2:])}")
    down = F.interpolate(x, scale_factor=0.5, mode="nearest")
    return x - F.interpolate(down, scale_factor=2.0, mode="nearest")


class NPR(SmallCNN):
    """Neighbouring-pixel residual -> :class:`SmallCNN` (its encoder and linear logit).

    The residual of an image in [0, 1] is small (a few 1e-2 on textured photos), so it is
    scaled by ``gain`` before the first convolution; the encoder's normalisation layers make the
    exact value unimportant, it only keeps the first activations away from zero at init.
    ``norm="batch"`` normalises with batch statistics instead of per image: the residual's
    *amplitude* (how much fine detail an image has, which smoothing generators remove) then
    reaches the classifier, while GroupNorm divides it out image by image.
    """

    def __init__(
        self,
        widths: tuple[int, ...] = (16, 32, 64),
        channels: int = 3,
        gain: float = 10.0,
        norm: str = "group",
    ) -> None:
        super().__init__(widths, channels, norm)
        self.gain = gain

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(self.gain * neighbouring_pixel_residual(x))


class NPRWithPixels(nn.Module):
    """Two :class:`SmallCNN` encoders side by side, one on the neighbouring-pixel residual and
    one on the image itself, their embeddings concatenated into one linear logit.

    NPR alone sees only what happens inside ``2 x 2`` blocks; traces that are not an up-sampling
    tie (a JPEG grid on 8 x 8 blocks, a pasted region's boundary, an over-smoothed texture) are
    visible to the pixel branch. Both use batch statistics (see :class:`NPR`).
    """

    def __init__(
        self, widths: tuple[int, ...] = (16, 32, 64), channels: int = 3, gain: float = 10.0
    ) -> None:
        super().__init__()
        self.residual = NPR(widths, channels, gain, norm="batch")
        self.pixels = SmallCNN(widths, channels, norm="batch")
        dim = self.residual.encoder.embed_dim + self.pixels.encoder.embed_dim
        self.fc = nn.Linear(dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        r = self.residual.encoder(self.residual.gain * neighbouring_pixel_residual(x))
        return self.fc(torch.cat([r, self.pixels.encoder(x)], dim=1)).squeeze(-1)
