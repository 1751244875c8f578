"""Local "generators": conv autoencoders that differ only in their upsampler, and a tiny denoiser.

Shapes: ``b c h w`` with images in [0, 1]. The encoder downsamples by 4 (two stride-2 convs) and
the decoder upsamples by 4 with two identical upsampling blocks (a real bottleneck: 2*width
channels at P/4, fewer numbers than the input), so the only architectural
difference between the four autoencoders is the block that real generators are known to leave a
spectral trace with (transposed-conv checkerboard, nearest-neighbour replication, bilinear
smoothing, pixel-shuffle phase pattern). Each is trained for a few hundred steps on random crops
of train-split real patches (fully convolutional, so crops cut the cost 4x on 2 CPU cores) to
reconstruct them: the output looks like the input but carries the trace. A few hundred steps give
a PSNR of about 25 dB, so the fakes are also blurrier than the reals; the HF-energy baseline in
``baseline.py`` measures how much of the task that alone solves.

Training is seeded inside ``torch.random.fork_rng`` with its own ``torch.Generator`` for batches,
so building the benchmark neither reads nor changes the caller's global RNG state.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = [
    "UPSAMPLERS",
    "Autoencoder",
    "TinyDenoiser",
    "apply_model",
    "make_generator",
    "train_autoencoder",
]

UPSAMPLERS: tuple[str, ...] = ("transconv", "nearest", "bilinear", "pixelshuffle")


def _upsample_block(kind: str, c_in: int, c_out: int) -> nn.Module:
    """A x2 upsampler mapping c_in -> c_out channels; the family's only distinguishing part."""
    if kind == "transconv":
        # kernel 4, stride 2: uneven kernel overlap is the classic checkerboard source
        return nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=2, padding=1)
    if kind in ("nearest", "bilinear"):
        up = (
            nn.Upsample(scale_factor=2, mode="nearest")
            if kind == "nearest"
            else nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        )
        return nn.Sequential(up, nn.Conv2d(c_in, c_out, kernel_size=3, padding=1))
    if kind == "pixelshuffle":
        return nn.Sequential(
            nn.Conv2d(c_in, 4 * c_out, kernel_size=3, padding=1), nn.PixelShuffle(2)
        )
    raise ValueError(f"unknown upsampler {kind!r}; expected one of {UPSAMPLERS}")


class Autoencoder(nn.Module):
    """Fully convolutional AE, downsample x4, upsample x4 with ``upsampler`` blocks."""

    def __init__(self, upsampler: str, width: int = 16) -> None:
        super().__init__()
        w = width
        self.encoder = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(2 * w, 2 * w, 4, stride=2, padding=1),
            nn.GELU(),
        )
        self.decoder = nn.Sequential(
            _upsample_block(upsampler, 2 * w, 2 * w),
            nn.GELU(),
            _upsample_block(upsampler, 2 * w, w),
            nn.GELU(),
            nn.Conv2d(w, 3, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.decoder(self.encoder(x)))


class TinyDenoiser(nn.Module):
    """Three-conv residual denoiser: ``x - noise_estimate(x)``.

    Trained on noisy -> clean and then applied to clean patches, it removes fine texture it
    mistakes for noise: the over-smoothing trace of learned restoration / diffusion denoisers.
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 3, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.net(x)).clamp(0.0, 1.0)


def train_autoencoder(
    model: nn.Module,
    images: Tensor,
    *,
    steps: int,
    seed: int,
    batch_size: int = 32,
    lr: float = 2e-3,
    noise_std: float = 0.0,
    crop: int | None = None,
) -> nn.Module:
    """Fit ``model(x + noise) ~= x`` with L1 loss and Adam; returns the model in eval mode.

    ``noise_std > 0`` turns it into denoiser training. ``images`` is float (N, 3, P, P) in [0, 1].
    ``crop`` trains on one random ``crop x crop`` window per batch (must be a multiple of 4 for
    the autoencoders); the model is fully convolutional, so it applies to full patches after.
    """
    if len(images) == 0:
        raise ValueError("cannot train a generator on zero images")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(images), (min(batch_size, len(images)),), generator=gen)
        clean = images[idx]
        size = images.shape[-1]
        if crop is not None and crop < size:
            i, j = torch.randint(0, size - crop + 1, (2,), generator=gen).tolist()
            clean = clean[:, :, i : i + crop, j : j + crop]
        noisy = clean
        if noise_std > 0:
            noisy = clean + noise_std * torch.randn(clean.shape, generator=gen)
        loss = (model(noisy) - clean).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def apply_model(model: nn.Module, images: Tensor, batch_size: int = 256) -> Tensor:
    """Run ``model`` over float images in batches; returns float (N, 3, P, P) in [0, 1]."""
    out = [model(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    if not out:
        return images.clone()
    return torch.cat(out).clamp(0.0, 1.0)


def make_generator(kind: str, seed: int, width: int = 16) -> nn.Module:
    """Freshly initialised autoencoder (``kind`` in UPSAMPLERS) or denoiser (``"denoiser"``),
    seeded without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TinyDenoiser(width) if kind == "denoiser" else Autoencoder(kind, width)
