"""Train a detector (or a branch under a linear head) on fresh synthetic batches and score it:
the shared body of the "learns this trace in a few steps" tests."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


def with_linear_head(branch: nn.Module, embed_dim: int) -> nn.Module:
    """``branch`` (images -> (N, embed_dim)) followed by a linear logit, as (N,)."""
    return nn.Sequential(branch, nn.Linear(embed_dim, 1), nn.Flatten(0))


def auc_after_training(
    model: nn.Module,
    batch: Callable[[int], tuple[Tensor, Tensor]],
    steps: int,
    batch_size: int,
    eval_size: int,
    lr: float = 1e-3,
) -> float:
    """``steps`` Adam steps of binary cross-entropy on fresh ``batch(batch_size)`` draws
    (images, labels 1 = fake), then ``model``'s AUC in eval mode on a fresh
    ``batch(eval_size)``: 0.5 is chance, so a test asserting well above it can fail."""
    from sklearn.metrics import roc_auc_score

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        x, y = batch(batch_size)
        loss = nn.functional.binary_cross_entropy_with_logits(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, y = batch(eval_size)
    with torch.no_grad():
        return float(roc_auc_score(y.numpy(), model(x).numpy()))
