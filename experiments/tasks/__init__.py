"""Training tasks for the convergence comparison.

A task owns its model and data and exposes three things to the loop in ``experiments.loop``:
``parameters()`` (what the optimizer trains), ``train_loss(step)`` (a differentiable loss on the
step's batch) and ``evaluate()`` (a dict with at least ``val_loss``; lower is better).
A task built on a network also exposes it as ``model`` (an ``nn.Module`` whose trainable
parameters are ``parameters()``), from which Muon-style optimizers build their param groups
(``experiments.run.optimizer_factory``).
Tasks are built by hydra from ``conf/task/*.yaml`` with the run's ``seed``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from torch import Tensor


class Task(Protocol):
    name: str

    def parameters(self) -> Iterable[Tensor]: ...

    def train_loss(self, step: int) -> Tensor: ...

    def evaluate(self) -> dict[str, float]: ...
