"""One-feature shortcut baselines: one number per patch + logistic regression.

If a single scalar (how much of a patch's spectral energy sits at high frequency) separates
reals from a family's fakes, a detector's score on that family says little about learned
forensic traces: blur, sharpening and JPEG all move this one number. Report it next to every
detector so a reader can see how far from trivial each family is (AUC 0.5 = no shortcut).
The second scalar, :func:`saturation_feature`, measures a cue of the value range: the
autoencoder families' sigmoid output reaches 0 or 255 only through post-processing, where
real photos keep clipped highlights and shadows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from assocmem.forensic.data.patches import as_float_images

__all__ = [
    "gray_power_spectrum",
    "hf_energy_baseline",
    "hf_energy_feature",
    "one_feature_baseline",
    "saturation_feature",
]


def gray_power_spectrum(images: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    """Each image's power spectrum ``|fft2(gray)|^2`` (N, H, W) float32, and every frequency's
    radius (H, W) in Nyquist units (1.0 = Nyquist along an axis, sqrt 2 in the corners).

    ``images``: (N, 3, H, W) float in [0, 1] or uint8. Gray = channel mean, minus its own mean
    (DC carries brightness, not trace).
    """
    x = as_float_images(images)
    if x.ndim != 4:
        raise ValueError(f"expected (N, C, H, W) images, got shape {tuple(x.shape)}")
    gray = x.mean(dim=1)
    gray = gray - gray.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fft2(gray).abs().square()
    h, w = gray.shape[-2:]
    fy = torch.fft.fftfreq(h).abs()[:, None] * 2.0
    fx = torch.fft.fftfreq(w).abs()[None, :] * 2.0
    return power, torch.sqrt(fy**2 + fx**2)


def hf_energy_feature(images: Tensor | np.ndarray, cutoff: float = 0.5) -> np.ndarray:
    """log of the fraction of spectral energy above ``cutoff`` x Nyquist, per image.

    ``images``: as :func:`gray_power_spectrum`. A *fraction* rather than an absolute energy so
    contrast of the content does not dominate. Returns float64 (N,).
    """
    power, radius = gray_power_spectrum(images)
    high = (radius > cutoff).to(power.dtype)
    frac = (power * high).sum(dim=(-2, -1)) / power.sum(dim=(-2, -1)).clamp_min(1e-12)
    return torch.log(frac + 1e-8).double().numpy()


def saturation_feature(images: Tensor | np.ndarray) -> np.ndarray:
    """The share of a patch's values at 0 or 255 (clipped), per image; float64 (N,).

    ``images``: (N, C, H, W) uint8, or float in [0, 1] (rounded to uint8 levels)."""
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8:
        x = x.float().mul(255.0).round().clamp(0, 255).to(torch.uint8)
    if x.ndim != 4:
        raise ValueError(f"expected (N, C, H, W) images, got shape {tuple(x.shape)}")
    clipped = (x == 0) | (x == 255)
    return clipped.flatten(1).double().mean(dim=1).numpy()


def _fit_eval(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score

    mu, sd = x_train.mean(), x_train.std() + 1e-12
    clf = LogisticRegression().fit(((x_train - mu) / sd)[:, None], y_train)
    score = clf.predict_proba(((x_test - mu) / sd)[:, None])[:, 1]
    return {
        "auc": float(roc_auc_score(y_test, score)),
        "ap": float(average_precision_score(y_test, score)),
        "acc": float(accuracy_score(y_test, score >= 0.5)),
        "n_test": int(len(y_test)),
    }


def hf_energy_baseline(
    train: object,
    test: object,
    families: Sequence[str] | None = None,
) -> dict[str, dict[str, float]]:
    """:func:`one_feature_baseline` of :func:`hf_energy_feature`."""
    return one_feature_baseline(train, test, hf_energy_feature, families)


def one_feature_baseline(
    train: object,
    test: object,
    feature: Callable[[Tensor], np.ndarray],
    families: Sequence[str] | None = None,
) -> dict[str, dict[str, float]]:
    """Per family: fit on train reals + that family's train fakes, score test reals + that
    family's test fakes, on the one number ``feature`` gives each image. Key ``"all"``: fit
    and score on every family at once.

    ``train``/``test`` are ``ForensicSubset``s (anything with ``images_uint8``, ``labels``,
    ``family`` and ``family_names``). Returns ``{family: {"auc", "ap", "acc", "n_test"}}``.
    """
    feats = {}
    for name, sub in (("train", train), ("test", test)):
        feats[name] = (
            feature(sub.images_uint8),  # type: ignore[attr-defined]
            sub.labels.numpy(),  # type: ignore[attr-defined]
            sub.family.numpy(),  # type: ignore[attr-defined]
        )
    names: tuple[str, ...] = train.family_names  # type: ignore[attr-defined]
    wanted = [f for f in names if f != "real"] if families is None else list(families)
    results: dict[str, dict[str, float]] = {}
    for fam in wanted:
        code = names.index(fam)
        sel = {k: (v[2] == 0) | (v[2] == code) for k, v in feats.items()}
        if not (feats["train"][1][sel["train"]].any() and feats["test"][1][sel["test"]].any()):
            continue  # family absent from one side
        results[fam] = _fit_eval(
            feats["train"][0][sel["train"]],
            feats["train"][1][sel["train"]],
            feats["test"][0][sel["test"]],
            feats["test"][1][sel["test"]],
        )
    results["all"] = _fit_eval(
        feats["train"][0], feats["train"][1], feats["test"][0], feats["test"][1]
    )
    return results
