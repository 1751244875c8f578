"""Classic problems with known optima: ill-conditioned quadratic, Rosenbrock, MLP on digits."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from assocmem.optim import validate


def _require(task: str, name: str, problem: str | None) -> None:
    """Refuse a ``task.build`` value that would fail later with an unrelated message
    (``math domain error`` for a negative condition) or quietly train nothing (an empty
    validation split); ``problem``: a :mod:`assocmem.optim.validate` check's message."""
    if problem is not None:
        raise ValueError(f"{task}: {name} {problem}")


def _at_least(value: object, least: float) -> str | None:
    """:func:`validate.real` and ``>= least`` (a condition number)."""
    if validate.real(value) is None and value >= least:  # type: ignore[operator]
        return None
    return f"must be finite >= {least}, got {value!r}"


class Quadratic:
    """``f(w) = 1/2 (w - w*)^T A (w - w*)`` with eigenvalues log-spaced over ``condition``.

    The optimum is 0 at ``w*``; ``noise`` adds Gaussian noise to the gradient through a random
    linear term, so the stochastic version has the same optimum in expectation.
    """

    name = "quadratic"

    def __init__(self, seed: int, dim: int = 50, condition: float = 1e3, noise: float = 0.0):
        _require("quadratic", "dim", validate.positive_int(dim))
        _require("quadratic", "condition", _at_least(condition, 1))
        _require("quadratic", "noise", validate.non_negative(noise))
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g))
        eig = torch.logspace(0, math.log10(condition), dim)
        self.A = (q * eig) @ q.T
        self.optimum = torch.randn(dim, generator=g)
        self.w = nn.Parameter(torch.zeros(dim))
        self.noise = noise
        self.generator = g

    def parameters(self) -> Iterable[Tensor]:
        return [self.w]

    def value(self) -> Tensor:
        d = self.w - self.optimum
        return 0.5 * d @ self.A @ d

    def train_loss(self, step: int) -> Tensor:
        loss = self.value()
        if self.noise:
            xi = torch.randn(self.w.shape, generator=self.generator) * self.noise
            loss = loss + xi @ self.w
        return loss

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        return {"val_loss": self.value().item()}


class Rosenbrock:
    """N-dimensional Rosenbrock: minimum 0 at (1, ..., 1), started near (-1.2, 1, ...)."""

    name = "rosenbrock"

    def __init__(self, seed: int, dim: int = 2, jitter: float = 0.0):
        # with one coordinate the sum over neighbouring pairs is empty: the loss is 0 everywhere
        ok = validate.positive_int(dim) is None and dim >= 2
        _require("rosenbrock", "dim", None if ok else f"must be an integer >= 2, got {dim!r}")
        _require("rosenbrock", "jitter", validate.non_negative(jitter))
        g = torch.Generator().manual_seed(seed)
        start = torch.tensor([-1.2, 1.0] * (dim // 2) + [-1.2] * (dim % 2))
        self.x = nn.Parameter(start + jitter * torch.randn(dim, generator=g))

    def parameters(self) -> Iterable[Tensor]:
        return [self.x]

    def value(self) -> Tensor:
        x = self.x
        return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()

    def train_loss(self, step: int) -> Tensor:
        return self.value()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        return {"val_loss": self.value().item()}


class DigitsMLP:
    """An MLP on scikit-learn's 8x8 digits (ships in the wheel), minibatch cross-entropy.

    ``depth`` hidden layers of width ``hidden`` (default 1: the 2-layer MLP of ``digits_mlp``);
    deeper and wider, it gives Muon several hidden matrices, one of them tall (``hidden x 64``).
    """

    name = "digits_mlp"

    def __init__(
        self,
        seed: int,
        hidden: int = 64,
        batch_size: int = 64,
        val_fraction: float = 0.25,
        depth: int = 1,
    ):
        for name, value in (("hidden", hidden), ("batch_size", batch_size), ("depth", depth)):
            _require("digits_mlp", name, validate.positive_int(value))
        _require("digits_mlp", "val_fraction", validate.open_unit_interval(val_fraction))
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
        y = torch.tensor(digits.target, dtype=torch.long)
        # The split is fixed across seeds so every seed is judged on the same validation set.
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
        n_val = int(len(x) * val_fraction)
        if n_val < 1:
            _require("digits_mlp", "val_fraction", f"must be >= 1/{len(x)}, got {val_fraction!r}")
        self.x_val, self.y_val = x[perm[:n_val]], y[perm[:n_val]]
        self.x_train, self.y_train = x[perm[n_val:]], y[perm[n_val:]]
        torch.manual_seed(seed)
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(64 if i == 0 else hidden, hidden), nn.GELU()]
        self.model = nn.Sequential(*layers, nn.Linear(hidden, 10))
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def parameters(self) -> Iterable[Tensor]:
        return self.model.parameters()

    def train_loss(self, step: int) -> Tensor:
        idx = torch.randint(len(self.x_train), (self.batch_size,), generator=self.generator)
        return nn.functional.cross_entropy(self.model(self.x_train[idx]), self.y_train[idx])

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        logits = self.model(self.x_val)
        return {
            "val_loss": nn.functional.cross_entropy(logits, self.y_val).item(),
            "val_accuracy": (logits.argmax(1) == self.y_val).float().mean().item(),
        }
