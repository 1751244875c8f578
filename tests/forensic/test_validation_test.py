"""The validation split scored as the test split: same arrays, its photos for crops too."""

from __future__ import annotations

import numpy as np
import pytest

from assocmem.forensic.data import BenchmarkConfig, build_benchmark
from assocmem.forensic.data.crops import PhotoCrops
from assocmem.forensic.data.fresh import with_fresh_test
from assocmem.forensic.data.validation_test import with_validation_test
from assocmem.forensic.protocol import FamilySplit, zero_shot_report


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory):
    return build_benchmark(
        BenchmarkConfig.tiny(), tmp_path_factory.mktemp("val-test-cache"), progress=False
    )


def test_the_test_split_becomes_the_validation_split(bench):
    moved = with_validation_test(bench)
    assert moved.splits["test"] is bench.splits["val"]
    assert moved.splits["val"] is bench.splits["val"]
    assert moved.splits["train"] is bench.splits["train"]
    assert moved.sources("test") == bench.sources("val") != bench.sources("test")
    assert moved.meta["test_photos"] == "validation" and "test_photos" not in bench.meta
    assert moved.source_names == bench.source_names
    # larger crops of "the test photos" are the validation photos' too, not the original test's
    val_photos = PhotoCrops(bench, "val", 32).photo_names
    assert PhotoCrops(moved, "test", 32).photo_names == val_photos
    assert PhotoCrops(bench, "test", 32).photo_names != val_photos
    # replaced once: a fresh benchmark's test split is not silently swapped again
    with pytest.raises(ValueError, match="already replaced"):
        with_validation_test(with_fresh_test(bench))


def test_the_report_scores_the_validation_photos_held_out_families(bench):
    families = FamilySplit(seen=("ae_nearest",), heldout=("resample",))

    def score(x):  # a fixed, content-dependent score: the mean of each image
        return x.mean(dim=(1, 2, 3))

    moved = zero_shot_report(score, with_validation_test(bench), families)
    plain = zero_shot_report(score, bench, families)
    assert moved["threshold"] == plain["threshold"]  # calibrated on the same validation reals
    # the reals scored are the calibration's own: the FPR is what the threshold was set to give
    assert moved["test_real_fpr"] == pytest.approx(moved["val_real_fpr"])
    val = bench.split("val", ["resample"])
    n_fake = int((val.labels == 1).sum())
    assert moved["heldout"]["resample"]["n_fake"] == n_fake
    assert np.isfinite(moved["heldout"]["resample"]["auc"])
