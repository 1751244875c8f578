"""Supervised baselines trained from scratch; each returns one logit per image, shape (N,).

- :class:`MesoNet4` -- Afchar et al., "MesoNet: a Compact Facial Video Forgery Detection
  Network" (WIFS 2018): four conv/BN/max-pool blocks and a 16-unit dense layer, here with
  ``width`` scaling the 8/8/16/16 channels and the last pool sized so 32x32 or 64x64 input ends
  on a 2x2 map (the original's 256x256 input ends on 8x8).
- :class:`F3Net` -- Qian et al., "Thinking in Frequency: Face Forgery Detection by Mining
  Frequency-aware Clues" (ECCV 2020), the FAD branch only: a full-image DCT, three
  base+learnable band filters (low/mid/high) plus an all-pass one, inverse DCT of each, the 4 x 3
  band images stacked as 12 channels into a small CNN (Xception in the paper).
- :class:`SmallCNN` -- :class:`CNNEncoder` + linear layer, trained end to end.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from assocmem.forensic.models.cnn import CNNEncoder


def check_side(x: Tensor, side: int, model: str) -> None:
    """A ``ValueError`` naming the size ``model`` was built for unless ``x`` is a batch
    ``(N, C, side, side)``: another size failed in a matrix product with torch's shapes only
    (F3-Net), or was pooled to the classifier's grid and read anyway (MesoNet-4 at 40 px)."""
    if x.dim() != 4 or x.shape[-2:] != (side, side):
        raise ValueError(
            f"{model} was built for {side} x {side} images, got shape {tuple(x.shape)}"
        )


class MesoNet4(nn.Module):
    """MesoNet-4 for small inputs. ``width=2`` (16/16/32/32 channels) gives ~0.05M parameters."""

    def __init__(self, image_size: int = 32, width: int = 2, channels: int = 3) -> None:
        super().__init__()
        if image_size % 16 or image_size < 32:
            raise ValueError(f"image_size must be a multiple of 16 and >= 32, got {image_size}")
        self.image_size = image_size
        c1, c2 = 8 * width, 16 * width

        def block(c_in: int, c_out: int, k: int, pool: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, k, padding=k // 2),
                nn.ReLU(),
                nn.BatchNorm2d(c_out),
                nn.MaxPool2d(pool),
            )

        self.features = nn.Sequential(
            block(channels, c1, 3, 2),
            block(c1, c1, 5, 2),
            block(c1, c2, 5, 2),
            block(c2, c2, 5, image_size // 16),  # -> 2 x 2
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.5),
            nn.Linear(c2 * 4, 16),
            nn.LeakyReLU(0.1),
            nn.Dropout(0.5),
            nn.Linear(16, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        check_side(x, self.image_size, "MesoNet-4")
        return self.classifier(self.features(x)).squeeze(-1)


def dct_matrix(n: int) -> Tensor:
    """Orthonormal DCT-II matrix ``D[k, i] = sqrt(2/n) c_k cos(pi (2 i + 1) k / (2 n))``,
    ``c_0 = 1/sqrt 2``; the 2-D transform of an image ``x`` is ``D x D^T``, its inverse
    ``D^T X D``."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    d = math.sqrt(2.0 / n) * torch.cos(math.pi * (2 * i + 1) * k / (2 * n))
    d[0] /= math.sqrt(2.0)
    return d.float()


def dct_band(size: int, start: float, end: float) -> Tensor:
    """1 on DCT coefficients with ``start < i + j <= end`` (F3-Net's ``generate_filter``).
    ``start < 0`` includes the DC term."""
    i = torch.arange(size)[:, None]
    j = torch.arange(size)[None, :]
    s = (i + j).float()
    return ((s > start) & (s <= end)).float()


class FADHead(nn.Module):
    """Frequency-aware decomposition: ``y_b = D^T (X * (base_b + norm_sigma(learn_b))) D`` with
    ``X = D x D^T`` and ``norm_sigma(t) = 2 sigmoid(t) - 1``; outputs (N, 4 C, H, W).

    Bands as in the reference code: low ``i + j <= n / 2.82``, mid up to ``n / 2``, high beyond,
    plus all-pass. The reference's ``i + j <= start`` cut drops the DC coefficient from every
    band; here low and all-pass keep it (start -1), so the low band carries the mean colour.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.register_buffer("dct", dct_matrix(size))
        bands = [(-1, size / 2.82), (size / 2.82, size / 2), (size / 2, 2 * size), (-1, 2 * size)]
        self.register_buffer("base", torch.stack([dct_band(size, a, b) for a, b in bands]))
        self.learnable = nn.Parameter(torch.randn(len(bands), size, size) * 0.1)

    def forward(self, x: Tensor) -> Tensor:
        d = self.dct
        check_side(x, d.shape[0], "F3-Net's frequency head")
        freq = d @ x @ d.T  # (N, C, H, W)
        filters = self.base + (2 * torch.sigmoid(self.learnable) - 1)  # (4, H, W)
        bands = d.T @ (freq[:, None] * filters[None, :, None]) @ d  # (N, 4, C, H, W)
        return bands.flatten(1, 2)


class F3Net(nn.Module):
    """FAD head + :class:`CNNEncoder` on the 12 band channels + linear layer (~0.16M params)."""

    def __init__(
        self, image_size: int = 32, widths: tuple[int, ...] = (16, 32, 64), channels: int = 3
    ) -> None:
        super().__init__()
        self.fad = FADHead(image_size)
        self.backbone = CNNEncoder(widths, channels=4 * channels)
        self.fc = nn.Linear(self.backbone.embed_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.backbone(self.fad(x))).squeeze(-1)


class SmallCNN(nn.Module):
    """:class:`CNNEncoder` + linear layer, all trained from scratch (~0.15M params)."""

    def __init__(
        self,
        widths: tuple[int, ...] = (16, 32, 64),
        channels: int = 3,
        norm: str = "group",
        pool: str = "mean",
    ) -> None:
        super().__init__()
        self.encoder = CNNEncoder(widths, channels=channels, norm=norm, pool=pool)
        self.fc = nn.Linear(self.encoder.embed_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.encoder(x)).squeeze(-1)
