"""Crops of one split's photos (``data.crops``) and the image-level evaluation
(``forensic.image_level``, ``experiments.image_level``): test photos only, paired fakes, the
Detector's own scores and threshold, deterministic for a seed."""

import json

import numpy as np
import pytest
import torch
from detector_support import save_tiny_detector

from assocmem.forensic import Detector
from assocmem.forensic.data import BenchmarkConfig, PostProcessConfig, build_benchmark
from assocmem.forensic.data.crops import PhotoCrops
from assocmem.forensic.data.photos import load_photos
from assocmem.forensic.image_level import image_level_report
from assocmem.forensic.protocol import FamilySplit

FAMILIES = FamilySplit(("ae_nearest", "double_jpeg"), ("splice", "resample"))


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    config = BenchmarkConfig.tiny(
        families=("ae_nearest", "double_jpeg", "splice", "resample"), post=PostProcessConfig()
    )
    return build_benchmark(config, tmp_path_factory.mktemp("cache"), progress=False)


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    return Detector.load(save_tiny_detector(tmp_path_factory.mktemp("det") / "d.safetensors"))


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_crops_come_from_their_split_only_and_have_the_size(bench, split):
    crops = PhotoCrops(bench, split, 48)
    groups = {p.name: p.group for p in load_photos(bench.config.photos)}
    assert crops.photo_names
    assert all(bench.meta["split_of_group"][groups[n]] == split for n in crops.photo_names)
    rng = np.random.default_rng(0)
    for _ in range(5):
        crop, photo = crops.crop(rng)
        assert crop.shape == (3, 48, 48) and crop.dtype == np.uint8
        assert 0 <= photo < len(crops.photo_names)


def test_crops_of_a_fresh_test_split_are_the_fresh_photos(bench):
    from assocmem.forensic.data.fresh import with_fresh_test
    from assocmem.forensic.data.photos import FRESH_PHOTO_NAMES

    fresh = with_fresh_test(bench)
    assert set(PhotoCrops(fresh, "test", 48).photo_names) == set(FRESH_PHOTO_NAMES)
    # validation (the thresholds' photos) stays the benchmark's
    assert PhotoCrops(fresh, "val", 48).photo_names == PhotoCrops(bench, "val", 48).photo_names


def test_crops_refuse_what_they_cannot_give(bench):
    with pytest.raises(ValueError, match="split must be one of"):
        PhotoCrops(bench, "holdout")
    with pytest.raises(ValueError, match="holds a"):
        PhotoCrops(bench, "test", 100_000)
    with pytest.raises(ValueError, match="size must be >= 1"):
        PhotoCrops(bench, "test", 0)


def test_the_report_scores_test_crops_at_the_detectors_threshold(bench, detector):
    report = image_level_report(detector, bench, FAMILIES, size=64, n=6, seed=1)
    assert report["size"] == 64 and report["n"] == 6
    assert report["tiles"] == 4  # non-overlapping 32 x 32 tiles of a 64 x 64 image
    test_photos = set(PhotoCrops(bench, "test").photo_names)
    assert report["photos"] and set(report["photos"]) <= test_photos
    assert report["threshold"] == detector.threshold_for(4)  # the 4-tile images' threshold
    assert set(report["seen"]) == {*FAMILIES.seen, "mean"}
    assert set(report["heldout"]) == {*FAMILIES.heldout, "mean"}
    for group in ("seen", "heldout"):
        for m in report[group].values():
            assert 0.0 <= m["auc"] <= 1.0 and 0.0 <= m["tpr"] <= 1.0
    for group in ("seen", "heldout"):  # P(fake) judged per group, classes weighted equally
        assert set(report["probability"][group]) == {"brier", "log_loss"}
    # the same seed draws the same images: the same report, to the bit
    again = image_level_report(detector, bench, FAMILIES, size=64, n=6, seed=1)
    assert json.dumps(again, sort_keys=True) == json.dumps(report, sort_keys=True)


def test_the_threshold_recorded_is_the_one_the_decisions_were_made_at(bench, detector):
    """A 48 px image is scored as 4 overlapping tiles but decided as 1 (``Detector.area_tiles``:
    whole tiles of the non-overlapping grid): the report's threshold is the patch one its
    decisions used, not the 4-tile one (which it printed before, beside TPRs and an FPR that
    were not at it)."""
    import dataclasses

    from assocmem.forensic.image_level import _reals

    # a 4-tile calibration below the patch threshold: the two counts decide differently
    sized = dataclasses.replace(detector, image_thresholds=((4, detector.threshold - 1.0),))
    assert sized.threshold_for(4) < sized.threshold_for(1) == detector.threshold
    report = image_level_report(sized, bench, FAMILIES, size=48, n=6, seed=0)
    assert report["tiles"] == 4  # scored: overlapping tiles included
    assert report["threshold"] == sized.threshold_for(sized.area_tiles(48, 48)) == sized.threshold
    results = sized.score(torch.from_numpy(_reals(bench, "test", 48, 6, 0)[3]))
    assert {r.threshold for r in results} == {report["threshold"]}
    scores = np.array([r.score for r in results])
    assert report["real_fpr"] == pytest.approx(np.mean(scores >= report["threshold"]))
    # at 64 px the scored and the decided counts agree: the 4-tile threshold
    report = image_level_report(sized, bench, FAMILIES, size=64, n=3, seed=0)
    assert report["threshold"] == sized.threshold_for(4) < sized.threshold


def test_one_tile_images_are_scored_as_the_detector_scores_a_patch(bench, detector):
    report = image_level_report(detector, bench, FAMILIES, size=32, n=4, seed=0)
    assert report["tiles"] == 1
    # the reals' FPR is the detector's decision on its own scores of those crops
    from assocmem.forensic.data.postprocess import postprocess

    crops = PhotoCrops(bench, "test", 32)
    rng = np.random.default_rng([0, 0])
    reals = np.stack([crops.crop(rng)[0] for _ in range(4)])
    reals, flags = postprocess(reals, bench.config.post, np.random.default_rng([0, 2]))
    flagged = np.array([r.fake for r in detector.score(torch.from_numpy(reals))])
    assert report["real_fpr"] == pytest.approx(np.mean(flagged))
    # and split by what each real went through, from the same decisions
    from assocmem.forensic.data.postprocess import processing_kinds

    for kind, mask in processing_kinds(flags).items():
        expect = {"fpr": float(flagged[mask].mean()) if mask.any() else None, "n": int(mask.sum())}
        assert report["real_fpr_by_kind"][kind] == expect


def test_fake_images_come_from_the_named_families_and_are_deterministic(bench, detector):
    from assocmem.forensic.image_level import fake_image_scores, real_image_scores

    fakes = fake_image_scores(detector, bench, FAMILIES.seen, size=64, n=5, split="val")
    again = fake_image_scores(detector, bench, FAMILIES.seen, size=64, n=5, split="val")
    reals = real_image_scores(detector, bench, size=64, n=5, split="val")
    assert fakes.shape == reals.shape == (5,) and np.array_equal(fakes, again)
    with pytest.raises(ValueError, match="no families"):
        fake_image_scores(detector, bench, (), size=64, n=5)


def test_the_report_refuses_no_images(bench, detector):
    with pytest.raises(ValueError, match="n must be >= 1"):
        image_level_report(detector, bench, FAMILIES, size=32, n=0)


def test_the_command_writes_and_rerenders_its_section(tmp_path):
    from experiments.image_level import main

    ckpt = save_tiny_detector(tmp_path / "d.safetensors")
    out, md = tmp_path / "r.json", tmp_path / "results.md"
    cache = str(tmp_path / "cache")  # the command's own tiny benchmark (default families)
    main(["--tiny", "--cache-dir", cache, "--weights", str(ckpt), "--sizes", "32", "64",
          "--n", "3", "--json", str(out), "--write", str(md)])  # fmt: skip
    first = md.read_text()
    assert "<!-- report:image-level:begin -->" in first and "| 64 (4) |" in first
    # the reals flagged by what they went through, and none of that for an older record
    assert "| S (tiles) | all | unprocessed | zoomed | blurred | JPEG |" in first
    record = json.loads(out.read_text())
    for report in record["reports"]:
        report.pop("real_fpr_by_kind")
    old = tmp_path / "old.json"
    old.write_text(json.dumps(record))
    main(["--from-json", str(old), "--write", str(tmp_path / "old.md")])
    assert "| unprocessed |" not in (tmp_path / "old.md").read_text()
    md.write_text("# Results\n")
    main(["--from-json", str(out), "--write", str(md)])
    # the same section, its Regenerate line naming the re-render too (the scoring command alone
    # re-scores: the published lines wrote their records outside the repository, an audit)
    then = f", then `python -m experiments.image_level --from-json {out} --write {md}`."
    assert then in md.read_text()
    assert md.read_text().strip().replace(then, ".") == first.strip()
    with pytest.raises(SystemExit):
        main(["--tiny", "--cache-dir", cache, "--weights", str(ckpt), "--n", "0"])
    # the fresh test photos: another section title, the photos named
    main(["--tiny", "--cache-dir", cache, "--weights", str(ckpt), "--sizes", "64", "--n", "3",
          "--test-photos", "fresh", "--json", str(tmp_path / "f.json")])  # fmt: skip
    fresh = json.loads((tmp_path / "f.json").read_text())
    assert fresh["test_photos"] == "fresh"
    assert set(fresh["reports"][0]["photos"]) <= {"aero", "ascent", "luispedro", "nuclear"}
    main(["--from-json", str(tmp_path / "f.json"), "--write", str(tmp_path / "f.md")])
    text = (tmp_path / "f.md").read_text()
    assert "thresholds by size) on the fresh test photos" in text
    assert "crops per size of the fresh test photos" in text


@pytest.mark.parametrize("content", ["not json", "{}", '{"command": "x", "reports": []}'])
def test_the_command_refuses_a_record_it_did_not_write(tmp_path, capsys, content):
    from experiments.image_level import main

    record = tmp_path / "r.json"
    record.write_text(content)
    with pytest.raises(SystemExit):
        main(["--from-json", str(record)])
    assert "--from-json" in capsys.readouterr().err
