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
    md.write_text("# Results\n")
    main(["--table-only", *common])  # the section again, from the checkpoint alone
    assert md.read_text().strip() == first.strip()
    assert Detector.load(out).threshold == shipped.threshold
