"""Thresholds by image size for a detector trained on one's own images.

A checkpoint's threshold is set on single patches; an image of many tiles is scored by the mean
of their logits, which varies less, so ``Detector`` decides it at a threshold calibrated on
real images of its tile count when the checkpoint stores their scores
(``save_detector(image_real_scores=...)``; ``detector.py``). The shipped checkpoint's come from
crops of the built-in benchmark's validation photos (``experiments.ship_detector``); this module
computes them from any images, such as the validation photos a user kept out of training:

    >>> import torch
    >>> from assocmem.forensic import Detector
    >>> from assocmem.forensic.size_calibration import image_scores_by_size
    >>> # one's own: Detector(model=model, patch_size=32, threshold=0.0, stride=32, views=...)
    >>> scorer = Detector.load()
    >>> val_reals = [torch.rand(3, 100, 120, generator=torch.Generator().manual_seed(0))]
    >>> reals, fakes = image_scores_by_size(scorer, val_reals, sizes=(64,), n=3)
    >>> sorted(reals), len(reals[4]), fakes  # 64 px crops hold 4 tiles; no fakes given
    ([4], 3, None)

and then ``save_detector(..., image_real_scores=reals, image_fake_scores=fakes)``.

:func:`crop_scores` scores ``n`` square crops of one size, each from an image drawn uniformly
among those large enough, at a uniform position (seeded: the same images and seed give the same
crops); :func:`image_scores_by_size` does so for several sizes, keyed by the tile count
``Detector.threshold_for`` reads, leaving out blank crops (no textured tile: no score) and sizes
no image holds, each with a warning. Like the patch threshold, these are only as good as the
images: reals that took no part in training or early stopping, as many as can be had (a 5 %
rate needs 20 or more per size; 200 is what the shipped checkpoint used).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from assocmem.forensic.calibration import platt_scaling
from assocmem.forensic.detector import Detector, ImageInput, _as_image

__all__ = ["crop_scores", "image_scores_by_size"]


def _shape(image: ImageInput) -> tuple[int, int]:
    """(height, width) without decoding a file's pixels (orientation aside: crops are square)."""
    if isinstance(image, torch.Tensor):
        return int(image.shape[-2]), int(image.shape[-1])
    if isinstance(image, Image.Image):
        return image.height, image.width
    with Image.open(image) as im:  # the header only
        return im.height, im.width


def crop_scores(
    detector: Detector, images: Sequence[ImageInput], *, size: int, n: int, seed: int = 0
) -> np.ndarray:
    """``detector``'s scores (mean tile logits) of ``n`` ``size`` x ``size`` crops of
    ``images`` (paths, PIL images or (3, H, W) tensors as ``Detector.score`` takes them): each
    from an image drawn uniformly among those whose shorter side is at least ``size``, at a
    uniform position. float64 (n,), NaN for a blank crop. Each image is read once.

    Raises ``ValueError`` for ``n < 1``, ``size < 1`` or when no image holds such a crop."""
    if n < 1 or size < 1:
        raise ValueError(f"n and size must be >= 1, got n={n}, size={size}")
    fits = [k for k, im in enumerate(images) if min(_shape(im)) >= size]
    if not fits:
        raise ValueError(f"none of the {len(images)} images holds a {size} x {size} crop")
    rng = np.random.default_rng(seed)
    picks = np.asarray(fits)[rng.integers(len(fits), size=n)]
    scores = np.full(n, np.nan)
    for k in np.unique(picks):
        image = _as_image(images[k])
        rows = np.flatnonzero(picks == k)
        _, h, w = image.shape
        tops = rng.integers(h - size + 1, size=len(rows))
        lefts = rng.integers(w - size + 1, size=len(rows))
        crops = torch.stack(
            [image[:, t : t + size, x : x + size] for t, x in zip(tops, lefts, strict=True)]
        )
        scores[rows] = [r.score for r in detector.score(crops)]
    return scores


def image_scores_by_size(
    detector: Detector,
    reals: Sequence[ImageInput],
    fakes: Sequence[ImageInput] | None = None,
    *,
    sizes: Sequence[int] = (64, 128, 256),
    n: int = 200,
    seed: int = 0,
) -> tuple[dict[int, list[float]], dict[int, list[float]] | None]:
    """``save_detector``'s ``image_real_scores`` (and, with ``fakes``, ``image_fake_scores``):
    tile count -> :func:`crop_scores` of ``n`` crops of each size, blank crops left out (said in
    a warning). ``detector`` must score as the checkpoint will (its ``views`` and patch size;
    its threshold is not read). A size no real image holds, or whose real crops are all blank,
    is left out with a warning; where the fakes cannot give every size the reals give, or their
    scores do not rank above the reals' (no increasing Platt map), no fake scores are returned
    (warned): ``save_detector`` stores a map to ``P(fake)`` for every size or for none, and
    ``P(fake)`` then reads the patch map.

    Raises ``ValueError`` for a size of one tile or less (the patch threshold decides those)."""
    real_scores: dict[int, list[float]] = {}
    for size in sizes:
        tiles = detector.area_tiles(size, size)
        if tiles < 2:
            raise ValueError(f"size {size} holds one {detector.patch_size} px tile: no image size")
        try:
            scores = _scored(crop_scores(detector, reals, size=size, n=n, seed=seed), size, "reals")
        except ValueError as e:
            warnings.warn(f"no image threshold for {size} px: {e}", stacklevel=2)
            continue
        if scores:
            real_scores[tiles] = scores
        else:
            warnings.warn(
                f"no image threshold for {size} px: every real crop is blank", stacklevel=2
            )
    if fakes is None:
        return real_scores, None
    fake_scores: dict[int, list[float]] = {}
    for size in sizes:
        tiles = detector.area_tiles(size, size)
        if tiles not in real_scores:
            continue
        try:
            # other draws than the reals': the fakes are other images
            scores = crop_scores(detector, fakes, size=size, n=n, seed=seed + 1)
        except ValueError as e:
            warnings.warn(f"no fake images' scores (none for {size} px: {e})", stacklevel=2)
            return real_scores, None
        fake_scores[tiles] = _scored(scores, size, "fakes")
        if not fake_scores[tiles]:
            warnings.warn(f"no fake images' scores (every {size} px crop blank)", stacklevel=2)
            return real_scores, None
        try:  # what save_detector fits, and refuses when it fails
            platt_scaling(real_scores[tiles], fake_scores[tiles])
        except ValueError as e:
            warnings.warn(f"no fake images' scores (no map to P(fake) at {size} px: {e})",
                          stacklevel=2)  # fmt: skip
            return real_scores, None
    return real_scores, fake_scores


def _scored(scores: np.ndarray, size: int, what: str) -> list[float]:
    """``scores`` less the blank crops (NaN), counted in a warning."""
    blank = np.isnan(scores)
    if blank.any():
        warnings.warn(
            f"{size} px {what}: {int(blank.sum())} of {len(scores)} crops blank (no textured "
            "tile), left out",
            stacklevel=3,
        )
    return scores[~blank].tolist()
