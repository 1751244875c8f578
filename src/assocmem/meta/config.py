"""The shape of a learned memory: which features it reads and how big its network is.

A ``LearnedConfig`` fixes the feature vector and the MLP's layer sizes, so it is stored with
every checkpoint; loading meta-parameters into a network of another config is refused
(:mod:`assocmem.meta.checkpoint`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


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

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        object.__setattr__(self, "time_scales", tuple(float(t) for t in self.time_scales))
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        for b in (*self.betas, self.beta2):
            if not 0 <= b < 1:
                raise ValueError(f"betas and beta2 must be in [0, 1), got {b!r}")
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(
                f"hidden must be a non-empty sequence of widths >= 1, got {self.hidden}"
            )
        if not 0 <= self.init_skip < self.num_features:
            raise ValueError(f"init_skip must index a feature (< {self.num_features})")

    @property
    def num_features(self) -> int:
        """``F``: (1 + B) Adam-normalised, (1 + B) RMS-normalised, parameter, curvature, time."""
        n_mem = 1 + len(self.betas)
        return 2 * n_mem + 2 + len(self.time_scales)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LearnedConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown LearnedConfig field(s) {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
