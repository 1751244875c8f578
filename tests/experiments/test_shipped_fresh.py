"""``experiments.shipped_fresh``: a checkpoint, untouched, scored on the fresh test photos."""

from __future__ import annotations

import json

import pytest

from experiments.ship_detector import main as ship_main
from experiments.shipped_fresh import main


def test_a_checkpoint_is_scored_on_the_fresh_photos_at_its_own_threshold(tmp_path, capsys):
    cache, out = str(tmp_path / "cache"), tmp_path / "tiny.safetensors"
    ship_main(["--tiny", "--max-steps", "20", "--eval-every", "10", "--workers", "0",
               "--views", "one", "--image-sizes", "64", "--image-n", "20",
               "--out", str(out), "--cache-dir", cache])  # fmt: skip
    capsys.readouterr()
    record_path, md = tmp_path / "fresh.json", tmp_path / "results.md"
    main(["--checkpoint", str(out), "--cache-dir", cache, "--json", str(record_path),
          "--write", str(md)])  # fmt: skip
    record = json.loads(record_path.read_text())
    fresh = record["fresh"]
    assert sorted(fresh["per_photo"]) == ["aero", "ascent", "luispedro", "nuclear"]
    # the threshold is the checkpoint's: the same validation reals give it on the same machine
    assert fresh["threshold"] == record["threshold"] == record["threshold_here"]
    seen = record["families"]["seen"]
    assert seen and set(seen) | {"mean"} == set(fresh["seen"])
    first = md.read_text()
    assert "## Shipped detector on the fresh test photos" in first
    assert "| luispedro |" in first and "**mean (held out)**" in first
    # the record renders the same section again without scoring
    md.write_text("# Results\n")
    main(["--from-json", str(record_path), "--write", str(md)])
    again = md.read_text()
    strip = [line for line in again.splitlines() if not line.startswith("Regenerate:")]
    assert strip == [line for line in first.splitlines() if not line.startswith("Regenerate:")]
    (tmp_path / "other.json").write_text(json.dumps({"folds": []}))
    with pytest.raises(SystemExit):
        main(["--from-json", str(tmp_path / "other.json")])
    assert "not a record of this command" in capsys.readouterr().err
