"""Test AUC split by the post-processing of the test patches (experiments.detector_processing)."""

import json
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from assocmem.forensic.data.postprocess import POST_BLUR, POST_JPEG, POST_RESIZE


def test_each_subset_sets_the_named_reals_against_the_named_fakes():
    """Scores built so that each subset has a known AUC: reals processed by JPEG score above
    every fake, unprocessed reals below; the unprocessed fakes of family 1 sit above its
    processed ones. Family 2's fakes are ignored for family 1; a subset without a real or a
    fake is NaN."""
    from experiments.detector_processing import SUBSETS, subset_aucs

    family = np.array([0, 0, 0, 0, 1, 1, 1, 2])
    post = np.array([0, 0, POST_JPEG, POST_RESIZE | POST_BLUR, 0, POST_JPEG, POST_BLUR, 0])
    scores = np.array([0.0, 0.1, 9.0, 0.5, 2.0, 1.0, 1.5, -5.0])
    aucs = subset_aucs(scores, family, post, code=1)
    assert set(aucs) == set(SUBSETS)
    real, fake = family == 0, family == 1
    y = np.r_[np.zeros(real.sum()), np.ones(fake.sum())]
    assert aucs["all"] == pytest.approx(roc_auc_score(y, np.r_[scores[real], scores[fake]]))
    assert aucs["neither processed"] == 1.0  # reals 0, 0.1 against the fake at 2.0
    assert aucs["unprocessed reals"] == 1.0  # against all three fakes
    assert aucs["JPEG reals"] == 0.0  # the real at 9.0 above every fake
    assert aucs["zoomed reals"] == aucs["blurred reals"] == 1.0  # the real at 0.5
    none = subset_aucs(scores, family, np.full_like(post, POST_JPEG), code=1)
    assert math.isnan(none["neither processed"]) and math.isnan(none["zoomed reals"])


def test_flagged_counts_each_kind_of_real_at_the_threshold():
    """Reals at or above the threshold are flagged, per kind; a kind with no real is NaN."""
    from experiments.detector_processing import REAL_SUBSETS, flagged

    post = np.array([0, 0, POST_JPEG, POST_JPEG | POST_BLUR, POST_RESIZE])
    scores = np.array([0.0, 2.0, 1.0, 3.0, -1.0])
    rates = flagged(scores, post, threshold=1.0)
    assert set(rates) == set(REAL_SUBSETS)
    assert rates["all"] == 3 / 5 and rates["unprocessed"] == 0.5 and rates["JPEG"] == 1.0
    assert rates["blurred"] == 1.0 and rates["zoomed"] == 0.0
    assert math.isnan(flagged(scores, np.zeros(5, np.int64), 1.0)["JPEG"])


def test_the_command_scores_a_recipe_by_subset_and_its_all_column_is_the_table(tmp_path):
    """End to end on the tiny benchmark: two seeds of one recipe trained and saved, scored by
    subset; a member's "all" AUC is its detectors-table AUC (the same test patches, one view),
    the section is written, and a group of two recipes or without weights is refused."""
    from experiments.detector_processing import SECTION, SUBSETS, main
    from experiments.detectors import main as train

    runs = tmp_path / "runs.json"
    train(["--tiny", "--cache-dir", str(tmp_path), "--models", "npr_bn", "--seeds", "0", "1",
           "--max-steps", "2", "--eval-every", "2", "--batch-size", "8", "--workers", "0",
           "--save-weights", str(tmp_path / "w"), "--json", str(runs)])  # fmt: skip
    records = json.loads(runs.read_text())
    weights = [r["weights"] for r in records]
    md = tmp_path / "results.md"
    main(["--tiny", "--cache-dir", str(tmp_path), "--threads", "1", "--group", "recipe",
          *weights, "--write", str(md)])  # fmt: skip
    text = md.read_text()
    assert f"<!-- report:{SECTION}:begin -->" in text
    assert "### recipe: npr_bn, 2 members" in text
    header = "| family | " + " | ".join(SUBSETS) + " |"
    assert header in text
    family = records[0]["report"]["seen"]
    name, metrics = next((k, v) for k, v in family.items() if k != "mean")
    row = next(line for line in text.splitlines() if line.startswith(f"| {name} |"))
    all_cell = row.split("|")[2].strip()
    mean = sum(r["report"]["seen"][name]["auc"] for r in records) / 2
    assert float(all_cell.split(" ± ")[0]) == pytest.approx(mean, abs=5e-4)
    # every test real at the calibrated threshold: the detectors table's test-real FPR
    flagged_line = next(line for line in text.splitlines() if line.startswith("Test reals flag"))
    share = float(flagged_line.split("all ")[1].split(" ")[0].rstrip(","))
    fpr = sum(r["report"]["test_real_fpr"] for r in records) / 2
    assert share == pytest.approx(fpr, abs=5e-4)
    other = tmp_path / "other.json"
    train(["--tiny", "--cache-dir", str(tmp_path), "--models", "npr_bn", "--seeds", "2",
           "--max-steps", "2", "--eval-every", "2", "--batch-size", "8", "--workers", "0",
           "--paired", "--save-weights", str(tmp_path / "w"), "--json", str(other)])  # fmt: skip
    paired = json.loads(other.read_text())[0]["weights"]
    with pytest.raises(SystemExit):
        main(["--tiny", "--cache-dir", str(tmp_path), "--group", "mixed", weights[0], paired])
    with pytest.raises(SystemExit):
        main(["--tiny", "--cache-dir", str(tmp_path), "--group", "empty"])
    with pytest.raises(SystemExit):  # one label twice would keep only the second group
        main(["--tiny", "--cache-dir", str(tmp_path), "--group", "g", weights[0],
              "--group", "g", weights[1]])  # fmt: skip
    with pytest.raises(SystemExit):  # refused before anything is loaded
        main(["--tiny", "--group", "recipe", *weights, "--target-fpr", "1.5"])
