"""Shared fixtures for optimizer tests: a tiny model with every parameter rank, and a loop."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from assocmem import available_memories

# A training run's parameters (flattened, on the CPU) and its optimizer's state tensors.
Run = tuple[torch.Tensor, list[torch.Tensor]]


class TinyNet(nn.Module):
    """Conv (4-D), linear (2-D), biases (1-D) and a scalar gain (0-D): every rank a preset meets."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 4 * 4, 5)
        self.out = nn.Linear(5, 1)
        self.gain = nn.Parameter(torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.conv(x)).flatten(1)
        return self.gain * self.out(torch.tanh(self.fc(h))).squeeze(-1)


def two_groups(model: TinyNet, lr: float) -> list[dict]:
    """TinyNet's parameters in two param groups, the second at half the learning rate."""
    return [
        {"params": [model.conv.weight, model.conv.bias, model.gain]},
        {
            "params": [model.fc.weight, model.fc.bias, model.out.weight, model.out.bias],
            "lr": lr / 2,
        },
    ]


def make_model(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet()


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(8, 2, 4, 4, generator=g)
    return x, x.mean(dim=(1, 2, 3)).sin()


def loss_at(model: nn.Module, step: int) -> torch.Tensor:
    x, y = batch(step)
    return (model(x) - y).pow(2).mean()


def train(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    steps: range,
    after_step: Callable[[int], None] | None = None,
) -> None:
    for t in steps:
        opt.zero_grad()
        loss_at(model, t).backward()
        opt.step()
        if after_step is not None:
            after_step(t)


def flat_params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def compiled_against_eager(
    make: Callable[[], nn.Module],
    make_opt: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
    backward: Callable[[nn.Module, int], None],
    steps: int = 3,
) -> tuple[Run, Run]:
    """The same training run eagerly and under ``torch.compile(opt.step)`` (after a dynamo
    reset, so no other test's graphs or recompile budget carry over): each run's parameters
    (flattened, on the CPU) and its optimizer's state tensors, in parameter order. Three steps
    by default: step 1 creates the state, steps 2 and 3 read what step 1 wrote."""

    def run(compile_step: bool) -> Run:
        torch.manual_seed(0)
        model = make()
        opt = make_opt(model.parameters())
        step = torch.compile(opt.step) if compile_step else opt.step
        for t in range(steps):
            opt.zero_grad()
            backward(model, t)
            step()
        params = torch.cat([p.detach().flatten().cpu() for p in model.parameters()])
        state = [v for p in model.parameters() for v in opt.state[p].values() if torch.is_tensor(v)]
        return params, state

    torch._dynamo.reset()
    return run(False), run(True)


def assert_same_run(got: Run, want: Run, **tol: float) -> None:
    """Two runs of :func:`compiled_against_eager` agree within ``tol``: parameters and every
    state tensor, and the state holds no two tensors in one storage (state created inside a
    compiled graph once came out aliased)."""
    torch.testing.assert_close(got[0], want[0], **tol)
    assert len(got[1]) == len(want[1])
    for a, b in zip(got[1], want[1], strict=True):
        torch.testing.assert_close(a, b, **tol)
    storages = [t.untyped_storage().data_ptr() for t in got[1] if t.numel() > 0]
    assert len(set(storages)) == len(storages)


def spy_stacked(monkeypatch: Any, module: Any) -> list[int]:
    """A preset module's ``STACK_MIN`` lowered to 2 (tests keep few tensors) and its
    ``_stacked_step`` wrapped: the returned list collects the size of every stacked group
    (:mod:`assocmem.optim.stacks`)."""
    monkeypatch.setattr(module, "STACK_MIN", 2)
    sizes: list[int] = []
    real = module._stacked_step

    def counted(params: list[torch.Tensor], *rest: Any) -> None:
        sizes.append(len(params))
        real(params, *rest)

    monkeypatch.setattr(module, "_stacked_step", counted)
    return sizes


# The presets that equal a torch optimizer, for the equivalence and checkpoint-switch tests:
# (torch optimizer, assocmem memory, torch kwargs, assocmem kwargs)
TORCH_EQUIVALENTS = {
    "adam": (
        torch.optim.Adam,
        "adam",
        {"betas": (0.8, 0.99), "weight_decay": 0.1},
        {"betas": (0.8, 0.99), "weight_decay": 0.1, "decoupled_weight_decay": False},
    ),
    "adamw": (
        torch.optim.AdamW,
        "adam",
        {"betas": (0.9, 0.95), "weight_decay": 0.1, "eps": 1e-6},
        {"betas": (0.9, 0.95), "weight_decay": 0.1, "eps": 1e-6},
    ),
    "adam_maximize": (torch.optim.Adam, "adam", {"maximize": True}, {"maximize": True}),
    "sgd_momentum": (
        torch.optim.SGD,
        "momentum",
        {"momentum": 0.9, "weight_decay": 1e-2},
        {"momentum": 0.9, "weight_decay": 1e-2, "decoupled_weight_decay": False},
    ),
    "sgd_nesterov": (
        torch.optim.SGD,
        "momentum",
        {"momentum": 0.95, "nesterov": True},
        {"momentum": 0.95, "nesterov": True},
    ),
}


# Learning rates at which each preset trains TinyNet stably; presets added later get 1e-3.
SAFE_LR = {"momentum": 1e-2, "adam": 1e-3}


def every_memory() -> list[str]:
    return available_memories()


def safe_lr(memory: str) -> float:
    return SAFE_LR.get(memory, 1e-3)


# Tolerance for "fast path == reference" checks, which run in float64 (``in_float64``): they test
# that two codings compute the same algorithm, not how fp32 matmul kernels round (that differs
# between CPUs: AVX2 vs AVX-512 vs the default kernels reorder sums; fp32 tolerances tuned on one
# machine failed on another). Budget: fp64 unit roundoff 1.1e-16, times the largest per-step
# amplification in any preset (Newton-Schulz's slope at zero, a^5 = 3.4445^5 ~ 490), times 30
# steps, times parameters of order 1: ~2e-12 (measured: at most 1.8e-14, ATEN_CPU_CAPABILITY=default
# and avx2). atol 1e-10 leaves a 50x margin on the bound, yet any algorithmic
# difference (a missed bias correction, a stale buffer) moves parameters by >= lr * 1e-3 ~ 1e-6.
LOCKSTEP_TOL = {"rtol": 0.0, "atol": 1e-10}


@contextlib.contextmanager
def in_float64() -> Iterator[None]:
    """Models, data and optimizer state created inside are float64 (torch's default dtype)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def assert_lockstep(
    fast_model: nn.Module,
    fast: torch.optim.Optimizer,
    ref_model: nn.Module,
    ref: torch.optim.Optimizer,
    steps: int,
    *,
    state_keys: tuple[str, ...] | None = None,
    **tol: float,
) -> None:
    """Train both models one step at a time; after every step their parameters and their
    optimizer state (``state_keys``, default all of it) agree within ``tol``."""
    for t in range(steps):
        train(fast_model, fast, range(t, t + 1))
        train(ref_model, ref, range(t, t + 1))
        torch.testing.assert_close(flat_params(fast_model), flat_params(ref_model), **tol)
        for p, q in zip(fast_model.parameters(), ref_model.parameters(), strict=True):
            for key in ref.state[q] if state_keys is None else state_keys:
                torch.testing.assert_close(fast.state[p][key], ref.state[q][key], **tol)


FLAGS = ("foreach", "orthogonalize", "row_norm")


def option_value(key: str, value: str) -> object:
    """A ``key=value`` option of a test case string (``"muon:gamma=0.5:row_norm=1"``): ``"1"``
    for a flag is True, a number is a float, anything else stays a string."""
    if key in FLAGS:
        return bool(int(value))
    try:
        return float(value)
    except ValueError:
        return value
