"""Masked-reconstruction pretraining: encoder + light decoder predict what the mask removed.

For an image ``x`` and a keep mask ``m`` the masker yields ``masked`` and ``removed = x - masked``.
The encoder sees ``masked``; a light decoder maps its feature map back to pixels, and the
prediction is projected onto the removed part (frequency masks: ``F^-1((1 - m) F r_hat)``;
pixel masks: ``(1 - m) r_hat``), MAE's "loss on masked patches only" in either domain.

Losses (``w_pix``, ``w_freq`` = the masker's weights, sums normalised by the weight mass):

    pixel   sum w_pix (r_hat - r)^2 / sum w_pix                           (mean over channels)
    freq    sum w_freq | log(1 + |R_hat|) - log(1 + |R|) | / sum w_freq   (R = centred spectrum)
    both    pixel + freq

Why log-amplitude: with an orthonormal FFT, an L2 loss on the complex spectrum equals the pixel
L2 loss (Parseval), so it adds nothing; the log amplitude ignores phase and compresses the
spectrum's dynamic range, so the faint high-frequency bins where generator traces live weigh as
much as the strong low-frequency ones.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from assocmem.forensic.masks import MaskedBatch, Masker

LossKind = Literal["pixel", "freq", "both"]


class PixelDecoder(nn.Module):
    """Feature map (b, C, h, w) -> image (b, channels, h*s, w*s): conv3x3, GELU, conv1x1,
    pixel-shuffle by the encoder's stride ``s``."""

    def __init__(self, in_dim: int, stride: int, hidden: int = 64, channels: int = 3) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_dim, hidden, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(hidden, channels * stride * stride, 1),
            nn.PixelShuffle(stride),
        )

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features)


def pixel_loss(pred: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Weighted MSE, normalised by the weight mass per channel."""
    w = weight.expand_as(pred)
    return (w * (pred - target) ** 2).sum() / w.sum().clamp_min(1e-8)


def log_amplitude_loss(pred: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Weighted L1 between ``log(1 + |spectrum|)`` of prediction and target (centred frame)."""
    # Compare in the uncentred FFT layout and move the real weight there instead (cheaper).
    a_pred = torch.log1p(torch.fft.fft2(pred, norm="ortho").abs())
    a_true = torch.log1p(torch.fft.fft2(target, norm="ortho").abs())
    w = torch.fft.ifftshift(weight, dim=(-2, -1)).expand_as(a_pred)
    return (w * (a_pred - a_true).abs()).sum() / w.sum().clamp_min(1e-8)


class MaskedPretrainer(nn.Module):
    """``encoder`` + :class:`PixelDecoder` trained to reconstruct what ``masker`` removed.

    The encoder must expose ``feature_map(x)``, ``feature_dim`` and ``stride`` (both
    :class:`ViTEncoder` and :class:`CNNEncoder` do).

    Example:
        >>> import torch
        >>> from assocmem.forensic.masks import FrequencyMasker
        >>> from assocmem.forensic.models import CNNEncoder, MaskedPretrainer
        >>> model = MaskedPretrainer(CNNEncoder(), FrequencyMasker(ratio=0.5), loss="both")
        >>> model.loss(torch.rand(4, 3, 32, 32), torch.Generator().manual_seed(0)).ndim
        0
    """

    def __init__(
        self,
        encoder: nn.Module,
        masker: Masker,
        loss: LossKind = "pixel",
        decoder_hidden: int = 32,
        channels: int = 3,
    ) -> None:
        super().__init__()
        if loss not in ("pixel", "freq", "both"):
            raise ValueError(f"loss must be 'pixel', 'freq' or 'both', got {loss!r}")
        self.encoder = encoder
        self.masker = masker
        self.loss_kind = loss
        self.channels = channels
        self.decoder = PixelDecoder(encoder.feature_dim, encoder.stride, decoder_hidden, channels)

    def reconstruct(self, batch: MaskedBatch) -> Tensor:
        """Predicted removed component, projected onto the removed part."""
        raw = self.decoder(self.encoder.feature_map(batch.masked))
        return self.masker.project(raw, batch)

    def loss_on(self, batch: MaskedBatch) -> Tensor:
        pred = self.reconstruct(batch)
        total = pred.new_zeros(())
        if self.loss_kind in ("pixel", "both"):
            total = total + pixel_loss(pred, batch.removed, batch.pixel_weight)
        if self.loss_kind in ("freq", "both"):
            total = total + log_amplitude_loss(pred, batch.removed, batch.freq_weight)
        return total

    def loss(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Scalar reconstruction loss on a fresh random mask per image. ``images``: a non-empty
        float batch (b, channels, H, W) in [0, 1], ``channels`` the decoder's."""
        self.check_images(images)
        return self.loss_on(self.masker(images, generator))

    def check_images(self, images: Tensor) -> None:
        """Refuse what the reconstruction would read wrongly without a word: integer pixels
        (uint8 trained at 255 times the scale, "ok"), another channel count than the decoder's
        (broadcast against the prediction), an empty batch (an FFT error, or a loss of 0), a
        side that is no multiple of the encoder's stride."""
        if not images.is_floating_point():
            raise ValueError(
                f"images must be floating point in [0, 1] (uint8 pixels / 255), got {images.dtype}"
            )
        if images.dim() != 4 or images.shape[0] == 0 or images.shape[1] != self.channels:
            raise ValueError(
                f"images must be a non-empty batch (b, {self.channels}, H, W), got "
                f"{tuple(images.shape)}"
            )
        stride = self.encoder.stride  # the decoder up-samples the feature map by it
        if images.shape[-2] % stride or images.shape[-1] % stride:
            raise ValueError(
                f"images of {images.shape[-2]}x{images.shape[-1]}: the encoder down-samples by "
                f"{stride}, so height and width must be multiples of {stride} to be "
                "reconstructed (a broadcast error of the loss before)"
            )

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.loss(images, generator)
