"""The held-out evaluation's first-step measurement."""

from __future__ import annotations

import torch

from assocmem.meta.tasks import sample_task
from experiments.meta_evaluate import first_step_movement


def _first_gradient(family: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """|g| and |W| of every weight at the task's first step (the same draws as the measurement)."""
    task = sample_task(family, seed)
    params = {k: v.clone().requires_grad_() for k, v in task.params.items()}
    task.loss(params, task.batch()).backward()
    grads = torch.cat([p.grad.abs().flatten() for p in params.values()])
    return grads, torch.cat([p.detach().abs().flatten() for p in params.values()])


def test_adams_first_step_moves_every_weight_by_lr():
    # Adam's first update is m_hat / (sqrt(v_hat) + eps) = g / (|g| + eps): lr |g| / (|g| + eps)
    # per weight, up to float32 rounding: of W - lr u (an ulp of the larger |W|, over lr) and
    # of the update's own chain of operations (bias corrections, sqrt, eps, lr / bc1: a few
    # ulps of a number near 1, 2^-20 covers eight).
    lr = 1e-2
    moved = first_step_movement("breast_cancer_mlp", 1000, lambda ps: torch.optim.Adam(ps, lr=lr))
    g, w = _first_gradient("breast_cancer_mlp", 1000)
    expected = g / (g + 1e-8)
    assert bool((expected > 0.5).float().mean() > 0.9)  # most weights get a gradient
    tolerance = 2.0**-23 * (w + lr) / lr + 2.0**-20
    assert bool(((moved - expected).abs() <= tolerance).all())


def test_sgds_first_step_is_the_gradient():
    lr = 0.5
    moved = first_step_movement("logistic", 3, lambda ps: torch.optim.SGD(ps, lr=lr))
    g, w = _first_gradient("logistic", 3)
    tolerance = 2.0**-23 * (w + lr * g) / lr
    assert bool(((moved - g).abs() <= tolerance).all())
