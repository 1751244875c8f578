"""``experiments.ship_detector`` end to end on the tiny benchmark: a loadable checkpoint whose
header carries the run, and the results section rebuilt from the file alone."""

from __future__ import annotations

import pytest

from assocmem.forensic import Detector
from assocmem.forensic.checkpoint import load_detector
from experiments.ship_detector import main


@pytest.mark.slow  # trains a detector for 20 steps and builds the tiny benchmark: ~15 s
def test_ship_writes_a_checkpoint_and_its_table(tmp_path):
    out, md = tmp_path / "ckpt" / "tiny.safetensors", tmp_path / "results.md"
    common = ["--out", str(out), "--write", str(md), "--cache-dir", str(tmp_path / "cache")]
    main(["--tiny", "--max-steps", "20", "--eval-every", "10", "--workers", "0", *common])
    shipped = load_detector(out)
    assert shipped.info["command"].startswith("python -m experiments.ship_detector --tiny")
    assert shipped.info["train"]["steps"] <= 20 and shipped.info["data"]["seen"]
    assert out.with_suffix(".json").is_file()
    first = md.read_text()
    assert "<!-- report:shipped-detector:begin -->" in first and "**mean (held out)**" in first
    assert load_detector(out).views == "one" and "views `one`" in first  # the default
    md.write_text("# Results\n")
    main(["--table-only", *common])  # the section again, from the checkpoint alone
    assert md.read_text().strip() == first.strip()
    assert Detector.load(out).threshold == shipped.threshold


@pytest.mark.slow  # trains a detector for 20 steps and builds the tiny benchmark: ~15 s
def test_ship_with_d4_views_calibrates_on_the_averaged_logits(tmp_path):
    from assocmem.forensic.data import BenchmarkConfig, build_benchmark
    from assocmem.forensic.views import view_logits
    from experiments.detectors import family_split

    out, md, cache = tmp_path / "d4.safetensors", tmp_path / "results.md", tmp_path / "cache"
    main(["--tiny", "--max-steps", "20", "--eval-every", "10", "--workers", "0", "--views", "d4",
          "--out", str(out), "--write", str(md), "--cache-dir", str(cache)])  # fmt: skip
    shipped = load_detector(out)
    assert shipped.views == shipped.header["views"] == "d4" and Detector.load(out).views == "d4"
    assert "views `d4`" in md.read_text()
    config = BenchmarkConfig.tiny()
    val = build_benchmark(config, cache, progress=False).split("val", family_split(config).seen)
    reals = val.images[val.labels == 0]
    # the stored calibration logits are the d4 ones, not the plain ones: the same network on the
    # same patches, so they agree to float32 rounding (the one-view logits differ far more)
    d4 = sorted(view_logits(shipped.model, reals, "d4").tolist())
    one = sorted(view_logits(shipped.model, reals, "one").tolist())
    assert shipped.val_real_logits == pytest.approx(d4, abs=1e-5)
    assert shipped.val_real_logits != pytest.approx(one, abs=1e-5)


@pytest.mark.slow  # trains a detector for 20 steps and builds the tiny benchmark: ~15 s
def test_ship_with_a_weight_average_says_so(tmp_path):
    out, md, cache = tmp_path / "ema.safetensors", tmp_path / "results.md", tmp_path / "cache"
    main(["--tiny", "--max-steps", "20", "--eval-every", "10", "--workers", "0", "--average",
          "0.9", "--out", str(out), "--write", str(md), "--cache-dir", str(cache)])  # fmt: skip
    assert load_detector(out).info["train"]["average"] == 0.9
    assert "exponential moving average of its weights (decay 0.9)" in md.read_text()
