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

from assocmem.forensic.models import one_class
from assocmem.forensic.models.baselines import SmallCNN
from assocmem.forensic.models.block_dct import BlockDCTBranch
from assocmem.forensic.models.branch_dropout import check_branch_dropout, drop_branches
from assocmem.forensic.models.prediction_error import PredictionErrorBranch

__all__ = [
    "NPR",
    "NPRWithDCT",
    "NPRWithPixels",
    "NPRWithSpectrum",
    "high_pass_amplitude",
    "neighbouring_pixel_residual",
]


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
        pool: str = "mean",
    ) -> None:
        super().__init__(widths, channels, norm, pool)
        self.gain = gain

    @property
    def feature_dim(self) -> int:
        return self.encoder.feature_dim

    @property
    def stride(self) -> int:
        return self.encoder.stride

    def feature_map(self, x: Tensor) -> Tensor:
        """The encoder's feature map of the scaled residual, (N, C, H / stride, W / stride): with
        ``feature_dim`` and ``stride``, what
        :class:`~assocmem.forensic.models.pretrain.MaskedPretrainer` reads, so the residual
        encoder can be pretrained by masked reconstruction of the image it sees the residual of."""
        return self.encoder.feature_map(self.gain * neighbouring_pixel_residual(x))

    def embed(self, x: Tensor) -> Tensor:
        """The encoder's embedding of the scaled residual (what the two-branch detectors read)."""
        return self.encoder(self.gain * neighbouring_pixel_residual(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.embed(x)).squeeze(-1)


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
        r = self.residual.embed(x)
        return self.fc(torch.cat([r, self.pixels.encoder(x)], dim=1)).squeeze(-1)


def high_pass_amplitude(x: Tensor) -> Tensor:
    """``log(1 + |rfft2(x - box3(x))|)`` per channel: (N, C, H, W) -> (N, C, H, W // 2 + 1).

    The 3 x 3 box-filter residual keeps the fine texture and drops most of the content; its
    amplitude spectrum is shift-invariant and turns periodic traces into peaks at fixed
    frequencies: the 8 x 8 JPEG grid at multiples of H / 8, a resampling's period at its
    factor's frequencies, and a smoothing generator as missing energy at high frequencies.
    """
    smooth = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), 3, stride=1)
    return torch.log1p(torch.fft.rfft2(x - smooth, norm="ortho").abs())


class NPRWithSpectrum(nn.Module):
    """:class:`NPR`'s residual encoder beside a spectral branch, one linear logit on both.

    The spectral branch reads :func:`high_pass_amplitude` with an MLP (positions in the
    spectrum are frequencies, so they are kept, not pooled away). It exists for the families
    NPR alone misses: double JPEG (grid peaks), resampling by non-integer factors (periodic
    correlations off the 2 x 2 grid) and denoising (missing high-frequency energy). Both
    branches use batch statistics (see :class:`NPR`).
    """

    def __init__(
        self,
        image_size: int = 32,
        widths: tuple[int, ...] = (16, 32, 64),
        channels: int = 3,
        gain: float = 10.0,
        hidden: int = 128,
        embed: int = 64,
    ) -> None:
        super().__init__()
        self.residual = NPR(widths, channels, gain, norm="batch")
        freq = channels * image_size * (image_size // 2 + 1)
        self.image_size = image_size
        self.spectrum = nn.Sequential(
            nn.BatchNorm1d(freq),
            nn.Linear(freq, hidden),
            nn.ReLU(),
            nn.Linear(hidden, embed),
            nn.ReLU(),
        )
        self.fc = nn.Linear(self.residual.encoder.embed_dim + embed, 1)

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"NPRWithSpectrum reads {self.image_size} x {self.image_size} patches (its "
                f"spectral layer is sized for them), got {tuple(x.shape[-2:])}"
            )
        r = self.residual.embed(x)
        s = self.spectrum(high_pass_amplitude(x).flatten(1))
        return self.fc(torch.cat([r, s], dim=1)).squeeze(-1)


class NPRWithDCT(nn.Module):
    """:class:`NPR`'s residual encoder beside a block-DCT branch
    (:class:`~assocmem.forensic.models.block_dct.BlockDCTBranch`), one linear logit on both.

    The two traces do not overlap: NPR sees ties inside ``2 x 2`` cells (up-sampling), the
    block-DCT branch sees what a JPEG encoder leaves on its 8 x 8 grid (coefficients on a
    quantisation lattice, zeroed high frequencies, re-quantisation by a second encoder), which
    falls between NPR's cells. Both branches use batch statistics (see :class:`NPR`); inputs
    need sides that are multiples of 8, and tiles of a larger image must start at multiples of
    8 (``alignment``, read by :class:`~assocmem.forensic.detector.Detector`'s tiling).

    ``prediction_filters > 0`` adds a third branch,
    :class:`~assocmem.forensic.models.prediction_error.PredictionErrorBranch` (that many learned
    prediction-error filters per colour channel, Bayar and Stamm's general-purpose
    manipulation layer): it sees how predictable each pixel is from its neighbours, which
    interpolation and smoothing change off NPR's ``2 x 2`` grid and off JPEG's ``8 x 8`` one.

    ``pool="mean_std"`` pools both branches' maps into their means and spreads over positions
    (:mod:`~assocmem.forensic.models.pooling`: a spliced region disagrees with the rest of the
    patch), doubling the embedding; the default keeps the means only.

    ``branch_dropout = p`` zeroes one branch's embedding (chosen uniformly) of a fraction ``p`` of
    the training examples (:mod:`~assocmem.forensic.models.branch_dropout`), so each branch must
    detect alone where NPR's tie would otherwise decide every up-sampled fake.

    ``head="one_class"`` reads the embedding with a cosine head instead of a linear one
    (:mod:`~assocmem.forensic.models.one_class`: ``fc`` without bias holds the direction, the
    logit is bounded and the reals are trained into a narrow cone); ``margin`` is what training
    adds to the binary cross-entropy for it (0 for the linear head).
    """

    alignment = 8
    HEADS = ("linear", "one_class")

    def __init__(
        self,
        widths: tuple[int, ...] = (16, 32, 64),
        channels: int = 3,
        gain: float = 10.0,
        hidden: int = 128,
        embed: int = 64,
        feature_dropout: float = 0.0,
        prediction_filters: int = 0,
        head: str = "linear",
        pool: str = "mean",
        branch_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.branch_dropout = check_branch_dropout(branch_dropout)
        if prediction_filters < 0:
            raise ValueError(f"prediction_filters must be >= 0, got {prediction_filters}")
        if head not in self.HEADS:
            raise ValueError(f"head must be one of {self.HEADS}, got {head!r}")
        self.residual = NPR(widths, channels, gain, norm="batch", pool=pool)
        self.dct = BlockDCTBranch(hidden, embed, feature_dropout, pool=pool)
        dim = self.residual.encoder.embed_dim + self.dct.embed_dim
        # registered after the other two branches so their parameters (and so their random
        # initialisation for a given seed) are the same with and without it
        self.prediction = (
            PredictionErrorBranch(prediction_filters, widths=widths, channels=channels, gain=gain)
            if prediction_filters
            else None
        )
        if self.prediction is not None:
            dim += self.prediction.embed_dim
        self.head = head
        # a cosine has no offset to learn: its centre and scale are the loss's (one_class.py)
        self.fc = nn.Linear(dim, 1, bias=head == "linear")

    @property
    def margin(self) -> float:
        """What training adds to the binary cross-entropy: the one-class head's margin, 0 for
        the linear head."""
        return one_class.margin() if self.head == "one_class" else 0.0

    def embed(self, x: Tensor) -> Tensor:
        """The branches' embeddings side by side, (N, ``fc.in_features``): what the logit reads."""
        embeddings = [self.residual.embed(x), self.dct(x)]
        if self.prediction is not None:
            embeddings.append(self.prediction(x))
        if self.training and self.branch_dropout:
            embeddings = drop_branches(embeddings, self.branch_dropout)
        return torch.cat(embeddings, dim=1)

    def logit(self, embedding: Tensor) -> Tensor:
        """The logit (N,) of embeddings from :meth:`embed`, through the chosen head."""
        if self.head == "one_class":
            return one_class.cosine_logit(embedding, self.fc.weight)
        return self.fc(embedding).squeeze(-1)

    def forward(self, x: Tensor) -> Tensor:
        return self.logit(self.embed(x))
