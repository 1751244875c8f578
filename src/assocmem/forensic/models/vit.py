"""A small Vision Transformer encoder (Dosovitskiy et al. 2021), sized for 32x32 CPU work.

einops legend
    b   batch                     c   image channels (3)
    h w patch-grid rows, cols     p q pixel rows, cols inside one patch
    n   tokens (= h * w)          d   model width
    k   heads                     e   width per head (= d / k)

Mean-pooled tokens give the embedding (no class token: with ~64 tokens and no pretraining at
scale a mean pool trains as well and keeps every token tied to a spatial patch, which the
masked-reconstruction decoder needs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


class Attention(nn.Module):
    """Multi-head self-attention, ``softmax(Q K^T / sqrt(e)) V`` per head."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = rearrange(self.qkv(x), "b n (t k e) -> t b k n e", t=3, k=self.heads)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out(rearrange(y, "b k n e -> b n (k e)"))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(LN x)``, then ``x + mlp(LN x)``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTEncoder(nn.Module):
    """Patchify -> linear embed + learned positions -> ``depth`` blocks -> LayerNorm.

    Defaults (32x32, patch 4, dim 64, depth 2, heads 4, mlp 2x) give 64 tokens and ~0.074M
    parameters.

    Attributes:
        embed_dim: width of the pooled embedding returned by ``forward``.
        feature_dim, stride: channels and downsampling of :meth:`feature_map` (``d``, ``patch``).
    """

    def __init__(
        self,
        image_size: int = 32,
        patch: int = 4,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        channels: int = 3,
    ) -> None:
        super().__init__()
        if image_size % patch:
            raise ValueError(f"patch {patch} must divide image_size {image_size}")
        self.patch = patch
        self.grid = image_size // patch
        self.embed_dim = self.feature_dim = dim
        self.stride = patch
        self.to_tokens = nn.Linear(channels * patch * patch, dim)
        self.pos = nn.Parameter(torch.randn(1, self.grid * self.grid, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def tokens(self, x: Tensor) -> Tensor:
        """Token features (b, n, d) after the final LayerNorm."""
        side = self.grid * self.patch
        if x.dim() != 4 or x.shape[-2:] != (side, side):
            # a 32 x 8 image has as many tokens as a 16 x 16 one: it was read with the position
            # encodings of another grid, and laid out on it by feature_map
            raise ValueError(
                f"the encoder was built for {side} x {side} images, got shape {tuple(x.shape)}"
            )
        x = rearrange(x, "b c (h p) (w q) -> b (h w) (p q c)", p=self.patch, q=self.patch)
        x = self.to_tokens(x) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(tokens (b, n, d), pooled (b, d))``."""
        t = self.tokens(x)
        return t, t.mean(dim=1)

    def feature_map(self, x: Tensor) -> Tensor:
        """Tokens laid back on their grid, (b, d, h, w), for a dense decoder."""
        return rearrange(self.tokens(x), "b (h w) d -> b d h w", h=self.grid)

    def forward(self, x: Tensor) -> Tensor:
        """Pooled embedding (b, d)."""
        return self.tokens(x).mean(dim=1)
