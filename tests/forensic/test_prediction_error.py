"""Learned prediction-error filters (Bayar and Stamm's constrained layer) and the detector branch
that reads them: the constraint holds for any parameters, linear content is predicted away,
and the branch learns an interpolation trace."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from trace_support import auc_after_training, with_linear_head

from assocmem.forensic.models.npr import NPRWithDCT
from assocmem.forensic.models.prediction_error import (
    PredictionErrorBranch,
    prediction_error_kernels,
)

# float32 sums of 25 taps of magnitude <= 1 + |free| round to a few ulp of that magnitude.
EPS = float(torch.finfo(torch.float32).eps)


@settings(max_examples=60, deadline=None)
@given(
    size=st.sampled_from([3, 5, 7]),
    filters=st.integers(1, 4),
    scale=st.floats(1e-3, 10.0),
    seed=st.integers(0, 2**16),
)
def test_every_kernel_predicts_the_centre_from_neighbours_summing_to_one(
    size: int, filters: int, scale: float, seed: int
):
    gen = torch.Generator().manual_seed(seed)
    free = scale * torch.randn(filters, size * size - 1, generator=gen)
    k = prediction_error_kernels(free, size)
    assert k.shape == (filters, 1, size, size)
    centre = k[:, 0, size // 2, size // 2]
    assert torch.equal(centre, -torch.ones(filters))
    off = k.flatten(1).sum(dim=1) - centre
    magnitude = 1.0 + free.abs().max().item()
    tol = 8 * size * size * EPS * magnitude  # one rounding per tap in the mean and the sum
    torch.testing.assert_close(off, torch.ones(filters), atol=tol, rtol=0)


def test_linear_content_is_predicted_away_and_texture_is_not():
    # With free taps at zero every kernel is "mean of the 24 neighbours minus the centre":
    # exact on any image linear in the coordinates (the neighbourhood is symmetric), so a ramp
    # leaves only float rounding (values <= 2, ~1e-7), while random texture leaves O(0.1).
    branch = PredictionErrorBranch(filters=2, widths=(4,), init_std=0.0)
    i, j = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    ramp = (0.02 * i + 0.03 * j + 0.1).expand(1, 3, 16, 16)
    errors = branch.errors(ramp)
    assert errors.shape == (1, 6, 12, 12)
    assert errors.abs().max() < 1e-5
    assert branch.errors(torch.rand(1, 3, 16, 16)).abs().mean() > 0.1


def test_bad_sizes_and_layouts_are_refused():
    with pytest.raises(ValueError, match="odd size"):
        prediction_error_kernels(torch.zeros(2, 15), 4)
    with pytest.raises(ValueError, match=r"\(F, 24\)"):
        prediction_error_kernels(torch.zeros(2, 8), 5)
    with pytest.raises(ValueError, match="3 channels"):
        PredictionErrorBranch()(torch.rand(1, 1, 16, 16))
    with pytest.raises(ValueError, match=">= 0"):
        NPRWithDCT(prediction_filters=-1)


def test_the_branch_is_optional_and_leaves_the_other_branches_initialised_as_before():
    torch.manual_seed(3)
    two = NPRWithDCT()
    torch.manual_seed(3)
    three = NPRWithDCT(prediction_filters=2)
    assert not any(k.startswith("prediction.") for k in two.state_dict())
    own = ("prediction.", "fc.")
    shared = {k: v for k, v in three.state_dict().items() if not k.startswith(own)}
    assert shared.keys() == {k for k in two.state_dict() if not k.startswith("fc.")}
    for k, v in shared.items():
        assert torch.equal(v, two.state_dict()[k]), k
    out = three(torch.rand(4, 3, 32, 32))
    assert out.shape == (4,) and torch.isfinite(out).all()


def test_a_three_branch_detector_survives_its_checkpoint(tmp_path: Path):
    from assocmem.forensic.checkpoint import build_model, load_detector, save_detector

    kwargs = {"widths": [4, 8], "hidden": 8, "embed": 4, "prediction_filters": 2}
    torch.manual_seed(0)
    model = build_model("npr_dct", kwargs).eval()
    x = torch.rand(6, 3, 32, 32)
    with torch.no_grad():
        val = model(x)
    path = tmp_path / "pe.safetensors"
    save_detector(
        path, model, architecture="npr_dct", arch_kwargs=kwargs, patch_size=32,
        val_real_logits=val, info={},
    )  # fmt: skip
    loaded = load_detector(path)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), val)  # same weights, same kernels, same order


def test_the_branch_learns_an_interpolation_trace_in_a_few_steps():
    # Reals: noisy random textures; fakes: the same kind of texture resized to 0.6 and back
    # (bilinear), the resample family's operation. 40 Adam steps on fresh batches must separate
    # fresh data (AUC > 0.9; chance 0.5): interpolated pixels are predictable from neighbours.
    rng = np.random.default_rng(0)

    def texture(fake: bool) -> np.ndarray:
        small = rng.random((8, 8, 3)) * 255
        big = Image.fromarray(small.astype(np.uint8)).resize((32, 32), Image.BICUBIC)
        noisy = np.clip(np.asarray(big) + rng.normal(0, 8, (32, 32, 3)), 0, 255).astype(np.uint8)
        if fake:
            im = Image.fromarray(noisy).resize((19, 19), Image.BILINEAR)
            noisy = np.asarray(im.resize((32, 32), Image.BILINEAR))
        return noisy.transpose(2, 0, 1)

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        ys = np.arange(n) % 2
        xs = np.stack([texture(bool(y)) for y in ys])
        return torch.from_numpy(xs).float() / 255.0, torch.from_numpy(ys).float()

    torch.manual_seed(0)
    branch = PredictionErrorBranch(filters=2, widths=(8, 16))
    model = with_linear_head(branch, branch.embed_dim)
    assert auc_after_training(model, batch, steps=40, batch_size=32, eval_size=128) > 0.9
