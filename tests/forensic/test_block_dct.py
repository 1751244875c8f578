"""The JPEG view (block DCT, lattice features) and the detector that reads it beside NPR."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from trace_support import auc_after_training, with_linear_head

from assocmem.forensic.data.postprocess import jpeg
from assocmem.forensic.models.block_dct import (
    LATTICE_STEPS,
    BlockDCTBranch,
    block_dct,
    coefficient_features,
    ycbcr,
)
from assocmem.forensic.models.npr import NPRWithDCT


def _jpeg_round_trip(pixels: np.ndarray, quality: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded RGB in [0, 1] (1, 3, H, W) and the luminance table (64,) in natural order."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        table = torch.tensor(list(im.quantization[0]), dtype=torch.float32)
        rgb = np.asarray(im.convert("RGB")).copy()
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0, table


@pytest.mark.parametrize("quality", [50, 75, 90])
def test_luminance_coefficients_of_a_decoded_jpeg_sit_on_its_quantisation_lattice(quality):
    # Our transform is the encoder's (BT.601 YCbCr, level shift, orthonormal 8 x 8 DCT on a
    # grid anchored at the top-left pixel), so the decoded image's luminance coefficients are
    # the quantised ones plus the decoder's rounding: pixel rounding (|e| <= 1/2 per pixel,
    # plus chroma upsampling's share in Y) moves a coefficient by a fraction of a unit, small
    # against every step of these tables (>= 3 at quality 90). On a one-pixel shifted grid, or
    # for a never-compressed image, the distance to the lattice is ~1/4 of a step (uniform).
    rng = np.random.default_rng(0)
    pixels = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
    x, table = _jpeg_round_trip(pixels, quality)
    ratio = block_dct(ycbcr(x))[0, 0] / table[:, None, None]  # (64, 4, 4) in units of steps
    assert (ratio - ratio.round()).abs().mean() < 0.06
    shifted = block_dct(ycbcr(x[..., 1:-7, 1:-7]))[0, 0] / table[:, None, None]
    assert (shifted - shifted.round()).abs().mean() > 0.15
    raw = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255.0
    plain = block_dct(ycbcr(raw))[0, 0] / table[:, None, None]
    assert (plain - plain.round()).abs().mean() > 0.15


def test_block_dct_is_orthonormal_per_block_and_refuses_other_sides():
    x = torch.randn(2, 3, 16, 24, dtype=torch.float64)
    c = block_dct(x)
    assert c.shape == (2, 3, 64, 2, 3)
    # Parseval per block: the orthonormal DCT keeps each block's energy. The matrix comes from
    # dct_matrix in float32 (entries rounded at ~6e-8 relative, 16 of them per coefficient), so
    # the energies agree to ~1e-7 relative, not to float64's rounding.
    blocks = x.reshape(2, 3, 2, 8, 3, 8).pow(2).sum(dim=(3, 5))
    torch.testing.assert_close(c.pow(2).sum(dim=2), blocks, rtol=2e-6, atol=0.0)
    with pytest.raises(ValueError, match="multiples of 8"):
        block_dct(torch.rand(1, 3, 12, 16))


def test_ycbcr_matches_pillow_up_to_its_rounding():
    rng = np.random.default_rng(1)
    pixels = (rng.random((8, 8, 3)) * 255).astype(np.uint8)
    ours = ycbcr(torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255.0)[0]
    ours = ours + torch.tensor([128.0, 128.0, 128.0]).view(3, 1, 1)
    pil = np.asarray(Image.fromarray(pixels).convert("YCbCr")).astype(np.float32)
    # Pillow computes in fixed point and rounds to uint8: at most one unit apart.
    assert (ours - torch.from_numpy(pil).permute(2, 0, 1)).abs().max() <= 1.0


def test_lattice_features_read_one_on_multiples_and_zero_on_zeroed_coefficients():
    steps = (2.0, 3.0)
    c = torch.tensor([0.0, 6.0, 3.0, -4.0]).view(4, 1, 1)
    f = coefficient_features(c, steps).view(4, 3)  # per coefficient: log-magnitude, s=2, s=3
    torch.testing.assert_close(f[:, 0], torch.log1p(c.abs().flatten()))
    assert f[0, 1:].abs().max() == 0  # a zeroed coefficient lies on every lattice: no evidence
    torch.testing.assert_close(f[1, 1:], torch.ones(2))  # 6 is a multiple of 2 and of 3
    torch.testing.assert_close(f[2, 1:], torch.tensor([-1.0, 1.0]))  # 3: between 2's multiples
    torch.testing.assert_close(f[3, 1:], torch.tensor([1.0, -0.5]))  # cos(2 pi 4 / 3) = -1/2


def test_branch_and_detector_take_any_multiple_of_eight():
    torch.manual_seed(0)
    branch = BlockDCTBranch(hidden=16, embed_dim=8)
    assert branch(torch.rand(3, 3, 32, 32)).shape == (3, 8)
    assert branch(torch.rand(3, 3, 16, 40)).shape == (3, 8)
    model = NPRWithDCT()
    out = model(torch.rand(4, 3, 32, 32))
    assert out.shape == (4,) and torch.isfinite(out).all()
    assert len(LATTICE_STEPS) * 64 * 3 + 64 * 3 == branch.mlp[0].num_features


def test_dct_detector_learns_a_single_versus_double_compression_trace():
    # Reals: random smooth textures, never compressed; fakes: the same kind of texture
    # compressed twice (quality 60 then 90). 80 Adam steps on fresh batches must separate them
    # on fresh data (AUC > 0.9; chance 0.5): the lattice is what differs, not the content.
    rng = np.random.default_rng(0)

    def texture() -> np.ndarray:
        small = rng.random((8, 8, 3)) * 255
        big = np.asarray(Image.fromarray(small.astype(np.uint8)).resize((32, 32), Image.BICUBIC))
        noise = rng.normal(0, 6, big.shape)
        return np.clip(big + noise, 0, 255).astype(np.uint8)

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for k in range(n):
            chw = texture().transpose(2, 0, 1)
            if k % 2:  # the double_jpeg family's two round trips
                chw = jpeg(jpeg(chw, 60), 90)
            xs.append(torch.from_numpy(np.ascontiguousarray(chw))[None].float() / 255.0)
            ys.append(float(k % 2))
        return torch.cat(xs), torch.tensor(ys)

    torch.manual_seed(0)
    model = with_linear_head(BlockDCTBranch(hidden=32, embed_dim=16), 16)
    assert auc_after_training(model, batch, steps=40, batch_size=32, eval_size=128) > 0.9
