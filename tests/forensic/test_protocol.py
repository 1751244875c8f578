"""Calibration, the zero-shot protocol and early stopping: the workload's science."""

import math
from functools import partial

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from assocmem.forensic.calibration import (
    allowed_false_positives,
    rates_at_threshold,
    threshold_at_fpr,
)
from assocmem.forensic.data import BenchmarkConfig, PostProcessConfig, build_benchmark
from assocmem.forensic.models.npr import NPR, NPRWithPixels, neighbouring_pixel_residual
from assocmem.forensic.protocol import FamilySplit, balanced, zero_shot_report
from assocmem.forensic.train import train_detector


@given(
    scores=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=200),
    target=st.floats(0.0, 0.99),
)
def test_calibration_hits_its_target_on_the_data_it_was_fit_on(scores, target):
    t = threshold_at_fpr(scores, target)
    s = np.asarray(scores)
    fpr = float(np.mean(s >= t))
    # at most the target, up to the product's rounding that allowed_false_positives forgives
    assert int(np.sum(s >= t)) <= allowed_false_positives(target, len(s)) <= target * len(s) + 1e-9
    # as close as the scores allow: lowering t to the next score below would exceed the target
    below = s[s < t]
    if below.size:
        assert float(np.mean(s >= below.max())) > target or math.isclose(
            float(np.mean(s >= below.max())), fpr
        )


@given(n=st.integers(1, 100_000), data=st.data())
def test_a_rate_written_as_k_over_n_allows_k(n, data):
    # in binary 0.29 * 100 is 28.999999999999996: floor allowed 28 of 100, and 1/49 none of 49
    k = data.draw(st.integers(0, n - 1))
    assert allowed_false_positives(k / n, n) == k
    assert allowed_false_positives(0.29, 100) == 29 and allowed_false_positives(1 / 49, 49) == 1


def test_calibration_examples_and_errors():
    reals = np.linspace(0, 1, 100, endpoint=False)  # 0.00 .. 0.99
    t = threshold_at_fpr(reals, 0.05)
    assert np.mean(reals >= t) == 0.05 and 0.94 < t <= 0.95
    assert threshold_at_fpr(reals, 0.0) > reals.max()  # nothing flagged
    rates = rates_at_threshold([0, 0, 1, 1], [0.1, 0.9, 0.8, 0.2], 0.5)
    assert rates == {"tpr": 0.5, "fpr": 0.5}
    for labels, scores, threshold, match in (
        ([0, 0, 1, 2], [0.1, 0.9, 0.8, 0.2], 0.5, "labels"),
        ([0, 0, 1, 1], [0.1, math.nan, 0.8, 0.2], 0.5, "finite"),  # NaN: never flagged
        ([0, 0, 1, 1], [0.1, 0.9, 0.8, 0.2], math.nan, "finite"),
    ):
        with pytest.raises(ValueError, match=match):
            rates_at_threshold(labels, scores, threshold)
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match="target_fpr"):
            threshold_at_fpr(reals, bad)
    with pytest.raises(ValueError, match="no real"):
        threshold_at_fpr([], 0.05)
    with pytest.raises(ValueError, match="NaN"):
        threshold_at_fpr([0.1, float("nan")], 0.05)


def test_a_score_equal_to_the_threshold_is_flagged():
    # the decision is score >= threshold: both scores sit on it, so the fake is caught
    # (tpr 1) and the real is a false positive (fpr 1)
    assert rates_at_threshold([0, 1], [0.5, 0.5], 0.5) == {"tpr": 1.0, "fpr": 1.0}


def test_a_family_cannot_be_seen_and_held_out():
    with pytest.raises(ValueError, match="both seen and held out"):
        FamilySplit(("splice", "resample"), ("resample",))
    with pytest.raises(ValueError, match="seen"):
        FamilySplit((), ("resample",))
    with pytest.raises(ValueError, match="sequence of names"):  # not the letters of "splice"
        FamilySplit("splice", ("resample",))


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    config = BenchmarkConfig.tiny(
        families=("ae_nearest", "resample", "splice"), post=PostProcessConfig.none()
    )
    return build_benchmark(config, tmp_path_factory.mktemp("cache"), progress=False)


def test_report_scores_seen_and_held_out_on_the_test_split_with_a_val_threshold(bench):
    families = FamilySplit(("ae_nearest",), ("resample", "splice"))
    seen_images = []

    def score_fn(images):
        seen_images.append(images)
        return images.std(dim=(1, 2, 3))  # any score: the protocol, not the detector, is tested

    report = zero_shot_report(score_fn, bench, families, target_fpr=0.1)
    assert set(report["seen"]) == {"ae_nearest", "mean"}
    assert set(report["heldout"]) == {"resample", "splice", "mean"}
    assert report["val_real_fpr"] <= 0.1
    # the threshold is the val reals' own: recomputing it from them gives the same number
    val = bench.split("val", ["ae_nearest"])
    val_reals = val.images[val.labels == 0]
    assert report["threshold"] == threshold_at_fpr(score_fn(val_reals).numpy(), 0.1)
    for fam in ("resample", "splice"):
        assert {"auc", "tpr", "fpr"} <= set(report["heldout"][fam])
    # scored sets: the val reals (calibration), then the test split only
    assert seen_images[0].shape[0] == len(val_reals)
    assert sum(x.shape[0] for x in seen_images[1:3]) == len(
        bench.split("test", ["ae_nearest"])
    ) + len(bench.split("test", ["resample", "splice"]))


def test_per_photo_metrics_score_each_photo_against_its_own_fakes(bench):
    from assocmem.forensic.data.fresh import with_fresh_test

    bench = with_fresh_test(bench)  # four test photos (the tiny test split has one)
    families = FamilySplit(("ae_nearest",), ("resample", "splice"))
    test = bench.split("test")
    photos = sorted(bench.sources("test"))
    odd = bench.source_names.index(photos[0])  # its reals score as fakes: every one flagged
    rows = {img.numpy().tobytes(): i for i, img in enumerate(test.images_uint8)}

    scored = []

    def score_fn(images):  # the truth (a fake 2, a real 0), but the odd photo's reals are 3
        scored.append(len(images))
        out = torch.zeros(len(images))  # validation reals (calibration): 0
        for k, x in enumerate(images):
            i = rows.get((x * 255).round().to(torch.uint8).numpy().tobytes())
            if i is not None:
                label = float(test.labels[i])
                out[k] = 3.0 if test.source[i] == odd and label == 0 else 2.0 * label
        return out

    report = zero_shot_report(score_fn, bench, families, per_photo=True, scale="logits")
    per = report["per_photo"]
    assert sorted(per) == photos and len(photos) == 4
    assert per[photos[0]]["real_fpr"] == 1.0 and per[photos[0]]["real_mean"] == 3.0
    assert per[photos[0]]["seen"] == per[photos[0]]["heldout"] == 0.0  # its fakes score lower
    for photo in photos[1:]:
        assert per[photo]["real_fpr"] == 0.0
        assert per[photo]["seen"] == per[photo]["heldout"] == 1.0
    n_reals = int((test.labels == 0).sum())
    assert sum(r["reals"] for r in per.values()) == n_reals
    # the pooled report: only the odd photo's reals are false positives
    assert report["test_real_fpr"] == pytest.approx(per[photos[0]]["reals"] / n_reals)
    with_photos = sum(scored)
    scored.clear()
    assert "per_photo" not in zero_shot_report(score_fn, bench, families, scale="logits")
    assert sum(scored) == with_photos  # per photo from the report's own scores, no second pass


def test_report_refuses_a_family_the_benchmark_lacks(bench):
    with pytest.raises(ValueError, match="unknown families"):
        zero_shot_report(lambda x: x.mean((1, 2, 3)), bench, FamilySplit(("denoiser",), ()))


def test_report_refuses_a_score_function_that_drops_images(bench):
    split = FamilySplit(("ae_nearest",), ("resample",))
    with pytest.raises(ValueError, match="scores of shape"):
        zero_shot_report(lambda x: x.mean((1, 2, 3))[1:], bench, split)


def test_one_report_reads_its_scores_on_one_scale(bench):
    # scores in [0, 1] on the seen families' test split but not on the held-out ones: the
    # whole report treats them as logits (no accuracy at 0.5 for one group only)
    calls = iter(range(3))

    def score(x):
        s = x.mean((1, 2, 3))
        return s if next(calls) < 2 else s * 10 - 5  # val reals, seen test, then held out

    report = zero_shot_report(score, bench, FamilySplit(("ae_nearest",), ("resample",)))
    assert report["scale"] == "logits"
    # P(fake) >= 0.5 is a logit >= 0: held-out test reals' scores are x.mean * 10 - 5
    test = bench.split("test", ["resample"])
    reals = test.images[test.labels == 0].mean((1, 2, 3)).double().numpy() * 10 - 5
    assert report["test_real_fpr_0.5"] == float((reals >= 0).mean())


def test_a_declared_scale_is_not_guessed(bench):
    # an untrained detector's logits can all fall in [0, 1]: "auto" read them as
    # probabilities (no real flagged at 0.5, where as logits every one is)
    def score(x):
        return 0.3 + 0.4 * x.mean((1, 2, 3))

    split = FamilySplit(("ae_nearest",), ("resample",))
    assert zero_shot_report(score, bench, split)["scale"] == "probabilities"
    as_logits = zero_shot_report(score, bench, split, scale="logits")
    assert as_logits["scale"] == "logits" and as_logits["test_real_fpr_0.5"] == 1.0
    with pytest.raises(ValueError, match="outside"):
        zero_shot_report(lambda x: score(x) * 10, bench, split, scale="probabilities")
    with pytest.raises(ValueError, match="scale"):
        zero_shot_report(score, bench, split, scale="odds")


def test_balanced_takes_every_real_and_as_many_fakes(bench):
    x, y = balanced(bench.split("train", ["ae_nearest", "resample"]), seed=0)
    assert int(y.sum()) * 2 == len(y) and x.dtype == torch.float32


def test_balanced_is_balanced_with_fewer_fakes_than_reals_and_refuses_one_class(bench):
    # one family's fakes are half as many as the reals at the default fake fraction (the
    # tiny benchmark makes as many): the set was 2:1 real, without a word
    from assocmem.forensic.data.splits import ForensicSubset

    arrays = bench.arrays("train")
    real = (arrays.family == 0).nonzero().flatten()
    fake = (arrays.family == bench.family_names.index("ae_nearest")).nonzero().flatten()
    subset = ForensicSubset(arrays, torch.cat([real, fake[: len(real) // 2]]), bench.family_names)
    fakes = int((subset.labels == 1).sum())
    assert 0 < fakes < int((subset.labels == 0).sum())
    x, y = balanced(subset, seed=0)
    assert int(y.sum()) == fakes and len(y) == 2 * fakes
    assert torch.equal(balanced(subset, seed=0)[0], x)  # seeded
    assert torch.equal(balanced(subset, seed=np.int64(0))[0], x)  # a numpy seed is a seed
    with pytest.raises(ValueError, match="reals and fakes"):
        balanced(bench.split("train", []), seed=0)  # reals only
    for seed in (1.5, -1, True):
        with pytest.raises(ValueError, match="seed"):
            balanced(subset, seed=seed)


def test_family_names_must_be_a_sequence_of_distinct_names(bench):
    with pytest.raises(ValueError, match="sequence of names"):
        bench.split("val", "splice")  # tuple("splice") would be its letters
    with pytest.raises(ValueError, match="twice"):
        FamilySplit(("splice", "splice"), ("resample",))


def test_early_stopping_restores_the_best_weights():
    """A model whose validation loss is best at the first evaluation and then rises: the loop
    stops after ``patience`` worse evaluations and leaves the model as it was at that best."""
    torch.manual_seed(0)
    x = torch.randn(64, 3, 4, 4)
    y = (x.mean((1, 2, 3)) > 0).float()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 1), torch.nn.Flatten(0))
    snapshots = {}

    def log(rec):
        if "val_loss" in rec:
            snapshots[rec["step"]] = [p.detach().clone() for p in model.parameters()]

    # training on flipped labels: validation (true labels) gets worse step after step
    result = train_detector(
        model, x, 1 - y, x, y, partial(torch.optim.SGD, lr=0.5), steps=100, eval_every=5,
        patience=3, log=log,
    )  # fmt: skip
    assert result.stopped_early and result.steps == 15
    assert result.best_step == 0
    for p, q in zip(model.parameters(), snapshots[0], strict=True):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="patience"):
        train_detector(model, x, y, x, y, partial(torch.optim.SGD, lr=0.1), 5, patience=0)


def test_npr_residual_is_zero_on_block_constant_images_and_at_block_corners():
    blocks = torch.rand(2, 3, 4, 4).repeat_interleave(2, -1).repeat_interleave(2, -2)
    assert torch.equal(neighbouring_pixel_residual(blocks), torch.zeros_like(blocks))
    x = torch.rand(2, 3, 8, 8)
    r = neighbouring_pixel_residual(x)
    assert torch.equal(r[..., ::2, ::2], torch.zeros_like(r[..., ::2, ::2]))
    assert torch.equal(r[..., 1::2, 1::2], x[..., 1::2, 1::2] - x[..., ::2, ::2])
    assert NPR()(x.repeat(1, 1, 4, 4)).shape == (2,)
    with pytest.raises(ValueError, match="even"):
        neighbouring_pixel_residual(torch.rand(1, 3, 5, 5))


def test_npr_with_pixels_sees_both_the_residual_and_the_image():
    """On block-constant images the residual branch sees zeros, so two such images that differ
    only in brightness are told apart by the pixel branch alone."""
    torch.manual_seed(0)
    model = NPRWithPixels().eval()
    flat = torch.full((2, 3, 32, 32), 0.2)
    flat[1] = 0.8
    out = model(flat)
    assert out.shape == (2,) and out[0] != out[1]
    assert torch.equal(neighbouring_pixel_residual(flat), torch.zeros_like(flat))


def test_texture_features_of_a_one_position_feature_map_are_refused_with_the_cause():
    # std over one position is NaN; sklearn then said "Input X contains NaN"
    from assocmem.forensic.protocol import texture_features

    class OnePosition(torch.nn.Module):
        def feature_map(self, x):
            return x.mean(dim=(-2, -1), keepdim=True)

    with pytest.raises(ValueError, match="at least 2 positions"):
        texture_features(OnePosition(), torch.rand(4, 3, 32, 32))
