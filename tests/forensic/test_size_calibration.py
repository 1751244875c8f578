"""Thresholds by image size from one's own images: crops drawn as documented, the scores a
checkpoint stores and decides larger images by."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from detector_support import ARCH_KWARGS
from PIL import Image

from assocmem.forensic import Detector
from assocmem.forensic.calibration import threshold_at_fpr
from assocmem.forensic.checkpoint import build_model, save_detector
from assocmem.forensic.size_calibration import crop_scores, image_scores_by_size
from assocmem.forensic.views import view_logits


@pytest.fixture(scope="module")
def scorer() -> Detector:
    torch.manual_seed(0)
    model = build_model("npr", ARCH_KWARGS).eval()
    return Detector(model=model, patch_size=32, threshold=0.0, stride=32)


def _photos(tmp_path, sizes, seed=0, smooth=False):
    rng = np.random.default_rng(seed)
    paths = []
    for k, (h, w) in enumerate(sizes):
        path = tmp_path / f"photo{seed}_{k}{'_smooth' if smooth else ''}.png"
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        if smooth:  # a 3 x 3 box blur: the tiny NPR scores these below plain noise
            padded = np.pad(pixels.astype(np.float64), ((1, 1), (1, 1), (0, 0)), mode="edge")
            pixels = sum(padded[i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9
            pixels = pixels.round().astype(np.uint8)
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def test_crops_come_from_the_images_large_enough_and_are_seeded(scorer, tmp_path):
    small, large = _photos(tmp_path, [(40, 300), (100, 90)])
    image = torch.from_numpy(np.array(Image.open(large))).permute(2, 0, 1)
    a = crop_scores(scorer, [small, large], size=64, n=12, seed=3)
    assert a.shape == (12,) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, crop_scores(scorer, [small, large], size=64, n=12, seed=3))
    assert not np.array_equal(a, crop_scores(scorer, [small, large], size=64, n=12, seed=4))
    # every crop is a 64 px window of the one image that holds one, scored as Detector does,
    # starting on the detector's grid (NPR's 2 x 2 blocks) as Detector's tiles do
    step = scorer.alignment
    assert step == 2
    windows = {
        round(scorer.score_one(image[:, t : t + 64, x : x + 64]).score, 9)
        for t in range(0, 100 - 64 + 1, step)
        for x in range(0, 90 - 64 + 1, step)
    }
    assert {round(s, 9) for s in a} <= windows
    # the same images as tensors and PIL images: the same crops
    as_pil = [Image.open(small), Image.open(large)]
    np.testing.assert_array_equal(a, crop_scores(scorer, as_pil, size=64, n=12, seed=3))
    with pytest.raises(ValueError, match="holds a 128 x 128 crop"):
        crop_scores(scorer, [small, large], size=128, n=3)
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        crop_scores(scorer, [large], size=64, n=0)


def test_scores_by_size_calibrate_a_checkpoint_that_decides_by_them(scorer, tmp_path):
    reals = _photos(tmp_path, [(150, 140), (130, 200), (90, 90)], smooth=True)
    fakes = _photos(tmp_path, [(140, 150), (200, 130)], seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to say: no blank crop, every size held
        real, fake = image_scores_by_size(scorer, reals, fakes, sizes=(64, 128), n=30)
    assert set(real) == set(fake) == {4, 16} and all(len(v) == 30 for v in real.values())
    val = view_logits(scorer.model, torch.rand(40, 3, 32, 32), "one")
    path = tmp_path / "own.safetensors"
    save_detector(path, scorer.model, architecture="npr", arch_kwargs=ARCH_KWARGS, patch_size=32,
                  val_real_logits=val, val_fake_logits=val + 1.0,
                  image_real_scores=real, image_fake_scores=fake)  # fmt: skip
    own = Detector.load(path)  # the header holds the scores as float32: to its rounding
    at = {tiles: threshold_at_fpr(real[tiles], 0.05) for tiles in (4, 16)}
    assert own.threshold_for(16) == pytest.approx(at[16], rel=1e-6)
    assert own.threshold_for(4) == pytest.approx(max(at[4], at[16]), rel=1e-6)
    assert own.image_probability and own.threshold_for(1) == own.threshold  # the patch one


def test_a_size_no_real_image_holds_or_all_blank_is_left_out_with_a_warning(scorer, tmp_path):
    reals = _photos(tmp_path, [(100, 100)])
    with pytest.warns(UserWarning, match="no image threshold for 128 px"):
        real, fake = image_scores_by_size(scorer, reals, sizes=(64, 128), n=5)
    assert set(real) == {4} and fake is None
    flat = [torch.full((3, 80, 80), 200, dtype=torch.uint8)]
    with pytest.warns(UserWarning, match="blank"):
        real, fake = image_scores_by_size(scorer, flat, flat, sizes=(64,), n=5)
    assert real == {} and fake is None
    with pytest.warns(UserWarning, match="no fake images' scores"):
        real, fake = image_scores_by_size(scorer, reals, _photos(tmp_path, [(70, 70)], 2),
                                          sizes=(64, 96), n=5)  # fmt: skip
    assert set(real) == {4, 9} and fake is None
    smoother = _photos(tmp_path, [(100, 100)], 3, smooth=True)  # scored below the reals
    with pytest.warns(UserWarning, match="no map to P"):
        real, fake = image_scores_by_size(scorer, reals, smoother, sizes=(64,), n=20)
    assert set(real) == {4} and fake is None
    for sizes in ((32,), (95,), (0,), (64.0,)):  # 95 px was stored, and decided, as 4 tiles
        with pytest.raises(ValueError, match="size"):
            image_scores_by_size(scorer, reals, sizes=sizes)
    with pytest.raises(ValueError, match="distinct"):
        image_scores_by_size(scorer, reals, sizes=(64, 64))


def test_a_bad_image_is_refused_by_name_not_a_size_dropped(scorer, tmp_path):
    reals = _photos(tmp_path, [(100, 100), (90, 120)])
    # a float tensor on 0-255 (a common slip) dropped a size with a warning, by seed
    with pytest.raises(ValueError, match="finite values in \\[0, 1\\]"):
        image_scores_by_size(scorer, [*reals, torch.full((3, 80, 80), 200.0)], sizes=(64,), n=5)
    broken = tmp_path / "broken.png"
    broken.write_bytes(reals[0].read_bytes()[:200])  # a truncated PNG: the header reads
    with pytest.raises(ValueError, match="broken.png: unreadable"):
        crop_scores(scorer, [broken], size=64, n=50)
    with pytest.raises(ValueError, match="notes.png: unreadable"):
        (tmp_path / "notes.png").write_text("not an image")
        crop_scores(scorer, [*reals, tmp_path / "notes.png"], size=64, n=3)
    if hasattr(os, "mkfifo"):  # opened for its header, a FIFO blocked for ever
        os.mkfifo(tmp_path / "pipe.png")
        with pytest.raises(ValueError, match="pipe.png: unreadable.*not a regular file"):
            crop_scores(scorer, [tmp_path / "pipe.png"], size=64, n=1)
    with pytest.raises(TypeError, match="an \\(H, W, 3\\) array"):
        crop_scores(scorer, [np.zeros((80, 80, 3), np.uint8)], size=64, n=1)
    with pytest.raises(ValueError, match="must be \\(3, H, W\\)"):
        crop_scores(scorer, [torch.zeros(80, 80, 3, dtype=torch.uint8)], size=64, n=1)
    with pytest.raises(TypeError, match="a sequence of images"):
        crop_scores(scorer, str(reals[0]), size=64, n=1)  # once iterated letter by letter


def test_fewer_distinct_crops_than_asked_for_is_said(scorer, tmp_path):
    # one 64 px image and n = 200: one crop 200 times, counted as 200 independent reals
    (one,) = _photos(tmp_path, [(64, 66)])
    with pytest.warns(UserWarning, match="from 2 distinct positions"):
        scores = crop_scores(scorer, [one], size=64, n=200)
    assert len(set(scores.tolist())) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        crop_scores(scorer, _photos(tmp_path, [(100, 100)], 7), size=64, n=200)  # 19 x 19
