"""Landscape memory: a secant memory that stores the loss's inverse curvature.

Between two steps the optimizer sees a secant pair: key ``y = g_t - g_{t-1}`` (how the
gradient changed) and value ``s = W_t - W_{t-1}`` (the move that changed it). On a quadratic
with Hessian ``A``, ``y = A s``, so a memory ``H`` that recalls ``H y = s`` for every stored
pair has learnt ``A^{-1}`` on their span. The write is a delta (Widrow-Hoff) write with
``eta = rho / (y^T y)``:

    inner objective   L(H) = 1/2 ||H y - s||^2
    write             H <- H - rho (H y - s) y^T / (y^T y)                (Broyden's inverse update)
    read / step       d = H g   (or H m with m <- beta m + (1 - beta) g),   W <- W - lr * d

With ``rho = 1`` one write makes ``H y == s`` exactly (the secant condition). This is
Broyden's second ("bad") method: the delta rule on the inverse directly, so it is cheap and
reads like the memory it is. The retention is 1: old curvature is kept until overwritten.

Two forms (``form``):

- ``"diagonal"``: one scalar memory per coordinate (elementwise key ``y_i``, value ``s_i``),
  so a write moves ``H_i`` toward the per-coordinate secant ``s_i / y_i``. Safeguards: a
  coordinate is written only when ``s_i y_i > 0`` (positive curvature, as BFGS requires) and
  ``|y_i| > y_tol * max(|g_t,i|, |g_{t-1},i|)`` (``y`` is not float cancellation noise); ``H`` is
  clamped into ``[h_min, h_max]``; it starts at ``h0``.
- ``"lowrank"``: per tensor, on the flattened coordinates, ``H = h0 I + U V^T`` of rank at most
  ``rank``, kept as the last ``rank`` pairs ``(S, Y)`` (rows). ``H`` is the memory that all of
  them write with the delta rule to convergence from ``h0 I``: the smallest change of ``h0 I``
  (Frobenius) with ``H y_j = s_j`` for every stored pair,

        H = h0 I + (S - h0 Y)^T (Y Y^T)^+ Y          (U = (S - h0 Y)^T (Y Y^T)^+,  V = Y^T)

  (the multisecant / limited-memory "bad" Broyden update; sequential rank-1 Broyden writes give
  the same ``H`` when the keys are orthogonal). When the budget is full the oldest pair is
  dropped, as L-BFGS does: the memory is a sliding window over the landscape. A pair is written
  only if ``s^T y > 0`` and ``||y||`` is above noise. Since ``H`` need not be symmetric, a read
  ``d = H g`` is used only if it is a descent direction with bounded gain
  (``<d, g> >= h_min ||g||^2`` and ``||d|| <= h_max ||g||``); otherwise the step falls back to
  ``h0 g``. The small ``(rank x rank)`` solve is done in float64.

``lr`` scales the secant step: ``lr = 1`` is the full quasi-Newton step, smaller values damp it;
``h0`` is the step per unit gradient before any curvature has been written (``h0 = 1``: the
first steps are SGD with ``lr``). The parameter difference ``s`` is measured on the tensor
itself, so it includes decoupled weight decay (a factor ``1 - lr wd`` on both ends).

References:
    C. G. Broyden, "A class of methods for solving nonlinear simultaneous equations",
    Math. Comp. 19 (1965). J. Nocedal, S. Wright, "Numerical Optimization", 2nd ed., ch. 6-7
    (secant methods, limited memory). docs/theory/landscape.md has the derivation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from assocmem.memory import ElementwiseMemory, delta_write, read
from assocmem.optim import validate
from assocmem.optim.registry import Group, Hyper, Preset, State, register


def secant_mask(s: Tensor, y: Tensor, g: Tensor, g_prev: Tensor, y_tol: float) -> Tensor:
    """Where a per-coordinate secant pair is trustworthy: positive curvature, ``y`` above noise."""
    floor = y_tol * torch.maximum(g.abs(), g_prev.abs())
    tiny = torch.finfo(y.dtype).tiny
    return (s * y > 0) & (y.abs() > floor) & (y * y > tiny)


def diagonal_write(
    H: Tensor, s: Tensor, y: Tensor, mask: Tensor, *, rho: float, h_min: float, h_max: float
) -> Tensor:
    """Elementwise delta write of ``(key y, value s)`` at rate ``rho / y^2`` where ``mask``."""
    rate = torch.where(mask, rho / torch.where(mask, y * y, 1), 0)
    written = delta_write(ElementwiseMemory(H), y, s, lr=rate, retention=1.0)
    return torch.where(mask, read(written).clamp(h_min, h_max), H)


def lowrank_read(S: Tensor, Y: Tensor, pairs: int, h0: float, d: Tensor) -> Tensor:
    """``H d`` with ``H = h0 I + (S - h0 Y)^T (Y Y^T)^+ Y`` over the first ``pairs`` rows."""
    if pairs == 0:
        return h0 * d
    S, Y = S[:pairs], Y[:pairs]
    gram = (Y @ Y.mT).double()
    coef = torch.linalg.pinv(gram, hermitian=True, rtol=1e-7) @ (Y @ d).double()
    return h0 * d + (S - h0 * Y).mT @ coef.to(d.dtype)


def lowrank_write(S: Tensor, Y: Tensor, pairs: int, s: Tensor, y: Tensor) -> int:
    """Store the pair in the window (in place), dropping the oldest when full; new count."""
    rank = S.shape[0]
    if pairs == rank:
        S[:-1] = S[1:].clone()
        Y[:-1] = Y[1:].clone()
        pairs -= 1
    S[pairs].copy_(s)
    Y[pairs].copy_(y)
    return pairs + 1


def lowrank_direction(
    S: Tensor, Y: Tensor, pairs: int, d: Tensor, *, h0: float, h_min: float, h_max: float
) -> Tensor:
    """The safeguarded read: ``H d`` if it is a descent direction of bounded gain, else ``h0 d``."""
    out = lowrank_read(S, Y, pairs, h0, d)
    dd = d.dot(d)
    ok = torch.isfinite(out).all() & (out.dot(d) >= h_min * dd) & (out.dot(out) <= h_max**2 * dd)
    return torch.where(ok, out, h0 * d)


@register
class Landscape(Preset):
    name = "landscape"
    hyper = {
        "form": Hyper("diagonal", validate.one_of("diagonal", "lowrank"), "shape of H"),
        "h0": Hyper(1.0, validate.positive, "initial inverse curvature (step per unit grad)"),
        "h_min": Hyper(1e-2, validate.non_negative, "lower bound on H (diag) / on <Hg,g>/|g|^2"),
        "h_max": Hyper(1e2, validate.positive, "upper bound on H (diag) / on |Hg|/|g|"),
        "rank": Hyper(4, validate.positive_int, "number of secant pairs kept (lowrank)"),
        "rho": Hyper(1.0, validate.closed_unit_interval, "fraction of the secant error written"),
        "beta": Hyper(0.0, validate.unit_interval, "momentum on g before the read (0: none)"),
        "y_tol": Hyper(1e-6, validate.non_negative, "skip writes with |y| <= y_tol * |g|"),
    }

    def check_group(self, group: Group) -> None:
        if not group["h_min"] <= group["h0"] <= group["h_max"]:
            raise ValueError(
                f"invalid h0: must lie in [h_min, h_max] = [{group['h_min']}, {group['h_max']}], "
                f"got {group['h0']}"
            )

    def init_state(self, param: Tensor, group: Group) -> State:
        zeros = torch.zeros_like(param, memory_format=torch.preserve_format)
        state: State = {
            "prev_grad": zeros.clone(),
            "prev_param": zeros.clone(),
            "has_prev": torch.zeros((), dtype=torch.float32),
        }
        if group["form"] == "diagonal":
            state["curvature"] = torch.full_like(zeros, group["h0"])
        else:
            n = param.numel()
            state["secant_s"] = param.new_zeros(group["rank"], n)
            state["secant_y"] = param.new_zeros(group["rank"], n)
            state["pairs"] = torch.zeros((), dtype=torch.float32)
        if group["beta"] > 0:
            state["momentum"] = zeros.clone()
        return state

    def _remember(self, param: Tensor, grad: Tensor, state: State) -> None:
        state["prev_grad"].copy_(grad)
        state["prev_param"].copy_(param)
        state["has_prev"].fill_(1)

    def _direction(self, grad: Tensor, state: State, group: Group) -> Tensor:
        beta = group["beta"]
        if beta == 0:
            return grad
        state["momentum"].lerp_(grad, 1 - beta)
        return state["momentum"]

    def reference_step(self, param: Tensor, grad: Tensor, state: State, group: Group) -> None:
        if group["form"] == "lowrank":
            self._lowrank_step(param, grad, state, group)
            return
        if state["has_prev"]:
            s, y = param - state["prev_param"], grad - state["prev_grad"]
            mask = secant_mask(s, y, grad, state["prev_grad"], group["y_tol"])
            H = diagonal_write(
                state["curvature"], s, y, mask,
                rho=group["rho"], h_min=group["h_min"], h_max=group["h_max"],
            )  # fmt: skip
            state["curvature"].copy_(H)
        self._remember(param, grad, state)
        d = self._direction(grad, state, group)
        param.add_(read(ElementwiseMemory(state["curvature"]), d), alpha=-group["lr"])

    def _lowrank_step(self, param: Tensor, grad: Tensor, state: State, group: Group) -> None:
        S, Y = state["secant_s"], state["secant_y"]
        pairs = int(state["pairs"])
        g = grad.reshape(-1)
        if state["has_prev"]:
            s = (param - state["prev_param"]).reshape(-1)
            y = g - state["prev_grad"].reshape(-1)
            floor = group["y_tol"] * torch.maximum(g.norm(), state["prev_grad"].norm())
            if s.dot(y) > 0 and y.norm() > floor and bool(torch.isfinite(s).all()):
                pairs = lowrank_write(S, Y, pairs, s, y)
                state["pairs"].fill_(pairs)
        self._remember(param, grad, state)
        d = self._direction(grad, state, group).reshape(-1)
        step = lowrank_direction(
            S, Y, pairs, d, h0=group["h0"], h_min=group["h_min"], h_max=group["h_max"]
        )
        param.add_(step.reshape(param.shape), alpha=-group["lr"])

    def foreach_step(
        self, params: list[Tensor], grads: list[Tensor], states: list[State], group: Group
    ) -> None:
        if group["form"] == "lowrank":
            # Per-tensor small solves: nothing to batch across tensors of different sizes.
            for p, g, st in zip(params, grads, states, strict=True):
                self._lowrank_step(p, g, st, group)
            return
        curv = [st["curvature"] for st in states]
        ready = [i for i, st in enumerate(states) if st["has_prev"]]
        if ready:
            H = [curv[i] for i in ready]
            g = [grads[i] for i in ready]
            g_prev = [states[i]["prev_grad"] for i in ready]
            s = torch._foreach_sub(
                [params[i] for i in ready], [states[i]["prev_param"] for i in ready]
            )
            y = torch._foreach_sub(g, g_prev)
            # Same arithmetic as the reference delta write: H - rate * ((H y - s) y).
            err = torch._foreach_mul(H, y)
            torch._foreach_sub_(err, s)
            torch._foreach_mul_(err, y)
            for i, h in enumerate(H):
                mask = secant_mask(s[i], y[i], g[i], g_prev[i], group["y_tol"])
                rate = torch.where(mask, group["rho"] / torch.where(mask, y[i] * y[i], 1), 0)
                new = (h * 1.0 - rate * err[i]).clamp_(group["h_min"], group["h_max"])
                h.copy_(torch.where(mask, new, h))
        torch._foreach_copy_([st["prev_grad"] for st in states], grads)
        torch._foreach_copy_([st["prev_param"] for st in states], params)
        for st in states:
            st["has_prev"].fill_(1)
        if group["beta"] > 0:
            moms = [st["momentum"] for st in states]
            torch._foreach_lerp_(moms, grads, 1 - group["beta"])
            directions = moms
        else:
            directions = grads
        torch._foreach_addcmul_(params, curv, directions, value=-group["lr"])
