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

import numbers
import os
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from assocmem.forensic.calibration import platt_scaling
from assocmem.forensic.checks import whole_number
from assocmem.forensic.data.loaders import require_regular_file
from assocmem.forensic.detector import Detector, ImageInput, as_image_tensor

__all__ = ["NoCropError", "crop_scores", "image_scores_by_size", "without_blank"]


_CROPS_AT_ONCE = 64  # crops stacked per call (256 px float crops: 50 MB)


class NoCropError(ValueError):
    """No image holds a crop of the size asked for (a size :func:`image_scores_by_size` then
    leaves out, with a warning)."""


def _checked_images(images: Sequence[ImageInput]) -> Sequence[ImageInput]:
    if isinstance(images, (str, os.PathLike, Image.Image, torch.Tensor)):
        raise TypeError(
            f"images must be a sequence of images, got one {type(images).__name__} (wrap it in a "
            "list)"
        )
    return images


def _shape(image: ImageInput) -> tuple[int, int]:
    """(height, width), a file's without decoding its pixels (orientation aside: crops are
    square). Refuses what ``Detector`` would: another type or layout, an unreadable file, a
    file that is not a regular one (a FIFO would block), each error naming the image."""
    if isinstance(image, torch.Tensor):
        _, h, w = as_image_tensor(image).shape  # the layout and value checks Detector makes
        return int(h), int(w)
    if isinstance(image, Image.Image):
        return image.height, image.width
    if not isinstance(image, (str, os.PathLike)):
        as_image_tensor(image)  # its TypeError, with the layout hint for an array
    try:
        require_regular_file(image)
        with Image.open(image) as im:  # the header only
            return im.height, im.width
    except (OSError, ValueError) as e:
        raise ValueError(f"{image}: unreadable ({type(e).__name__}: {e})") from None


def _loaded(image: ImageInput) -> torch.Tensor:
    """``image`` as ``Detector`` reads it; a file that fails to decode (a truncated PNG whose
    header read) is named."""
    try:
        return as_image_tensor(image)
    except (OSError, ValueError) as e:
        if not isinstance(image, (str, os.PathLike)):
            raise
        raise ValueError(f"{image}: unreadable ({type(e).__name__}: {e})") from None


def _shapes(images: Sequence[ImageInput]) -> list[tuple[int, int]]:
    """Each image's (height, width); an error says which image of the list it is."""
    out = []
    for i, image in enumerate(images):
        try:
            out.append(_shape(image))
        except ValueError as e:
            raise ValueError(f"image {i} of {len(images)}: {e}") from None
    return out


def _positions(length: int, size: int, step: int) -> int:
    """How many crop starts a side of ``length`` has: multiples of ``step`` up to
    ``length - size``."""
    return (length - size) // step + 1


def crop_scores(
    detector: Detector, images: Sequence[ImageInput], *, size: int, n: int, seed: int = 0
) -> np.ndarray:
    """``detector``'s scores (mean tile logits) of ``n`` ``size`` x ``size`` crops of
    ``images`` (a sequence of paths, PIL images or (3, H, W) tensors as ``Detector.score`` takes
    them): each from an image drawn uniformly among those whose shorter side is at least
    ``size``, at a uniform position among the multiples of ``detector.alignment``, where
    ``Detector`` starts its tiles (an image's 2 x 2 or 8 x 8 JPEG grid; a crop off it scores
    otherwise). float64 (n,), NaN for a blank crop. Each image is read once; a warning says
    when the images hold fewer distinct crops than ``n`` (repeats are no new evidence).

    Raises ``ValueError`` for ``n < 1``, ``size < 1``, an unreadable image (named) or when no
    image holds such a crop; ``TypeError`` for what ``Detector`` does not take."""
    if not whole_number(n, 1):
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if not whole_number(size, 1):
        raise ValueError(f"size must be an integer >= 1, got {size!r}")
    images = _checked_images(images)
    shapes = _shapes(images)
    fits = [k for k, (h, w) in enumerate(shapes) if min(h, w) >= size]
    if not fits:
        raise NoCropError(f"none of the {len(images)} images holds a {size} x {size} crop")
    step = detector.alignment
    distinct = sum(
        _positions(shapes[k][0], size, step) * _positions(shapes[k][1], size, step) for k in fits
    )
    if distinct < n:
        warnings.warn(
            f"{n} crops of {size} px from {distinct} distinct positions: repeated crops count "
            "as more evidence than they are (more or larger images calibrate better)",
            stacklevel=2,
        )
    rng = np.random.default_rng(seed)
    picks = np.asarray(fits)[rng.integers(len(fits), size=n)]
    scores = np.full(n, np.nan)
    for k in np.unique(picks):
        image = _loaded(images[k])
        rows = np.flatnonzero(picks == k)
        _, h, w = image.shape
        tops = rng.integers(_positions(h, size, step), size=len(rows)) * step
        lefts = rng.integers(_positions(w, size, step), size=len(rows)) * step
        for start in range(0, len(rows), _CROPS_AT_ONCE):  # memory: a bounded batch of crops
            part = slice(start, start + _CROPS_AT_ONCE)
            crops = torch.stack(
                [image[:, t : t + size, x : x + size] for t, x in zip(tops[part], lefts[part],
                                                                        strict=True)]
            )  # fmt: skip
            scores[rows[part]] = [r.score for r in detector.score(crops)]
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
    its threshold is not read). Each size must be a multiple of the tile size, of two tiles a
    side or more, and the sizes distinct: an image is decided at the threshold of its whole
    tiles, so a 95 px size stored as 4 tiles set a threshold for 64 px images on crops whose
    scores spread less. A size no real image holds, or whose real crops are all blank, is left
    out with a warning; where the fakes cannot give every size the reals give, or their scores
    do not rank above the reals' (no increasing Platt map), no fake scores are returned
    (``None``, warned): ``save_detector`` stores a map to ``P(fake)`` for every size or for
    none, and ``P(fake)`` then reads the patch map.

    Raises ``ValueError`` for such a size, an unreadable image (named) or ``n < 1``."""
    p = detector.patch_size
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, numbers.Integral):
            raise ValueError(f"sizes must be integers, got {size!r}")
        if size < 2 * p or size % p:
            raise ValueError(
                f"size {size}: an image size must be a multiple of the {p} px tile of two tiles "
                "or more a side (the patch threshold decides single tiles)"
            )
    if len(set(sizes)) != len(sizes):
        raise ValueError(f"sizes must be distinct, got {list(sizes)}")
    real_scores: dict[int, list[float]] = {}
    for size in sizes:
        tiles = detector.area_tiles(size, size)
        try:
            crops = crop_scores(detector, reals, size=size, n=n, seed=seed)
        except NoCropError as e:
            warnings.warn(f"no image threshold for {size} px: {e}", stacklevel=2)
            continue
        scores = without_blank(crops, f"{size} px reals").tolist()
        if scores:
            real_scores[tiles] = scores
        else:
            warnings.warn(
                f"no image threshold for {size} px: its real crops are blank", stacklevel=2
            )
    if fakes is None or not real_scores:
        return real_scores, None
    fake_scores: dict[int, list[float]] = {}
    for size in sizes:
        tiles = detector.area_tiles(size, size)
        if tiles not in real_scores:
            continue
        try:
            # other draws than the reals': the fakes are other images
            scores = crop_scores(detector, fakes, size=size, n=n, seed=seed + 1)
        except NoCropError as e:
            warnings.warn(f"no fake images' scores (none for {size} px: {e})", stacklevel=2)
            return real_scores, None
        fake_scores[tiles] = without_blank(scores, f"{size} px fakes").tolist()
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


def without_blank(scores: np.ndarray, what: str) -> np.ndarray:
    """``scores`` less the blank crops' NaN (no textured tile: no score), a warning counting
    them (``what`` names the set); also what ``experiments.ship_detector`` calibrates with."""
    blank = np.isnan(scores)
    if blank.any():
        warnings.warn(f"{what}: {int(blank.sum())} blank crop(s) left out", stacklevel=3)
    return scores[~blank]
