"""The JPEG view of an image: its 8 x 8 block DCT, and a branch that reads compression traces.

A JPEG encoder converts RGB to YCbCr, cuts each channel into 8 x 8 blocks on a grid anchored at
the image's top-left pixel, takes each block's orthonormal 2-D DCT-II and rounds every
coefficient to a multiple of its step in the quantisation table. Decoding does the reverse and
rounds pixels to uint8. Recomputing the same transform on the decoded pixels therefore gives
coefficients that sit near a lattice (multiples of the last step), with the high frequencies
the coarse steps zeroed; a second compression at a different quality leaves its own pattern on
top (coefficients of the first lattice re-rounded onto the second). None of this is visible to
a detector of ``2 x 2`` up-sampling ties (:class:`~assocmem.forensic.models.npr.NPR`): the block
boundary falls *between* its ``2 x 2`` cells.

Two pure functions compute the view, :func:`block_dct` (the coefficients) and
:func:`coefficient_features` (per coefficient, its log-magnitude and how near it sits to the
multiples of a bank of steps); :class:`BlockDCTBranch` reads them per block with a shared MLP
and averages over blocks, so it accepts any image whose sides are multiples of 8 and sees the
grid in the phase JPEG writes it (tiles cut at multiples of 8 keep it).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from assocmem.forensic.models.baselines import dct_matrix
from assocmem.forensic.models.pooling import check_pool, pooled_dim, spatial_pool

__all__ = ["LATTICE_STEPS", "BlockDCTBranch", "block_dct", "coefficient_features", "ycbcr"]

BLOCK = 8
# Quantisation steps to test a coefficient against: the IJG tables at qualities 50-95 use steps
# of 1 to about 40 at the frequencies a 32 px tile resolves; a step s also matches every
# divisor's lattice, so a short bank covers the range.
LATTICE_STEPS: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 16.0)


def ycbcr(x: Tensor) -> Tensor:
    """JPEG's colour transform (ITU-R BT.601, full range) of RGB in [0, 1], level-shifted as
    the encoder does: (N, 3, H, W) -> (N, 3, H, W) with Y, Cb, Cr in [-128, 127]."""
    r, g, b = (255.0 * x).unbind(1)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b
    return torch.stack([y - 128.0, cb, cr], dim=1)


def block_dct(x: Tensor) -> Tensor:
    """The 8 x 8 block DCT of every channel, blocks anchored at the top-left pixel:
    (N, C, H, W) -> (N, C, 64, H / 8, W / 8), coefficient ``8 u + v`` for vertical frequency
    ``u`` and horizontal ``v`` (orthonormal, i.e. JPEG's FDCT up to its quantisation)."""
    n, c, h, w = x.shape
    if h % BLOCK or w % BLOCK:
        raise ValueError(f"block DCT needs sides that are multiples of {BLOCK}, got {(h, w)}")
    d = dct_matrix(BLOCK).to(dtype=x.dtype, device=x.device)
    blocks = x.reshape(n, c, h // BLOCK, BLOCK, w // BLOCK, BLOCK).transpose(3, 4)
    coeffs = d @ blocks @ d.T  # (N, C, H/8, W/8, 8, 8)
    return coeffs.flatten(-2).permute(0, 1, 4, 2, 3)


def coefficient_features(coeffs: Tensor, steps: tuple[float, ...] = LATTICE_STEPS) -> Tensor:
    """Per coefficient: ``log(1 + |c|)`` and, for each step ``s``, ``cos(2 pi c / s)`` where
    ``|c| > 1/2`` (1 on the lattice of ``s``, -1 half-way between; a zeroed coefficient lies on
    every lattice and says nothing, so it reads 0). (..., 64, h, w) -> (..., 64 (1 + S), h, w)
    with the features of one coefficient adjacent."""
    live = (coeffs.abs() > 0.5).to(coeffs.dtype)
    feats = [torch.log1p(coeffs.abs())]
    feats += [torch.cos((2.0 * math.pi / s) * coeffs) * live for s in steps]
    return torch.stack(feats, dim=-3).flatten(-4, -3)


class BlockDCTBranch(nn.Module):
    """Compression traces of an RGB image in [0, 1] -> an ``embed_dim`` vector.

    :func:`coefficient_features` of the Y, Cb and Cr block DCTs, normalised with batch
    statistics, go through an MLP shared by all blocks (1 x 1 convolutions over the block grid),
    and the block embeddings are averaged (``pool="mean_std"``: averaged and their spread over
    the blocks appended, :mod:`~assocmem.forensic.models.pooling`): a set function of the
    blocks, independent of the image size. ``feature_dropout`` zeroes whole features (one
    coefficient's one statistic, in every block of an image) while training, so no single
    coefficient of the few training photos carries the decision.
    """

    def __init__(
        self,
        hidden: int = 128,
        embed_dim: int = 64,
        feature_dropout: float = 0.0,
        pool: str = "mean",
    ) -> None:
        super().__init__()
        features = 3 * BLOCK * BLOCK * (1 + len(LATTICE_STEPS))
        self.pool = check_pool(pool)
        self.embed_dim = pooled_dim(embed_dim, pool)
        self.mlp = nn.Sequential(
            nn.BatchNorm2d(features),
            nn.Dropout2d(feature_dropout),
            nn.Conv2d(features, hidden, 1),
            nn.ReLU(),
            nn.Conv2d(hidden, embed_dim, 1),
            nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        feats = coefficient_features(block_dct(ycbcr(x)))  # (N, 3, 64 (1 + S), h, w)
        return spatial_pool(self.mlp(feats.flatten(1, 2)), self.pool)
