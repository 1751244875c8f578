"""experiments.detectors' optimizer names: a preset, or a preset with Muon's param split."""

from __future__ import annotations

import pytest
import torch

from assocmem import MemoryOptimizer
from assocmem.forensic.models.npr import NPR
from experiments.detectors import SHIPPABLE, SPLIT_REST_LR_RATIO, optimizer_factory


def test_adam_is_torchs_and_a_preset_name_is_a_memory_optimizer():
    model = NPR(norm="batch")
    assert isinstance(optimizer_factory("adam", 1e-3)(model.parameters()), torch.optim.Adam)
    opt = optimizer_factory("muon", 2e-2)(model.parameters())
    assert isinstance(opt, MemoryOptimizer) and len(opt.param_groups) == 1


def test_split_puts_hidden_convolutions_on_the_preset_and_the_rest_on_adam():
    model = NPR(norm="batch")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = optimizer_factory("muon/split", 2e-2, model)(params)
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["hidden"]["memory"] == "muon" and groups["hidden"]["lr"] == 2e-2
    assert groups["rest"]["memory"] == "adam"
    assert groups["rest"]["lr"] == pytest.approx(2e-2 * SPLIT_REST_LR_RATIO)
    # every conv kernel but none of the head, norms or biases is orthogonalised
    assert all(p.dim() == 4 for p in groups["hidden"]["params"])
    assert any(p is model.fc.weight for p in groups["rest"]["params"])  # `in` compares values
    assert sum(len(g["params"]) for g in opt.param_groups) == len(params)


def test_split_refuses_what_it_cannot_build():
    model = NPR(norm="batch")
    with pytest.raises(ValueError, match="PRESET/split"):
        optimizer_factory("muon/split", 2e-2)
    with pytest.raises(ValueError, match="PRESET/split"):
        optimizer_factory("muon/halves", 2e-2, model)
    with pytest.raises(ValueError, match="exactly the trained params"):
        optimizer_factory("muon/split", 2e-2, model)(list(model.parameters())[:2])


def test_runs_with_lr_drops_are_their_own_row():
    from experiments.detectors import lr_drops_of, run_label

    plain = {"model": "npr_bn", "command": "python -m experiments.detectors --models npr_bn"}
    old = {"model": "npr_bn", "command": "python -m experiments.detectors --lr-drops 2 --seeds 0"}
    new = {"model": "npr_bn", "lr_drops": 1, "command": "--lr-drops 2"}  # the entry wins
    assert [lr_drops_of(r) for r in (plain, old, new)] == [0, 2, 1]
    assert run_label(plain) == "npr_bn" and run_label(old) == "npr_bn (lr drops 2)"


def test_runs_with_another_patience_are_their_own_row():
    from experiments.detectors import patience_of, run_label

    default = {"model": "npr_bn", "command": "python -m experiments.detectors --patience 4"}
    longer = {"model": "npr_bn", "command": "python -m experiments.detectors --patience 8"}
    both = {"model": "npr_bn", "command": "--lr-drops 2 --patience 3"}
    assert [patience_of(r) for r in (default, longer, both, {"model": "x"})] == [4, 8, 3, 4]
    assert run_label(default) == "npr_bn" and run_label(longer) == "npr_bn (patience 8)"
    assert run_label(both) == "npr_bn (lr drops 2) (patience 3)"


def test_each_view_set_is_a_record_of_the_same_training_and_its_own_row(tmp_path):
    import json

    from experiments.detectors import main, run_label

    out = tmp_path / "runs.json"
    main(["--tiny", "--cache-dir", str(tmp_path), "--models", "npr_bn", "--seeds", "0",
          "--max-steps", "4", "--eval-every", "2", "--batch-size", "8", "--workers", "0",
          "--views", "one", "d4", "--json", str(out)])  # fmt: skip
    one, d4 = json.loads(out.read_text())
    assert (one["views"], d4["views"]) == ("one", "d4")
    assert one["val_curve"] == d4["val_curve"] and one["best_step"] == d4["best_step"]
    assert one["report"] != d4["report"]  # the same weights, scored two ways
    assert "test_real_fpr_0.5" in d4["report"]  # scored as probabilities
    assert run_label(one) == "npr_bn" and run_label(d4) == "npr_bn (d4 views)"


def test_a_table_from_records_refuses_to_count_a_run_twice(tmp_path, capsys):
    import json

    from experiments.detectors import main

    run = {"command": "python -m experiments.detectors --seeds 0 1", "model": "npr_bn",
           "optimizer": "adam", "lr": 1e-3, "seed": 0, "views": "one", "report": {}}  # fmt: skip
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps([run, {**run, "seed": 1}]))
    b.write_text(json.dumps([run]))  # a copy of one of a's runs
    for paths, says in (([a, a], "more than once"), ([a, b], "the same run")):
        with pytest.raises(SystemExit):
            main(["--from-json", *map(str, paths)])
        assert says in capsys.readouterr().err
    # seed 0 of another command (a batch size or step cap the record does not hold) shared
    # the row and was counted as a third seed (an audit)
    other = tmp_path / "other.json"
    other.write_text(json.dumps([{**run, "command": "python -m experiments.detectors --seeds 0"}]))
    with pytest.raises(SystemExit):
        main(["--from-json", str(a), str(other)])
    assert "holds seed 0 twice" in capsys.readouterr().err


def test_the_same_optimizer_at_another_lr_is_another_row():
    from experiments.detectors import HELDOUT, SEEN, markdown

    def run(lr, auc):
        fams = {f: {"auc": auc, "tpr": 0.5} for f in (*SEEN, *HELDOUT)}
        groups = {
            g: {"mean": {"auc": auc, "tpr": 0.5}, **{f: fams[f] for f in fs}}
            for g, fs in (("seen", SEEN), ("heldout", HELDOUT))
        }
        report = {**groups, "test_real_fpr": 0.03, "test_real_fpr_0.5": 0.1}
        return {"model": "npr_bn", "optimizer": "adam", "lr": lr, "seed": 0, "best_step": 250,
                "steps": 500, "report": report}  # fmt: skip

    text = markdown([run(1e-3, 0.9), run(3e-3, 0.8), run(3e-3, 0.7)], "`cmd`", 0.05)
    assert "| npr_bn | adam (lr 0.001) | 1 | 0.900 |" in text
    assert "| npr_bn | adam (lr 0.003) | 2 | 0.750 ± 0.071 |" in text


def test_mean_and_spread_leave_out_runs_without_the_number():
    from experiments.detectors import _ms

    assert _ms([0.1, 0.3]) == "0.200 ± 0.141"
    assert _ms([0.1, 0.3, float("nan")]) == "0.200 ± 0.141 (2 of 3)"
    assert _ms([float("nan")]) == "n/a" and _ms([0.25]) == "0.250"


def test_patch_size_builds_its_own_benchmark_and_labels_the_row(tmp_path):
    import json

    from experiments.detectors import main, run_label

    out = tmp_path / "runs.json"
    main(["--tiny", "--cache-dir", str(tmp_path), "--models", "npr_bn", "--seeds", "0",
          "--max-steps", "2", "--eval-every", "2", "--batch-size", "8", "--workers", "0",
          "--patch-size", "16", "--json", str(out)])  # fmt: skip
    (run,) = json.loads(out.read_text())
    assert run["patch_size"] == 16 and run_label(run) == "npr_bn (16 px)"
    # runs recorded before the option existed were at the default size: no suffix
    assert run_label({"model": "npr_bn"}) == "npr_bn"


def test_a_named_configuration_sets_its_hyperparameters_on_the_presets_groups_only():
    from experiments.detectors import preset_and_hyper

    assert preset_and_hyper("muon") == ("muon", {})
    assert preset_and_hyper("muon_delta") == ("muon", {"gamma": 0.5})  # conf/optimizer/*.yaml
    # hydra's instantiation keys (cms_m3.yaml's _convert_) are not hyperparameters
    preset, hyper = preset_and_hyper("cms_m3")
    assert preset == "cms" and hyper["freqs"] == [1, 10]
    assert not any(key.startswith("_") for key in hyper)
    ademamix = optimizer_factory("ademamix", 1e-3)([torch.nn.Parameter(torch.ones(3))])
    assert ademamix.param_groups[0]["weights"] == [1.0, 5.0]
    model = NPR(norm="batch")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = optimizer_factory("muon_delta/split", 5e-3, model)(params)
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["hidden"]["memory"] == "muon" and groups["hidden"]["gamma"] == 0.5
    assert groups["rest"]["memory"] == "adam" and groups["rest"].get("gamma", 0) != 0.5
    # a configuration's own split block sets the rest group (muon_rest03: Adam at lr * 0.3)
    rest03 = optimizer_factory("muon_rest03/split", 1e-2, model)(params)
    rest_group = {g["name"]: g for g in rest03.param_groups}["rest"]
    assert rest_group["lr"] == pytest.approx(3e-3) and rest_group["betas"] == [0.9, 0.95]
    plain = optimizer_factory("muon_delta", 5e-3)(params)
    assert plain.param_groups[0]["gamma"] == 0.5
    with pytest.raises(ValueError, match="neither a preset"):
        optimizer_factory("no_such_optimizer", 1e-3)


def test_a_weight_average_is_recorded_and_labels_its_row(tmp_path):
    import json

    from experiments.detectors import main, run_label

    out = tmp_path / "runs.json"
    main(["--tiny", "--cache-dir", str(tmp_path), "--models", "npr_bn", "--seeds", "0",
          "--max-steps", "4", "--eval-every", "2", "--batch-size", "8", "--workers", "0",
          "--average", "0.99", "--json", str(out)])  # fmt: skip
    (run,) = json.loads(out.read_text())
    assert run["average"] == 0.99 and run_label(run) == "npr_bn (EMA 0.99)"
    assert run_label({**run, "average": None}) == "npr_bn"  # runs without one (or before it)
    assert run_label({"model": "npr_bn"}) == "npr_bn"


def test_saved_weights_make_an_ensemble_that_scores_like_the_protocol(tmp_path):
    import json

    import pytest
    from detector_support import train_tiny_runs

    from experiments.detector_ensemble import ensemble_of
    from experiments.detector_ensemble import main as ensemble_main
    from experiments.detectors import run_label

    first, second = train_tiny_runs(tmp_path, seeds=(0, 1))
    paths = [first["weights"], second["weights"]]
    assert [p.rsplit("/", 1)[1] for p in paths] == [
        "npr_bn-adam-lr0.001-ema0.99-seed0.safetensors",
        "npr_bn-adam-lr0.001-ema0.99-seed1.safetensors",
    ]
    # one member reproduces its run's own scores: the saved weights are the ones scored
    recipe, alone = ensemble_of([tmp_path / "w" / paths[0].rsplit("/", 1)[1]])
    assert recipe["seed"] == "0" and recipe["average"] == 0.99
    out = tmp_path / "ensemble.json"
    ensemble_main(["--tiny", "--cache-dir", str(tmp_path), "--members", paths[0],
                   "--json", str(out)])  # fmt: skip
    (single,) = json.loads(out.read_text())
    assert single["report"] == first["report"]
    # the validation loss the run was stopped on, recomputed from the saved weights
    assert single["val_loss"] == pytest.approx(first["best_val_loss"], rel=1e-6)
    assert single["member_val_losses"] == [single["val_loss"]]
    # and the validation AUC at the kept step, which the run records beside it
    assert single["val_auc"] == pytest.approx(first["best_val_auc"], rel=1e-6)
    assert single["member_val_aucs"] == [single["val_auc"]]
    ensemble_main(["--tiny", "--cache-dir", str(tmp_path), "--members", *paths,
                   "--views", "one", "d4", "--json", str(out)])  # fmt: skip
    one, d4 = json.loads(out.read_text())
    assert one["ensemble"] == [0, 1] and one["seed"] == "0+1" and d4["views"] == "d4"
    assert one["report"] != first["report"]
    assert run_label(one) == "npr_bn (EMA 0.99) (ensemble of 2)"
    assert run_label(d4) == "npr_bn (EMA 0.99) (ensemble of 2) (d4 views)"


def test_an_ensemble_refuses_members_of_different_recipes_or_repeated_seeds(tmp_path):
    import json

    import pytest

    from experiments.detector_ensemble import ensemble_of
    from experiments.detectors import main

    runs = tmp_path / "runs.json"
    main(["--tiny", "--cache-dir", str(tmp_path), "--models", "npr_bn", "--seeds", "0",
          "--optimizers", "adam", "muon", "--lr", "1e-3", "--max-steps", "2", "--eval-every", "2",
          "--batch-size", "8", "--workers", "0", "--save-weights", str(tmp_path / "w"),
          "--json", str(runs)])  # fmt: skip
    adam, muon = (json.loads(runs.read_text())[i]["weights"] for i in (0, 1))
    with pytest.raises(ValueError, match="differ in optimizer"):
        ensemble_of([adam, muon])
    with pytest.raises(ValueError, match="repeat a seed"):
        ensemble_of([adam, adam])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ensemble_of([tmp_path / "nothing.safetensors"])


def test_an_ensemble_holds_its_members_whole_recipe_and_scores_them_on_their_split(tmp_path):
    import json

    import pytest

    from assocmem.forensic.data import BenchmarkConfig
    from assocmem.storage import read_safetensors, write_safetensors
    from experiments.detector_ensemble import ensemble_of, records_by_weights
    from experiments.detector_ensemble import main as ensemble_main
    from experiments.detectors import main, run_label

    def train(name, *options, seeds=("0",)):
        out = tmp_path / f"{name}.json"
        main(["--tiny", "--cache-dir", str(tmp_path), "--models", "npr_bn", "--seeds", *seeds,
              "--max-steps", "2", "--eval-every", "2", "--batch-size", "8", "--workers", "0",
              "--save-weights", str(tmp_path / name), "--json", str(out), *options])  # fmt: skip
        return out, [run["weights"] for run in json.loads(out.read_text())]

    paired_runs, paired = train("paired", "--paired", "--patience", "3", seeds=("0", "1"))
    _, (plain,) = train("plain")
    header = json.loads(read_safetensors(paired[0], "w")[0]["assocmem"])
    seen = json.loads(paired_runs.read_text())[0]["seen"]
    assert header["paired"] is True and header["patience"] == 3 and header["seen"] == seen
    # the weights of another recipe never join: paired batches make a row of their own
    with pytest.raises(ValueError, match="differ in paired"):
        ensemble_of([paired[0], plain])
    out = tmp_path / "ensemble.json"
    ensemble_main(["--tiny", "--cache-dir", str(tmp_path), "--members", *paired,
                   "--json", str(out)])  # fmt: skip
    (record,) = json.loads(out.read_text())
    assert run_label(record) == "npr_bn (patience 3) (paired) (ensemble of 2)"

    # a header written before it held the whole recipe: its run record supplies the rest
    metadata, tensors = read_safetensors(paired[0], "w")
    old = {k: v for k, v in header.items() if k not in ("paired", "patience", "seen")}
    legacy = tmp_path / "legacy" / "old-seed0.safetensors"
    write_safetensors(legacy, tensors, old)
    recipe, _ = ensemble_of([legacy])  # no record: the defaults those runs had, no patience
    assert recipe["paired"] is False and "patience" not in recipe
    (first, *_) = json.loads(paired_runs.read_text())
    (tmp_path / "legacy.json").write_text(json.dumps([{**first, "weights": str(legacy)}]))
    recipe, _ = ensemble_of([legacy], records_by_weights([tmp_path / "legacy.json"]))
    assert recipe["paired"] is True and recipe["patience"] == 3
    (tmp_path / "wrong.json").write_text(json.dumps([{**first, "weights": str(legacy), "lr": 1}]))
    with pytest.raises(ValueError, match=r"run record differ in \['lr'\]"):
        ensemble_of([legacy], records_by_weights([tmp_path / "wrong.json"]))
    (tmp_path / "bad.json").write_text(json.dumps(["not a record"]))
    with pytest.raises(ValueError, match="bad.json: not a list of run records"):
        records_by_weights([tmp_path / "bad.json"])
    # a file that is not JSON is named (json's own message named only a line and column)
    (tmp_path / "cut.json").write_text('[{"weights": ')
    with pytest.raises(ValueError, match="cut.json: not a readable records file"):
        records_by_weights([tmp_path / "cut.json"])
    write_safetensors(legacy, tensors, {**header, "seen": "splice"})  # a tampered header
    with pytest.raises(ValueError, match="not a list of names"):
        ensemble_of([legacy])

    # members trained on every family are scored on their split: nothing is held out
    every = list(BenchmarkConfig.tiny().families)
    _, (everything,) = train("every", "--seen", *every)
    ensemble_main(["--tiny", "--cache-dir", str(tmp_path), "--members", everything,
                   "--json", str(out)])  # fmt: skip
    (record,) = json.loads(out.read_text())
    assert record["seen"] == every and "heldout" not in record["report"]
    assert run_label(record).endswith("(trained on every family)")


def test_a_chosen_training_split_holds_out_the_rest_and_never_both():
    import dataclasses

    from assocmem.forensic.data import BenchmarkConfig
    from assocmem.forensic.protocol import FamilySplit
    from experiments.detectors import HELDOUT, SEEN, family_split

    config = BenchmarkConfig.tiny()
    default = family_split(config)
    assert default.seen == tuple(f for f in SEEN if f in config.families)
    assert default.heldout == tuple(f for f in HELDOUT if f in config.families)
    every = family_split(config, config.families)
    assert set(every.seen) == set(config.families) and every.heldout == ()
    held = HELDOUT[0]
    one_more = family_split(config, (*SEEN, held, held))  # repeats count once
    assert one_more.seen == (*SEEN, held) and held not in one_more.heldout
    with pytest.raises(ValueError, match="unknown families"):
        family_split(config, ["no_such_family"])
    # a benchmark built with fewer families: the default split is cut to them, as before
    few = dataclasses.replace(config, families=(SEEN[0], HELDOUT[0]))
    assert family_split(few) == FamilySplit((SEEN[0],), (HELDOUT[0],))
    with pytest.raises(ValueError, match="unknown families"):
        family_split(few, [SEEN[1]])


def _report(aucs: dict[str, float], groups: dict[str, tuple[str, ...]], fpr: float) -> dict:
    report = {"test_real_fpr": fpr}
    for group, fams in groups.items():
        if fams:
            mean = sum(aucs[f] for f in fams) / len(fams)
            report[group] = {"mean": {"auc": mean, "tpr": 0.5}}
            report[group].update({f: {"auc": aucs[f], "tpr": 0.5} for f in fams})
    return report


def _ceiling_runs():
    from experiments.detectors import HELDOUT, SEEN

    recipe = {"model": "npr_bn", "optimizer": "adam", "lr": 1e-3, "best_step": 250, "steps": 500}
    zero = [
        {**recipe, "seed": s, "report": _report(
            {**dict.fromkeys(SEEN, 0.95), **dict.fromkeys(HELDOUT, 0.7 + 0.1 * s)},
            {"seen": SEEN, "heldout": HELDOUT}, 0.02)}
        for s in (0, 1)
    ]  # fmt: skip
    every = (*SEEN, *HELDOUT)
    ceiling = [
        {**recipe, "seed": s, "seen": list(every),
         "report": _report(dict.fromkeys(every, 0.97), {"seen": every, "heldout": ()}, 0.03)}
        for s in (0, 1)
    ]  # fmt: skip
    return zero, ceiling


def test_the_ceiling_table_sets_each_family_beside_its_in_distribution_auc():
    from experiments.detector_ceiling import markdown
    from experiments.detectors import HELDOUT, SEEN, run_label

    zero, ceiling = _ceiling_runs()
    assert run_label(ceiling[0]) == "npr_bn (trained on every family)"
    text = markdown(zero, ceiling, "cmd")
    assert f"| {HELDOUT[0]} (held out) | 0.750 ± 0.071 | 0.970 ± 0.000 | +0.220 |" in text
    assert f"| {SEEN[0]} | 0.950 ± 0.000 | 0.970 ± 0.000 | +0.020 |" in text
    assert "| **held-out mean** | 0.750 | 0.970 | +0.220 |" in text
    assert "| **seen mean** | 0.950 | 0.970 | +0.020 |" in text


def test_the_ceiling_table_refuses_what_is_not_a_like_for_like_comparison():
    from experiments.detector_ceiling import markdown

    zero, ceiling = _ceiling_runs()
    with pytest.raises(ValueError, match="one recipe"):
        markdown(zero, [{**ceiling[0], "lr": 3e-3}], "cmd")
    with pytest.raises(ValueError, match="every family"):
        markdown(zero, [{**ceiling[0], "seen": ceiling[0]["seen"][:-1]}], "cmd")
    with pytest.raises(ValueError, match="default seen families"):
        markdown(ceiling, ceiling, "cmd")
    with pytest.raises(ValueError, match="repeats a seed"):
        markdown(zero, [ceiling[0], ceiling[0]], "cmd")
    with pytest.raises(ValueError, match="both sides"):
        markdown(zero, [], "cmd")
    # an audit: a --paired ceiling (or another patch size, post-processing, ...) passed as
    # "the same recipe", and an ensemble record as a third seed built from the other two
    with pytest.raises(ValueError, match=r"differ in \['paired'\]"):
        markdown(zero, [{**c, "paired": True} for c in ceiling], "cmd")
    with pytest.raises(ValueError, match=r"differ in \['patch_size'\]"):
        markdown(zero, [{**c, "patch_size": 64} for c in ceiling], "cmd")
    ensemble = {**zero[0], "seed": "0+1", "ensemble": [0, 1]}
    with pytest.raises(ValueError, match="ensemble records are not runs of one seed"):
        markdown([*zero, ensemble], ceiling, "cmd")
    # the patience may differ (the ceiling's all-family curve plateaus), as the section says
    assert "held-out mean" in markdown(zero, [{**c, "patience": 8} for c in ceiling], "cmd")


def test_the_ceiling_command_names_a_records_file_it_cannot_read(tmp_path, capsys):
    # a JSON object ended in AttributeError, a missing file in FileNotFoundError
    from experiments.detector_ceiling import main

    (tmp_path / "obj.json").write_text('{"model": "npr"}')
    for bad, match in (("obj.json", "not a list of run records"), ("none.json", "not a readable")):
        with pytest.raises(SystemExit):
            main(["--zero-shot", str(tmp_path / bad), "--ceiling", str(tmp_path / bad)])
        assert match in capsys.readouterr().err


def test_a_run_on_every_family_records_its_split_and_reports_no_held_out_group(tmp_path):
    import json

    from assocmem.forensic.data import BenchmarkConfig
    from experiments.detectors import main, weights_name

    every = list(BenchmarkConfig.tiny().families)
    out = tmp_path / "runs.json"
    main(["--tiny", "--cache-dir", str(tmp_path), "--models", "npr_bn", "--seeds", "0",
          "--max-steps", "2", "--eval-every", "2", "--batch-size", "8", "--workers", "0",
          "--seen", *every, "--json", str(out)])  # fmt: skip
    (run,) = json.loads(out.read_text())
    assert run["seen"] == every and "heldout" not in run["report"]
    assert set(run["report"]["seen"]) == {*every, "mean"}
    assert "-seen-" in weights_name("npr_bn", run)
    default = {k: v for k, v in run.items() if k != "seen"}  # records made before the entry
    assert "-seen-" not in weights_name("npr_bn", default)


def test_a_trace_strength_run_records_it_and_gets_its_own_row_and_weights(tmp_path):
    import json

    from experiments.detectors import main, run_label, weights_name

    out = tmp_path / "runs.json"
    main(["--tiny", "--cache-dir", str(tmp_path), "--models", "npr_bn", "--seeds", "0",
          "--max-steps", "4", "--eval-every", "2", "--batch-size", "8", "--workers", "0",
          "--trace-strength", "0.25", "1", "--json", str(out)])  # fmt: skip
    (run,) = json.loads(out.read_text())
    assert run["trace_strength"] == [0.25, 1.0]
    assert run_label(run) == "npr_bn (trace strength 0.25–1)"
    assert run_label({**run, "trace_strength": None}) == "npr_bn"
    assert "-trace0.25-1-" in weights_name("npr_bn", run)
    assert "trace" not in weights_name("npr_bn", {**run, "trace_strength": None})
    with pytest.raises(SystemExit):  # a strength out of (0, 1] is refused before any build
        main(["--tiny", "--cache-dir", str(tmp_path), "--models", "npr_bn", "--seeds", "0",
              "--max-steps", "2", "--workers", "0", "--trace-strength", "0", "1"])  # fmt: skip


def test_a_spectral_mask_run_records_it_and_gets_its_own_row_weights_and_race(tmp_path):
    import json

    from experiments.detector_race import recipe_details
    from experiments.detectors import main, recipe_of, run_label, weights_name

    out = tmp_path / "runs.json"
    main(["--tiny", "--cache-dir", str(tmp_path), "--models", "npr_bn", "--seeds", "0",
          "--max-steps", "4", "--eval-every", "2", "--batch-size", "8", "--workers", "0",
          "--spectral-mask", "0.5", "0.15", "--json", str(out)])  # fmt: skip
    (run,) = json.loads(out.read_text())
    assert run["spectral_mask"] == [0.5, 0.15] and recipe_of(run)["spectral_mask"] == [0.5, 0.15]
    assert run_label(run) == "npr_bn (frequency masking 0.15 of the bins, p 0.5)"
    unmasked = {k: v for k, v in run.items() if k != "spectral_mask"}  # records made before it
    assert run_label(unmasked) == "npr_bn" and recipe_of(unmasked)["spectral_mask"] is None
    assert "-fmask0.5-0.15-" in weights_name("npr_bn", run)
    assert "fmask" not in weights_name("npr_bn", unmasked)
    assert "frequency masking 0.15 of the bins, p 0.5" in recipe_details([run])
    with pytest.raises(ValueError, match="spectral_mask"):  # a race never mixes the two
        recipe_details([run, unmasked])
    with pytest.raises(SystemExit):  # a ratio of 1 is refused before any build
        main(["--tiny", "--cache-dir", str(tmp_path), "--models", "npr_bn", "--seeds", "0",
              "--max-steps", "2", "--workers", "0", "--spectral-mask", "0.5", "1"])  # fmt: skip


def test_a_paired_run_records_it_and_gets_its_own_row_and_weights(tmp_path):
    import json

    from experiments.detectors import main, run_label, weights_name

    out = tmp_path / "runs.json"
    main(["--tiny", "--cache-dir", str(tmp_path), "--models", "npr_bn", "--seeds", "0",
          "--max-steps", "4", "--eval-every", "2", "--batch-size", "8", "--workers", "0",
          "--paired", "--json", str(out)])  # fmt: skip
    (run,) = json.loads(out.read_text())
    assert run["paired"] is True and run_label(run) == "npr_bn (paired)"
    assert "-paired-" in weights_name("npr_bn", run)
    before = {k: v for k, v in run.items() if k != "paired"}  # records made before the entry
    assert run_label(before) == "npr_bn" and "paired" not in weights_name("npr_bn", before)


def test_a_run_without_training_post_processing_records_it_and_is_a_recipe_of_its_own(tmp_path):
    """``--train-postprocess none`` is recorded, labelled and named; records and headers made
    before the entry read as the shared post-processing; an ensemble or a race never mixes the
    two (the entry is in WEIGHTS_RECIPE and the race's shared entries)."""
    import json

    from experiments.detector_race import recipe_details
    from experiments.detectors import main, recipe_of, run_label, weights_name

    out = tmp_path / "runs.json"
    main(["--tiny", "--cache-dir", str(tmp_path), "--models", "npr_bn", "--seeds", "0",
          "--max-steps", "4", "--eval-every", "2", "--batch-size", "8", "--workers", "0",
          "--train-postprocess", "none", "--json", str(out)])  # fmt: skip
    (run,) = json.loads(out.read_text())
    assert run["train_postprocess"] == "none"
    assert run_label(run) == "npr_bn (trained without post-processing)"
    assert "-nopost-" in weights_name("npr_bn", run)
    before = {k: v for k, v in run.items() if k != "train_postprocess"}
    assert run_label(before) == "npr_bn" and "nopost" not in weights_name("npr_bn", before)
    assert recipe_of(before)["train_postprocess"] == "shared"
    assert recipe_details([run, run]) == ["trained without post-processing"]
    with pytest.raises(ValueError, match="differ in train_postprocess"):
        recipe_details([run, before])
    with pytest.raises(SystemExit):
        main(["--tiny", "--models", "npr_bn", "--train-postprocess", "jpeg"])


def test_a_real_consistency_run_records_it_and_is_a_recipe_of_its_own(tmp_path):
    """``--real-consistency W`` trains on the reals' twin views (a tiny run finishes), is
    recorded, labelled and named; records and headers made before the entry read as 0; an
    ensemble or a race never mixes the two; a negative or non-number weight is refused."""
    import json

    from experiments.detector_race import recipe_details
    from experiments.detectors import main, recipe_of, run_label, weights_name

    out = tmp_path / "runs.json"
    main(["--tiny", "--cache-dir", str(tmp_path), "--models", "npr_bn", "--seeds", "0",
          "--max-steps", "4", "--eval-every", "2", "--batch-size", "8", "--workers", "0",
          "--real-consistency", "0.5", "--json", str(out)])  # fmt: skip
    (run,) = json.loads(out.read_text())
    assert run["real_consistency"] == 0.5 and run["steps"] == 4
    assert run_label(run) == "npr_bn (real consistency 0.5)"
    assert "-rc0.5-" in weights_name("npr_bn", run)
    before = {k: v for k, v in run.items() if k != "real_consistency"}
    assert run_label(before) == "npr_bn" and "-rc" not in weights_name("npr_bn", before)
    assert recipe_of(before)["real_consistency"] == 0.0
    assert recipe_details([run, run]) == ["real consistency 0.5"]
    with pytest.raises(ValueError, match="differ in real_consistency"):
        recipe_details([run, before])
    for bad in ("-1", "nan", "x"):
        with pytest.raises(SystemExit):
            main(["--tiny", "--models", "npr_bn", "--real-consistency", bad])


def test_an_attribution_run_records_it_and_keeps_only_the_detectors_weights(tmp_path):
    import json

    from assocmem.storage import write_safetensors
    from experiments.detector_ensemble import ensemble_of, load_member
    from experiments.detectors import MODELS, main, run_label, weights_name

    out = tmp_path / "runs.json"
    main(["--tiny", "--cache-dir", str(tmp_path), "--models", "npr_dct_dropout", "--seeds", "0",
          "--optimizers", "muon_delta/split", "--lr", "5e-3", "--max-steps", "4",
          "--eval-every", "2", "--batch-size", "8", "--workers", "0", "--attribution", "0.5",
          "--save-weights", str(tmp_path / "w"), "--json", str(out)])  # fmt: skip
    (run,) = json.loads(out.read_text())
    assert run["attribution"] == 0.5
    assert run_label(run) == "npr_dct_dropout (attribution 0.5)"
    assert run_label({**run, "attribution": 0.0}) == "npr_dct_dropout"
    assert (
        "-attr0.5-" in run["weights"] == str(tmp_path / "w" / weights_name("npr_dct_dropout", run))
    )
    assert "attr" not in weights_name("npr_dct_dropout", {**run, "attribution": 0.0})
    header, model = load_member(run["weights"])  # strict: the detector alone, head dropped
    assert header["attribution"] == 0.5 and type(model) is type(MODELS["npr_dct_dropout"](32))
    # the same recipe without attribution is another recipe: no ensemble of the two
    main(["--tiny", "--cache-dir", str(tmp_path), "--models", "npr_dct_dropout", "--seeds", "1",
          "--optimizers", "muon_delta/split", "--lr", "5e-3", "--max-steps", "2",
          "--eval-every", "2", "--batch-size", "8", "--workers", "0",
          "--save-weights", str(tmp_path / "w"), "--json", str(out)])  # fmt: skip
    (plain,) = json.loads(out.read_text())
    assert load_member(plain["weights"])[0]["attribution"] == 0.0
    with pytest.raises(ValueError, match="differ in attribution"):
        ensemble_of([run["weights"], plain["weights"]])
    # weights saved before the option existed have no entry: trained without attribution
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    old = tmp_path / "old.safetensors"
    write_safetensors(old, tensors, {k: v for k, v in header.items() if k != "attribution"})
    assert load_member(old)[0]["attribution"] == 0.0
    for bad in ("-1", "nan"):  # refused before any build
        with pytest.raises(SystemExit):
            main(["--tiny", "--cache-dir", str(tmp_path), "--models", "npr_bn", "--seeds", "0",
                  "--max-steps", "2", "--workers", "0", "--attribution", bad])  # fmt: skip


@pytest.mark.parametrize("name", sorted(SHIPPABLE))
def test_every_shippable_detector_survives_its_checkpoint(tmp_path, name):
    from assocmem.forensic.checkpoint import build_model, load_detector, save_detector

    architecture, kwargs = SHIPPABLE[name]
    torch.manual_seed(0)
    model = build_model(architecture, kwargs).eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
    path = tmp_path / f"{name}.safetensors"
    save_detector(path, model, architecture=architecture, arch_kwargs=kwargs, patch_size=32,
                  val_real_logits=logits, info={})  # fmt: skip
    loaded = load_detector(path)
    assert loaded.architecture == architecture and loaded.arch_kwargs == kwargs
    with torch.no_grad():
        assert torch.equal(loaded.model(x), logits)


def test_a_pretrained_residual_encoder_starts_the_npr_branch_and_labels_its_row(tmp_path):
    import json

    from safetensors.torch import load_file, save_file

    from experiments.detectors import MODELS, initial_residual, main, run_label, weights_name

    encoder = NPR(norm="batch")
    torch.nn.init.constant_(encoder.encoder.stages[0][0].weight, 0.125)  # recognisable
    save_file(encoder.state_dict(), tmp_path / "frequency-seed0.safetensors")
    template = str(tmp_path / "frequency-seed{seed}.safetensors")
    model = MODELS["npr_dct_dropout"](32)
    assert initial_residual(model, template, 0) == str(tmp_path / "frequency-seed0.safetensors")
    loaded = load_file(tmp_path / "frequency-seed0.safetensors")
    assert all(torch.equal(v, loaded[k]) for k, v in model.residual.state_dict().items())
    with pytest.raises(ValueError, match="NPR branch"):  # no residual branch to start
        initial_residual(MODELS["smallcnn"](32), template, 0)
    save_file(NPR(widths=(8, 16, 32), norm="batch").state_dict(), tmp_path / "x-seed0.safetensors")
    with pytest.raises(RuntimeError):  # another encoder's shapes: refused, not a partial start
        initial_residual(model, str(tmp_path / "x-seed{seed}.safetensors"), 0)

    out = tmp_path / "runs.json"
    main(["--tiny", "--cache-dir", str(tmp_path / "cache"), "--models", "npr_dct_dropout",
          "--seeds", "0", "--max-steps", "2", "--eval-every", "2", "--batch-size", "8",
          "--workers", "0", "--init-residual", template, "--json", str(out)])  # fmt: skip
    (run,) = json.loads(out.read_text())
    assert run["init_residual"] == str(tmp_path / "frequency-seed0.safetensors")
    assert run_label(run) == "npr_dct_dropout (residual pretrained: frequency)"
    assert run_label({**run, "init_residual": None}) == "npr_dct_dropout"
    assert "-init-frequency-" in weights_name("npr_dct_dropout", run)
    assert "init" not in weights_name("npr_dct_dropout", {**run, "init_residual": None})


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--optimizers", "adam", "adamz"], "adamz"),  # refused before adam trains
        (["--seeds", "0", "-1"], "--seeds"),
        (["--lr", "nan"], "--lr"),
        (["--eval-every", "0"], "--eval-every"),
        # each of these failed after training (all of it lost) or in a traceback
        (["--target-fpr", "1.5"], "--target-fpr"),
        (["--target-fpr", "-0.1"], "--target-fpr"),
        (["--threads", "0"], "--threads"),
        (["--patch-size", "31"], "--patch-size"),
        (["--lr-drops", "-1"], "--lr-drops"),
        (["--workers", "-1"], "--workers"),
        (["--batch-size", "0"], "--batch-size"),
        (["--save-weights", "{tmp}/afile"], "is a file, not a folder"),
        (["--save-weights", "{tmp}/afile/w"], "is a file, not a folder"),
        # one run counted as two seeds of one row (a spread of 0), as a repeated seed would be
        (["--optimizers", "adam", "adam"], "more than once"),
        (["--optimizers", "adam", "muon", "adam"], "adam (lr 0.001)"),
        (["--optimizers", "adam", "adam", "--lr", "1e-3", "0.001"], "more than once"),
        # each of these failed once the benchmark was built, after the models or seeds before
        # the one it named had trained (a traceback, their runs lost)
        (["--batch-size", "1"], "--batch-size must be >= 2 (half real, half fake)"),
        (["--models", "npr_bn", "smallcnn", "--attribution", "1"], "--models smallcnn: SmallCNN"),
        (["--models", "npr_dct", "--init-residual", "{tmp}/e-{seed}"], "e-0 does not exist"),
        (["--models", "smallcnn", "--init-residual", "{tmp}/e"], "smallcnn, seed 0: --init"),
        (["--models", "npr_dct", "--init-residual", "{tmp}/e-{sed}"], "as its only field"),
        (["--models", "npr_dct", "--init-residual", "{tmp}/afile"], "not a readable"),
        (["--write", "{tmp}/broken.md"], "1 begin and 0 end markers"),
    ],
)
def test_training_options_are_checked_before_any_run(tmp_path, capsys, argv, message):
    from experiments.detectors import main

    (tmp_path / "afile").write_text("")
    (tmp_path / "broken.md").write_text("<!-- report:detectors:begin -->\n")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    with pytest.raises(SystemExit) as exit_:
        main(["--tiny", "--cache-dir", str(tmp_path), "--models", "npr_bn", *argv])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("**/*.json"))  # nothing built or trained first


def test_one_optimizer_at_two_learning_rates_is_two_recipes():
    """``--optimizers adam adam --lr A B`` is two rows, not a repeat: accepted."""
    import argparse

    from experiments.detectors import bad_training_options

    args = argparse.Namespace(optimizers=["adam", "adam"], seeds=[0], max_steps=1)
    assert bad_training_options(args, [1e-3, 3e-2]) is None
    assert "more than once" in bad_training_options(args, [1e-3, 1e-3])


@pytest.mark.parametrize("option", ["models", "views"])
def test_a_model_or_view_named_twice_is_refused(option):
    # counted as two seeds of one run, every spread 0, and --from-json then refused the records
    import argparse

    from experiments.detectors import bad_training_options

    named = {"models": ["npr", "npr"], "views": ["one", "one"]}[option]
    args = argparse.Namespace(optimizers=["adam"], seeds=[0], max_steps=1, **{option: named})
    assert bad_training_options(args, [1e-3]) == f"--{option} must be distinct, got {named}"


@pytest.mark.parametrize(
    "content", ["[]", "{}", "not json", '[{"model": "gru", "optimizer": "adam", "seed": 0}]']
)
def test_from_json_refuses_what_is_not_a_detector_run(tmp_path, capsys, content):
    from experiments.detectors import main

    record = tmp_path / "r.json"
    record.write_text(content)
    md = tmp_path / "results.md"
    md.write_text("# R\n")
    with pytest.raises(SystemExit):
        main(["--from-json", str(record), "--write", str(md)])
    assert md.read_text() == "# R\n"


def test_saved_weights_never_replace_weights_of_another_recipe(tmp_path, capsys):
    """A weights file's name holds the options that make a row of their own, not patience or lr
    drops: a second command with another patience wrote the same file over the first one's
    weights. It is refused before training; the same recipe again (a rerun) replaces them."""
    from experiments.detectors import main

    weights = tmp_path / "w"
    common = ["--tiny", "--cache-dir", str(tmp_path / "cache"), "--models", "npr_bn",
              "--seeds", "0", "--max-steps", "2", "--eval-every", "1", "--batch-size", "8",
              "--workers", "0", "--save-weights", str(weights)]  # fmt: skip
    main([*common, "--patience", "2"])
    (saved,) = weights.iterdir()
    before = saved.read_bytes()
    for other in (["--patience", "3"], ["--patience", "2", "--lr-drops", "1"]):
        with pytest.raises(SystemExit) as exit_:
            main([*common, *other, "--json", str(tmp_path / "runs.json")])
        assert exit_.value.code == 2
        assert "weights of another recipe" in capsys.readouterr().err
        assert saved.read_bytes() == before and not (tmp_path / "runs.json").exists()
    saved.write_bytes(b"not weights")
    with pytest.raises(SystemExit):
        main([*common, "--patience", "2"])
    assert "which is not a file --save-weights wrote" in capsys.readouterr().err
    saved.write_bytes(before)
    main([*common, "--patience", "2", "--seeds", "0", "1"])  # its own recipe: a rerun
    assert len(list(weights.iterdir())) == 2


def test_a_table_from_records_states_the_rate_they_were_calibrated_for(tmp_path, capsys):
    """``--from-json`` titled its table with ``--target-fpr``'s default whatever the runs were
    calibrated for, and put runs at 5 % and 1 % under one heading."""
    import json

    from experiments.detectors import from_json_target, main

    def record(seed: int, fpr: float) -> dict:
        return {"command": "c", "model": "npr", "optimizer": "adam", "lr": 1e-3, "seed": seed,
                "report": {"target_fpr": fpr}}  # fmt: skip

    assert from_json_target([record(0, 0.01), record(1, 0.01)], 0.05, 0.05) == 0.01
    assert from_json_target([record(0, 0.01)], 0.01, 0.05) == 0.01
    with pytest.raises(ValueError, match="calibrated for 0.01"):
        from_json_target([record(0, 0.01)], 0.1, 0.05)
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps([record(0, 0.05), record(1, 0.01)]))
    with pytest.raises(SystemExit):
        main(["--from-json", str(mixed)])
    assert "different false-positive rates [0.01, 0.05]" in capsys.readouterr().err


def test_the_section_text_names_the_split_the_runs_trained_on():
    """The text said "Trained on the seen families ae_transconv, …" above runs trained with
    ``--seen`` on others (a ceiling run on every family among them)."""
    from experiments.detectors import HELDOUT, SEEN, split_prose

    trained, heldout = split_prose([{"seen": list(SEEN)}, {}])
    assert trained == f"the seen families {', '.join(SEEN)}"
    assert heldout == f"Held-out families {', '.join(HELDOUT)}"
    trained, heldout = split_prose([{"seen": list(SEEN)}, {"seen": [*SEEN, *HELDOUT]}])
    assert "the families its row names" in trained and "a row did not train on" in heldout


def test_from_json_refuses_the_options_it_would_ignore(tmp_path, capsys):
    # --json wrote nothing, --save-weights saved nothing, --models/--seeds rendered the records
    # anyway, and each went into the section's "then" command (an audit)
    import json

    from experiments.detectors import main

    run = {"command": "c", "model": "npr_bn", "optimizer": "adam", "lr": 1e-3, "seed": 0,
           "views": "one", "report": {}}  # fmt: skip
    records = tmp_path / "runs.json"
    records.write_text(json.dumps([run]))
    for extra in (["--json", str(tmp_path / "merged.json")], ["--save-weights", str(tmp_path)],
                  ["--seeds", "5"], ["--average", "0.5"]):  # fmt: skip
        with pytest.raises(SystemExit) as exit_:
            main(["--from-json", str(records), *extra])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert "--from-json renders the runs it is given; it does not read" in err
        assert extra[0] in err
    assert not (tmp_path / "merged.json").exists()


def test_an_interrupted_sweep_keeps_the_records_of_the_runs_it_finished(tmp_path, monkeypatch):
    # --json was written only at the end: a sweep stopped after hours kept its weights and
    # lost every report (an audit)
    import json

    import experiments.detectors as detectors

    def one_run(bench, families, model, opt, lr, seed, args):
        if seed == 1:
            raise KeyboardInterrupt  # Ctrl-C in the second run
        mean = {"mean": {"auc": 0.9, "tpr": 0.5}}
        yield {"model": model, "optimizer": opt, "lr": lr, "seed": seed, "views": "one",
               "best_step": 2, "steps": 4, "seconds": 1.0,
               "report": {"seen": mean, "heldout": mean, "test_real_fpr": 0.05}}  # fmt: skip

    monkeypatch.setattr(detectors, "run_one", one_run)
    out = tmp_path / "runs.json"
    with pytest.raises(KeyboardInterrupt):
        detectors.main(["--tiny", "--cache-dir", str(tmp_path / "cache"), "--models", "npr_bn",
                        "--seeds", "0", "1", "--json", str(out)])  # fmt: skip
    (kept,) = json.loads(out.read_text())
    assert kept["seed"] == 0 and kept["command"].startswith("python -m experiments.detectors")
