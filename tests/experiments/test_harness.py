"""The hydra harness: every config composes, a smoke comparison runs and is reported."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from assocmem.storage import strict_json
from experiments.loop import first_reaching, train_run
from experiments.tasks.classic import DigitsMLP, Quadratic, Rosenbrock

CONF = Path(__file__).resolve().parents[2] / "experiments" / "conf"
REPO = CONF.parents[1]


def names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("optimizer", names("optimizer"))
def test_every_optimizer_config_composes_and_builds(optimizer):
    with initialize_config_dir(str(CONF), version_base=None):
        cfg = compose("config", overrides=[f"optimizer={optimizer}", "task=quadratic"])
    factory = instantiate(cfg.optimizer.factory)
    task = instantiate(cfg.task.build, seed=0)
    opt = factory(task.parameters())
    assert opt.param_groups[0]["lr"] == cfg.optimizer.lr


def split_optimizer(optimizer: str, task: str, cache):
    from experiments.run import optimizer_factory

    overrides = [f"optimizer={optimizer}", f"task={task}", "data=tiny"]
    overrides += [f"data.cache_dir={cache}", "task.build.pretrained.steps=2"] * (
        task == "detect_head"
    )
    with initialize_config_dir(str(CONF), version_base=None):
        cfg = compose("config", overrides=overrides)
    task_obj = instantiate(cfg.task.build, seed=0)
    return cfg, task_obj, optimizer_factory(cfg, task_obj)(task_obj.parameters())


@pytest.mark.parametrize(
    "optimizer",
    [
        "muon",
        "cms_m3",
        "cms_m3_pe",
        "muon_pe",
        "muon_pe4",
        "muon_delta",
        "muon_rownorm",
        "muon_rest1",
    ],
)
def test_muon_style_configs_step_hidden_matrices_and_give_the_rest_to_adam(optimizer, tmp_path):
    cfg, task, opt = split_optimizer(optimizer, "digits_mlp", tmp_path)
    hidden, rest = opt.param_groups
    assert hidden["name"] == "hidden"
    assert [id(p) for p in hidden["params"]] == [id(task.model[0].weight)]
    assert hidden["memory"] == cfg.optimizer.factory.memory and hidden["lr"] == cfg.optimizer.lr
    # The head (last Linear, weight and bias) and the biases: Adam at lr * rest_lr_ratio.
    assert {id(p) for p in rest["params"]} == {
        id(task.model[0].bias), id(task.model[2].weight), id(task.model[2].bias)
    }  # fmt: skip
    assert rest["memory"] == "adam" and rest["betas"] == [0.9, 0.95]
    ratio = 1.0 if optimizer == "muon_rest1" else 0.1
    assert cfg.optimizer.split.rest_lr_ratio == ratio
    assert rest["lr"] == pytest.approx(cfg.optimizer.lr * ratio, rel=1e-12)
    # the option a muon_* config names reaches the hidden group
    for key, value in cfg.optimizer.factory.items():
        if key not in ("_target_", "_partial_", "_convert_", "memory", "lr"):
            assert hidden[key] == value, key


def test_deep_digits_task_gives_muon_three_hidden_matrices(tmp_path):
    cfg, task, opt = split_optimizer("muon", "digits_mlp_deep", tmp_path)
    hidden, _ = opt.param_groups
    assert [tuple(p.shape) for p in hidden["params"]] == [(128, 64), (128, 128), (128, 128)]
    assert task.model[-1].out_features == 10


def test_cms_m3_config_is_m3_config():
    from assocmem.optim.presets.cms import m3_config

    with initialize_config_dir(str(CONF), version_base=None):
        cfg = compose("config", overrides=["optimizer=cms_m3"])
    opt = instantiate(cfg.optimizer.factory)([torch.nn.Parameter(torch.ones(2, 2))])
    group = opt.param_groups[0]
    assert {k: tuple(v) if isinstance(v, list) else v for k, v in m3_config().items()} == {
        k: tuple(group[k]) if isinstance(group[k], list) else group[k] for k in m3_config()
    }


def test_a_split_on_a_task_with_a_frozen_encoder_trains_only_its_head(tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "forensic-cache"  # shared with the tests below
    _, task, opt = split_optimizer("muon", "detect_head", cache)
    grouped = [p for g in opt.param_groups for p in g["params"]]
    assert {id(p) for p in grouped} == {id(p) for p in task.parameters()}
    assert [g["name"] for g in opt.param_groups] == ["rest"]  # a linear probe is all head


@pytest.mark.parametrize("task", names("task"))
def test_every_task_config_composes(task):
    with initialize_config_dir(str(CONF), version_base=None):
        cfg = compose("config", overrides=[f"task={task}"])
    assert cfg.task.steps >= 0 and cfg.task.eval_every > 0  # 0 steps: the no-pretraining floor


@pytest.mark.parametrize("experiment", names("experiment"))
def test_every_experiment_config_composes(experiment):
    with initialize_config_dir(str(CONF), version_base=None):
        cfg = compose("compare", overrides=[f"+experiment={experiment}"])
    assert set(cfg.optimizers) <= set(names("optimizer"))
    assert set(cfg.tasks) <= set(names("task"))


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: Quadratic(0, dim=0), "dim must be an integer >= 1"),
        (lambda: Quadratic(0, dim=2.5), "dim must be an integer >= 1"),
        (lambda: Quadratic(0, condition=-1.0), "condition must be finite >= 1"),  # was a math error
        (lambda: Quadratic(0, condition=math.inf), "condition must be finite >= 1"),
        (lambda: Quadratic(0, noise=-0.1), "noise must be a finite number >= 0"),
        (lambda: Rosenbrock(0, dim=1), "dim must be an integer >= 2"),  # an empty sum: loss 0
        (lambda: Rosenbrock(0, jitter=math.nan), "jitter must be a finite number >= 0"),
        (lambda: DigitsMLP(0, hidden=0), "hidden must be an integer >= 1"),
        (lambda: DigitsMLP(0, batch_size=True), "batch_size must be an integer >= 1"),
        (lambda: DigitsMLP(0, val_fraction=1.0), r"val_fraction must be in \(0, 1\)"),
        (lambda: DigitsMLP(0, val_fraction=1e-4), "val_fraction must be >= 1/1797"),  # empty val
    ],
)
def test_a_classic_task_refuses_build_values_it_cannot_train_on(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_a_bad_build_value_from_the_command_line_names_the_task_and_the_value(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "experiments.run", "task=quadratic", "optimizer=adam",
         "task.build.condition=-1", f"hydra.run.dir={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2
    assert "quadratic: condition must be finite >= 1, got -1" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1  # one line, not hydra's traceback


def test_a_refused_build_leaves_an_earlier_runs_files_in_its_folder(tmp_path):
    base = [sys.executable, "-m", "experiments.run", "task=quadratic", "task.steps=5",
            "progress=false", f"hydra.run.dir={tmp_path}"]  # fmt: skip
    subprocess.run(base, check=True, cwd=REPO, capture_output=True, timeout=120)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert {"config.yaml", "summary.json", "metrics.jsonl"} <= set(before)
    run = subprocess.run([*base, "task.build.condition=-1"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert run.returncode == 2
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    # config.yaml was written before the task was built: it described a run that never trained
    assert {k: v for k, v in after.items() if k in before} == before


def test_a_sweep_is_checked_job_by_job_before_its_first_job(tmp_path):
    sweep = [sys.executable, "-m", "experiments.run", "-m", "optimizer.lr=0.01,-1,0.1",
             "task.steps=5", "progress=false", f"hydra.sweep.dir={tmp_path / 'sweep'}"]  # fmt: skip
    run = subprocess.run(sweep, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "config error: optimizer.lr = -1: expected a finite number > 0"
    ]
    assert not (tmp_path / "sweep").exists()  # job 0 trained before, job 1 left a folder
    one = [sys.executable, "-m", "experiments.run", "optimizer.lr=-1", "progress=false",
           f"hydra.run.dir={tmp_path / 'one'}"]  # fmt: skip
    assert subprocess.run(one, cwd=REPO, capture_output=True, timeout=120).returncode == 2
    assert not (tmp_path / "one").exists()  # hydra made it (and .hydra/) before the check


def test_divergence_ends_the_run_cleanly(tmp_path):
    task = Quadratic(seed=0, dim=10, condition=100.0)
    summary = train_run(
        task, lambda ps: torch.optim.SGD(ps, lr=10.0), steps=200, eval_every=5, out_dir=tmp_path
    )
    assert summary["status"] == "diverged"
    assert summary["final"]["val_loss"] == math.inf

    # json.loads accepts NaN/Infinity, which strict parsers (jq) refuse
    saved = strict_json.loads((tmp_path / "summary.json").read_text())
    assert saved["status"] == "diverged"
    assert saved["final"]["val_loss"] is None and saved["best_val_loss"] is None
    # README: "its status says so and its message why" (the loop's message was dropped)
    assert saved["message"].startswith("non-finite ") and " at step " in saved["message"]
    for line in (tmp_path / "metrics.jsonl").open():
        strict_json.loads(line)  # the diverged step's loss is null


def test_first_reaching_finds_the_first_evaluation_below_target():
    history = [
        {"step": 0, "wall": 0.0, "val_loss": 3.0},
        {"step": 5, "wall": 1.0},
        {"step": 10, "wall": 2.0, "val_loss": 0.9},
        {"step": 15, "wall": 3.0, "val_loss": 0.5},
    ]
    assert first_reaching(history, 1.0) == (10, 2.0)
    assert first_reaching(history, 0.1) == (None, None)


def test_single_run_and_multirun_from_the_command_line(tmp_path):
    run = [sys.executable, "-m", "experiments.run"]
    common = ["task=quadratic", "task.steps=10", "task.eval_every=5", "progress=false"]
    one = [*run, *common, "optimizer=delta", "seed=1", f"hydra.run.dir={tmp_path}/one"]
    subprocess.run(one, check=True, cwd=REPO, capture_output=True)
    summary = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert summary["steps_done"] == 10 and (tmp_path / "one" / "metrics.jsonl").exists()
    sweep = [*run, "-m", *common, "optimizer=adam,momentum", f"hydra.sweep.dir={tmp_path}/multi"]
    subprocess.run(sweep, check=True, cwd=REPO, capture_output=True)
    assert len(list((tmp_path / "multi").glob("**/summary.json"))) == 2
    # a sweep over a key the folder name does not hold: each job keeps a folder of its own
    sweep = [*run, "-m", *common[:1], "task.steps=5,10", *common[2:], "optimizer=adam"]
    subprocess.run(
        [*sweep, f"hydra.sweep.dir={tmp_path}/steps"], check=True, cwd=REPO, capture_output=True
    )
    summaries = list((tmp_path / "steps").glob("**/summary.json"))
    assert sorted(json.loads(s.read_text())["steps_done"] for s in summaries) == [5, 10]


def test_smoke_comparison_and_report(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "experiments.compare", "+experiment=smoke", f"out_dir={tmp_path}"],
        check=True,
        cwd=REPO,
        capture_output=True,
    )
    for optimizer in ("adam", "delta"):
        protocol = json.loads((tmp_path / "quadratic" / optimizer / "protocol.json").read_text())
        # The same budget for both: the 2-point grid plus at most lr_extensions=1 extension,
        # which the rule takes only for an optimum on the edge.
        extensions = protocol["extensions"]
        assert len(protocol["grid"]) == 2 + len(extensions) and len(extensions) <= 1
        # a diverged grid point is written as null (strict JSON), read as an infinite loss
        grid = {float(lr): math.inf if v is None else v for lr, v in protocol["grid"].items()}
        best = min(grid, key=grid.get)
        assert protocol["best_lr"] == best
        if not extensions:
            assert protocol["edge"] is None
        assert len(list((tmp_path / "quadratic" / optimizer).glob("seed*/summary.json"))) == 2
    # delta's variants: both tuned on the tuning seed, the lower tuning loss evaluated.
    protocol = json.loads((tmp_path / "quadratic" / "delta" / "protocol.json").read_text())
    variants = protocol["variants"]
    assert set(variants) == {"delta", "momentum"}
    tuned = {c: math.inf if v["best_loss"] is None else v["best_loss"] for c, v in variants.items()}
    assert protocol["config"] == min(tuned, key=tuned.get)
    for seed_dir in (tmp_path / "quadratic" / "delta").glob("seed*"):
        run = OmegaConf.load(seed_dir / "config.yaml")
        assert run.optimizer.name == protocol["config"] and run.optimizer.lr == protocol["best_lr"]
    for config in variants:
        assert (tmp_path / "quadratic" / "delta" / "variants" / config / "tune").is_dir()
    costs = json.loads((tmp_path / "quadratic" / "step_cost.json").read_text())
    assert set(costs["optimizers"]) == {"adam", "delta"}
    assert all(len(c["samples_s"]) == 3 for c in costs["optimizers"].values())
    report = (tmp_path / "results.md").read_text()
    assert (
        "<!-- report:smoke:begin -->" in report and "| adam |" in report and "| delta |" in report
    )
    assert "step ms (IQR)" in report and "interleaved" in report and " ± " in report
    assert f"- `delta`: recommended `{protocol['config']}`" in report
    assert (tmp_path / "plots" / "smoke_quadratic.png").stat().st_size > 1000


def test_an_optimizer_that_diverged_at_every_lr_gets_its_row_and_the_command_its_files(
    tmp_path,
):
    # delta diverges at both lrs: nothing evaluated, so its protocol names no seed (it named
    # every seed, and the report refused the finished comparison: "has no run")
    from experiments.compare import compare
    from experiments.report import load_runs, write_report

    overrides = ["+experiment=smoke", f"out_dir={tmp_path}", "lr_factors=[1000,3000]",
                 "lr_extensions=0", "optimizers=[adam,delta]", "step_cost.samples=1"]  # fmt: skip
    with initialize_config_dir(str(CONF), version_base=None):
        cfg = compose("compare", overrides=overrides)
        root = compare(cfg, command="cmd")
    delta = json.loads((root / "quadratic" / "delta" / "protocol.json").read_text())
    assert delta["best_lr"] is None and delta["seeds"] == []
    markdown, plots = tmp_path / "my results.md", tmp_path / "plots"
    text = write_report(root, markdown, plots, "smoke").read_text()
    assert "| delta | all diverged | 2 pts, all diverged | — | 0/0 |" in text
    # the command that writes this section again names this file and folder, not docs/
    assert (
        f"this section alone from those runs: `python -m experiments.report {root} --name smoke "
        f"--markdown '{markdown}' --plots-dir {plots}`." in text
    )
    # a comparison recorded before: its all-diverged protocol named every seed
    (root / "quadratic" / "delta" / "protocol.json").write_text(
        json.dumps({**delta, "seeds": [0, 1]})
    )
    assert load_runs(root)["quadratic"]["delta"]["runs"] == []


def test_a_rerun_into_the_same_folder_reports_only_its_own_runs(tmp_path):
    # Two comparisons into one out_dir, the second with fewer seeds: its report must not count
    # the first one's seed 2, and a report that would mix two invocations is refused.
    from experiments.report import load_runs, replace_section

    def compare(*overrides):
        cmd = [sys.executable, "-m", "experiments.compare", "+experiment=smoke",
               f"out_dir={tmp_path}", *overrides]  # fmt: skip
        subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, timeout=300)

    compare("seeds=[0,1,2]")
    compare("seeds=[0,1]")
    runs = load_runs(tmp_path)["quadratic"]
    assert all(len(entry["runs"]) == 2 for entry in runs.values())
    protocol = runs["adam"]["protocol"]
    assert protocol["seeds"] == [0, 1] and protocol["baseline"] == "adam"
    # the thread count that set the step costs is part of the command (make test sets it)
    threads = os.environ.get("OMP_NUM_THREADS")
    prefix = f"OMP_NUM_THREADS={threads} " if threads else ""
    assert protocol["command"].startswith(prefix + "python -m experiments.compare")
    # the report of those runs alone takes the baseline and command they recorded
    from experiments.report import write_report

    alone = write_report(tmp_path, tmp_path / "alone.md", tmp_path / "plots", "smoke")
    assert f"Regenerate: `{protocol['command']}`" in alone.read_text()
    # a comparison stopped halfway (Ctrl-C while delta tuned): its plan is not marked complete
    # and delta has no protocol; the report said nothing and showed adam's row alone
    plan_file = tmp_path / "plan.json"
    plan = json.loads(plan_file.read_text())
    assert plan["complete"] is True and plan["optimizers"] == ["adam", "delta"]
    plan_file.write_text(json.dumps({**plan, "complete": False}))
    delta_protocol = tmp_path / "quadratic" / "delta" / "protocol.json"
    saved = delta_protocol.read_text()
    delta_protocol.unlink()
    with pytest.raises(ValueError, match="did not finish.*missing quadratic/delta"):
        load_runs(tmp_path)
    delta_protocol.write_text(saved)  # every protocol, but stopped before the end
    with pytest.raises(ValueError, match="did not finish"):
        load_runs(tmp_path)
    plan_file.write_text(json.dumps(plan))
    # a finished comparison with a record removed: the row was dropped, the baseline's read
    # "the baseline diverged", the step cost "not measured", each with exit 0 (an audit)
    for lost in ("quadratic/delta/protocol.json", "quadratic/adam/protocol.json",
                 "quadratic/step_cost.json"):  # fmt: skip
        record = tmp_path / lost
        saved = record.read_text()
        record.unlink()
        with pytest.raises(ValueError, match=f"finished but {lost} is missing"):
            load_runs(tmp_path)
        record.write_text(saved)
    load_runs(tmp_path)
    # an interrupted re-run: one optimizer's protocol from another invocation
    delta = tmp_path / "quadratic" / "delta" / "protocol.json"
    delta.write_text(json.dumps({**json.loads(delta.read_text()), "run_id": "another"}))
    with pytest.raises(ValueError, match="files of 2 comparisons"):
        load_runs(tmp_path)
    with pytest.raises(ValueError, match="no comparison"):
        load_runs(tmp_path / "nothing")
    # a file whose section has a begin marker and no end: refused, not cut short
    md = tmp_path / "orphan.md"
    md.write_text("# R\n<!-- report:smoke:begin -->\nold\n## Other\nkeep me\n")
    with pytest.raises(ValueError, match="1 begin and 0 end markers"):
        replace_section(md, "smoke", "new")
    assert "keep me" in md.read_text()


CLASSIC_TASKS = ("quadratic", "rosenbrock", "digits_mlp", "digits_mlp_deep")
FORENSIC_TASKS = [t for t in names("task") if t not in CLASSIC_TASKS]


@pytest.mark.parametrize("task", FORENSIC_TASKS)
def test_forensic_task_trains_and_reports_zero_shot(task, tmp_path_factory):
    """Every forensic task runs end to end on the tiny benchmark (built once per session)."""
    cache = tmp_path_factory.getbasetemp() / "forensic-cache"
    overrides = [
        f"task={task}",
        "data=tiny",
        f"data.cache_dir={cache}",
        "progress=false",
        "task.steps=3",
        "task.eval_every=3",
    ]
    with initialize_config_dir(str(CONF), version_base=None):
        cfg = compose("config", overrides=overrides)
    build = cfg.task.build
    if "pretrained" in build:
        build.pretrained.steps = 2
    task_obj = instantiate(build, seed=0)
    summary = train_run(task_obj, lambda ps: torch.optim.Adam(ps, lr=1e-3), steps=3, eval_every=3)
    assert summary["status"] == "ok"
    report = summary["report"]
    heldout = set(cfg.data.heldout_families)
    assert set(report["heldout"]) == heldout | {"mean"}
    assert set(report["seen"]) == set(cfg.data.train_families) | {"mean"}
    assert 0.0 <= report["heldout"]["mean"]["auc"] <= 1.0
    assert 0.0 <= report["test_real_fpr"] <= 1.0
    assert not heldout & set(cfg.data.train_families)


def test_an_output_path_that_cannot_be_written_is_a_usage_error_before_any_work(tmp_path):
    import argparse

    from experiments.cli_files import output_path

    (tmp_path / "a_file").write_text("")
    for bad in (tmp_path, tmp_path / "a_file" / "out.json"):
        with pytest.raises(argparse.ArgumentTypeError):
            output_path(str(bad))
    assert output_path(str(tmp_path / "new" / "out.json")) == tmp_path / "new" / "out.json"
    # the report's own outputs too: a folder as --markdown, a file as --plots-dir
    for args in (["--markdown", str(tmp_path)], ["--plots-dir", str(tmp_path / "a_file")]):
        cmd = [sys.executable, "-m", "experiments.report", str(tmp_path), "--name", "x", *args]
        run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    # the commands take it: a folder given as --json ends at parsing, before any scoring
    cmd = [sys.executable, "-m", "experiments.detector_ensemble", "--members", "x.safetensors",
           "--json", str(tmp_path)]  # fmt: skip
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "is a directory" in run.stderr


def test_a_refused_comparison_writes_nothing_and_checks_every_tasks_build(tmp_path):
    # A value only a later task's constructor refuses (rosenbrock's dim) ended the sweep after
    # the earlier tasks' runs, and a refused comparison left out_dir/.hydra-run and the
    # report's docs/results folders behind in the working directory (a user audit).
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, "-m", "experiments.compare", "+experiment=smoke",
         "tasks=[quadratic,rosenbrock]", 'overrides=["task.steps=5","task.build.dim=1"]'],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().splitlines() == [
        "config error: task.build (task=rosenbrock) = {'_target_': "
        "'experiments.tasks.classic.Rosenbrock', 'dim': 1, 'jitter': 0.1}: refused: rosenbrock: "
        "dim must be an integer >= 2, got 1"
    ]
    assert list(tmp_path.iterdir()) == []


def test_a_report_names_its_baseline(tmp_path):
    # baseline=delta: the target was delta's loss but the text said "tuned Adam's" and the
    # ratio columns "×Adam" (a user audit)
    from experiments.compare import compare
    from experiments.report import write_report

    overrides = ["+experiment=smoke", f"out_dir={tmp_path}", "baseline=delta", "variants={}",
                 "optimizers=[delta,adam]", "lr_extensions=0", "step_cost.samples=1"]  # fmt: skip
    with initialize_config_dir(str(CONF), version_base=None):
        root = compare(compose("compare", overrides=overrides), command="cmd")
    text = write_report(root, tmp_path / "r.md", tmp_path / "plots", "smoke").read_text()
    assert "Target = tuned `delta`'s mean final validation loss" in text
    assert "| steps-to-target | ×`delta` | time-to-target s | ×`delta` |" in text
    assert "Adam" not in text.replace("| adam |", "")


def test_a_baseline_that_diverged_everywhere_is_said_to_leave_no_target(tmp_path):
    # the heading read "target val_loss nan" and every ratio "—", without a word why
    from experiments.compare import compare
    from experiments.report import write_report

    overrides = ["+experiment=smoke", f"out_dir={tmp_path}", "lr_factors=[1000,3000]",
                 "lr_extensions=0", "optimizers=[adam]", "baseline=delta",
                 "step_cost.samples=1"]  # fmt: skip
    with initialize_config_dir(str(CONF), version_base=None):
        root = compare(compose("compare", overrides=overrides), command="cmd")
    text = write_report(root, tmp_path / "r.md", tmp_path / "plots", "smoke").read_text()
    assert "No target: the baseline (`delta`) diverged on every evaluation seed" in text


def test_the_cached_encoder_leaves_each_seed_its_own_head_cold_or_warm(tmp_path_factory):
    """``pretrained_encoder`` seeded the global generator with 0 (every seed's head then
    started alike) and drew a decoder from it on a cache miss only (one seed, two heads, by
    the cache's state). A truncated cache file (a crash mid-save) was a traceback for good."""
    cache = tmp_path_factory.getbasetemp() / "encoder-cache"
    overrides = ["task=detect_head", "data=tiny", f"data.cache_dir={cache}", "progress=false"]
    with initialize_config_dir(str(CONF), version_base=None):
        cfg = compose("config", overrides=overrides)
    build = cfg.task.build
    build.pretrained.steps = 2

    def head(seed: int) -> torch.Tensor:
        task = instantiate(build, seed=seed)
        return torch.cat([p.detach().flatten() for p in task.parameters()])

    cold = head(0)  # pretrains and caches the encoder
    assert torch.equal(head(0), cold)  # from the cache: the same head
    assert not torch.equal(head(1), cold)  # another seed, another head
    (path,) = (cache / "encoders").glob("*.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match="cannot be read"):
        assert torch.equal(head(0), cold)  # rebuilt as a cold cache builds it
    assert path.read_bytes() == data


@pytest.fixture(scope="module")
def small_comparison(tmp_path_factory):
    """A finished smoke comparison (adam only, one lr, no extension), shared read-only."""
    from experiments.compare import compare

    out = tmp_path_factory.mktemp("cmp") / "runs"
    overrides = ["+experiment=smoke", f"out_dir={out}", "lr_extensions=0", "variants={}",
                 "optimizers=[adam]", "lr_factors=[1.0]", "step_cost.samples=1",
                 f"report.markdown={out.parent}/r.md"]  # fmt: skip
    with initialize_config_dir(str(CONF), version_base=None):
        return compare(compose("compare", overrides=overrides), command="cmd")


def _seed_dir(root: Path) -> Path:
    return next((root / "quadratic" / "adam").glob("seed*"))


DAMAGE = {
    # a JSON file of the wrong shape, or a file missing: a traceback (KeyError, AttributeError,
    # FileNotFoundError, IsADirectoryError) instead of the file named
    "summary emptied": (lambda r: (_seed_dir(r) / "summary.json").write_text("{}"),
                        r"summary.json: not a run's summary"),
    "metrics removed": (lambda r: (_seed_dir(r) / "metrics.jsonl").unlink(),
                        r"metrics.jsonl: cannot be read"),
    "metrics a folder": (lambda r: ((_seed_dir(r) / "metrics.jsonl").unlink(),
                                    (_seed_dir(r) / "metrics.jsonl").mkdir()),
                         r"metrics.jsonl: cannot be read"),
    # read as a run with no evaluation: its row and the budget line changed without a word
    "metrics emptied": (lambda r: (_seed_dir(r) / "metrics.jsonl").write_text(""),
                        r"metrics.jsonl: no records"),
    "protocol a list": (lambda r: (r / "quadratic" / "adam" / "protocol.json").write_text("[]"),
                        r"protocol.json: a JSON object expected, got list"),
    "step cost null": (lambda r: (r / "quadratic" / "step_cost.json").write_text("null"),
                       r"step_cost.json: a JSON object expected, got NoneType"),
}  # fmt: skip


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_records_are_named_not_a_traceback(small_comparison, tmp_path, damage):
    import shutil

    from experiments.report import write_report

    root = tmp_path / "runs"
    shutil.copytree(small_comparison, root)
    edit, match = DAMAGE[damage]
    edit(root)
    with pytest.raises(ValueError, match=match):
        write_report(root, tmp_path / "r.md", tmp_path / "plots", "smoke")


def test_a_section_it_cannot_replace_leaves_the_plots_as_they_were(small_comparison, tmp_path):
    # the plots were replaced first, then the markers refused: the old section's tables
    # pointed at plots of other runs
    from experiments.report import write_report

    markdown = tmp_path / "lone.md"
    markdown.write_text("# R\n<!-- report:smoke:begin -->\nold\n")
    with pytest.raises(ValueError, match="1 begin and 0 end markers"):
        write_report(small_comparison, markdown, tmp_path / "plots", "smoke")
    assert not (tmp_path / "plots").exists()


def test_a_linked_markdown_file_updates_the_file_it_links_to(small_comparison, tmp_path):
    # os.replace replaced the link with a file of its own; the linked file kept the old text
    from experiments.report import write_report

    target, link = tmp_path / "target.md", tmp_path / "link.md"
    target.write_text("# R\n")
    link.symlink_to(target)
    write_report(small_comparison, link, tmp_path / "plots", "smoke")
    assert link.is_symlink() and "<!-- report:smoke:begin -->" in target.read_text()


def test_a_sweep_whose_jobs_share_an_out_dir_is_refused_before_any_run(tmp_path):
    # the second job wiped the first one's protocols and wrote its report section over the
    # first's, exit 0 (an audit)
    cmd = [sys.executable, "-m", "experiments.compare", "-m", "+experiment=smoke",
           f"out_dir={tmp_path / 'one'}", "seeds=[0,1],[2,3]"]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "jobs 0 and 1 of the sweep both write it" in done.stderr
    assert not (tmp_path / "one").exists()


def test_a_sweep_job_refuses_the_out_dir_an_earlier_job_of_its_sweep_wrote(tmp_path):
    # a command line the check before hydra does not read (a hydra flag) reached the jobs, and
    # the second wiped the first one's records, exit 0
    from hydra import compose, initialize_config_dir

    from experiments.compare import compare
    from experiments.validate_config import ConfigError

    with initialize_config_dir(str(REPO / "experiments" / "conf"), version_base=None):
        cfg = compose("compare", overrides=["+experiment=smoke", f"out_dir={tmp_path}"])
    plan = '{"complete": true, "sweep": {"dir": "/s", "launch": 7, "job": 0}}'
    (tmp_path / "plan.json").write_text(plan)
    with pytest.raises(ConfigError, match="job 0 of this sweep wrote its comparison there"):
        compare(cfg, "cmd", {"dir": "/s", "launch": 7, "job": 1})
    assert (tmp_path / "plan.json").read_text() == plan  # nothing touched
    # the same job again (a re-run of the sweep), or another sweep, may replace it
    from experiments import compare as compare_module

    seen = []
    real = compare_module._compare
    compare_module._compare = lambda *a: seen.append(a[-1]) or tmp_path
    try:
        compare(cfg, "cmd", {"dir": "/s", "launch": 7, "job": 0})
        compare(cfg, "cmd", {"dir": "/other", "launch": 7, "job": 1})
        # a later sweep into the same fixed sweep folder (a review)
        compare(cfg, "cmd", {"dir": "/s", "launch": 8, "job": 1})
        compare(cfg, "cmd")
    finally:
        compare_module._compare = real
    assert [s and s["job"] for s in seen] == [0, 1, 1, None]


def test_a_sweep_with_a_hydra_flag_keeps_the_first_jobs_records(tmp_path):
    cmd = [sys.executable, "-m", "experiments.compare", "-m", "+experiment=smoke",
           f"out_dir={tmp_path / 'one'}", "seeds=[0],[2]", "lr_factors=[1.0]", "lr_extensions=0",
           f"hydra.sweep.dir={tmp_path / 'sweep'}", "--config-name", "compare"]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "job 0 of this sweep wrote its comparison there" in done.stderr, done.stderr[-2000:]
    plan = json.loads((tmp_path / "one" / "plan.json").read_text())
    assert plan["complete"] is True and plan["sweep"]["job"] == 0
    assert isinstance(plan["sweep"]["launch"], int)  # the sweeper's multirun.yaml was read


def test_a_comparison_refuses_an_out_dir_another_one_is_writing(tmp_path):
    # two at once wrote into the same metrics.jsonl files and both ended in a traceback
    import fcntl

    from hydra import compose, initialize_config_dir

    from experiments.compare import compare
    from experiments.validate_config import ConfigError

    with initialize_config_dir(str(REPO / "experiments" / "conf"), version_base=None):
        cfg = compose("compare", overrides=["+experiment=smoke", f"out_dir={tmp_path}"])
    (tmp_path / "plan.json").write_text('{"kept": true}')
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # the other comparison
        with pytest.raises(ConfigError, match="another comparison is writing into it now"):
            compare(cfg, "cmd")
    finally:
        os.close(fd)
    assert (tmp_path / "plan.json").read_text() == '{"kept": true}'  # nothing touched
