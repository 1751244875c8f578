"""Inner training tasks for meta-training and evaluation, as pure functions of parameter dicts.

A :class:`Task` is initial parameters, a minibatch sampler (its own ``torch.Generator``, so a
task is reproducible from its seed) and ``loss(params, batch)``, evaluated with
``torch.func.functional_call`` so the meta-gradient can flow through parameters that are
functions of the meta-parameters.

Meta-training families (:data:`TRAIN_FAMILIES`), each with random sizes, scales and inits:

- ``quadratic``: ``1/2 (x - x* - xi)^T A (x - x* - xi)``, ``A`` with log-uniform spectrum
  (condition number up to 1e3), random overall scale, noisy target ``xi``;
- ``logistic``: logistic regression on synthetic data with random feature scales;
- ``digits_mlp``: 1-2 hidden-layer MLPs on ``sklearn.datasets.load_digits``;
- ``field_autoencoder``: a strided conv autoencoder on smooth random fields (8x8 patches of
  Gaussian-filtered noise of random correlation length).

Held out (never seen in meta-training): ``breast_cancer_mlp``, an MLP classifier on
``sklearn.datasets.load_breast_cancer`` (a different dataset, input size and class count), and
every forensic task of the project.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

Params = dict[str, Tensor]
Batch = Any

TRAIN_FAMILIES = ("quadratic", "logistic", "digits_mlp", "field_autoencoder")
HELD_OUT_FAMILIES = ("breast_cancer_mlp",)


@dataclass
class Task:
    """One inner problem: ``params`` (initial), ``batch()`` and ``loss(params, batch)``."""

    name: str
    params: Params
    loss: Callable[[Params, Batch], Tensor]
    batch: Callable[[], Batch]
    generator: torch.Generator
    eval_loss: Callable[[Params], Tensor] | None = None  # held-out data, when there is any


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _log_uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return math.exp(_uniform(g, math.log(lo), math.log(hi)))


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    """Uniform integer in ``[lo, hi]``."""
    return int(torch.randint(lo, hi + 1, (), generator=g))


def _module_params(module: nn.Module, g: torch.Generator, scale: float) -> Params:
    """Re-draw the module's weights from ``g`` (torch's default init shape, times ``scale``)."""
    params = {}
    for name, p in module.named_parameters():
        fan_in = p[0].numel() if p.dim() > 1 else max(p.numel(), 1)
        bound = scale / math.sqrt(fan_in)
        params[name] = (torch.rand(p.shape, generator=g) * 2 - 1) * bound
    return params


def _module_loss(module: nn.Module, criterion: Callable[[Tensor, Tensor], Tensor]):
    def loss(params: Params, batch: Batch) -> Tensor:
        x, y = batch
        return criterion(functional_call(module, params, (x,)), y)

    return loss


def _minibatches(x: Tensor, y: Tensor, size: int, g: torch.Generator) -> Callable[[], Batch]:
    def batch() -> Batch:
        idx = torch.randint(0, x.shape[0], (size,), generator=g)
        return x[idx], y[idx]

    return batch


def quadratic(g: torch.Generator) -> Task:
    dim = _randint(g, 4, 32)
    kappa = _log_uniform(g, 1.0, 1e3)
    scale = _log_uniform(g, 1e-2, 1e2)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g))
    eig = kappa ** -torch.rand(dim, generator=g)
    hessian = scale * (q * eig) @ q.T
    target = torch.randn(dim, generator=g)
    noise = _log_uniform(g, 1e-3, 1e-1)

    def loss(params: Params, xi: Tensor) -> Tensor:
        r = params["x"] - target - xi
        return 0.5 * r @ hessian @ r

    x0 = torch.randn(dim, generator=g) * _log_uniform(g, 0.1, 3.0)
    return Task("quadratic", {"x": x0}, loss, lambda: noise * torch.randn(dim, generator=g), g)


def logistic(g: torch.Generator) -> Task:
    n, dim = 256, _randint(g, 5, 40)
    feature_scale = torch.exp(torch.randn(dim, generator=g))
    x = torch.randn(n, dim, generator=g) * feature_scale
    w_true = torch.randn(dim, generator=g) / feature_scale / math.sqrt(dim) * 3
    y = (torch.rand(n, generator=g) < torch.sigmoid(x @ w_true)).float().unsqueeze(1)
    module = nn.Linear(dim, 1)
    params = _module_params(module, g, _log_uniform(g, 0.3, 3.0))
    loss = _module_loss(module, F.binary_cross_entropy_with_logits)
    return Task("logistic", params, loss, _minibatches(x, y, _randint(g, 16, 128), g), g)


@cache
def _sklearn_data(name: str) -> tuple[Tensor, Tensor]:
    from sklearn import datasets

    data = getattr(datasets, f"load_{name}")()
    x = torch.tensor(data.data, dtype=torch.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    return x, torch.tensor(data.target, dtype=torch.long)


def _mlp(sizes: list[int], activation: type[nn.Module]) -> nn.Module:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def digits_mlp(g: torch.Generator) -> Task:
    x, y = _sklearn_data("digits")
    depth = _randint(g, 1, 2)
    widths = [int(2 ** _randint(g, 4, 5)) for _ in range(depth)]
    activation = (nn.ReLU, nn.Tanh)[_randint(g, 0, 1)]
    module = _mlp([64, *widths, 10], activation)
    params = _module_params(module, g, _log_uniform(g, 0.5, 2.0))
    loss = _module_loss(module, F.cross_entropy)
    return Task("digits_mlp", params, loss, _minibatches(x, y, _randint(g, 32, 128), g), g)


def smooth_fields(n: int, size: int, length: float, g: torch.Generator) -> Tensor:
    """``(n, 1, size, size)`` Gaussian random fields of correlation length ``length`` (pixels),
    unit variance: white noise low-passed in Fourier space."""
    freq = torch.fft.fftfreq(size)
    k2 = freq.view(-1, 1) ** 2 + freq.view(1, -1) ** 2
    spectrum = torch.exp(-2 * (math.pi * length) ** 2 * k2)
    noise = torch.randn(n, 1, size, size, generator=g)
    field = torch.fft.ifft2(torch.fft.fft2(noise) * spectrum).real
    return field / (field.std(dim=(-2, -1), keepdim=True) + 1e-6)


def field_autoencoder(g: torch.Generator) -> Task:
    channels = int(2 ** _randint(g, 2, 3))
    length = _uniform(g, 0.5, 2.0)
    batch_size = _randint(g, 16, 64)
    module = nn.Sequential(
        nn.Conv2d(1, channels, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.ConvTranspose2d(channels, 1, 4, stride=2, padding=1),
    )
    params = _module_params(module, g, _log_uniform(g, 0.5, 2.0))

    def loss(params: Params, batch: Tensor) -> Tensor:
        return F.mse_loss(functional_call(module, params, (batch,)), batch)

    return Task(
        "field_autoencoder", params, loss, lambda: smooth_fields(batch_size, 8, length, g), g
    )


def breast_cancer_mlp(g: torch.Generator, *, hidden: int = 32, batch_size: int = 64) -> Task:
    """Held-out task: MLP 30 -> hidden -> 2 on a fixed 75/25 split of breast-cancer data."""
    x, y = _sklearn_data("breast_cancer")
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    n_train = int(0.75 * x.shape[0])
    tr, va = perm[:n_train], perm[n_train:]
    module = _mlp([30, hidden, 2], nn.ReLU)
    params = _module_params(module, g, 1.0)
    loss = _module_loss(module, F.cross_entropy)

    def eval_loss(params: Params) -> Tensor:
        return loss(params, (x[va], y[va]))

    return Task(
        "breast_cancer_mlp",
        params,
        loss,
        _minibatches(x[tr], y[tr], batch_size, g),
        g,
        eval_loss,
    )


FAMILIES: dict[str, Callable[[torch.Generator], Task]] = {
    "quadratic": quadratic,
    "logistic": logistic,
    "digits_mlp": digits_mlp,
    "field_autoencoder": field_autoencoder,
    "breast_cancer_mlp": breast_cancer_mlp,
}


def sample_task(family: str, seed: int) -> Task:
    """The task of ``family`` drawn from ``seed`` (same seed, same task and minibatches)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown task family {family!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[family](torch.Generator().manual_seed(int(seed)))
