"""A small convolutional encoder with the same interface as :class:`ViTEncoder`.

Three stages of two 3x3 convs (GroupNorm, GELU), each stage halving the resolution: 32x32 ->
4x4 feature map, global average pool -> embedding. Each stage convolves at full resolution
before its stride-2 conv: a stride-2 first layer samples a Nyquist-rate trace (checkerboard,
stripes) at every other pixel, which aliases it to a constant offset indistinguishable from
brightness; one stride-1 conv + GELU first rectifies it into local energy that survives
downsampling (the usual forensic advice against early downsampling).

GroupNorm rather than BatchNorm so the encoder computes the same function in train and eval
mode: a frozen encoder under a linear probe is then truly frozen (no running statistics drifting
with the probe's batches).
"""

from __future__ import annotations

from torch import Tensor, nn

from assocmem.forensic.models.pooling import check_pool, pooled_dim, spatial_pool


def _norm(kind: str, channels: int, groups: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(groups, channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    raise ValueError(f"norm must be 'group' or 'batch', got {kind!r}")


def _stage(c_in: int, c_out: int, groups: int, norm: str = "group") -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1),
        _norm(norm, c_out, groups),
        nn.GELU(),
        nn.Conv2d(c_out, c_out, 3, stride=2, padding=1),
        _norm(norm, c_out, groups),
        nn.GELU(),
    )


class CNNEncoder(nn.Module):
    """``forward(x) -> (b, embed_dim)``; :meth:`feature_map` gives (b, widths[-1], H/8, W/8).

    ``pool`` reads the map as its mean over positions (``embed_dim = widths[-1]``) or as its
    mean and spread (``"mean_std"``, twice as wide; :mod:`~assocmem.forensic.models.pooling`).

    Default widths (16, 32, 64) give ~0.15M parameters.
    """

    def __init__(
        self,
        widths: tuple[int, ...] = (16, 32, 64),
        channels: int = 3,
        groups: int = 8,
        norm: str = "group",
        pool: str = "mean",
    ) -> None:
        super().__init__()
        self.pool = check_pool(pool)
        stages, c = [], channels
        for wdt in widths:
            stages.append(_stage(c, wdt, groups, norm))
            c = wdt
        self.stages = nn.Sequential(*stages)
        self.feature_dim = c
        self.embed_dim = pooled_dim(c, pool)
        self.stride = 2 ** len(widths)

    def feature_map(self, x: Tensor) -> Tensor:
        return self.stages(x)

    def forward(self, x: Tensor) -> Tensor:
        return spatial_pool(self.stages(x), self.pool)
