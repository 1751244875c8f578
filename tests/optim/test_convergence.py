"""Convergence of every registered preset on problems with a known optimum.

Three deterministic problems (float64, analytic gradients so a run costs well under a second):

- ``quadratic``: ``f(w) = 1/2 (w - w*)^T A (w - w*)``, ``A = Q diag(logspace(0, 2)) Q^T`` in
  dim 20 (condition number 100, random rotation ``Q``); goal ``f <= 1e-3 f(w0)`` after 500 steps.
- ``rosenbrock``: ``(1 - x)^2 + 100 (y - x^2)^2`` from ``(-1.2, 1)``; goal
  ``||x - (1, 1)|| <= 0.1`` after 3000 steps. Its parameter is a vector, so ``muon`` runs its
  Adam fallback here.
- ``logreg``: L2-regularised multinomial logistic regression, ``W`` of shape
  ``(classes, features + 1)`` (bias folded into a column of ones, so ``muon`` runs its
  orthogonalised matrix path on the whole parameter); goal ``loss - loss* <= 1e-3`` (the loss
  is a mean cross-entropy, ``~1.3`` at ``W = 0``), ``loss*`` from ``torch.optim.LBFGS`` run to
  convergence in the test; the L2 term makes the optimum unique.

Every goal is checked at the end of the budget (the optimizer must get there and stay), and
also checked to be false at ``w0``, so no test passes vacuously.

The per-preset settings in ``CONFIGS`` were found by a coarse sweep (lr on a ~x2-3 grid) run
outside the test suite; each entry is roughly the middle of the range that converged, not the
edge. A preset missing from ``CONFIGS`` fails (a new preset must be added here, not skipped).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import Tensor

from assocmem import MemoryOptimizer, available_memories

DTYPE = torch.float64


@dataclass(frozen=True)
class Problem:
    """A deterministic objective with a known optimum and a success criterion."""

    name: str
    w0: Tensor
    loss: Callable[[Tensor], Tensor]
    grad: Callable[[Tensor], Tensor]
    steps: int
    # error(w): the quantity compared to ``tol`` (smaller is better).
    error: Callable[[Tensor], float]
    tol: float


def quadratic() -> Problem:
    dim, cond = 20, 100.0
    gen = torch.Generator().manual_seed(1)
    Q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=DTYPE))
    A = Q @ torch.diag(torch.logspace(0, math.log10(cond), dim, dtype=DTYPE)) @ Q.T
    w_star = torch.randn(dim, generator=gen, dtype=DTYPE)
    w0 = torch.zeros(dim, dtype=DTYPE)

    def loss(w: Tensor) -> Tensor:
        d = w - w_star
        return 0.5 * d @ A @ d

    f0 = float(loss(w0))
    return Problem(
        name="quadratic",
        w0=w0,
        loss=loss,
        grad=lambda w: A @ (w - w_star),
        steps=500,
        error=lambda w: float(loss(w)) / f0,  # relative suboptimality f / f(w0)
        tol=1e-3,
    )


def rosenbrock() -> Problem:
    opt = torch.tensor([1.0, 1.0], dtype=DTYPE)

    def loss(w: Tensor) -> Tensor:
        x, y = w
        return (1 - x) ** 2 + 100 * (y - x * x) ** 2

    def grad(w: Tensor) -> Tensor:
        x, y = w.tolist()  # python floats: ~10x faster than scalar tensor ops
        return torch.tensor([-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)], dtype=DTYPE)

    return Problem(
        name="rosenbrock",
        w0=torch.tensor([-1.2, 1.0], dtype=DTYPE),
        loss=loss,
        grad=grad,
        steps=3000,
        error=lambda w: float(torch.linalg.vector_norm(w - opt)),
        tol=0.1,
    )


def _logreg_data(
    n: int = 200, features: int = 10, classes: int = 4
) -> tuple[Tensor, Tensor, Tensor]:
    """Gaussian blobs around random class means (overlapping: the optimum is finite anyway)."""
    gen = torch.Generator().manual_seed(2)
    means = 1.5 * torch.randn(classes, features, generator=gen, dtype=DTYPE)
    y = torch.arange(n) % classes
    x = means[y] + torch.randn(n, features, generator=gen, dtype=DTYPE)
    x = torch.cat([x, torch.ones(n, 1, dtype=DTYPE)], dim=1)  # bias column
    onehot = torch.nn.functional.one_hot(y, classes).to(DTYPE)
    return x, y, onehot


LOGREG_L2 = 1e-2


def logreg() -> Problem:
    x, y, onehot = _logreg_data()
    n = x.shape[0]

    def loss(W: Tensor) -> Tensor:
        ce = torch.nn.functional.cross_entropy(x @ W.T, y)
        return ce + 0.5 * LOGREG_L2 * W.pow(2).sum()

    def grad(W: Tensor) -> Tensor:
        p = torch.softmax(x @ W.T, dim=1)
        return (p - onehot).T @ x / n + LOGREG_L2 * W

    w0 = torch.zeros(onehot.shape[1], x.shape[1], dtype=DTYPE)
    best = _lbfgs_optimum(loss, w0)
    return Problem(
        name="logreg",
        w0=w0,
        loss=loss,
        grad=grad,
        steps=500,
        error=lambda W: float(loss(W)) - best,  # absolute suboptimality
        tol=1e-3,
    )


def _lbfgs_optimum(loss: Callable[[Tensor], Tensor], w0: Tensor) -> float:
    W = w0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS(
        [W],
        lr=1.0,
        max_iter=500,
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        opt.zero_grad()
        value = loss(W)
        value.backward()
        return value

    opt.step(closure)
    closure()
    # A reference that is not the optimum would make the test meaningless: demand a tiny gradient.
    assert W.grad.abs().max() < 1e-7, f"L-BFGS did not converge: |grad| = {W.grad.abs().max()}"
    return float(loss(W.detach()))


PROBLEMS = {p.__name__: p for p in (quadratic, rosenbrock, logreg)}

# ---------------------------------------------------------------------------------------------
# Per-preset, per-problem settings: ``lr`` plus any non-default hyperparameters, found by a
# sweep outside the suite (see the module docstring). An entry may add ``"xfail": "<reason>"``
# (its best setting stays in the entry) for a preset that does not converge on that problem at
# any lr tried: the case is then ``xfail(strict=True)``, so a fix shows up as XPASS.
# ---------------------------------------------------------------------------------------------
#
# Columns: the chosen setting, then (in the comment) the lr range of the sweep grid
# {1e-4, 3e-4, 1e-3, ..., 0.3, 1} (refined where narrow) that met the goal with those hypers.
CONFIGS: dict[str, dict[str, dict[str, Any]]] = {
    "momentum": {
        "quadratic": {"lr": 1e-2},  # 1e-3 .. 3e-2 (1e-1 diverges)
        "rosenbrock": {"lr": 1e-3},  # 3e-4 .. 3e-3 (1e-2 diverges: Hessian eig ~1000 at x*)
        "logreg": {"lr": 0.1},  # 1e-2 .. 1
    },
    "adam": {
        "quadratic": {"lr": 0.3},  # 0.1 .. 1
        "rosenbrock": {"lr": 3e-2},  # 1e-2 .. 0.1
        "logreg": {"lr": 0.1},  # 1e-2 .. 1
    },
    "delta": {
        "quadratic": {"lr": 3e-3},  # 1e-3 .. 1e-2 (3e-2 diverges)
        # Defaults work only in 1.5e-3 .. 3e-3 (4e-3 diverges); more retention and a milder
        # erase widen it to 7e-4 .. 3e-3.
        "rosenbrock": {"lr": 1.5e-3, "alpha": 0.95, "gamma": 0.25},
        "logreg": {"lr": 0.3},  # 3e-2 .. 1
    },
    "muon": {
        "quadratic": {"lr": 3e-2},  # vector: Adam fallback (betas .9/.95); 3e-3 .. 1
        "rosenbrock": {"lr": 1e-2},  # vector: Adam fallback; 1e-3 .. 0.3
        # Matrix path. A constant-lr Muon step has a fixed spectral size (no convergence to
        # the exact optimum), so the window is bounded above too: 1e-2 .. 0.1.
        "logreg": {"lr": 2e-2},
    },
    "cms": {
        "quadratic": {"lr": 0.3},  # 3e-2 .. 1
        "rosenbrock": {"lr": 0.1},  # 3e-2 .. 0.3
        "logreg": {"lr": 0.1},  # 3e-2 .. 1
    },
    "deep": {
        "quadratic": {"lr": 5e-2},  # 2e-2 .. 1 (but 0.3 misses: 2.8e-2)
        # Defaults miss (best 0.088 at lr 0.1, ragged in lr); a faster gradient-RMS
        # (rms_beta 0.9) converges over 3e-3 .. 2e-2.
        "rosenbrock": {"lr": 7e-3, "rms_beta": 0.9},
        "logreg": {"lr": 3e-2},  # 3e-3 .. 0.3
    },
    # The default weak (Apollo) form, momentum 0.9, swept over {1e-3, 3e-3, 1e-2, 3e-2, 0.1,
    # 0.3, 1}. Rosenbrock meets the goal at 3e-3 only (1e-3 is too slow; 1e-2 and above diverge:
    # the valley's curvature changes faster than the moving average's secant follows it;
    # without momentum it converges over 3e-3 .. 3e-2). The other forms: SECANT_FORMS below.
    "landscape": {
        "quadratic": {"lr": 1e-2},  # 3e-3 .. 0.1 (0.3 diverges)
        "rosenbrock": {"lr": 3e-3},
        "logreg": {"lr": 0.3},  # 0.1 .. 1
    },
    # Swept against the shipped checkpoint of meta_step 3000 (meta-trained at lr 1e-3, 1000-step
    # horizons, validation objective); re-sweep when the checkpoint changes. Skipped when no
    # checkpoint ships. (The previous checkpoint, 200-step horizons, met rosenbrock in
    # 2e-4 .. 3e-4 only.)
    "learned": {
        "quadratic": {"lr": 1e-3},  # 3e-4 .. 0.1
        "rosenbrock": {"lr": 3e-3},  # 2e-3 .. 1e-2 (3e-2 misses, 0.1 diverges)
        "logreg": {"lr": 1e-3},  # 2e-4 .. 3e-2
    },
}


def _cases() -> list[Any]:
    cases = []
    for memory in available_memories():
        for problem in PROBLEMS:
            entry = CONFIGS.get(memory, {}).get(problem, {})
            marks = []
            if "xfail" in entry:
                marks.append(pytest.mark.xfail(strict=True, reason=entry["xfail"]))
            cases.append(pytest.param(memory, problem, marks=marks, id=f"{memory}-{problem}"))
    return cases


def run(memory: str, problem: Problem, config: dict[str, Any]) -> Tensor:
    hyper = dict(config)
    lr = hyper.pop("lr")
    w = torch.nn.Parameter(problem.w0.clone())
    opt = MemoryOptimizer([w], memory, lr=lr, foreach=True, **hyper)
    for _ in range(problem.steps):
        w.grad = problem.grad(w.detach())
        opt.step()
    return w.detach()


_cache: dict[str, Problem] = {}


def get_problem(name: str) -> Problem:
    if name not in _cache:
        _cache[name] = PROBLEMS[name]()
    return _cache[name]


@pytest.mark.parametrize(("memory", "problem_name"), _cases())
def test_converges(memory: str, problem_name: str) -> None:
    assert memory in CONFIGS and problem_name in CONFIGS[memory], (
        f"no convergence settings for memory={memory!r} on {problem_name!r}: add an lr (found by "
        f"a sweep) to CONFIGS in {__file__}"
    )
    config = {k: v for k, v in CONFIGS[memory][problem_name].items() if k != "xfail"}
    problem = get_problem(problem_name)
    try:
        MemoryOptimizer([torch.nn.Parameter(problem.w0.clone())], memory, **config)
    except (FileNotFoundError, ValueError) as err:
        if memory == "learned":
            pytest.skip(f"learned memory has no usable checkpoint: {err}")
        raise
    start = problem.error(problem.w0)
    assert start > problem.tol, f"{problem_name}: w0 already meets the goal ({start} <= tol)"
    w = run(memory, problem, config)
    assert torch.isfinite(w).all(), f"{memory} diverged on {problem_name}"
    err = problem.error(w)
    assert err <= problem.tol, (
        f"{memory} on {problem_name} with {config}: error {err:.3g} > tol {problem.tol:g} "
        f"after {problem.steps} steps (start {start:.3g})"
    )


# Muon's options on ``logreg``, where muon runs its matrix path. Swept like CONFIGS over
# {3e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.2}: each met the goal over 1e-2 .. 0.1, as plain muon does.
MUON_OPTIONS = {
    "polar_express": {"ns_coefficients": "polar_express"},
    "polar_express_4_steps": {"ns_coefficients": "polar_express", "ns_steps": 4, "ns_lower": 1e-2},
    "delta_erase": {"gamma": 0.5},
    "delta_erase_rows": {"gamma": 0.5, "erase": "row"},
    "row_norm": {"row_norm": True},
    "bfloat16_newton_schulz": {"ns_dtype": "bfloat16"},  # at 2e-2 only
    "all": {"ns_coefficients": "polar_express", "gamma": 0.5, "row_norm": True},
}


@pytest.mark.parametrize("option", MUON_OPTIONS)
def test_muon_options_converge(option: str) -> None:
    problem = get_problem("logreg")
    w = run("muon", problem, {"lr": 2e-2, **MUON_OPTIONS[option]})
    assert problem.error(problem.w0) > problem.tol
    assert problem.error(w) <= problem.tol, f"muon {option}: error {problem.error(w):.3g}"


# landscape's secant forms (the default before the weak form). The diagonal form reaches x*
# on Rosenbrock only in a sliver (lr ~0.7 .. 1 with h0 = 1e-3; with h0 = 1 every lr <= 1e-2 is
# too slow and >= 3e-2 diverges); the low-rank secant memory with a small initial step h0
# converges to machine precision for lr 0.1 .. 1.
SECANT_FORMS = {
    "quadratic": {"lr": 0.2, "form": "diagonal"},  # 3e-2 .. 1
    "rosenbrock": {"lr": 0.3, "form": "lowrank", "h0": 1e-3, "h_min": 1e-5},
    "logreg": {"lr": 0.3, "form": "diagonal"},  # 3e-2 .. 1
}


@pytest.mark.parametrize("problem_name", SECANT_FORMS)
def test_landscape_secant_forms_converge(problem_name: str) -> None:
    problem = get_problem(problem_name)
    w = run("landscape", problem, SECANT_FORMS[problem_name])
    assert problem.error(problem.w0) > problem.tol
    assert torch.isfinite(w).all(), f"landscape diverged on {problem_name}"
    assert problem.error(w) <= problem.tol, f"error {problem.error(w):.3g} on {problem_name}"
