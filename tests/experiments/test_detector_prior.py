"""The spectral-prior fusion and its leave-one-family-out weight choice (issue 13)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments.detector_prior import (
    BASE_PRIORS,
    PRIORS,
    Scores,
    _ensemble_spec,
    base_prior,
    choose,
    choose_weight,
    fit_residual,
    fused,
    markdown,
    prior_feature,
    radial_band_log_energy,
    real_stats,
    residual_feature,
)


def test_the_prior_adds_the_smoothness_direction_in_units_of_the_reals_spread():
    z_real, f_real = np.array([-1.0, 1.0]), np.array([-3.0, -1.0])
    stats = real_stats(z_real, f_real)
    assert (stats.sd_z, stats.mu_f, stats.sd_f) == (1.0, -2.0, 1.0)
    z, f = np.array([0.0, 0.0]), np.array([-4.0, 0.0])  # same logit, the first smoother
    assert list(fused(z, f, stats, 0.0)) == [0.0, 0.0]  # w = 0: the detector alone
    assert list(fused(z, f, stats, 0.5)) == [1.0, -1.0]  # smoother = more fake


def test_the_one_sided_prior_moves_only_patches_smoother_than_the_reals_mean():
    stats = real_stats(np.array([-1.0, 1.0]), np.array([-3.0, -1.0]))  # mu_f -2, sd_f 1
    z, f = np.zeros(3), np.array([-4.0, -2.0, 0.0])  # smoother, at the mean, more detail
    assert list(fused(z, f, stats, 0.5)) == [1.0, 0.0, -1.0]
    assert list(fused(z, f, stats, 0.5, one_sided=True)) == [1.0, 0.0, 0.0]
    assert list(fused(z, f, stats, 0.0, one_sided=True)) == [0.0, 0.0, 0.0]


def test_every_prior_has_a_one_sided_form_on_the_same_feature():
    assert PRIORS[: len(BASE_PRIORS)] == BASE_PRIORS  # ties go to the linear forms
    for name in BASE_PRIORS:
        assert base_prior(name) == (name, False)
        assert base_prior(f"{name}/one-sided") == (name, True)
        assert f"{name}/one-sided" in PRIORS
    x = _textured(4)
    assert np.array_equal(prior_feature("hf/one-sided", x, None), prior_feature("hf", x, None))


def test_constant_reals_have_no_scale_and_are_refused():
    with pytest.raises(ValueError, match="must vary"):
        real_stats(np.zeros(4), np.arange(4.0))


def test_the_weight_is_the_best_mean_over_folds_and_ties_go_to_less_prior():
    # fold a is best alone, fold b with the prior: the means are 0.75, 0.875, 0.8125
    # (binary fractions, so the tie below is exact)
    folds = {"a": {0.0: 0.875, 1.0: 0.75, 2.0: 0.625}, "b": {0.0: 0.625, 1.0: 1.0, 2.0: 1.0}}
    assert choose_weight(folds) == 1.0
    folds["a"][2.0] = 0.75  # now 0.875 at both 1 and 2: the smaller
    assert choose_weight(folds) == 1.0
    folds["a"][2.0] = 0.875
    assert choose_weight(folds) == 2.0
    assert choose_weight({"a": {0.0: 0.8, 0.5: 0.8}}) == 0.0
    with pytest.raises(ValueError, match="different weights"):
        choose_weight({"a": {0.0: 0.8}, "b": {0.5: 0.8}})


def test_the_prior_is_the_one_whose_fold_chosen_weight_scores_best_ties_to_the_first():
    def folds(residual_a: float) -> dict:
        return {
            "a": {"hf": {0.0: 0.5, 1.0: 0.75}, "residual": {0.0: 0.5, 1.0: residual_a}},
            "b": {"hf": {0.0: 0.5, 1.0: 0.75}, "residual": {0.0: 0.5, 1.0: 0.75}},
        }

    assert choose(folds(0.875)) == ("residual", 1.0)  # mean 0.8125 against 0.75
    assert choose(folds(0.75)) == ("hf", 1.0)  # a tie: the first prior
    assert choose(folds(0.625)) == ("hf", 1.0)  # 0.6875 against 0.75


def test_an_ensemble_names_two_or_more_weights_files():
    assert _ensemble_spec("a.safetensors,b.safetensors") == [
        Path("a.safetensors"),
        Path("b.safetensors"),
    ]
    with pytest.raises(argparse.ArgumentTypeError, match="two or more"):
        _ensemble_spec("a.safetensors")


def test_scores_are_computed_once_per_model_views_and_image_content():
    calls = []

    class Counting(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(x.shape[0])
            return x.mean(dim=(1, 2, 3))

    scores, model, x = Scores(), Counting(), _textured(4)
    first = scores.logits(model, x, "one")
    again = scores.logits(model, x.clone(), "one")  # a new tensor, the same bytes
    assert np.array_equal(first, again) and len(calls) == 1
    scores.logits(model, x + 1e-3, "one")  # other images
    scores.logits(model, x, "d4")  # other views: eight forward passes
    assert len(calls) == 1 + 1 + 8
    f = scores.feature("hf/one-sided", x, None)  # one feature for both forms of a prior
    assert np.array_equal(f, scores.feature("hf", x.clone(), None))
    assert np.array_equal(f, prior_feature("hf", x, None))


def _textured(n: int = 16, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, size, size, generator=g)


def test_the_band_energies_ignore_brightness_and_contrast_and_drop_up_top_when_smoothed():
    x = _textured()
    e = radial_band_log_energy(x)
    assert e.shape == (16, 8)
    # a brighter, lower-contrast copy has the same normalised spectrum (up to rounding)
    assert np.allclose(radial_band_log_energy(0.5 * x + 0.25), e, atol=1e-4)
    blurred = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    eb = radial_band_log_energy(blurred)
    assert (eb[:, 4:].mean(axis=1) < e[:, 4:].mean(axis=1) - 1.0).all()


def test_the_residual_is_near_zero_on_the_reals_it_was_fit_on_and_negative_when_smoothed():
    x = _textured(64)
    coef = fit_residual(x)
    assert coef.shape == (5,)
    r = residual_feature(x, coef)
    assert abs(r.mean()) < 1e-2  # least squares with an intercept: mean residual ~ 0
    blurred = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    assert (residual_feature(blurred, coef) < r.min()).all()


def test_the_experiment_scores_members_alone_and_with_the_chosen_prior(tmp_path, capsys):
    from detector_support import train_tiny_runs

    from experiments.detector_prior import main as prior_main

    run, other = train_tiny_runs(tmp_path, seeds=(0, 1))
    w = run["weights"]
    # one fold network per family, each trained on the other three (leave one family out)
    fams = ("ae_transconv", "ae_nearest", "double_jpeg", "splice")
    fold_weights = {
        fam: train_tiny_runs(tmp_path, seen=tuple(f for f in fams if f != fam))[0]["weights"]
        for fam in fams
    }
    folds = [f"{fam}={path}" for fam, path in fold_weights.items()]
    out, doc = tmp_path / "prior.json", tmp_path / "results.md"
    doc.write_text("<!-- report:detector-prior:begin -->\n<!-- report:detector-prior:end -->\n")
    pair = f"{w},{other['weights']}"
    # a member given as a fold network trained on the family it should leave out: a leak
    with pytest.raises(SystemExit):
        prior_main(["--tiny", "--cache-dir", str(tmp_path), "--fold",
                    *[f"{fam}={w}" for fam in fams], "--members", w])  # fmt: skip
    assert "would leak" in capsys.readouterr().err
    # members trained longer than the folds (the documented protocol: folds at patience 4,
    # members at 8) are one study; members of two patiences are not
    longer = tmp_path / "p8"
    longer.mkdir()
    m8 = train_tiny_runs(longer, seeds=(2,), patience=8)[0]["weights"]
    p8 = tmp_path / "p8.json"
    prior_main(["--tiny", "--cache-dir", str(tmp_path), "--fold", *folds, "--members", m8,
                "--weights", "0", "--priors", "hf", "--json", str(p8)])  # fmt: skip
    assert json.loads(p8.read_text())["members"]
    capsys.readouterr()
    with pytest.raises(SystemExit):
        prior_main(["--tiny", "--cache-dir", str(tmp_path), "--fold", *folds,
                    "--members", w, m8])  # fmt: skip
    assert "the members must share one patience" in capsys.readouterr().err
    prior_main(["--tiny", "--cache-dir", str(tmp_path), "--fold", *folds, "--members", w,
                "--ensemble", pair, "--weights", "0", "1", "--json", str(out),
                "--write", str(doc)])  # fmt: skip
    record = json.loads(out.read_text())
    assert [(f["family"], f["seed"]) for f in record["folds"]] == [(fam, 0) for fam in fams]
    assert record["chosen"]["prior"] in PRIORS
    assert record["chosen"]["weight"] in (0.0, 1.0)
    assert set(record["best"]) == set(PRIORS)
    assert len(record["priors"]["residual"]) == 5
    assert record["priors"]["surprise"]["steps"] == 20  # --tiny's, as it was fit
    networks = [m for m in record["members"] if m["kind"] == "network"]
    ensembles = [m for m in record["members"] if m["kind"] == "ensemble"]
    assert len(networks) == len(ensembles) >= 1  # the same settings for both
    assert {m["seed"] for m in ensembles} == {"0+1"} and {m["path"] for m in ensembles} == {pair}
    assert "Ensembles (mean logit" in doc.read_text()
    alone = [m for m in networks if m["weight"] == 0.0]
    assert len(alone) == 1
    # w = 0 is the detector alone: a rescaled logit ranks and thresholds like the logit
    for group in ("seen", "heldout"):
        for fam, metrics in run["report"][group].items():
            assert alone[0]["report"][group][fam]["auc"] == pytest.approx(metrics["auc"])
    assert "Chosen: **`" in doc.read_text()
    # the record renders again without recomputing
    prior_main(["--from-json", str(out)])
    assert record["test_photos"] == "benchmark" and "; test split, mean" in doc.read_text()
    # the fresh test photos: the folds (validation) and the thresholds are the same, the
    # members' test numbers are the fresh photos'
    fresh_out = tmp_path / "fresh.json"
    prior_main(["--tiny", "--cache-dir", str(tmp_path), "--fold", *folds, "--members", w,
                "--weights", "0", "1", "--test-photos", "fresh",
                "--json", str(fresh_out)])  # fmt: skip
    fresh = json.loads(fresh_out.read_text())
    assert fresh["test_photos"] == "fresh"
    assert fresh["folds"] == record["folds"] and fresh["chosen"] == record["chosen"]
    pairs = list(zip(networks, fresh["members"], strict=True))
    assert all(a["report"]["threshold"] == b["report"]["threshold"] for a, b in pairs)
    assert any(a["report"]["seen"] != b["report"]["seen"] for a, b in pairs)
    shown = capsys.readouterr().out
    assert "the fresh test photos (aero, ascent" in shown
    # each photo on its own, for the detector alone and the chosen prior
    assert set(fresh["members"][0]["report"]["per_photo"]) == {
        "aero", "ascent", "luispedro", "nuclear"
    }  # fmt: skip
    assert "Per photo (`protocol.per_photo_metrics`)" in shown
    assert "| aero (" in shown and "| 0 | one | none |" in shown
    # the validation split as the test split: the same folds and thresholds, its photos scored
    val_out = tmp_path / "validation.json"
    prior_main(["--tiny", "--cache-dir", str(tmp_path), "--fold", *folds, "--members", w,
                "--weights", "0", "1", "--test-photos", "validation",
                "--json", str(val_out)])  # fmt: skip
    on_val = json.loads(val_out.read_text())
    assert on_val["test_photos"] == "validation"
    assert on_val["folds"] == record["folds"] and on_val["chosen"] == record["chosen"]
    for a, b in zip(networks, on_val["members"], strict=True):
        assert a["report"]["threshold"] == b["report"]["threshold"]
        assert b["report"]["test_real_fpr"] == pytest.approx(b["report"]["val_real_fpr"])
        assert set(b["report"]["per_photo"]) != set(a["report"]["per_photo"])
    assert "the validation split in place of the test split" in capsys.readouterr().out
    # a record from before the per-photo scores renders without the table
    for m in fresh["members"]:
        del m["report"]["per_photo"]
    fresh_out.write_text(json.dumps(fresh))
    prior_main(["--from-json", str(fresh_out)])
    assert "Per photo" not in capsys.readouterr().out
    assert record["attribution"] == 0.0  # the tiny runs trained without it
    # a study of other fold networks goes to a section of its own, titled by its recipe
    before = doc.read_text()
    other_study = tmp_path / "attribution.json"
    other_study.write_text(json.dumps({**record, "attribution": 0.5}))
    prior_main(["--from-json", str(other_study), "--write", str(doc),
                "--section", "detector-prior-attribution"])  # fmt: skip
    after = doc.read_text()
    assert after.startswith(before.rstrip())  # the first section as it was
    assert "<!-- report:detector-prior-attribution:begin -->" in after
    # the title names the networks' model when it is not the default (npr_dct_dropout) ...
    assert "(npr_bn networks, trained with family attribution 0.5)" in after[len(before) :]
    assert "family attribution" not in before
    # ... and a record from before the model was recorded keeps the title it had
    old_record = {k: v for k, v in record.items() if k != "model"}
    other_study.write_text(json.dumps({**old_record, "attribution": 0.5}))
    prior_main(["--from-json", str(other_study), "--write", str(doc),
                "--section", "detector-prior-attribution"])  # fmt: skip
    assert "(networks trained with family attribution 0.5)" in doc.read_text()[len(before) :]
    # a note sets a study apart in its title (the members' patience, say)
    prior_main(["--from-json", str(other_study), "--write", str(doc), "--note", "patience 8",
                "--section", "detector-prior-attribution"])  # fmt: skip
    assert "family attribution 0.5) (patience 8)\n" in doc.read_text()[len(before) :]


def test_a_fold_must_name_a_seen_family_and_every_family_gets_as_many():
    from experiments.detector_prior import main as prior_main

    with pytest.raises(SystemExit):
        prior_main(["--fold", "resample=x.safetensors", "--members", "x.safetensors"])
    seen = ["ae_transconv", "ae_nearest", "double_jpeg", "splice"]
    uneven = [f"{fam}=x.safetensors" for fam in seen] + ["splice=y.safetensors"]
    with pytest.raises(SystemExit):
        prior_main(["--fold", *uneven, "--members", "x.safetensors"])


SEEN_FAMILIES = ("ae_transconv", "ae_nearest", "double_jpeg", "splice")


@pytest.mark.parametrize(
    "argv",
    [
        ["--fold", *[f"{f}=missing.safetensors" for f in SEEN_FAMILIES], "--members", "x"],
        ["--fold", *[f"{f}=x" for f in SEEN_FAMILIES], "--members", "x", "--weights", "nan"],
    ],
)
def test_bad_files_and_weights_are_usage_errors(argv, capsys):
    from experiments.detector_prior import main as prior_main

    with pytest.raises(SystemExit):
        prior_main(argv)
    assert "Traceback" not in capsys.readouterr().err


def test_from_json_refuses_what_is_not_its_record(tmp_path, capsys):
    from experiments.detector_prior import main as prior_main

    for content in ("not json", "{}", '{"command": "x"}'):
        record = tmp_path / "r.json"
        record.write_text(content)
        with pytest.raises(SystemExit):
            prior_main(["--from-json", str(record)])
        assert "--from-json" in capsys.readouterr().err


def test_ensembles_that_share_members_get_a_table_each_not_a_spread():
    """The ten-member study scored the ensembles of seeds 0-4, 5-9 and 0-9: the ten share every
    member with the fives, so a mean ± std over the three would be no spread at all."""
    results = Path(__file__).resolve().parents[2] / "docs" / "results"
    record = json.loads((results / "detector-prior-oc-std-ten.json").read_text())
    text = markdown(record, "`cmd`")
    groups = ("0+1+2+3+4", "5+6+7+8+9", "0+1+2+3+4+5+6+7+8+9")
    assert "one table per ensemble" in text and "mean ± std over the ensembles" not in text
    tail = text[text.index("Ensembles (mean logit") :]
    for group in groups:
        table = tail[tail.index(f"Ensemble of seeds {group}:") :].split("\n\n")[1]
        alone = next(
            m for m in record["members"]
            if m["kind"] == "ensemble" and m["seed"] == group and m["views"] == "one"
            and m["weight"] == 0.0
        )  # fmt: skip
        row = next(r for r in table.splitlines() if r.startswith("| one | none | 0 |"))
        seen = alone["report"]["seen"]["mean"]["auc"]
        assert row.split(" | ")[3] == f"{seen:.3f}"  # this ensemble's own number, no ±
    # one ensemble alone keeps its single table, as the sections written before
    single = json.loads((results / "detector-prior-oc-std-rerun.json").read_text())
    text = markdown(single, "`cmd`")
    assert "mean ± std over the ensembles." in text and "Ensemble of seeds" not in text
