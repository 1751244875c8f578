"""The hydra harness: every config composes, a smoke comparison runs and is reported."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from experiments.loop import first_reaching, train_run
from experiments.tasks.classic import Quadratic

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


def test_divergence_ends_the_run_cleanly(tmp_path):
    import torch

    task = Quadratic(seed=0, dim=10, condition=100.0)
    summary = train_run(
        task, lambda ps: torch.optim.SGD(ps, lr=10.0), steps=200, eval_every=5, out_dir=tmp_path
    )
    assert summary["status"] == "diverged"
    assert summary["final"]["val_loss"] == math.inf
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "diverged"


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


def test_smoke_comparison_and_report(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "experiments.compare", "+experiment=smoke", f"out_dir={tmp_path}"],
        check=True,
        cwd=REPO,
        capture_output=True,
    )
    for optimizer in ("adam", "delta"):
        protocol = json.loads((tmp_path / "quadratic" / optimizer / "protocol.json").read_text())
        assert len(protocol["grid"]) == 2  # the same LR budget for both
        assert len(list((tmp_path / "quadratic" / optimizer).glob("seed*/summary.json"))) == 2
    report = (tmp_path / "results.md").read_text()
    assert (
        "<!-- report:smoke:begin -->" in report and "| adam |" in report and "| delta |" in report
    )
    assert (tmp_path / "plots" / "smoke_quadratic.png").stat().st_size > 1000


FORENSIC_TASKS = [t for t in names("task") if t not in ("quadratic", "rosenbrock", "digits_mlp")]


@pytest.mark.parametrize("task", FORENSIC_TASKS)
def test_forensic_task_trains_and_reports_zero_shot(task, tmp_path_factory):
    """Every forensic task runs end to end on the tiny benchmark (built once per session)."""
    import torch

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
