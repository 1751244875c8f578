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

Four forms (``form``); the secant forms (the first three) read ``g`` itself unless ``beta`` is
set, the weak form a moving average of decay 0.9 (``beta=None``: each form's own default):

- ``"diagonal"``: one scalar memory per coordinate (elementwise key ``y_i``, value ``s_i``),
  so a write moves ``H_i`` toward the per-coordinate secant ``s_i / y_i``. Safeguards: a
  coordinate is written only when ``s_i y_i > 0`` (positive curvature, as BFGS requires) and
  ``|y_i| > y_tol * max(|g_t,i|, |g_{t-1},i|)`` (``y`` is not float cancellation noise); ``H`` is
  clamped into ``[h_min, h_max]``; it starts at ``h0``.
- ``"lowrank"``: per tensor, on the flattened coordinates, ``H = h0 I + U V^T`` of rank at most
  ``rank``, kept as the last ``rank`` pairs ``(S, Y)`` (rows; each pair is kept whole, so
  ``rho`` does not apply and must be 1). ``H`` is the memory that all of
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

- ``"scalar"``: one number per tensor, ``H = h I``: the delta write of the whole-tensor pair
  with ``eta = rho / (y^T y)`` moves ``h`` toward ``s^T y / y^T y``, the step size of
  Barzilai and Borwein (1988; their second formula). A pair is written only if ``s^T y > 0``
  and ``||y||`` is above noise; ``h`` is clamped into ``[h_min, h_max]``. It cannot scale
  coordinates apart, but the step it learns is exact along any eigenvector of the Hessian the
  pair lies on, and it needs no per-coordinate secant. docs/results.md (landscape-forms)
  compares the first three forms; landscape-weak adds the weak form.

- ``"weak"`` (the default): the Apollo form (Ma 2020): a diagonal memory ``B`` of the
  curvature itself (not its inverse), written by the *weak* secant condition, one equation per
  tensor instead of one per coordinate. With ``m`` the bias-corrected moving average of ``g`` (decay
  ``beta``), its change ``y = m_t - m_{t-1}`` as key-side signal and ``d`` the previous step's
  direction (``W_t - W_{t-1} = -lr d`` without weight decay), the write is the least change of
  ``B`` (Frobenius) with ``d^T B d = -d^T y``: a delta write into the row memory ``B`` with
  key ``k = d * d`` and value ``-d^T y``,

        B <- B + rho (-d^T y - <B, k>) k / ||k||^2,

  which is the Dennis-Wolkowicz weak secant update restricted to diagonals. Since ``d``
  carries no ``lr``, ``B`` holds ``lr`` times the curvature. The read divides by ``B``
  rectified, ``d = m / max(|B|, sigma)``: where ``lr`` times the curvature is below ``sigma``
  the step is momentum SGD at ``lr / sigma``, above it the Newton step ``m / curvature``
  (``|B|``: a negative-curvature direction is stepped by its magnitude, not climbed). So a
  coordinate's step never exceeds ``lr |m| / sigma``, whatever the memory holds (bounded, but
  not stable by itself: where one tensor mixes very different curvatures the one equation
  can under-estimate the stiff coordinates, and their Newton step then overshoots). One
  equation per tensor averages the secant's noise over its coordinates (the per-coordinate
  form's ``s_i / y_i`` is mostly noise on minibatch gradients), and ``y`` is taken from the
  moving average rather than the raw gradients. ``period`` must be 1; ``h0``, ``h_min``,
  ``h_max`` and ``y_tol`` do not apply.

Write period (``period = P``, every form but ``"weak"``): the memory is written only every
``P`` steps, with the pair spanning them, ``s = W_t - W_{t-P}`` and ``y = g_t - g_{t-P}``
(steps ``1, 1 + P, 1 + 2P, ...`` start and end the pairs); between writes a step only reads
``H``. The secant then measures the mean curvature along the last ``P`` steps: with minibatch
gradients the signal in ``y`` grows with the baseline while its noise does not (the
stochastic quasi-Newton method of Byrd et al. 2016 likewise collects curvature pairs only
every 10-20 steps), and steps in between are a single pass. ``P = 1`` (default) is the
per-step secant; docs/results.md (landscape-period) has the measured trade-off of longer
periods.

``lr`` scales the secant step: ``lr = 1`` is the full quasi-Newton step, smaller values damp it;
``h0`` is the step per unit gradient before any curvature has been written (``h0 = 1``: the
first steps are SGD with ``lr``). The parameter difference ``s`` is measured on the tensor
itself, so it includes decoupled weight decay (a factor ``1 - lr wd`` on both ends).

This file is the preset and its reference step, written from the equations above
(docs/theory/landscape.md); ``landscape_fast.py`` is the diagonal form's fast path (blocked
eager passes, or one pass fused by ``torch.compile``) and ``landscape_weak_fast.py`` the weak
form's (dot products and one ``addcmul`` per tensor, or fused by ``torch.compile``), each held
equal to it at every step.

References:
    C. G. Broyden, "A class of methods for solving nonlinear simultaneous equations",
    Math. Comp. 19 (1965). J. Nocedal, S. Wright, "Numerical Optimization", 2nd ed., ch. 6-7
    (secant methods, limited memory). R. H. Byrd, S. L. Hansen, J. Nocedal, Y. Singer, "A
    stochastic quasi-Newton method for large-scale optimization", SIAM J. Optim. 26 (2016).
    J. Barzilai, J. M. Borwein, "Two-point step size gradient methods", IMA J. Numer. Anal. 8
    (1988). J. E. Dennis, H. Wolkowicz, "Sizing and least-change secant methods", SIAM J.
    Numer. Anal. 30 (1993). X. Ma, "Apollo: An adaptive parameter-wise diagonal quasi-Newton
    method for nonconvex stochastic optimization", arXiv:2009.13586 (2020).
    docs/theory/landscape.md has the derivation.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from assocmem.memory import ElementwiseMemory, MatrixMemory, delta_write, read
from assocmem.optim import counts, sync_free, validate
from assocmem.optim.registry import Group, Hyper, Preset, State, register


def secant_mask(s: Tensor, y: Tensor, g: Tensor, g_prev: Tensor, y_tol: float) -> Tensor:
    """Where a per-coordinate secant pair is trustworthy: positive curvature, ``y`` above noise."""
    floor = y_tol * torch.maximum(g.abs(), g_prev.abs())
    tiny = torch.finfo(y.dtype).tiny
    return (s * y > 0) & (y.abs() > floor) & (y * y > tiny)


def diagonal_write(
    H: Tensor, s: Tensor, y: Tensor, mask: Tensor, *, rho: float, h_min: float, h_max: float
) -> Tensor:
    """Elementwise delta write of ``(key y, value s)`` at rate ``rho / y^2`` where ``mask``.

    Where ``y^2`` overflows (``|y|`` above ~1.8e19 in float32, ~1.3e154 in float64) that rate
    is 0 and the delta write ``0 * inf``: there the same write, a step a fraction ``rho`` of
    the way to the secant ``q = s / y``, is taken as such, as the fast path takes it
    (``landscape_fast``), and like it only where ``q > 0`` (``q`` underflows to 0 for a tiny
    ``s`` and is NaN where ``s`` overflowed too).
    """
    rate = torch.where(mask, rho / torch.where(mask, y * y, 1), 0)
    written = read(delta_write(ElementwiseMemory(H), y, s, lr=rate, retention=1.0))
    q = s / y
    huge = ~torch.isfinite(y * y)
    # an infinite q (s overflowed) would make lerp's other end NaN; clamped, it lands on h_max
    toward = q if rho == 1 else torch.lerp(H, q.clamp(max=torch.finfo(q.dtype).max), rho)
    written = torch.where(huge, toward, written)
    return torch.where(mask & (~huge | (q > 0)), written.clamp(h_min, h_max), H)


def secant_trusted(s: Tensor, y: Tensor, g: Tensor, g_prev: Tensor, y_tol: float) -> Tensor:
    """Whether a whole-tensor secant pair is trustworthy (0-d bool): positive curvature
    ``s^T y > 0``, ``||y||`` above ``y_tol`` times the gradients' norm, and finite."""
    floor = y_tol * torch.maximum(g.norm(), g_prev.norm())
    sy = torch.sum(s * y)
    return (sy > 0) & (y.norm() > floor) & torch.isfinite(sy)


def scalar_write(
    h: Tensor, s: Tensor, y: Tensor, trusted: Tensor, *, rho: float, h_min: float, h_max: float
) -> Tensor:
    """Delta write of ``(key y, value s)`` into the scalar memory ``H = h I`` where ``trusted``.

    The inner objective ``1/2 ||h y - s||^2`` has gradient ``(h y^T y - s^T y)`` in ``h``; a
    step of ``rho / (y^T y)`` moves ``h`` a fraction ``rho`` of the way to its minimiser
    ``s^T y / y^T y``, the Barzilai-Borwein step (their second, "short" one).
    """
    yy = torch.sum(y * y)
    secant = torch.sum(s * y) / torch.where(trusted, yy, 1)
    written = (h + rho * (secant - h)).clamp(h_min, h_max)
    return torch.where(trusted, written, h)


def weak_secant_write(B: Tensor, d: Tensor, y: Tensor, *, rho: float) -> Tensor:
    """Delta write of the weak secant pair into the diagonal curvature memory ``B``.

    The row memory ``B`` is read with the key ``k = d * d`` (``<B, k> = d^T B d``) and written
    toward the value ``-d^T y`` at rate ``rho / ||k||^2``: with ``rho = 1`` the memory then
    recalls ``d^T B d = -d^T y`` exactly, by the least change of ``B``. ``d`` is scaled by its
    largest magnitude first (the condition is homogeneous in it), so ``d^4`` neither
    overflows nor underflows; a zero or non-finite ``d`` (the first step) writes nothing.
    """
    scale = d.abs().amax()
    ok = (scale > 0) & torch.isfinite(scale)
    scale = torch.where(ok, scale, 1)
    u = (d / scale).reshape(-1)
    key = u * u  # sum(key^2) >= 1: the coordinate of largest |d| contributes 1
    value = -torch.sum(u * y.reshape(-1)) / scale  # u^T B u = -u^T y / scale <=> d^T B d = -d^T y
    memory = MatrixMemory(B.reshape(1, -1))
    written = delta_write(memory, key, value.reshape(1), lr=rho / torch.sum(key * key))
    new = written.M.reshape(B.shape)
    return torch.where(ok & torch.isfinite(new).all(), new, B)


def weak_read(B: Tensor, m: Tensor, sigma: float) -> Tensor:
    """The step direction ``m / max(|B|, sigma)``: the rectified inverse of the memory."""
    return m / B.abs().clamp(min=sigma)


def lowrank_read(S: Tensor, Y: Tensor, pairs: int, h0: float, d: Tensor) -> Tensor:
    """``H d`` with ``H = h0 I + (S - h0 Y)^T (Y Y^T)^+ Y`` over the first ``pairs`` rows.

    The Gram ``Y Y^T`` is formed in the keys' dtype, then solved in float64. Keys of norm
    above ~1.8e19 (float32; ~1.3e154 in float64: gradients of that size) overflow it there, and
    a pseudo-inverse of ``inf`` fails; then it is formed in float64 from the keys scaled by a
    power of two ``c`` (largest magnitude in ``[1/2, 1)``, so it is finite), which leaves ``H``
    as it was: ``(S - h0 Y)^T ((cY)(cY)^T)^+ (cY) c``.
    """
    if pairs == 0:
        return h0 * d
    S, Y = S[:pairs], Y[:pairs]
    gram, key, scale = (Y @ Y.mT).double(), Y, 1.0
    if not bool(torch.isfinite(gram).all()):  # the stored pairs are finite: an overflow
        scale = 2.0 ** -math.frexp(float(Y.abs().amax()))[1]
        key = Y.double() * scale
        gram = key @ key.mT
    coef = torch.linalg.pinv(gram, hermitian=True, rtol=1e-7) @ (key @ d.to(key.dtype)).double()
    if scale != 1:
        coef = coef * scale
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
    non_negative_state = ("curvature",)  # clamped into [h_min, h_max], h_min >= 0
    hyper = {
        "form": Hyper(
            "weak",
            validate.one_of("diagonal", "lowrank", "scalar", "weak"),
            "shape of H: per coordinate, low rank, one number per tensor, or weak secant",
        ),
        "h0": Hyper(1.0, validate.positive, "initial inverse curvature (step per unit grad)"),
        "h_min": Hyper(
            1e-2, validate.non_negative, "lower bound on H (diag, scalar) / <Hg,g>/|g|^2"
        ),
        "h_max": Hyper(1e2, validate.positive, "upper bound on H (diag, scalar) / |Hg|/|g|"),
        "rank": Hyper(4, validate.positive_int, "number of secant pairs kept (lowrank)"),
        "rho": Hyper(
            1.0,
            validate.closed_unit_interval,
            "fraction of the secant error written (lowrank keeps whole pairs: must be 1)",
        ),
        "beta": Hyper(
            None,
            validate.optional(validate.unit_interval),
            "momentum on g before the read (None: 0.9 for the weak form, 0 for the others)",
        ),
        "y_tol": Hyper(
            1e-6, validate.non_negative, "skip writes with |y| <= y_tol * max(|g_t|, |g_t-1|)"
        ),
        "period": Hyper(1, validate.positive_int, "steps between writes; each pair spans them"),
        "sigma": Hyper(
            1.0, validate.positive, "weak form: floor of |B| in the read (steps <= lr |m| / sigma)"
        ),
    }

    def init_state(self, param: Tensor, group: Group) -> State:
        zeros = torch.zeros_like(param, memory_format=torch.preserve_format)
        if group["form"] == "weak":
            # the moving average of g, the last direction d, and the curvature memory B
            return {"momentum": zeros.clone(), "direction": zeros.clone(), "hessian": zeros}
        state: State = {
            "prev_grad": zeros.clone(),
            "prev_param": zeros.clone(),
            # on the parameter's device: a step skipped there (sync_free) selects it back
            "has_prev": torch.zeros((), dtype=torch.float32, device=param.device),
        }
        if group["form"] == "diagonal":
            state["curvature"] = torch.full_like(zeros, group["h0"])
        elif group["form"] == "scalar":
            state["curvature"] = torch.full((), group["h0"], dtype=param.dtype, device=param.device)
        else:
            n = param.numel()
            state["secant_s"] = param.new_zeros(group["rank"], n)
            state["secant_y"] = param.new_zeros(group["rank"], n)
            state["pairs"] = torch.zeros((), dtype=torch.float32)
        if momentum_decay(group) > 0:
            state["momentum"] = zeros.clone()
        return state

    def counts_on_device(self, param: Tensor, group: Group) -> bool:
        # The weak form takes its bias correction from the count on the device on every path;
        # the eager diagonal fast path gates its write and selects its remembering there
        # (landscape_fast). The scalar and low-rank forms, the diagonal form's compiled path
        # and its reference path read the count on the host.
        if group["form"] == "weak":
            return True
        return (
            group["form"] == "diagonal" and not group["compile"] and group["foreach"] is not False
        )

    def shards_locally(self, group: Group) -> bool:
        # The diagonal form is elementwise; the scalar and low-rank forms' whole-tensor sums
        # and solves are stepped on gathered tensors.
        return group["form"] == "diagonal"

    def _remember(self, param: Tensor, grad: Tensor, state: State) -> None:
        state["prev_grad"].copy_(grad)
        state["prev_param"].copy_(remembered(param, grad))
        state["has_prev"].fill_(1)

    def _direction(self, grad: Tensor, state: State, group: Group) -> Tensor:
        beta = momentum_decay(group)
        if beta == 0:
            return grad
        state["momentum"].lerp_(grad, 1 - beta)
        return state["momentum"]

    def reference_step(self, param: Tensor, grad: Tensor, state: State, group: Group) -> None:
        if group["form"] == "weak":
            self._weak_step(param, grad, state, group)
            return
        if group["form"] == "lowrank":
            self._lowrank_step(param, grad, state, group)
            return
        if not due(state, group):  # between writes: the step reads H only
            d = self._direction(grad, state, group)
            param.add_(read(ElementwiseMemory(state["curvature"]), d), alpha=-group["lr"])
            return
        if has_prev(state):
            s, y = param - state["prev_param"], grad - state["prev_grad"]
            bounds = {k: group[k] for k in ("rho", "h_min", "h_max")}
            if group["form"] == "scalar":
                trusted = secant_trusted(s, y, grad, state["prev_grad"], group["y_tol"])
                H = scalar_write(state["curvature"], s, y, trusted, **bounds)
            else:
                mask = secant_mask(s, y, grad, state["prev_grad"], group["y_tol"])
                H = diagonal_write(state["curvature"], s, y, mask, **bounds)
            state["curvature"].copy_(H)
        self._remember(param, grad, state)
        d = self._direction(grad, state, group)
        param.add_(read(ElementwiseMemory(state["curvature"]), d), alpha=-group["lr"])

    def _weak_step(self, param: Tensor, grad: Tensor, state: State, group: Group) -> None:
        m = state["momentum"]
        rate = average_rates([state], [m], momentum_decay(group))[0]
        y = rate * (grad - m)  # m_t - m_{t-1}
        m.add_(y)
        B = weak_secant_write(state["hessian"], state["direction"], y, rho=group["rho"])
        state["hessian"].copy_(B)
        d = weak_read(B, m, group["sigma"])
        state["direction"].copy_(d)
        param.add_(d, alpha=-group["lr"])

    def _lowrank_step(self, param: Tensor, grad: Tensor, state: State, group: Group) -> None:
        S, Y = state["secant_s"], state["secant_y"]
        pairs = int(state["pairs"])
        g = grad.reshape(-1)
        writes = due(state, group)
        if writes and has_prev(state):
            s = (param - state["prev_param"]).reshape(-1)
            y = g - state["prev_grad"].reshape(-1)
            if secant_trusted(s, y, g, state["prev_grad"].reshape(-1), group["y_tol"]):
                pairs = lowrank_write(S, Y, pairs, s, y)
                state["pairs"].fill_(pairs)
        if writes:
            self._remember(param, grad, state)
        d = self._direction(grad, state, group).reshape(-1)
        step = lowrank_direction(
            S, Y, pairs, d, h0=group["h0"], h_min=group["h_min"], h_max=group["h_max"]
        )
        param.add_(step.reshape(param.shape), alpha=-group["lr"])

    def foreach_step(
        self, params: list[Tensor], grads: list[Tensor], states: list[State], group: Group
    ) -> None:
        if group["form"] == "weak":
            # The fast path builds on this file's equations, so it is imported when first run.
            from assocmem.optim.presets.landscape_weak_fast import weak_step

            weak_step(params, grads, states, group)
            return
        if group["form"] != "diagonal":
            # One or a few reductions per tensor (lowrank: a small solve): whole-tensor ops
            # already, nothing to batch across tensors of different sizes.
            for p, g, st in zip(params, grads, states, strict=True):
                self.reference_step(p, g, st, group)
            return
        # The fast path builds on this file's equations, so it is imported when first run.
        from assocmem.optim.presets.landscape_fast import diagonal_step

        diagonal_step(params, grads, states, group, compile=False)

    def compiled_step(
        self, params: list[Tensor], grads: list[Tensor], states: list[State], group: Group
    ) -> None:
        if group["form"] == "weak":
            from assocmem.optim.presets.landscape_weak_fast import weak_step

            weak_step(params, grads, states, group, compile=True)
            return
        from assocmem.optim.presets.landscape_fast import diagonal_step

        diagonal_step(params, grads, states, group, compile=True)

    def check_param(self, param: Tensor, group: Group) -> str | None:
        # y = g_t - g_{t-1} of fp16/bf16 gradients carries their rounding, ~eps |g| each: a
        # noise floor below 2 eps lets that noise be written as curvature (the bf16 step kept
        # cosine 0.1-0.3 to the fp32 one at y_tol = 1e-6, 0.96-0.99 at 2 eps).
        if param.dtype in (torch.float16, torch.bfloat16) and group["form"] != "weak":
            floor = 2 * torch.finfo(param.dtype).eps
            if group["y_tol"] < floor:
                return (
                    f"its secant pairs need y_tol >= 2 * eps = {floor:g} (the gradients' "
                    f"rounding), got y_tol={group['y_tol']!r}"
                )
        return None

    def check_state(self, state: State, group: Group) -> str | None:
        if "has_prev" in state and float(state["has_prev"]) not in (0.0, 1.0):
            return f"'has_prev' must be 0 or 1, got {float(state['has_prev'])}"
        if "pairs" in state:
            pairs = float(state["pairs"])
            if not (pairs.is_integer() and 0 <= pairs <= group["rank"]):
                return f"'pairs' must be a whole number in [0, rank={group['rank']}], got {pairs}"
        if "curvature" in state:  # h0 starts inside the bounds and every write clamps into them
            h, lo, hi = state["curvature"], group["h_min"], group["h_max"]
            if bool(((h < lo) | (h > hi)).any()):
                return (
                    f"'curvature' must lie in [h_min, h_max] = [{lo}, {hi}], holds values in "
                    f"[{float(h.min())}, {float(h.max())}]"
                )
        return super().check_state(state, group)

    def check_group(self, group: Group) -> None:
        if not group["h_min"] <= group["h0"] <= group["h_max"]:
            raise ValueError(
                f"invalid h0: must lie in [h_min, h_max] = [{group['h_min']}, {group['h_max']}], "
                f"got {group['h0']}"
            )
        if group["form"] == "weak" and group["period"] != 1:
            raise ValueError(
                f"invalid period: the weak form writes every step, got period={group['period']}"
            )
        if group["form"] == "lowrank" and group["rho"] != 1:
            # its memory is the pairs themselves, each kept whole: nothing is written in part
            raise ValueError(
                f"invalid rho: the lowrank form keeps whole secant pairs (rho does not apply "
                f"and must be 1), got rho={group['rho']}"
            )
        if group["compile"] and group["form"] not in ("diagonal", "weak"):
            raise ValueError("invalid compile: landscape compiles its diagonal and weak forms only")


def momentum_decay(group: Group) -> float:
    """The group's ``beta``; unset (``None``), the form's own default: the weak form's secant is
    taken on the moving average, so it keeps Apollo's 0.9; the other forms read ``g`` itself."""
    beta = group["beta"]
    if beta is None:
        return 0.9 if group["form"] == "weak" else 0.0
    return beta


def average_rates(
    states: list[State], tensors: list[Tensor], beta: float, *, on_device: bool | None = None
) -> list[float] | list[Tensor]:
    """The weak form's bias-corrected moving average's rate ``(1 - beta) / (1 - beta^t)`` per
    tensor (``m_1 = g_1``; ``m = g`` at every step when ``beta = 0``): Python floats from the
    host's count, or (``on_device``; by default under ``sync_free``) 0-d tensors in each
    tensor's dtype computed from the count on the device by the same float64 operations (the
    host's bits, :mod:`assocmem.optim.counts`)."""
    if on_device is None:
        on_device = sync_free.active()
    if on_device:
        t = counts.as_counts([st["step"] for st in states])
        return counts.like(counts.quotients(1 - beta, counts.corrections(beta, t)), tensors)
    return [(1 - beta) / (1 - beta ** float(st["step"])) for st in states]


def has_prev(state: State) -> bool:
    """Whether a pair has a start: ``t > 1``, since step 1 is always due and remembers. Read
    from the step count, not from ``state["has_prev"]`` (the same bit, kept in the state for
    checkpoints), which lives on the parameter's device, where a read would wait for it."""
    return float(state["step"]) > 1


def due(state: State, group: Group) -> bool:
    """Whether this step ends a period: it writes the pair since the last such step (if any)
    and becomes the next pair's start. Steps ``1, 1 + period, 1 + 2 period, ...``."""
    return (int(state["step"]) - 1) % group["period"] == 0


def remembered(param: Tensor, grad: Tensor) -> Tensor:
    """``param``, to be copied into the pair's start ``prev_param`` before ``param`` is stepped.

    Eagerly ``param`` itself. Under ``torch.compile`` (the user compiling ``opt.step``), a select
    of ``param`` on either side of an always-true mask taken from ``grad``: torch 2.13's
    inductor miscompiles a plain ``prev_param.copy_(param)`` followed by ``param.add_(...)`` in
    the same graph (it aliases the copy to ``param`` and stores the *stepped* ``param``, so every
    secant ``s`` was 0 and nothing was ever written), the bug ``landscape_fast.secant_step``
    works around the same way. Either side is ``param``, so the values are its bits.
    """
    if not torch.compiler.is_compiling():
        return param
    keep = grad == grad
    return torch.where(keep | ~keep, param, param)
