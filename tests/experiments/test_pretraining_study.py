"""The pretraining study's table: computed from its runs, flattening as documented."""

from __future__ import annotations

import pytest

from experiments.detectors import HELDOUT, SEEN
from experiments.pretraining_study import _flattening, markdown


def report(auc: float) -> dict:
    groups = {
        "seen": {"mean": {"auc": auc}, **{f: {"auc": auc} for f in SEEN}},
        "heldout": {"mean": {"auc": auc - 0.1}, **{f: {"auc": auc - 0.1} for f in HELDOUT}},
    }
    return {**groups, "test_real_fpr": 0.05}


def run(arm: str, seed: int, auc: float, curve=None) -> dict:
    r = {"arm": arm, "seed": seed, "probe": report(auc - 0.2), "report": report(auc)}
    r.update(best_step=500, steps=1000)
    if curve is not None:
        r["pretrain_curve"] = curve
    return r


def test_flattening_is_the_relative_drop_over_the_second_half():
    curve = [[0, 1.0], [500, 0.5], [1000, 0.4]]
    assert _flattening(curve) == pytest.approx(0.2)  # (0.5 - 0.4) / 0.5
    assert _flattening([[0, 1.0], [500, 0.3], [1000, 0.3]]) == 0.0


def test_table_rows_are_mean_and_std_over_seeds():
    curve = [[0, 1.0], [750, 0.5], [1500, 0.45]]
    runs = [run("frequency", 0, 0.9, curve), run("frequency", 1, 0.8, curve), run("none", 0, 0.7)]
    text = markdown(runs, "`cmd`")
    freq = next(line for line in text.splitlines() if line.startswith("| frequency | 2 |"))
    # fine-tuned seen AUC over the two seeds: mean 0.85, sample std 0.0707
    assert "| 0.850 ± 0.071 |" in freq and "1500 (10.0 ± 0.0 %)" in freq
    assert "| none | 1 | 0 | 0.500 | 0.400 | 0.700 | 0.600 |" in text
    averaged = markdown([*runs, {**run("frequency", 0, 0.95, curve), "average": 0.995}], "`c`")
    assert "| frequency | 2 |" in averaged and "| frequency (EMA 0.995) | 1 |" in averaged


def test_saved_encoder_is_fine_tuned_by_the_named_optimizer_without_pretraining(tmp_path):
    """--save-encoders writes the pretrained encoder; --encoder fine-tunes exactly that one
    (no pretraining, no probe) with --optimizer; the records carry model/optimizer/lr/curve."""
    import json

    from safetensors.torch import load_file

    from experiments.pretraining_study import main

    common = ["--tiny", "--cache-dir", str(tmp_path / "cache"), "--seeds", "0", "--batch-size",
              "8", "--eval-every", "2", "--patience", "1", "--workers", "0"]  # fmt: skip
    encoders, first = tmp_path / "enc", tmp_path / "first.json"
    pretrain = ["--arms", "frequency", "--pretrain-steps", "2", "--max-steps", "2"]
    main(common + pretrain + ["--save-encoders", str(encoders), "--no-probe", "--json", str(first)])
    saved = encoders / "frequency-seed0.safetensors"
    assert saved.exists() and "probe" not in json.loads(first.read_text())[0]
    again = tmp_path / "again.json"
    main(common + ["--arms", "frequency", "--encoder", str(saved), "--max-steps", "2",
                   "--optimizer", "muon/split", "--lr", "0.02", "--no-probe",
                   "--json", str(again)])  # fmt: skip
    rec = json.loads(again.read_text())[0]
    assert rec["model"] == "vit/frequency" and rec["optimizer"] == "muon/split"
    assert rec["lr"] == 0.02 and rec["encoder"] == str(saved) and "pretrain_curve" not in rec
    assert rec["val_curve"][0][0] == 0 and len(load_file(saved)) > 0


def test_pretrain_only_writes_a_race_record_per_run(tmp_path):
    import json

    from experiments.pretraining_study import main

    out = tmp_path / "pt.json"
    main(["--tiny", "--cache-dir", str(tmp_path / "cache"), "--arms", "frequency", "--seeds",
          "0", "--pretrain-steps", "4", "--eval-every", "2", "--batch-size", "8", "--workers",
          "0", "--pretrain-only", "--pretrain-optimizer", "muon/split", "--pretrain-lr", "0.02",
          "--json", str(out)])  # fmt: skip
    (rec,) = json.loads(out.read_text())
    assert rec["model"] == "vit/frequency-pretrain" and rec["optimizer"] == "muon/split"
    assert rec["lr_decay"] is None
    assert rec["lr"] == 0.02 and rec["steps"] == 4 and "report" not in rec
    steps = [s for s, _ in rec["val_curve"]]
    assert steps == [0, 2, 4] and rec["best_step"] in (2, 4)
    assert rec["best_val_loss"] == min(v for s, v in rec["val_curve"] if s > 0)
    with pytest.raises(SystemExit):
        main(["--tiny", "--arms", "none", "--pretrain-only"])


def test_a_weight_average_is_recorded_for_pretraining_and_fine_tuning(tmp_path):
    import json

    from experiments.pretraining_study import main

    common = ["--tiny", "--cache-dir", str(tmp_path / "cache"), "--arms", "frequency",
              "--seeds", "0", "--eval-every", "2", "--batch-size", "8", "--workers", "0",
              "--average", "0.9"]  # fmt: skip
    pre, fine, enc = tmp_path / "pt.json", tmp_path / "ft.json", tmp_path / "enc"
    main(common + ["--pretrain-steps", "4", "--pretrain-only", "--save-encoders", str(enc),
                   "--json", str(pre)])  # fmt: skip
    assert json.loads(pre.read_text())[0]["average"] == 0.9
    main(common + ["--encoder", str(enc / "frequency-seed0.safetensors"), "--max-steps", "2",
                   "--no-probe", "--json", str(fine)])  # fmt: skip
    assert json.loads(fine.read_text())[0]["average"] == 0.9


def test_a_pretraining_lr_decay_is_recorded(tmp_path):
    import json

    from experiments.pretraining_study import main

    out = tmp_path / "pt.json"
    main(["--tiny", "--cache-dir", str(tmp_path / "cache"), "--arms", "frequency", "--seeds",
          "0", "--pretrain-steps", "4", "--eval-every", "2", "--batch-size", "8", "--workers",
          "0", "--pretrain-only", "--pretrain-lr-decay", "linear", "--json", str(out)])  # fmt: skip
    (rec,) = json.loads(out.read_text())
    assert rec["lr_decay"] == "linear" and rec["pretrain_lr_decay"] == "linear"


def test_the_npr_residual_encoder_pretrains_and_saves_what_the_detector_loads(tmp_path):
    import json

    from safetensors.torch import load_file

    from experiments.detectors import MODELS
    from experiments.pretraining_study import main

    out = tmp_path / "pt.json"
    main(["--tiny", "--cache-dir", str(tmp_path / "cache"), "--arch", "npr", "--arms", "pixel",
          "--seeds", "0", "--pretrain-steps", "4", "--eval-every", "2", "--batch-size", "8",
          "--workers", "0", "--pretrain-only", "--save-encoders", str(tmp_path / "enc"),
          "--json", str(out)])  # fmt: skip
    (rec,) = json.loads(out.read_text())
    assert rec["model"] == "npr/pixel-pretrain" and rec["steps"] == 4
    saved = load_file(tmp_path / "enc" / "pixel-seed0.safetensors")
    detector = MODELS["npr_dct_dropout"](32)
    detector.residual.load_state_dict(saved, strict=True)  # the detector's NPR branch exactly
    with pytest.raises(SystemExit):  # its fine-tuning is experiments.detectors --init-residual
        main(["--tiny", "--arch", "npr", "--arms", "pixel"])


def test_the_residual_encoder_is_what_the_pretrainer_reconstructs_from():
    import torch

    from assocmem.forensic.masks import FrequencyMasker
    from assocmem.forensic.models.npr import NPR, neighbouring_pixel_residual
    from assocmem.forensic.models.pretrain import MaskedPretrainer

    torch.manual_seed(0)
    npr = NPR(norm="batch")
    x = torch.rand(4, 3, 32, 32)
    expected = npr.encoder.feature_map(npr.gain * neighbouring_pixel_residual(x))
    assert torch.equal(npr.feature_map(x), expected)
    assert npr.feature_map(x).shape == (4, npr.feature_dim, 32 // npr.stride, 32 // npr.stride)
    model = MaskedPretrainer(npr, FrequencyMasker(ratio=0.5), loss="both")
    model.loss(x, torch.Generator().manual_seed(0)).backward()
    assert npr.encoder.stages[0][0].weight.grad.abs().sum() > 0  # the encoder learns


def test_matched_frequency_arms_differ_from_the_pixel_arm_only_in_domain_and_dc():
    """The clean test of the masking domain: same ratio, patch and loss as the pixel arm; the
    keep-DC arm's masks never remove an image's mean colour."""
    import torch

    from experiments.pretraining_study import ARMS, pretrainer_model

    pixel = ARMS["pixel"]
    for arm in ("frequency-matched", "frequency-matched-keepdc"):
        spec = ARMS[arm]
        assert spec["loss"] == pixel["loss"] and spec["masker"]["domain"] == "frequency"
        assert spec["masker"]["ratio"] == pixel["masker"]["ratio"]
        assert spec["masker"]["patch"] == pixel["masker"]["patch"]
    x = torch.rand(32, 3, 32, 32)
    kept = pretrainer_model("frequency-matched-keepdc", 32).masker(x, torch.Generator())
    assert torch.all(kept.mask[:, 0, 16, 16] == 1)
    plain = pretrainer_model("frequency-matched", 32).masker(x, torch.Generator().manual_seed(1))
    assert torch.any(plain.mask[:, 0, 16, 16] == 0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        # a repeated seed ran twice and its table said "± 0.000 over 2 seeds"
        (["--seeds", "0", "0"], "--seeds must be distinct"),
        (["--arms", "pixel", "pixel"], "--arms must be distinct"),
        # each of these failed after pretraining (or fine-tuning), in a traceback
        (["--optimizer", "bogus"], "--optimizer: optimizer 'bogus'"),
        (["--pretrain-optimizer", "bogus"], "--pretrain-optimizer: optimizer 'bogus'"),
        (["--target-fpr", "2"], "--target-fpr"),
        (["--eval-every", "0"], "--eval-every"),
        (["--pretrain-steps", "-5"], "--pretrain-steps must be >= 1"),
        (["--pretrain-lr", "0"], "--pretrain-lr must be finite and > 0"),
        (["--lr", "nan"], "--lr must be finite and > 0"),
        (["--batch-size", "1"], "--batch-size must be >= 2"),
        (["--average", "1.5"], "expected a decay in (0, 1)"),
        (["--encoder", "{tmp}/missing.safetensors"], "does not exist"),
        (["--encoder", "{tmp}/afile"], "not a readable safetensors file"),
        # accepted and silently ignored: nothing was written or saved
        (["--no-probe", "--write", "{tmp}/r.md"], "--write refreshes the study's section"),
        (["--arms", "pixel", "--pretrain-only", "--write", "{tmp}/r.md"], "--write refreshes"),
        (["--encoder", "{tmp}/afile", "--save-encoders", "{tmp}/e"], "nothing to save"),
        (["--arms", "none", "--save-encoders", "{tmp}/e"], "do not pretrain, nothing to save"),
        # an output that is an input: the records were overwritten with markdown
        (["--from-json", "{tmp}/runs.json", "--write", "{tmp}/runs.json"], "not markdown"),
        (["--from-json", "{tmp}/runs.json", "--json", "{tmp}/runs.json"], "is also --from-json"),
    ],
)
def test_study_options_are_refused_before_any_work(tmp_path, capsys, argv, message):
    from experiments.pretraining_study import main

    (tmp_path / "afile").write_text("not safetensors")
    records = tmp_path / "runs.json"
    records.write_text("[]")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    with pytest.raises(SystemExit) as exit_:
        main(["--tiny", "--cache-dir", str(tmp_path / "cache"), *argv])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "cache").exists() and records.read_text() == "[]"
    assert not (tmp_path / "e").exists()


def test_an_encoder_of_another_architecture_is_named_as_such(tmp_path):
    from safetensors.torch import save_file

    from experiments.pretraining_study import load_encoder, study_encoder

    npr = tmp_path / "npr.safetensors"
    save_file(study_encoder("npr", 32).state_dict(), npr)
    with pytest.raises(ValueError, match="not an encoder of this study's architecture"):
        load_encoder(study_encoder("vit", 32), npr)


def test_a_diverged_pretraining_is_recorded_not_fine_tuned_or_saved(tmp_path, capsys):
    """An lr that diverges before the first evaluation: ``--pretrain-only`` crashed formatting
    its ``None`` loss (the seeds after it never ran), the study fine-tuned the diverged encoder
    into a traceback (the record lost), and ``--save-encoders`` wrote it under its usual name."""
    import json

    from experiments.pretraining_study import main, markdown

    common = ["--tiny", "--cache-dir", str(tmp_path / "cache"), "--batch-size", "8",
              "--eval-every", "2", "--seeds", "0", "1", "--arms", "frequency", "--workers", "0",
              "--pretrain-steps", "6", "--pretrain-lr", "1e9", "--pretrain-optimizer",
              "momentum", "--save-encoders", str(tmp_path / "enc")]  # fmt: skip
    race = tmp_path / "race.json"
    main([*common, "--pretrain-only", "--json", str(race)])
    assert [(r["seed"], r["best_val_loss"]) for r in json.loads(race.read_text())] == [
        (0, None),
        (1, None),
    ]
    assert "pretraining diverged" in capsys.readouterr().out
    study = tmp_path / "study.json"
    main([*common, "--max-steps", "2", "--no-probe", "--json", str(study)])
    runs = json.loads(study.read_text())
    assert [r["status"] for r in runs] == ["pretraining diverged"] * 2
    assert all("report" not in r for r in runs) and not (tmp_path / "enc").exists()
    table = markdown([*runs, run("pixel", 0, 0.8)], "`c`")
    assert "Not in the tables (pretraining diverged" in table and "frequency seed 1" in table


def test_saved_encoders_never_replace_another_pretrainings(tmp_path, capsys):
    """The file name holds arm and seed: an ``--arch npr`` run and a ViT run into one folder
    wrote the same file, the second over the first, with nothing recorded of either."""
    import json

    from safetensors import safe_open

    from experiments.pretraining_study import main

    enc = tmp_path / "enc"
    common = ["--tiny", "--cache-dir", str(tmp_path / "cache"), "--arms", "pixel", "--seeds",
              "0", "--pretrain-steps", "2", "--eval-every", "2", "--batch-size", "8",
              "--workers", "0", "--pretrain-only", "--save-encoders", str(enc)]  # fmt: skip
    main([*common, "--arch", "npr"])
    saved = enc / "pixel-seed0.safetensors"
    with safe_open(saved, "pt") as f:
        header = json.loads(f.metadata()["assocmem"])
    assert header["arch"] == "npr" and header["pretrain_steps"] == 2
    before = saved.read_bytes()
    for other in (["--arch", "vit"], ["--arch", "npr", "--pretrain-lr", "1e-3"]):
        with pytest.raises(SystemExit):
            main([*common, *other])
        assert "an encoder of another pretraining" in capsys.readouterr().err
        assert saved.read_bytes() == before
    main([*common, "--arch", "npr"])  # the same pretraining again: replaced


def test_from_json_refuses_records_that_are_not_study_runs(tmp_path, capsys):
    import json

    from experiments.pretraining_study import main

    race = {"arm": "frequency", "seed": 0, "model": "vit/frequency-pretrain", "best_val_loss": 1}
    cases = {
        "race.json": ([race], "a --pretrain-only record"),
        "empty.json": ([], "holds no runs"),
        "twice.json": ([run("pixel", 0, 0.8), run("pixel", 0, 0.8)], "more than once"),
        # seed 0 of another command shared the pixel row and counted as a second seed (an audit)
        "two_commands.json": (
            [run("pixel", 0, 0.8), {**run("pixel", 0, 0.7), "command": "another"}],
            "the pixel row holds seed 0 twice",
        ),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_text(json.dumps(content))
        with pytest.raises(SystemExit) as exit_:
            main(["--from-json", str(tmp_path / name)])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    # runs without a probe (--no-probe) make a table, "–" in the probe's columns
    no_probe = {k: v for k, v in run("pixel", 0, 0.8).items() if k != "probe"}
    (tmp_path / "noprobe.json").write_text(json.dumps([no_probe]))
    main(["--from-json", str(tmp_path / "noprobe.json")])
    assert "| pixel | 1 | 0 | – | – | 0.800 | 0.700 |" in capsys.readouterr().out


def test_save_encoders_onto_a_file_is_refused_before_pretraining(tmp_path, capsys):
    # a NotADirectoryError traceback once pretraining had finished (an audit)
    from experiments.pretraining_study import main

    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(SystemExit) as exit_:
        main(["--tiny", "--save-encoders", str(afile)])
    assert exit_.value.code == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_the_section_names_the_recipe_its_runs_had(tmp_path):
    # the text said "Adam" and "5 % FPR" above runs fine-tuned with muon_delta/split and
    # calibrated for 25 %, and runs of two recipes shared a row (an audit)
    from experiments.pretraining_study import markdown, study_recipe

    def tuned(seed, optimizer="muon_delta/split", fpr=0.25):
        r = run("pixel", seed, 0.8)
        r["report"] = {**r["report"], "target_fpr": fpr}
        return {**r, "optimizer": optimizer, "lr": 5e-3}

    text = markdown([tuned(0), tuned(1)], "cmd")
    assert "Fine-tune: encoder + linear head on the stream, `muon_delta/split (lr 0.005)`" in text
    assert "Threshold on validation reals for 25 % FPR" in text
    legacy = markdown([run("pixel", 0, 0.8)], "cmd")  # records before the recipe was kept
    assert "on the stream, Adam, early-stopped" in legacy and "for 5 % FPR" in legacy
    for mixed in ([tuned(0), tuned(1, optimizer="adam")], [tuned(0), tuned(1, fpr=0.05)]):
        with pytest.raises(ValueError, match="a section is one recipe"):
            study_recipe(mixed)


@pytest.mark.parametrize("module", ["detectors", "pretraining_study"])
def test_from_json_reads_records_with_the_shared_reader(tmp_path, capsys, module):
    # one reader (report.read_runs) for every command's records: a folder or a file that is not
    # UTF-8 is named with the option, not a bare OSError or codec message
    import importlib

    main = importlib.import_module(f"experiments.{module}").main
    (tmp_path / "folder.json").mkdir()
    (tmp_path / "latin1.json").write_bytes(b'[{"arm": "caf\xe9"}]')
    for name in ("folder.json", "latin1.json"):
        with pytest.raises(SystemExit) as exit_:
            main(["--from-json", str(tmp_path / name)])
        err = capsys.readouterr().err
        assert exit_.value.code == 2
        assert f"--from-json {tmp_path / name}: not a readable records file" in err, err
