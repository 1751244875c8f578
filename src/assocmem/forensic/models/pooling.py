"""Spatial pooling of a feature map into an embedding: the mean, or the mean and the spread.

A detector that averages its feature map over positions keeps what is true of the patch *on
average*, and loses whether it is the same everywhere. A spliced patch (a donor region pasted
into a host photo) is two textures with two noise levels and, often, two compression
histories: the evidence is that some positions disagree with the others. ``"mean_std"`` pools
each channel's mean and its standard deviation over positions (the "statistics pooling" of
x-vector speaker embeddings, Snyder et al., ICASSP 2018), so that disagreement reaches the
head as a feature of its own.
"""

from __future__ import annotations

import torch
from torch import Tensor

POOLS = ("mean", "mean_std")

# Added to the variance before its square root: the gradient of sqrt at 0 is infinite, and a
# channel can be constant over positions (a 1 x 1 map always is). Small against the variance of
# any channel that varies (post-ReLU/GELU activations of order 1e-2 and up, so variances of
# 1e-4 and up).
VARIANCE_FLOOR = 1e-6


def check_pool(pool: str) -> str:
    """``pool`` if it is one of :data:`POOLS`, else ``ValueError``."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    return pool


def pooled_dim(channels: int, pool: str) -> int:
    """The embedding's width for a map of ``channels`` channels."""
    return channels * (2 if check_pool(pool) == "mean_std" else 1)


def spatial_pool(feature_map: Tensor, pool: str) -> Tensor:
    """(N, C, H, W) -> (N, C) for ``"mean"``; (N, 2C) for ``"mean_std"``: the means, then the
    standard deviations over the H x W positions (population variance, floored by
    :data:`VARIANCE_FLOOR`)."""
    mean = feature_map.mean(dim=(-2, -1))
    if check_pool(pool) == "mean":
        return mean
    var = feature_map.var(dim=(-2, -1), correction=0)
    return torch.cat([mean, torch.sqrt(var + VARIANCE_FLOOR)], dim=-1)
