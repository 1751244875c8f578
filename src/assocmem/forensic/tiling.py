"""Cutting an image of any size into a detector's square tiles, and combining the tile scores.

The rule (pure functions, so tests and docs can state it exactly), for a tile side ``P``, a
stride ``S`` and an alignment ``A`` (``P`` and ``S`` multiples of ``A``, ``S <= P``;
``assocmem-detect`` uses ``S = P`` and the detector's own ``A``: 2 for NPR, 8 for a detector
that reads the JPEG grid):

1. **Pad** (:func:`padded_size`, :func:`reflect_indices`): a side ``L`` becomes
   ``L' = max(P, A * ceil(L / A))`` by reflecting the image at its bottom and right edges
   (``numpy``'s ``"reflect"``: the edge pixel is not repeated, repeated reflection when
   ``L' > 2 L - 1``). Only the bottom and right are padded, and only to a multiple of ``A``, so
   every tile starts at a multiple of ``A`` from the image's top-left corner: NPR's residual
   compares the pixels of each ``2 x 2`` block, and the up-sampling trace it reads sits on the
   generator's grid, anchored at that corner; a tile starting at an odd offset would pair pixels
   across blocks. A JPEG encoder's 8 x 8 grid is anchored at the same corner. Reflection,
   not up-scaling, for images smaller than a tile: interpolation would itself write the
   up-sampling trace the detector looks for; and not edge replication either: repeated pixels
   are a copy tie, i.e. a nearest-neighbour up-sampling trace. A reflected image is still a
   weaker witness (fewer distinct pixels), so :class:`~assocmem.forensic.detector.ImageScore`
   flags such images ``undersized``.
2. **Tile** (:func:`tile_starts`, :func:`tile_grid`): along each padded side, tiles start at
   ``0, S, 2 S, ...`` while they fit, and one more tile ends exactly at the edge
   (start ``L' - P``) if the last regular one does not: every pixel lies in at least one tile,
   the edge tile overlaps its neighbour rather than leaving a strip out, and all starts stay
   multiples of ``A``.
   Tiles are taken row-major: ``(top, left)`` for ``top`` in the row starts, ``left`` in the
   column starts.
3. **Combine** (:func:`combine_logits`): the image's score is the **mean of its tile logits**.
   A logit is a log-likelihood ratio; summing independent tiles' evidence would grow with the
   image's area, the mean keeps the score on one tile's scale, so the threshold calibrated on
   single patches applies to it, and one odd tile cannot decide a large image on its own.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator

import torch
from torch import Tensor

__all__ = [
    "combine_logits",
    "pad",
    "padded_size",
    "reflect_indices",
    "tile_grid",
    "tile_starts",
    "tiles",
]


def _check_patch(patch: int, stride: int, align: int = 2) -> None:
    for name, value in (("patch", patch), ("stride", stride), ("align", align)):
        # a float stride (16.0) failed later in range() with a TypeError
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if align < 2 or align % 2:
        raise ValueError(f"align must be an even integer >= 2, got {align}")
    if patch < align or patch % align:
        raise ValueError(f"patch must be a multiple of align={align}, got {patch}")
    if stride < align or stride % align or stride > patch:
        raise ValueError(
            f"stride must be a multiple of align={align} in [{align}, patch={patch}] (a larger "
            f"one skips pixels), got {stride}"
        )


def padded_size(length: int, patch: int, align: int = 2) -> int:
    """``max(patch, align * ceil(length / align))``: the side after padding (rule 1)."""
    if length < 1:
        raise ValueError(f"an image side must be >= 1 pixel, got {length}")
    return max(patch, length + (-length) % align)


def reflect_indices(length: int, new_length: int) -> Tensor:
    """Source index of each of ``new_length`` positions along a side of ``length`` pixels,
    reflected at the far edge without repeating it (``0 1 2 3 2 1 0 1 ...``); a 1-pixel side
    repeats its pixel, the only choice."""
    if length < 1 or new_length < length:
        raise ValueError(f"cannot pad a side of {length} to {new_length}")
    i = torch.arange(new_length)
    if length == 1:
        return torch.zeros(new_length, dtype=torch.long)
    period = 2 * (length - 1)
    i = i % period
    return torch.where(i < length, i, period - i)


def tile_starts(length: int, patch: int, stride: int, align: int = 2) -> list[int]:
    """Tile starts along a side of ``length >= patch`` pixels, a multiple of ``align`` (rule 2)."""
    _check_patch(patch, stride, align)
    if length % align:
        raise ValueError(f"a side of {length} pixels is not a multiple of {align}: pad it")
    if length < patch:
        raise ValueError(f"a side of {length} pixels is shorter than the tile ({patch}): pad it")
    starts = list(range(0, length - patch + 1, stride))
    if starts[-1] != length - patch:
        starts.append(length - patch)
    return starts


def tile_grid(
    height: int, width: int, patch: int, stride: int, align: int = 2
) -> list[tuple[int, int]]:
    """``(top, left)`` of every tile of an image of ``height x width`` (before padding),
    row-major, in padded coordinates (rules 1 and 2)."""
    rows = tile_starts(padded_size(height, patch, align), patch, stride, align)
    cols = tile_starts(padded_size(width, patch, align), patch, stride, align)
    return [(t, c) for t in rows for c in cols]


def pad(image: Tensor, patch: int, align: int = 2) -> Tensor:
    """``image`` (C, H, W) reflected at its bottom and right edges to the padded size (rule 1)."""
    _, h, w = image.shape
    hp, wp = padded_size(h, patch, align), padded_size(w, patch, align)
    if (hp, wp) == (h, w):
        return image
    return image[:, reflect_indices(h, hp)][:, :, reflect_indices(w, wp)]


def tiles(image: Tensor, patch: int, stride: int, align: int = 2) -> Tensor:
    """All tiles of ``image`` (C, H, W) as (n, C, patch, patch), in :func:`tile_grid` order,
    same dtype as ``image``."""
    (every,) = tile_batches(image, patch, stride, align, size=None)
    return every


def tile_batches(
    image: Tensor, patch: int, stride: int, align: int = 2, size: int | None = 4096
) -> Iterator[Tensor]:
    """:func:`tiles` of ``image`` cut ``size`` at a time (``None``: all at once), in the same
    order: a large image's tiles need not all be held at once."""
    if image.dim() != 3:
        raise ValueError(f"expected one image (C, H, W), got shape {tuple(image.shape)}")
    grid = tile_grid(image.shape[1], image.shape[2], patch, stride, align)
    padded = pad(image, patch, align)
    step = len(grid) if size is None else size
    for start in range(0, len(grid), step):
        part = grid[start : start + step]
        yield torch.stack([padded[:, t : t + patch, c : c + patch] for t, c in part])


def combine_logits(tile_logits: Tensor) -> float:
    """The image's score from its tiles' logits: their mean (rule 3)."""
    if tile_logits.numel() == 0:
        raise ValueError("no tile logits to combine")
    return float(tile_logits.double().mean())
