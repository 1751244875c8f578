"""experiments.detector_race: tuning on one seed, steps to Adam's target, the step-cost report."""

from __future__ import annotations

import json

import pytest
import torch

from experiments.detector_race import load_runs, main, race, select, steps_to_target, summary, tune


def _run(optimizer, lr, seed, curve, model="npr_bn", lr_drops=0):
    best_step, best = min(((s, v) for s, v in curve if s > 0), key=lambda sv: (sv[1], sv[0]))
    return {
        "model": model, "optimizer": optimizer, "lr": lr, "seed": seed, "lr_drops": lr_drops,
        "best_val_loss": best, "best_step": best_step, "steps": curve[-1][0], "val_curve": curve,
    }  # fmt: skip


def test_steps_to_target_is_the_first_evaluation_at_or_below_it():
    curve = [(0, 0.69), (250, 0.5), (500, 0.40), (750, 0.45), (1000, 0.39)]
    assert steps_to_target(curve, 0.40) == 500  # "at" counts
    assert steps_to_target(curve, 0.395) == 1000
    assert steps_to_target(curve, 0.38) is None
    assert steps_to_target([(0, 0.1)], 0.5) is None  # step 0 is the initial model, not a step


def test_tune_uses_only_the_tuning_seed_and_flags_an_edge_optimum():
    runs = [
        _run("adam", 1e-3, 0, [(0, 0.7), (250, 0.40)]),
        _run("adam", 3e-3, 0, [(0, 0.7), (250, 0.39)]),
        _run("adam", 1e-2, 0, [(0, 0.7), (250, 0.42)]),
        _run("adam", 1e-2, 1, [(0, 0.7), (250, 0.10)]),  # another seed: must not decide
    ]
    lr, grid, edge = tune(runs, seed=0)
    assert lr == 3e-3 and grid == {1e-3: 0.40, 3e-3: 0.39, 1e-2: 0.42} and edge is None
    lr, _, edge = tune(runs[1:], seed=0)
    assert lr == 3e-3 and edge == "low"
    with pytest.raises(ValueError, match="no run on the tuning seed"):
        tune(runs, seed=5)
    with pytest.raises(ValueError, match="two runs"):
        tune(runs + [runs[0]], seed=0)
    diverged = {**_run("adam", 3e-2, 0, [(0, 0.7), (250, 0.9)]), "best_val_loss": None}
    lr, grid, edge = tune([*runs[:3], diverged], seed=0)  # diverged before its first evaluation
    assert lr == 3e-3 and grid[3e-2] == float("inf") and edge is None


def test_a_pretraining_run_that_diverged_before_its_first_evaluation_is_recorded():
    from types import SimpleNamespace

    from experiments.pretraining_study import pretraining_record

    args = SimpleNamespace(pretrain_optimizer="adam", pretrain_lr=3.0, average=None)
    record = pretraining_record("frequency", [(0, 0.15)], args, ran=7)
    assert record["best_val_loss"] is None and record["best_step"] is None
    assert record["steps"] == 7  # where it diverged, past its only evaluation
    record = pretraining_record("frequency", [(0, 0.15), (250, 0.05), (500, 0.04)], args)
    assert (record["best_step"], record["best_val_loss"], record["steps"]) == (500, 0.04, 500)


def test_select_leaves_out_other_models_and_lr_drop_and_decay_recipes():
    runs = [
        _run("adam", 1e-3, 0, [(0, 0.7), (250, 0.4)]),
        _run("adam", 1e-3, 0, [(0, 0.7), (250, 0.4)], model="npr"),
        _run("adam", 1e-3, 0, [(0, 0.7), (250, 0.4)], lr_drops=2),
        _run("muon/split", 2e-2, 0, [(0, 0.7), (250, 0.4)]),
        {**_run("adam", 1e-3, 0, [(0, 0.7), (250, 0.4)]), "lr_decay": "linear"},
    ]
    assert select(runs, "npr_bn", "adam") == [runs[0]]
    # a run scored with eight views too: one training, raced once (its single-view record)
    views = [{**runs[0], "views": "one"}, {**runs[0], "views": "d4"}]
    assert select(views, "npr_bn", "adam") == [views[0]]


def test_race_targets_adams_best_per_seed_and_summary_says_whether_spreads_are_apart():
    base = [
        _run("adam", 3e-3, s, [(0, 0.7), (1000, 0.45), (2000, 0.40), (2500, 0.41)])
        for s in range(3)
    ]
    fast = [_run("muon/split", 2e-2, s, [(0, 0.7), (500 + 50 * s, 0.39)]) for s in range(3)]
    rows = race(base, fast, 3e-3, 2e-2)
    assert [r["baseline_steps"] for r in rows] == [2000] * 3
    assert [r["candidate_steps"] for r in rows] == [500, 550, 600]
    assert all(r["target"] == 0.40 for r in rows)
    s = summary(rows)
    assert s["mean_ratio"] == pytest.approx(0.275) and s["apart"] and s["reached"] == 3
    slow = [_run("muon/split", 2e-2, s, [(0, 0.7), (3000, 0.41)]) for s in range(3)]
    s = summary(race(base, slow, 3e-3, 2e-2))
    assert s["mean_ratio"] is None and not s["apart"] and s["ratios"] == [None] * 3
    # a run at another lr is not the tuned one
    assert race(base, fast, 1e-3, 2e-2) == []


def test_main_writes_a_section_from_run_files(tmp_path):
    runs = [
        _run("adam", 1e-3, 0, [(0, 0.7), (500, 0.45)]),
        _run("adam", 3e-3, 0, [(0, 0.7), (500, 0.41), (1000, 0.40)]),
        _run("adam", 1e-2, 0, [(0, 0.7), (500, 0.44)]),
        _run("adam", 3e-3, 1, [(0, 0.7), (750, 0.42)]),
        _run("muon/split", 2e-2, 0, [(0, 0.7), (500, 0.38)]),
        _run("muon/split", 2e-2, 1, [(0, 0.7), (250, 0.43), (500, 0.41)]),
    ]
    path = tmp_path / "runs.json"
    path.write_text(json.dumps(runs))
    assert load_runs([path]) == json.loads(json.dumps(runs))  # tuples come back as lists
    md, out = tmp_path / "results.md", tmp_path / "race.json"
    main(["--runs", str(path), "--no-step-cost", "--write", str(md), "--json", str(out)])
    text = md.read_text()
    assert "<!-- report:race-npr_bn:begin -->" in text
    assert "| adam | 0.001: 0.45, 0.003: 0.4, 0.01: 0.44 | 0.003 | no |" in text
    assert "| 0 | 0.4 | 1000 (1000) | 500 (500) | 0.50 | 0.38 |" in text
    assert "| 1 | 0.42 | 750 (750) | 500 (500) | 0.67 | 0.41 |" in text
    assert [r["seed"] for r in json.loads(out.read_text())["rows"]] == [0, 1]


def test_a_candidate_without_runs_or_a_bad_record_is_a_usage_error(tmp_path, capsys):
    path = tmp_path / "runs.json"
    path.write_text(json.dumps([_run("adam", 1e-3, 0, [(0, 0.7), (500, 0.45)])]))
    with pytest.raises(SystemExit):  # a typo: "muon" for "muon/split"
        main(["--runs", str(path), "--candidate", "muon", "--no-step-cost"])
    assert "no run of npr_bn with muon" in capsys.readouterr().err
    path.write_text("not json")
    with pytest.raises(SystemExit):
        main(["--runs", str(path), "--no-step-cost"])
    assert "Traceback" not in capsys.readouterr().err


def test_two_records_of_one_seed_are_refused_whatever_their_order(tmp_path, capsys):
    # a rerun of seed 1 beside its first run: the race kept whichever was listed last
    base = [_run("adam", 3e-3, s, [(0, 0.7), (1000, 0.40)]) for s in range(2)]
    first = _run("muon/split", 2e-2, 1, [(0, 0.7), (500, 0.39)])
    rerun = _run("muon/split", 2e-2, 1, [(0, 0.7), (750, 0.39)])
    cand = [_run("muon/split", 2e-2, 0, [(0, 0.7), (500, 0.39)])]
    for pair in ([first, rerun], [rerun, first]):
        with pytest.raises(ValueError, match="two runs of muon/split at lr 0.02 on seed 1"):
            race(base, cand + pair, 3e-3, 2e-2)
    path = tmp_path / "runs.json"
    path.write_text(json.dumps([*base, *cand, first, rerun]))
    with pytest.raises(SystemExit) as exit_info:
        main(["--runs", str(path), "--tuning-seed", "0", "--no-step-cost"])
    assert exit_info.value.code == 2
    assert "two runs of muon/split at lr 0.02 on seed 1: keep one" in capsys.readouterr().err
    # one seed at several lrs is a grid, not a duplicate
    grid = [*cand, _run("muon/split", 1e-2, 0, [(0, 0.7), (500, 0.41)])]
    assert [r["seed"] for r in race(base, grid, 3e-3, 2e-2)] == [0]


def test_step_costs_time_both_optimizers_on_the_tiny_benchmark(tmp_path):
    from experiments.detector_race import step_costs

    costs = step_costs(
        "npr_bn", {"adam": 3e-3, "muon/split": 2e-2}, samples=2, span=1, batch_size=8,
        tiny=True, cache_dir=str(tmp_path),
    )  # fmt: skip
    per = costs["optimizers"]
    assert set(per) == {"adam", "muon/split"}
    assert all(v["median_s"] > 0 and len(v["samples_s"]) == 2 for v in per.values())


def test_the_step_cost_trains_the_runs_loss_and_heads(tmp_path):
    """A one-class detector's step is its margin cross-entropy; with family attribution the
    step is the attribution's loss and its head is among the stepped parameters; the method
    says what the step holds."""
    from assocmem.forensic.data import BenchmarkConfig, build_benchmark
    from assocmem.forensic.data.stream import TrainStream
    from assocmem.forensic.detector_loss import detector_loss
    from assocmem.forensic.models.attribution import FamilyAttribution
    from assocmem.forensic.models.one_class import margin_bce, margin_of
    from experiments.detector_race import FixedBatches, build, step_costs

    bench = build_benchmark(BenchmarkConfig.tiny(), str(tmp_path), progress=False)
    stream = TrainStream(bench, ("ae_nearest", "double_jpeg"), batch_size=8, seed=0)
    batch = next(iter(stream))
    torch.manual_seed(0)
    model = build("npr_dct_oc", 32).train()
    assert margin_of(model) > 0
    plain = FixedBatches(model, [batch])

    def seeded(loss):  # the same dropout masks for both sides
        torch.manual_seed(1)
        return loss()

    expect = seeded(lambda: margin_bce(model(batch[0]), batch[1], margin_of(model)))
    assert torch.allclose(seeded(lambda: plain.train_loss(0)), expect)
    attribution = FamilyAttribution(model, list(stream.family_codes.values()), 3.0)
    task = FixedBatches(model, [batch], attribution=attribution)
    expect = seeded(lambda: attribution.loss(batch[0], batch[1], batch[2]))
    assert torch.allclose(seeded(lambda: task.train_loss(0)), expect)
    stepped = {id(p) for p in task.parameters()}
    assert id(attribution.attribution_weight) in stepped and stepped >= {
        id(p) for p in model.parameters()
    }
    costs = step_costs(
        "npr_dct_oc", {"adam": 1e-3}, samples=1, span=1, batch_size=8, tiny=True,
        cache_dir=str(tmp_path), recipe={"attribution": 3.0, "paired": True},
    )  # fmt: skip
    assert "with family attribution 3, paired batches, batch 8" in costs["method"]
    assert costs["optimizers"]["adam"]["median_s"] > 0
    # the reals' logit pairing: the step is detector_loss's with the twins the runs had
    twinned = next(iter(TrainStream(bench, ("ae_nearest",), batch_size=8, seed=0, real_twins=True)))
    task = FixedBatches(model, [twinned], attribution=attribution, real_consistency=2.0)
    expect = seeded(
        lambda: detector_loss(model, twinned, attribution=attribution, real_consistency=2.0)
    )
    assert torch.allclose(seeded(lambda: task.train_loss(0)), expect)
    assert not torch.allclose(expect, seeded(lambda: attribution.loss(*twinned[:3])))
    costs = step_costs(
        "npr_dct_oc", {"adam": 1e-3}, samples=1, span=1, batch_size=8, tiny=True,
        cache_dir=str(tmp_path), recipe={"real_consistency": 1.0},
    )  # fmt: skip
    assert "with real consistency 1, batch 8" in costs["method"]


def test_step_costs_in_fresh_processes_report_each_processes_ratio(tmp_path):
    """Two fresh processes: per optimizer the median of the processes' medians, each process's
    own ratio to Adam, and the section gives their median and range (and the time ratio's)."""
    import statistics

    from experiments.detector_race import markdown, step_costs_in_processes

    costs = step_costs_in_processes(
        "npr_bn", {"adam": 3e-3, "muon/split": 2e-2}, processes=2, threads=1, samples=2,
        span=1, batch_size=8, tiny=True, cache_dir=str(tmp_path),
    )  # fmt: skip
    assert costs["processes"] == 2 and "2 fresh processes" in costs["method"]
    adam, muon = (costs["optimizers"][k] for k in ("adam", "muon/split"))
    assert len(adam["process_medians_s"]) == 2
    assert muon["median_s"] == statistics.median(muon["process_medians_s"])
    ratios = costs["ratios"]["muon/split"]
    medians = zip(muon["process_medians_s"], adam["process_medians_s"], strict=True)
    expect = [m / a for m, a in medians]
    assert ratios == pytest.approx(expect) and costs["ratios"]["adam"] == [1.0, 1.0]
    rows = [{"seed": 0, "target": 0.4, "baseline_steps": 1000, "baseline_run": 1000,
             "candidate_steps": 500, "candidate_run": 500, "candidate_best": 0.39}]  # fmt: skip
    grids = {"adam": (1e-3, {1e-3: 0.4}, None), "muon/split": (2e-2, {2e-2: 0.39}, None)}
    text = markdown("npr_bn", "muon/split", grids, rows, costs, "`cmd`", 0)
    low, high = min(ratios), max(ratios)
    assert f"({statistics.median(ratios):.2f}×, range {low:.2f}–{high:.2f}×)" in text
    assert f"(range {0.5 * low:.2f}–{0.5 * high:.2f}×)." in text
    with pytest.raises(ValueError, match="processes"):
        step_costs_in_processes("npr_bn", {"adam": 1e-3}, processes=0, threads=1, samples=1,
                                span=1)  # fmt: skip


def test_build_knows_the_detectors_and_the_fine_tuned_vit():
    from experiments.detector_race import build

    assert type(build("npr_bn", 32)).__name__ == "NPR"
    vit = build("vit/frequency", 32)
    assert vit(torch.rand(2, 3, 32, 32)).shape == (2,)
    with pytest.raises(ValueError, match="unknown model"):
        build("vit/nonsense", 32)


def test_build_knows_the_masked_pretrainer_and_its_step_cost_uses_its_own_loss(tmp_path):
    from experiments.detector_race import build, step_costs

    pretrainer = build("vit/frequency-pretrain", 32)
    assert pretrainer(torch.rand(2, 3, 32, 32)).dim() == 0  # its forward is the loss
    with pytest.raises(ValueError, match="unknown model"):
        build("vit/none-pretrain", 32)  # the "none" arm does not pretrain
    costs = step_costs(
        "vit/frequency-pretrain", {"adam": 3e-3, "muon/split": 2e-2}, samples=1, span=1,
        batch_size=8, tiny=True, cache_dir=str(tmp_path),
    )  # fmt: skip
    assert all(v["median_s"] > 0 for v in costs["optimizers"].values())


def test_time_to_target_compares_the_same_seeds():
    """A seed the candidate never reached leaves Adam's time on it out too: Adam 1000 and
    3000 steps, the candidate 500 on the first seed only -> 500 x 2 s / (1000 x 1 s) = 1.00x."""
    from experiments.detector_race import markdown

    rows = [
        {"seed": 0, "target": 0.4, "baseline_steps": 1000, "baseline_run": 1000,
         "candidate_steps": 500, "candidate_run": 500, "candidate_best": 0.39},
        {"seed": 1, "target": 0.4, "baseline_steps": 3000, "baseline_run": 3000,
         "candidate_steps": None, "candidate_run": 3000, "candidate_best": 0.41},
    ]  # fmt: skip
    costs = {"method": "m", "optimizers": {"adam": {"median_s": 1.0}, "muon": {"median_s": 2.0}}}
    grids = {"adam": (1e-3, {1e-3: 0.4}, None), "muon": (1e-2, {1e-2: 0.39}, None)}
    text = markdown("vit/frequency-pretrain", "muon", grids, rows, costs, "`cmd`", 0)
    assert "Masked pretraining task" in text
    assert "Adam 1000 s, muon 1000 s (mean over the 1 of 2 seeds muon reached it on): 1.00×" in text


def test_another_candidate_gets_its_own_section(tmp_path):
    from experiments.detector_race import section_name

    assert section_name("vit/frequency") == "race-vit-frequency"  # the first races keep theirs
    assert section_name("npr_bn", "muon_delta/split") == "race-npr_bn-muon_delta-split"
    runs = [
        _run("adam", 3e-3, 0, [(0, 0.7), (500, 0.41)]),
        _run("muon_delta/split", 5e-3, 0, [(0, 0.7), (250, 0.40)]),
    ]
    path, md = tmp_path / "runs.json", tmp_path / "results.md"
    path.write_text(json.dumps(runs))
    main(["--runs", str(path), "--candidate", "muon_delta/split", "--no-step-cost",
          "--write", str(md)])  # fmt: skip
    text = md.read_text()
    assert "<!-- report:race-npr_bn-muon_delta-split:begin -->" in text
    assert "| 0 | 0.41 | 500 (500) | 250 (250) | 0.50 | 0.4 |" in text


def test_runs_on_a_weight_average_race_among_themselves_in_their_own_section(tmp_path):
    from experiments.detector_race import section_name

    plain = [
        _run("adam", 3e-3, 0, [(0, 0.7), (500, 0.41)]),
        _run("muon_delta/split", 5e-3, 0, [(0, 0.7), (250, 0.40)]),
    ]
    averaged = [
        {**_run("adam", 3e-3, 0, [(0, 0.7), (750, 0.36)]), "average": 0.995},
        {**_run("muon_delta/split", 5e-3, 0, [(0, 0.7), (250, 0.38), (500, 0.35)]),
         "average": 0.995},
    ]  # fmt: skip
    assert select(plain + averaged, "npr_bn", "adam") == [plain[0]]
    assert select(plain + averaged, "npr_bn", "adam", average=0.995) == [averaged[0]]
    assert section_name("npr_bn", "muon/split", 0.995) == "race-npr_bn-muon-split-ema0.995"
    path, md = tmp_path / "runs.json", tmp_path / "results.md"
    path.write_text(json.dumps(plain + averaged))
    main(["--runs", str(path), "--candidate", "muon_delta/split", "--average", "0.995",
          "--no-step-cost", "--write", str(md)])  # fmt: skip
    text = md.read_text()
    assert "<!-- report:race-npr_bn-muon_delta-split-ema0.995:begin -->" in text
    assert "weight average 0.995" in text and "moving average of its weights" in text
    assert "| 0 | 0.36 | 750 (750) | 500 (500) | 0.67 | 0.35 |" in text


def test_a_finer_evaluation_grid_races_in_its_own_section_and_never_mixes_resolutions(tmp_path):
    from experiments.detector_race import evaluation_interval, section_name

    every = {"command": "python -m experiments.pretraining_study --eval-every 125 --seeds 0"}
    assert evaluation_interval(every) == 125
    assert evaluation_interval({"eval_every": 50, **every}) == 50  # the record's own entry
    assert evaluation_interval({}) == 250  # the CLIs' default, as in the first records
    assert (
        section_name("npr_bn", "muon/split", 0.995, 125)
        == "race-npr_bn-muon-split-ema0.995-every125"
    )
    base = {**_run("adam", 3e-3, 0, [(0, 0.7), (125, 0.5), (250, 0.41)]), **every}
    fine = {**_run("muon/split", 2e-2, 0, [(0, 0.7), (125, 0.40)]), **every}
    coarse = _run("muon/split", 2e-2, 0, [(0, 0.7), (250, 0.40)])
    assert [r["candidate_steps"] for r in race([base], [fine], 3e-3, 2e-2)] == [125]
    with pytest.raises(ValueError, match="one resolution"):
        race([base], [coarse], 3e-3, 2e-2)
    path, md = tmp_path / "runs.json", tmp_path / "results.md"
    path.write_text(json.dumps([base, fine]))
    main(["--runs", str(path), "--no-step-cost", "--write", str(md)])
    text = md.read_text()
    assert "<!-- report:race-npr_bn-every125:begin -->" in text
    assert "evaluated every 125 steps" in text and "(every 125)" in text
    path.write_text(json.dumps([base, coarse]))
    with pytest.raises(SystemExit):
        main(["--runs", str(path), "--no-step-cost"])


def test_a_fixed_budget_race_takes_only_full_runs_and_gets_its_own_section(tmp_path):
    """Runs of a fixed budget: Adam's target is its best over the whole budget (here at step
    1500, after a level stretch where patience 2 would have stopped it at 1000), and a run that
    stopped early or ran another length is refused."""
    from experiments.detector_race import check_budget, section_name

    curve = [(0, 0.7), (250, 0.45), (500, 0.42), (750, 0.43), (1000, 0.44), (1250, 0.43),
             (1500, 0.41), (1750, 0.42), (2000, 0.42)]  # fmt: skip
    base = {**_run("adam", 1e-3, 0, curve), "stopped_early": False, "patience": 1000}
    cand = {**_run("muon/split", 2e-2, 0, [(0, 0.7), (250, 0.43), (500, 0.40)]),
            "stopped_early": False, "steps": 2000, "patience": 1000}  # fmt: skip
    check_budget([base, cand], 2000)
    with pytest.raises(ValueError, match="ran 1500 steps"):
        check_budget([base, {**cand, "steps": 1500}], 2000)
    with pytest.raises(ValueError, match="stopped early"):
        check_budget([{**base, "stopped_early": True}], 2000)
    assert section_name("npr_bn", "muon/split", 0.995, 125, 6000) == (
        "race-npr_bn-muon-split-ema0.995-every125-budget6000"
    )
    path, md = tmp_path / "runs.json", tmp_path / "results.md"
    path.write_text(json.dumps([base, cand]))
    main(["--runs", str(path), "--budget", "2000", "--no-step-cost", "--write", str(md)])
    text = md.read_text()
    assert "<!-- report:race-npr_bn-budget2000:begin -->" in text
    assert "a fixed 2000 steps" in text and "without early stopping" in text
    title = next(line for line in text.splitlines() if line.startswith("## "))
    assert "patience" not in title  # the budget's patience only turns early stopping off
    assert "early stopping restores it" not in text
    assert "| 0 | 0.41 | 1500 (2000) | 500 (2000) | 0.33 | 0.4 |" in text
    path.write_text(json.dumps([base, {**cand, "stopped_early": True, "steps": 500}]))
    with pytest.raises(SystemExit):
        main(["--runs", str(path), "--budget", "2000", "--no-step-cost"])


def test_a_race_takes_runs_of_one_recipe_and_its_title_says_what_they_share(tmp_path):
    """Runs trained with family attribution, paired batches or another patience are another
    recipe: a race that would set them against the rest is refused, and one made of them
    says so in its title."""
    from experiments.detector_race import recipe_details

    recipe = {"attribution": 3.0, "patience": 8, "average": 0.995}
    runs = [
        {**_run("adam", 1e-3, 0, [(0, 0.7), (500, 0.41)]), **recipe},
        {**_run("muon_delta/split", 5e-3, 0, [(0, 0.7), (250, 0.40)]), **recipe},
    ]
    assert recipe_details(runs) == ["family attribution 3", "patience 8"]
    # a run recorded before the entry: its command says the patience
    legacy = {k: v for k, v in runs[1].items() if k != "patience"}
    assert recipe_details([runs[0], {**legacy, "command": "x --patience 8"}])[1] == "patience 8"
    for key, other in (("attribution", 0.0), ("paired", True), ("patience", 4)):
        with pytest.raises(ValueError, match=f"differ in {key}"):
            recipe_details([runs[0], {**runs[1], key: other}])
    path, md = tmp_path / "runs.json", tmp_path / "results.md"
    path.write_text(json.dumps(runs))
    main(["--runs", str(path), "--model", "npr_bn", "--candidate", "muon_delta/split",
          "--average", "0.995", "--no-step-cost", "--write", str(md)])  # fmt: skip
    text = md.read_text()
    assert "weight average 0.995, family attribution 3, patience 8)" in text
    assert "they train the family-attribution head beside the detector" in text
    path.write_text(json.dumps([runs[0], {**runs[1], "paired": True}]))
    with pytest.raises(SystemExit):
        main(["--runs", str(path), "--candidate", "muon_delta/split", "--average", "0.995",
              "--no-step-cost"])  # fmt: skip


def test_a_grid_tuned_at_a_shorter_patience_races_its_seeds_at_the_longer_one(tmp_path):
    """Both optimizers' lr grids at patience 4 and their tuned-lr seeds at patience 8 (as the
    races at 125-step evaluations ran): one recipe, titled by the raced runs' patience. Raced
    runs of different patience are refused; so are grids of another family attribution."""

    def run(optimizer, lr, seed, patience, best):
        return {**_run(optimizer, lr, seed, [(0, 0.7), (500, best)]), "patience": patience}

    runs = [
        run("adam", 1e-3, 0, 8, 0.40), run("adam", 1e-3, 1, 8, 0.41),
        run("adam", 3e-3, 0, 4, 0.45), run("muon/split", 2e-2, 0, 8, 0.38),
        run("muon/split", 2e-2, 1, 8, 0.39), run("muon/split", 5e-3, 0, 4, 0.42),
    ]  # fmt: skip
    path, md = tmp_path / "runs.json", tmp_path / "results.md"
    path.write_text(json.dumps(runs))
    main(["--runs", str(path), "--no-step-cost", "--write", str(md)])
    assert "(`npr_bn`, muon/split, patience 8)" in md.read_text()
    for k, changed in ((4, {"patience": 4}), (5, {"attribution": 1.0})):
        path.write_text(json.dumps([r if i != k else {**r, **changed} for i, r in enumerate(runs)]))
        with pytest.raises(SystemExit):
            main(["--runs", str(path), "--no-step-cost"])


def test_the_section_says_the_race_without_the_tuning_seed_and_unequal_grids(tmp_path):
    """The tuning seed chose both lrs on its own runs: its race scores the tuning on itself, so
    the section gives the mean ratio without it too (seed 0: 0.2, seeds 1 and 2: 1.0 and 0.6 ->
    0.60x over all, 0.80x without); a grid of another size than Adam's is said. The costs can
    come from a race record instead of being measured (--costs-from)."""
    from experiments.detector_race import markdown

    def row(seed, base, cand):
        return {"seed": seed, "target": 0.4, "baseline_steps": base, "baseline_run": base,
                "candidate_steps": cand, "candidate_run": cand, "candidate_best": 0.39}  # fmt: skip

    rows = [row(0, 1000, 200), row(1, 1000, 1000), row(2, 1000, 600)]
    grids = {"adam": (1e-3, {1e-3: 0.4, 3e-3: 0.5}, None),
             "muon": (1e-2, {1e-2: 0.39, 2e-2: 0.4, 5e-2: 0.5}, None)}  # fmt: skip
    text = markdown("npr_bn", "muon", grids, rows, None, "`cmd`", 0)
    assert "seeds that reached it: 0.60×" in text
    assert "Without seed 0, which chose both learning rates" in text
    assert "mean ratio over the 2 of 2 seeds that reached it: 0.80×" in text
    assert "not the same size (adam 2 learning rates, muon 3 learning rates)" in text
    equal = {"adam": grids["adam"], "muon": (1e-2, {1e-2: 0.39, 2e-2: 0.4}, None)}
    text = markdown("npr_bn", "muon", equal, rows[1:], None, "`cmd`", 0)  # seed 0 not raced
    assert "Without seed" not in text and "not the same size" not in text

    runs = [
        _run("adam", 3e-3, 0, [(0, 0.7), (500, 0.41)]),
        _run("muon/split", 5e-3, 0, [(0, 0.7), (250, 0.40)]),
    ]
    path, record = tmp_path / "runs.json", tmp_path / "race.json"
    path.write_text(json.dumps(runs))
    costs = {"method": "recorded", "optimizers": {"adam": {"median_s": 0.01},
                                                  "muon/split": {"median_s": 0.02}}}  # fmt: skip
    record.write_text(json.dumps({"rows": [], "costs": costs}))
    out = tmp_path / "again.json"
    main(["--runs", str(path), "--costs-from", str(record), "--json", str(out)])
    assert json.loads(out.read_text())["costs"] == costs
    record.write_text(json.dumps({"rows": [], "costs": {"optimizers": {"adam": {}}}}))
    with pytest.raises(SystemExit):
        main(["--runs", str(path), "--costs-from", str(record)])


def test_seeds_a_race_leaves_out_are_named_and_diverged_runs_are_counted():
    """A seed one optimizer lacked at its tuned lr was dropped without a word (the mean then of
    fewer seeds), and a raced run that diverged before an evaluation was a traceback."""
    from experiments.detector_race import unraced_seeds

    curve = [(0, 0.7), (250, 0.5), (500, 0.4)]
    adam = [_run("adam", 1e-3, s, curve) for s in (0, 1, 2, 3)]
    adam[3] = {**adam[3], "best_val_loss": None, "best_step": None}  # no target
    cand = [_run("muon", 5e-3, s, [(0, 0.7), (250, 0.39)]) for s in (0, 1, 3)]
    cand[1] = {**cand[1], "best_val_loss": None, "val_curve": [(0, 0.7), (250, None)]}
    rows = race(adam, cand, 1e-3, 5e-3)
    assert [r["seed"] for r in rows] == [0, 1]
    assert rows[1]["candidate_steps"] is None and rows[1]["candidate_best"] is None
    assert unraced_seeds(adam, cand, 1e-3, 5e-3) == [
        "seed 2: no candidate run at lr 0.005",
        "seed 3: Adam's run diverged before an evaluation (no target)",
    ]
    with pytest.raises(ValueError, match="every run on the tuning seed 0 diverged"):
        tune([{**_run("adam", 1e-3, 0, curve), "best_val_loss": None}], seed=0)


def test_a_run_whose_command_had_lr_drops_is_not_raced_as_constant_lr():
    from experiments.detector_race import capped_runs

    old = {**_run("adam", 1e-3, 1, [(0, 0.7), (250, 0.4)]), "command": "x --lr-drops 2"}
    del old["lr_drops"]  # records made before the entry: the command says it
    assert select([old], "npr_bn", "adam") == []
    assert select([old], "npr_bn", "adam", lr_drops=2) == [old]
    # a run stopped by its cap at its best: named, its best is where the cap cut it
    capped = {**_run("adam", 1e-3, 0, [(0, 0.7), (250, 0.4)]), "stopped_early": False}
    stopped = {**capped, "seed": 1, "stopped_early": True}
    assert capped_runs([capped, stopped]) == ["adam seed 0 (250 steps)"]


def test_a_section_that_could_not_be_replaced_is_refused_before_the_step_cost(
    tmp_path, capsys, monkeypatch
):
    import experiments.detector_race as module

    curve = [(0, 0.7), (250, 0.5), (500, 0.4)]
    runs = [_run("adam", 1e-3, 0, curve), _run("muon/split", 5e-3, 0, curve)]
    (tmp_path / "runs.json").write_text(json.dumps(runs))
    (tmp_path / "r.md").write_text("<!-- report:race-npr_bn:begin -->\n")
    measured = []
    monkeypatch.setattr(module, "step_costs", lambda *a, **k: measured.append(1))
    with pytest.raises(SystemExit):
        main(["--runs", str(tmp_path / "runs.json"), "--write", str(tmp_path / "r.md")])
    assert "1 begin and 0 end markers" in capsys.readouterr().err and not measured


def test_a_race_adam_won_at_step_0_and_bad_counts_are_usage_errors(tmp_path, capsys, monkeypatch):
    # the ratio divided by zero after the step cost was measured; --samples/--span/--threads 0
    # were tracebacks after the records were read (an audit)
    import experiments.detector_race as detector_race

    runs = [
        _run("adam", 3e-3, 0, [(0, 0.7), (500, 0.41)]),
        _run("muon/split", 2e-2, 0, [(0, 0.7), (500, 0.38)]),
    ]
    path = tmp_path / "runs.json"
    path.write_text(json.dumps(runs))
    for option in ("--samples", "--span", "--threads", "--processes"):
        with pytest.raises(SystemExit) as exit_info:
            main(["--runs", str(path), option, "0"])
        assert exit_info.value.code == 2
        assert f"{option} must be >= 1, got 0" in capsys.readouterr().err
    # Adam against itself (ratio 1.00), and two sources of step costs (the file won)
    for argv, says in ((["--candidate", "adam"], "races the baseline against itself"),
                       (["--costs-from", str(path), "--no-step-cost"], "give one")):  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            main(["--runs", str(path), *argv])
        assert exit_info.value.code == 2 and says in capsys.readouterr().err
    real_race = detector_race.race
    monkeypatch.setattr(
        detector_race,
        "race",
        lambda *a: [{**row, "baseline_steps": 0} for row in real_race(*a)],
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["--runs", str(path), "--no-step-cost"])
    assert exit_info.value.code == 2
    assert "seeds [0]: Adam's best validation loss is at step 0" in capsys.readouterr().err


def test_a_rerender_may_write_its_record_over_the_costs_it_read(tmp_path):
    # the documented Regenerate lines pass one file to --json and --costs-from; the clash
    # check refused them
    runs = [
        _run("adam", 3e-3, 0, [(0, 0.7), (500, 0.41)]),
        _run("muon/split", 2e-2, 0, [(0, 0.7), (500, 0.38)]),
    ]
    path, record = tmp_path / "runs.json", tmp_path / "race.json"
    path.write_text(json.dumps(runs))
    main(["--runs", str(path), "--no-step-cost", "--json", str(record)])
    first = json.loads(record.read_text())
    main(["--runs", str(path), "--json", str(record), "--costs-from", str(record)])
    assert json.loads(record.read_text())["rows"] == first["rows"]


def test_the_step_cost_is_measured_at_the_runs_batch_size(tmp_path, capsys, monkeypatch):
    # it was measured at 64 whatever the runs trained with, and runs of two batch sizes were
    # raced against each other (an audit)
    import experiments.detector_race as detector_race

    runs = [
        {**_run("adam", 3e-3, 0, [(0, 0.7), (500, 0.41)]), "batch_size": 8},
        {**_run("muon/split", 2e-2, 0, [(0, 0.7), (500, 0.38)]), "batch_size": 8},
    ]
    path = tmp_path / "runs.json"
    path.write_text(json.dumps(runs))
    measured = {}

    def costs(model, lrs, **options):
        measured.update(options)
        return {"method": "m", "optimizers": {name: {"median_s": 0.01} for name in lrs}}

    monkeypatch.setattr(detector_race, "step_costs", costs)
    main(["--runs", str(path)])
    assert measured["batch_size"] == 8
    runs[1]["batch_size"] = 64
    path.write_text(json.dumps(runs))
    with pytest.raises(SystemExit):
        main(["--runs", str(path)])
    assert "the raced runs differ in batch size [8, 64]" in capsys.readouterr().err
    # records from before the entry: the command's --batch-size, else the default 64
    from experiments.detectors import batch_size_of

    assert batch_size_of({"command": "x --batch-size 16"}) == 16
    assert batch_size_of({"command": "x"}) == 64


def test_runs_of_another_weight_average_are_named_as_such(tmp_path, capsys):
    # "no run ... with adam (optimizers there: ['adam'])" named the optimizers alone, the one
    # asked for among them, when --average matched none of its runs (an audit)
    runs = [_run("adam", 3e-3, 0, [(0, 0.7), (500, 0.41)]),
            _run("muon/split", 2e-2, 0, [(0, 0.7), (500, 0.38)])]  # fmt: skip
    path = tmp_path / "runs.json"
    path.write_text(json.dumps(runs))
    with pytest.raises(SystemExit):
        main(["--runs", str(path), "--average", "0.995", "--no-step-cost"])
    err = capsys.readouterr().err
    assert "no run of npr_bn with adam evaluated on a weight average of decay 0.995" in err
    assert "theirs were the weights" in err
    with pytest.raises(SystemExit):
        main(["--runs", str(path), "--candidate", "muon", "--no-step-cost"])
    assert "no run of npr_bn with muon in --runs (optimizers there" in capsys.readouterr().err
