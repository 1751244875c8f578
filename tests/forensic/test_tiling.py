"""``assocmem.forensic.tiling``: padding, tile positions and the combine rule, as documented."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from assocmem.forensic.tiling import (
    combine_logits,
    pad,
    padded_size,
    reflect_indices,
    tile_grid,
    tile_starts,
    tiles,
)


def test_tile_starts_examples():
    # regular starts while they fit, then one tile flush with the edge
    assert tile_starts(100, 32, 32) == [0, 32, 64, 68]
    assert tile_starts(64, 32, 32) == [0, 32]
    assert tile_starts(32, 32, 32) == [0]
    assert tile_starts(40, 32, 16) == [0, 8]
    assert tile_starts(80, 32, 16) == [0, 16, 32, 48]


def test_padded_size_examples():
    assert padded_size(100, 32) == 100
    assert padded_size(101, 32) == 102  # odd: one reflected column, so starts stay even
    assert padded_size(5, 32) == 32  # smaller than a tile: reflected up to one tile
    assert padded_size(1, 32) == 32
    assert padded_size(101, 32, align=8) == 104  # the JPEG grid: a multiple of 8
    assert padded_size(100, 32, align=4) == 100


@given(length=st.integers(2, 200), extra=st.integers(0, 300))
def test_reflect_indices_is_numpys_reflect_and_never_repeats_a_neighbour(length, extra):
    idx = reflect_indices(length, length + extra)
    want = np.pad(np.arange(length), (0, extra), mode="reflect")
    np.testing.assert_array_equal(idx.numpy(), want)
    # no two neighbours read the same source pixel: padding writes no copy tie, the
    # nearest-neighbour up-sampling trace the detector looks for
    assert bool((idx[1:] != idx[:-1]).all())


def test_reflect_indices_of_one_pixel_repeats_it():
    assert reflect_indices(1, 4).tolist() == [0, 0, 0, 0]


@given(
    height=st.integers(1, 130),
    width=st.integers(1, 130),
    patch=st.sampled_from([8, 16, 32]),
    align=st.sampled_from([2, 4, 8]),
    stride_steps=st.integers(1, 16),
)
def test_tiles_cover_every_pixel_at_aligned_offsets(height, width, patch, align, stride_steps):
    stride = min(align * stride_steps, patch)
    hp, wp = padded_size(height, patch, align), padded_size(width, patch, align)
    assert hp % align == 0 and 0 <= hp - max(height, patch) < align
    grid = tile_grid(height, width, patch, stride, align)
    covered = np.zeros((hp, wp), dtype=int)
    for top, left in grid:
        # the 2 x 2 (NPR) or 8 x 8 (JPEG) grid keeps its phase in every tile
        assert top % align == 0 and left % align == 0
        assert 0 <= top <= hp - patch and 0 <= left <= wp - patch
        covered[top : top + patch, left : left + patch] += 1
    assert (covered[:height, :width] >= 1).all()  # every pixel of the image is in a tile
    rows, cols = {t for t, _ in grid}, {c for _, c in grid}
    assert max(rows) == hp - patch and max(cols) == wp - patch  # the last tile is flush
    # regular starts then at most one edge tile per axis: the documented count
    assert len(rows) == (hp - patch) // stride + 1 + ((hp - patch) % stride != 0)
    assert len(grid) == len(rows) * len(cols)


@given(height=st.integers(1, 70), width=st.integers(1, 70))
def test_tiles_hold_the_reflected_image_in_grid_order(height, width):
    patch = 16
    # every pixel's value encodes its position, so a tile shows where it was cut from
    image = torch.arange(3 * height * width, dtype=torch.float64).reshape(3, height, width)
    cut = tiles(image, patch, patch)
    rows = reflect_indices(height, padded_size(height, patch))
    cols = reflect_indices(width, padded_size(width, patch))
    grid = tile_grid(height, width, patch, patch)
    assert cut.shape == (len(grid), 3, patch, patch)
    for tile, (top, left) in zip(cut, grid, strict=True):
        src = image[:, rows[top : top + patch]][:, :, cols[left : left + patch]]
        assert torch.equal(tile, src)
    assert torch.equal(pad(image, patch)[:, :height, :width], image)  # padding only appends


def test_bad_tiling_arguments_are_refused():
    with pytest.raises(ValueError, match="stride"):
        tile_starts(64, 32, 48)  # a stride above the tile would skip pixels
    with pytest.raises(ValueError, match="stride"):
        tile_starts(64, 32, 3)  # odd: tiles would start at odd offsets
    with pytest.raises(ValueError, match="patch"):
        tile_starts(64, 31, 2)
    with pytest.raises(ValueError, match="pad it"):
        tile_starts(20, 32, 32)
    with pytest.raises(ValueError, match="multiple of 8: pad it"):
        tile_starts(100, 32, 32, align=8)
    with pytest.raises(ValueError, match="stride must be a multiple of align=8"):
        tile_starts(96, 32, 4, align=8)
    with pytest.raises(ValueError, match="align"):
        tile_starts(96, 32, 32, align=3)
    with pytest.raises(ValueError, match=">= 1 pixel"):
        padded_size(0, 32)
    with pytest.raises(ValueError, match="no tile logits"):
        combine_logits(torch.zeros(0))


def test_combine_is_the_mean_logit():
    z = torch.tensor([-4.0, 1.0, 0.5, 8.5])
    assert combine_logits(z) == pytest.approx(1.5, abs=1e-12)  # not the max (8.5), median (0.75)
