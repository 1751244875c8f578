"""A blind-spot pixel predictor fit on real photos only: how predictable a patch is, measured
against what real photos with the same surroundings are.

Each pixel is predicted, as a Laplace distribution with mean ``mu`` and scale ``b``, from its
``k x k`` neighbourhood *without the pixel itself* (every colour channel masked at the centre,
so neither the value nor its other colours leak into its own prediction). The layers after the
first are ``1 x 1``, so the blind spot stays blind. Fit by the Laplace negative log-likelihood
``|x - mu| / b + log b`` on real patches, ``b`` learns how much detail real photos hold around
such surroundings. A patch's *surprise* is the mean of ``|x - mu| / b`` over its pixels: the
coding cost it actually has minus the one the model expects, up to a constant (for a Laplace
the expected value of ``|x - mu| / b`` is 1). That is the statistic of ZED (Cozzolino et al.,
"Zero-Shot Detection of AI-Generated Images", ECCV 2024), there from a lossless coder trained on
real images. A patch more predictable than real photos with its content (interpolated,
smoothed, denoised) scores below the reals; no fake of any kind is needed to fit it.

Only the interior pixels (``k // 2`` from every edge) are predicted: their whole neighbourhood
is inside the patch, so no padding invents context.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from assocmem.forensic.data.patches import as_float_images

__all__ = ["BlindSpotPredictor", "coding_surprise", "fit_blind_spot"]

# Pixels are multiples of 1/255: a residual under half a step is not observable, so the scale
# never goes below it (also keeps the likelihood bounded on flat regions).
MIN_SCALE = 0.5 / 255.0


class BlindSpotPredictor(nn.Module):
    """``(mu, b)`` for every interior pixel of ``(N, 3, H, W)`` images in [0, 1]: each of shape
    ``(N, 3, H - k + 1, W - k + 1)``, predicted from the pixel's neighbourhood only."""

    def __init__(self, width: int = 32, kernel: int = 5) -> None:
        super().__init__()
        if kernel < 3 or kernel % 2 == 0:
            raise ValueError(f"kernel must be odd and at least 3, got {kernel}")
        if width < 1:
            raise ValueError(f"width must be positive, got {width}")
        self.kernel = kernel
        self.context = nn.Conv2d(3, width, kernel)
        mask = torch.ones(1, 1, kernel, kernel)
        mask[..., kernel // 2, kernel // 2] = 0.0
        self.register_buffer("mask", mask)
        self.head = nn.Sequential(
            nn.GELU(), nn.Conv2d(width, width, 1), nn.GELU(), nn.Conv2d(width, 6, 1)
        )

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected (N, 3, H, W) images, got shape {tuple(images.shape)}")
        if min(images.shape[-2:]) < self.kernel:
            raise ValueError(
                f"images of {tuple(images.shape[-2:])} px have no interior pixel for a "
                f"{self.kernel} x {self.kernel} neighbourhood"
            )
        hidden = F.conv2d(images, self.context.weight * self.mask, self.context.bias)
        mu, raw = self.head(hidden).chunk(2, dim=1)
        return mu, F.softplus(raw) + MIN_SCALE

    def interior(self, images: Tensor) -> Tensor:
        """The pixels :meth:`forward` predicts (``kernel // 2`` in from every edge)."""
        r = self.kernel // 2
        return images[..., r : images.shape[-2] - r, r : images.shape[-1] - r]


def normalised_residuals(model: BlindSpotPredictor, images: Tensor) -> tuple[Tensor, Tensor]:
    """``(|x - mu| / b, b)`` at every interior pixel and channel: the coding cost's data term
    and the scale it was measured in."""
    mu, b = model(images)
    return (model.interior(images) - mu).abs() / b, b


def laplace_nll(model: BlindSpotPredictor, images: Tensor) -> Tensor:
    """Mean ``|x - mu| / b + log b`` over the interior pixels and channels (the fit's loss)."""
    residuals, b = normalised_residuals(model, images)
    return (residuals + b.log()).mean()


@torch.no_grad()
def coding_surprise(
    model: BlindSpotPredictor, images: Tensor | np.ndarray, batch_size: int = 512
) -> np.ndarray:
    """Per image, the mean of ``|x - mu| / b`` over interior pixels and channels: about 1 for
    the real photos the model was fit on, lower for a patch more predictable than they are.
    ``images``: (N, 3, H, W) float in [0, 1] or uint8. Returns float64 (N,)."""
    x = as_float_images(images)
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(x), batch_size):
        residuals, _ = normalised_residuals(model, x[start : start + batch_size])
        out.append(residuals.mean(dim=(1, 2, 3)))
    model.train(was_training)
    return torch.cat(out).double().numpy() if out else np.zeros(0)


def fit_blind_spot(
    reals: Tensor | np.ndarray,
    *,
    steps: int = 3000,
    batch_size: int = 64,
    lr: float = 1e-3,
    width: int = 32,
    kernel: int = 5,
    seed: int = 0,
) -> BlindSpotPredictor:
    """Fit a :class:`BlindSpotPredictor` on real patches ((N, 3, H, W), float in [0, 1] or
    uint8) by :func:`laplace_nll` with Adam (a fixed fit like the families' generators, not a
    workload the optimizers are compared on); deterministic for a seed (its own generator;
    torch's global RNG is left as it was). Returns it in eval mode."""
    x = as_float_images(reals)
    if len(x) == 0:
        raise ValueError("cannot fit the predictor on zero images")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive, got {steps}, {batch_size}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BlindSpotPredictor(width, kernel)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(x), (min(batch_size, len(x)),), generator=gen)
        loss = laplace_nll(model, x[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()
