"""Learned prediction-error filters: the constrained first layer of general manipulation detectors.

Resampling, filtering and learned restoration all change how well a pixel is predicted from its
neighbours: interpolation makes pixels linear combinations of their neighbours (Popescu and
Farid's resampling trace), smoothing removes the part of the signal no neighbour predicts. Bayar
and Stamm ("Constrained Convolutional Neural Networks: A New Approach Towards General Purpose
Image Manipulation Detection", IEEE TIFS 2018) therefore constrain a CNN's first layer to be a
bank of *prediction-error filters*,

    r(x)_p = sum_{q in N(p)} w_q x_q - x_p,      sum_q w_q = 1,

(centre tap -1, the other taps summing to 1), so the layer can only output what its learned
predictor gets wrong and never the image content itself; one network so built detects
resampling, median and Gaussian filtering, noise and JPEG without a feature made for each.

The paper projects the weights back onto the constraint after every step, which ties the layer
to its training loop. Here the constraint is a parameterisation instead,
``w = 1 / (k^2 - 1) + v - mean(v)`` over the off-centre taps (:func:`prediction_error_kernels`):
it holds exactly for every ``v``, so any optimizer, optimizer state or checkpoint keeps it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from assocmem.forensic.models.cnn import CNNEncoder

__all__ = ["PredictionErrorBranch", "prediction_error_kernels"]


def prediction_error_kernels(free: Tensor, size: int) -> Tensor:
    """Kernels ``(F, 1, size, size)`` from free off-centre taps ``free`` ``(F, size^2 - 1)``:
    centre ``-1``, off-centre ``1 / (size^2 - 1) + free - mean(free)`` (summing to 1), so
    every kernel sums to 0 and a constant image maps to 0."""
    if size < 3 or size % 2 == 0:
        raise ValueError(f"prediction-error kernels need an odd size >= 3, got {size}")
    taps = size * size - 1
    if free.ndim != 2 or free.shape[1] != taps:
        raise ValueError(f"free taps must be (F, {taps}) for size {size}, got {tuple(free.shape)}")
    off = 1.0 / taps + free - free.mean(dim=1, keepdim=True)
    centre = -torch.ones_like(off[:, :1])
    half = taps // 2
    flat = torch.cat([off[:, :half], centre, off[:, half:]], dim=1)
    return flat.reshape(-1, 1, size, size)


class PredictionErrorBranch(nn.Module):
    """An RGB image in [0, 1] -> an ``embed_dim`` vector read from its prediction errors.

    Each colour channel goes through ``filters`` learned prediction-error kernels of side
    ``size`` (a depthwise convolution without padding, so the image border, which no kernel
    can predict, is cut rather than invented); the ``3 * filters`` error maps, scaled by
    ``gain`` (errors of textured photos are a few 1e-2), feed a :class:`CNNEncoder` with batch
    statistics, so the errors' *amplitude* (how predictable a patch is) reaches the classifier
    (see :class:`~assocmem.forensic.models.npr.NPR`'s ``norm``).
    """

    def __init__(
        self,
        filters: int = 4,
        size: int = 5,
        widths: tuple[int, ...] = (16, 32, 64),
        channels: int = 3,
        gain: float = 10.0,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        self.size, self.channels, self.gain = size, channels, gain
        # Small random taps around the uniform predictor: distinct filters from the start
        # (Bayar and Stamm also start from random weights), all high-pass.
        self.free = nn.Parameter(init_std * torch.randn(channels * filters, size * size - 1))
        self.encoder = CNNEncoder(widths, channels=channels * filters, norm="batch")
        self.embed_dim = self.encoder.embed_dim

    def errors(self, x: Tensor) -> Tensor:
        """The prediction-error maps: (N, C, H, W) -> (N, C * filters, H - size + 1, ...)."""
        if x.shape[1] != self.channels:
            raise ValueError(f"expected {self.channels} channels, got {x.shape[1]}")
        kernels = prediction_error_kernels(self.free, self.size).to(x.dtype)
        return F.conv2d(x, kernels, groups=self.channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(self.gain * self.errors(x))
