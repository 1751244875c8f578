"""The shape of a learned memory: which features it reads and how big its network is.

A ``LearnedConfig`` fixes the feature vector and the MLP's layer sizes, so it is stored with
every checkpoint; loading meta-parameters into a network of another config is refused
(:mod:`assocmem.meta.checkpoint`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max, without importing torch
FLOAT32_TINY = 1.1754943508222875e-38  # torch.finfo(torch.float32).tiny: the least normal


@dataclass(frozen=True)
class LearnedConfig:
    """Features, network size and output bounds of a learned memory.

    Attributes:
        betas: retentions of the momentum memories ``m_b <- b m_b + (1 - b) g`` (one timescale
            each, bias-corrected on read).
        beta2: retention of the second-moment memory ``v <- beta2 v + (1 - beta2) g^2``.
        time_scales: ``tau`` of the step embedding ``tanh(t / tau)``.
        hidden: widths of the hidden layers of the per-coordinate MLP.
        eps: added inside ``sqrt(v_hat + eps^2)`` so the features stay smooth (twice
            differentiable) where a coordinate never saw a gradient.
        feature_clip: features are clamped to ``[-feature_clip, feature_clip]``.
        direction_bound: ``d = D tanh(o_d / D)``, so ``|d| < D`` and ``d ~ o_d`` for small ``o_d``.
        log_scale_bound: ``s = S tanh(exp_mult * o_s / S)``; the step magnitude is ``exp(s)``.
        exp_mult: ``lambda_s`` of small_fc_lopt (the log-magnitude gain).
        lr: the step size ``lr`` the network was meta-trained with. The preset's step is
            ``W <- W - lr * d * exp(s)``, so ``lr = config.lr`` reproduces meta-training and
            other values scale the step proportionally (``lambda_d`` of small_fc_lopt).
        init_skip: feature index copied to ``d`` by the linear skip at initialisation (the
            default is the Adam direction ``m_hat_0.9 / sqrt(v_hat)``), so an untrained network
            steps like Adam with step size ``lr``.
        warmup: ``T``; when > 0, each coordinate's update at step ``t < T`` is clamped to
            ``[-c_t, c_t]`` with ``c_t = D e^S t / T`` (a linear warm-up of the largest step
            the bounds allow), so the first update moves a weight by at most
            ``lr D e^S / T``; from step ``T`` on nothing is clamped (``|u| < D e^S`` holds by
            the tanh bounds). ``0`` (the default, and what checkpoints without the field
            mean) clamps nothing.
    """

    betas: tuple[float, ...] = (0.5, 0.9, 0.99)
    beta2: float = 0.999
    time_scales: tuple[float, ...] = (10.0, 100.0, 1000.0)
    hidden: tuple[int, ...] = (32, 32)
    eps: float = 1e-8
    feature_clip: float = 10.0
    direction_bound: float = 10.0
    log_scale_bound: float = 4.0
    exp_mult: float = 1.0
    lr: float = 1e-3
    init_skip: int = 2
    warmup: float = 0.0

    def __post_init__(self) -> None:
        # Checked here, so a config from any source (a checkpoint's JSON header included) that
        # would divide by zero, never move (NaN bounds) or index out of range is refused by name.
        object.__setattr__(self, "betas", _reals("betas", self.betas))
        object.__setattr__(self, "time_scales", _reals("time_scales", self.time_scales))
        object.__setattr__(self, "hidden", _ints("hidden", self.hidden))
        for b in (*self.betas, _real("beta2", self.beta2)):
            if not 0 <= b < 1:
                raise ValueError(f"betas and beta2 must be in [0, 1), got {b!r}")
        for t in self.time_scales:
            if not (math.isfinite(t) and t > 0):
                raise ValueError(f"time_scales must be finite and > 0 (tanh(t / tau)), got {t!r}")
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(
                f"hidden must be a non-empty sequence of widths >= 1, got {self.hidden}"
            )
        for name in ("eps", "feature_clip", "direction_bound", "log_scale_bound", "lr"):
            value = _real(name, getattr(self, name))
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be finite and > 0, got {value!r}")
            object.__setattr__(self, name, value)
        warmup = _real("warmup", self.warmup)
        if not (math.isfinite(warmup) and warmup >= 0):
            raise ValueError(f"warmup must be finite and >= 0, got {warmup!r}")
        object.__setattr__(self, "warmup", warmup)
        exp_mult = _real("exp_mult", self.exp_mult)
        if not math.isfinite(exp_mult):
            raise ValueError(f"exp_mult must be finite, got {exp_mult!r}")
        object.__setattr__(self, "exp_mult", exp_mult)
        self._check_float32_range()
        if isinstance(self.init_skip, bool) or not isinstance(self.init_skip, int):
            raise ValueError(f"init_skip must be an integer, got {self.init_skip!r}")
        if not 0 <= self.init_skip < self.num_features:
            raise ValueError(f"init_skip must index a feature (< {self.num_features})")

    def _check_float32_range(self) -> None:
        # The memory runs in float32 (an fp16/bf16 parameter's step too, on its fp32 master):
        # a finite value beyond its range broke every step with an unnamed overflow
        # (feature_clip=1e300: "value cannot be converted to type float"; eps=1e300: eps^2).
        for name in ("eps", "feature_clip", "direction_bound", "log_scale_bound", "lr",
                     "exp_mult", "warmup"):  # fmt: skip
            if abs(getattr(self, name)) > FLOAT32_MAX:
                raise ValueError(
                    f"{name} must fit float32 (|x| <= {FLOAT32_MAX:.4g}), the dtype the memory "
                    f"runs in, got {getattr(self, name)!r}"
                )
        if self.eps > math.sqrt(FLOAT32_MAX):
            raise ValueError(f"eps must be <= {math.sqrt(FLOAT32_MAX):.4g} (eps^2 fits float32)")
        # eps^2 is what keeps sqrt(v_hat + eps^2) > 0 where a coordinate never saw a gradient:
        # below sqrt(tiny) it is a float32 denormal or 0 (eps=1e-25), and such a coordinate's
        # features are 0/0 = NaN (zeroed, counted updates in the optimizer; a NaN meta-gradient
        # in meta-training).
        if self.eps < math.sqrt(FLOAT32_TINY):
            raise ValueError(
                f"eps must be >= {math.sqrt(FLOAT32_TINY)!r} (eps^2 a normal float32, the "
                f"dtype the memory runs in), got {self.eps!r}"
            )
        # the largest update the bounds allow, D e^S (the warm-up's c_t), must be a float32
        if self.log_scale_bound > math.log(FLOAT32_MAX / self.direction_bound):
            raise ValueError(
                "direction_bound * exp(log_scale_bound), the largest update, must fit float32: "
                f"got {self.direction_bound!r} * exp({self.log_scale_bound!r})"
            )

    @property
    def num_features(self) -> int:
        """``F``: (1 + B) Adam-normalised, (1 + B) RMS-normalised, parameter, curvature, time."""
        n_mem = 1 + len(self.betas)
        return 2 * n_mem + 2 + len(self.time_scales)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LearnedConfig:
        if not isinstance(d, dict):
            raise ValueError(f"a LearnedConfig is a mapping of fields, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown LearnedConfig field(s) {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return float(value)


def _reals(name: str, values: Any) -> tuple[float, ...]:
    if not isinstance(values, (tuple, list)):
        raise ValueError(f"{name} must be a sequence of numbers, got {values!r}")
    return tuple(_real(name, v) for v in values)


def _ints(name: str, values: Any) -> tuple[int, ...]:
    if not isinstance(values, (tuple, list)) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in values
    ):
        raise ValueError(f"{name} must be a sequence of integers, got {values!r}")
    return tuple(values)
