"""Bad hydra overrides fail up front, with one line naming the key and what it expects, and a
non-zero exit; a run whose guard skipped every step is not reported as "ok"."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from assocmem import MemoryOptimizer
from experiments.guard import ALL_SKIPPED
from experiments.loop import train_run
from experiments.validate_config import ConfigError, validate_compare, validate_run

CONF = Path(__file__).resolve().parents[2] / "experiments" / "conf"
REPO = CONF.parents[1]


def _run_cfg(*overrides: str):
    with initialize_config_dir(str(CONF), version_base=None):
        return compose("config", overrides=list(overrides))


@pytest.fixture
def not_a_dir(tmp_path) -> Path:
    (tmp_path / "a_file").write_text("x")
    return tmp_path / "a_file" / "cache"


BAD_RUNS = [
    (["task.steps=abc"], "task.steps = 'abc': expected an integer >= 0"),
    (["task.steps=-5"], "task.steps = -5: expected an integer >= 0"),
    (["task.steps=2.5"], "task.steps = 2.5: expected an integer >= 0"),
    (["task.eval_every=0"], "task.eval_every = 0: expected an integer >= 1"),
    (["task.eval_every=abc"], "task.eval_every = 'abc': expected an integer >= 1"),
    (["seed=abc"], "seed = 'abc': expected an integer >= 0"),
    (["seed=-1"], "seed = -1: expected an integer >= 0"),
    (["seed=true"], "seed = True: expected an integer >= 0"),
    (["optimizer.lr=abc"], "optimizer.lr = 'abc': expected a finite number > 0"),
    (["optimizer.lr=0"], "optimizer.lr = 0: expected a finite number > 0"),
    (["optimizer.lr=nan"], "optimizer.lr = nan: expected a finite number > 0"),
    (["target=abc"], "target = 'abc': expected null or a finite number"),
    (["progress=maybe"], "progress = 'maybe': expected true or false"),
    (["optimizer=delta", "+optimizer.factory.bogus=1"], "optimizer.factory = 'delta': refused"),
    (["optimizer=delta", "optimizer.factory.memory=nope"], "optimizer.factory = 'delta': refused"),
    (
        ["optimizer=muon", "optimizer.split.rest_lr_ratio=0"],
        "optimizer.split.rest_lr_ratio = 0: expected a finite number > 0",
    ),
    (["optimizer=muon", "optimizer.split.rest=3"], "optimizer.split.rest = 3: expected a mapping"),
    (["optimizer=muon", "+optimizer.split.extra=1"], "optimizer.split = "),
    # The rest group's own options are checked by the optimizer, before the task is built.
    (["optimizer=muon", "optimizer.split.rest.memory=nope"], "optimizer.factory = 'muon': refused"),
    (["optimizer=muon", "+optimizer.split.rest.momentum=0.9"], "optimizer.factory = 'muon'"),
    # trained at lr 5 while the folder, log and summary said 0.01 (an audit)
    (["optimizer.factory.lr=5"], "optimizer.factory.lr = 5: refused: it is ${..lr}"),
    # a key hydra added with "+" and the run ignored, exit 0 (an audit)
    (["+step=5"], "step = 5: refused: not a key of conf/config.yaml"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_RUNS, ids=lambda v: str(v))
def test_bad_run_override_is_one_line_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        validate_run(_run_cfg(*overrides))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


FORENSIC = ["task=detect_head", "data=tiny"]


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["data.patch_size=10"], "data.patch_size = 10"),
        (["data.patch_size=abc"], "data.patch_size = 'abc'"),
        (["data.seed=-3"], "data.seed = -3"),
        (["data.tiny=abc"], "data.tiny = 'abc'"),
        (["data.train_families=[nope]"], "data.train_families = ['nope']"),
        (["data.train_families=[]"], "data.train_families = []"),
        (["data.heldout_families=[splice]"], "data.heldout_families = ['splice']"),
    ],
)
def test_bad_data_override_is_named(tmp_path, overrides, key):
    cfg = _run_cfg(*FORENSIC, f"data.cache_dir={tmp_path}", *overrides)
    with pytest.raises(ConfigError, match="^" + key.replace("[", r"\[").replace("]", r"\]")):
        validate_run(cfg)


def test_unwritable_cache_dir_is_named(not_a_dir):
    with pytest.raises(ConfigError, match=r"^data.cache_dir = .*: expected a writable directory"):
        validate_run(_run_cfg(*FORENSIC, f"data.cache_dir={not_a_dir}"))


def test_cache_dir_is_not_checked_for_tasks_that_do_not_read_it(not_a_dir):
    validate_run(_run_cfg("task=quadratic", f"data.cache_dir={not_a_dir}"))


@pytest.mark.parametrize("task", sorted(p.stem for p in (CONF / "task").glob("*.yaml")))
def test_every_shipped_task_config_is_valid(task, tmp_path):
    validate_run(_run_cfg(f"task={task}", f"data.cache_dir={tmp_path}"))


@pytest.mark.parametrize("optimizer", sorted(p.stem for p in (CONF / "optimizer").glob("*.yaml")))
def test_every_shipped_optimizer_config_is_valid(optimizer):
    validate_run(_run_cfg(f"optimizer={optimizer}"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (['overrides=["task.steps=abc"]'], "task.steps (task=quadratic optimizer=adam) = 'abc'"),
        (
            ['overrides=["task.eval_every=0"]'],
            "task.eval_every (task=quadratic optimizer=adam) = 0",
        ),
        (['overrides=["task.nope=3"]'], "overrides = ['task.nope=3']: expected valid overrides"),
        (["lr_factors=[1.0,0]"], "lr_factors = 0"),
        (["lr_factors=[]"], "lr_factors = []"),
        (["seeds=[0,abc]"], "seeds = 'abc'"),
        (["tuning_seed=-1"], "tuning_seed = -1"),
        (["tasks=[nope]"], "tasks = ['nope']"),
        (["optimizers=[adam,nope]"], "optimizers = ['nope']"),
        (["baseline=nope"], "baseline = 'nope'"),
        (["lr_extensions=-1"], "lr_extensions = -1"),
        (["variants={delta: [nope]}"], "variants.delta = ['nope']"),
        (["variants={delta: []}"], "variants.delta = []"),
        (
            ["variants={delta: [adam, adam]}"],
            "variants.delta = ['adam', 'adam']: expected distinct",
        ),
        (["variants=3"], "variants = 3"),
        (["+variants.sgd=[adam]"], "variants = ['sgd']: expected keys that name an entry"),
        (["lr_factors=[1.0]", "lr_extensions=1"], "lr_extensions = 1: expected 0 for a one-point"),
        (["lr_factors=[1.0,1.0]"], "lr_factors = [1.0, 1.0]: expected distinct"),
        (["step_cost.samples=0"], "step_cost.samples = 0"),
        (["step_cost.span=abc"], "step_cost.span = 'abc'"),
        # each of these ran, and the report read as a fair comparison
        (["seeds=[0,0]"], "seeds = [0, 0]: expected distinct seeds"),
        (["seeds=[1000,1]"], "seeds = [1000, 1]: expected seeds other than tuning_seed (1000)"),
        (["optimizers=[adam,delta,delta]"], "optimizers = ['adam', 'delta', 'delta']: expected"),
        (['overrides=["optimizer.lr=0.001"]'], "overrides = 'optimizer.lr=0.001': expected"),
        (['overrides=["seed=5"]'], "overrides = 'seed=5': expected overrides of keys"),
        (['overrides=["optimizer=sgd"]'], "overrides = 'optimizer=sgd'"),
        (['overrides=["+target=1.0"]'], "overrides = '+target=1.0'"),
        # factory.lr is ${..lr}: every run trained at this lr, the report printed a tuned one
        (
            ['overrides=["task.steps=20","optimizer.factory.lr=0.001"]'],
            "overrides = 'optimizer.factory.lr=0.001': expected overrides of keys the protocol",
        ),
        (['overrides=["++optimizer.factory.lr=1"]'], "overrides = '++optimizer.factory.lr=1'"),
        # each run is composed, not launched by hydra: this did nothing (a user audit)
        (['overrides=["hydra.run.dir=/tmp/x"]'], "overrides = 'hydra.run.dir=/tmp/x': expected"),
        # a whole node replaced: its lr was fixed, every tuning run alike, and the report
        # printed a "best lr" (a user audit)
        (
            ['overrides=["optimizer.factory={_target_:torch.optim.Adam,_partial_:true,lr:1e-5}"]'],
            "overrides = 'optimizer.factory={_target_:torch.optim.Adam,_partial_:true,lr:1e-5}': "
            "expected overrides of keys the protocol does not set",
        ),
        # 0 steps: every lr tied on the untrained model, and a "best" was chosen (an audit)
        (['overrides=["task.steps=0"]'], "overrides = ['task.steps=0']: expected task.steps >= 1"),
        (["+lr_factor=[1,2]"], "lr_factor = [1, 2]: refused: not a key of conf/compare.yaml"),
    ],
)
def test_bad_compare_override_is_named(tmp_path, overrides, message):
    base = ["+experiment=smoke", f"out_dir={tmp_path}"]
    with initialize_config_dir(str(CONF), version_base=None):
        cfg = compose("compare", overrides=base + overrides)
        with pytest.raises(ConfigError) as err:
            validate_compare(cfg)
    assert str(err.value).startswith(message), str(err.value)


def test_a_key_that_interpolates_a_protocol_key_is_one_the_protocol_sets():
    from experiments.validate_config import protocol_key

    with initialize_config_dir(str(CONF), version_base=None):
        run = compose(
            "config",
            overrides=["optimizer=muon_delta", "+a=${optimizer.factory.lr}", "+b.c=${..a}"],
        )
    assert protocol_key("optimizer.factory.lr", run) == "optimizer.lr"
    assert protocol_key("a", run) == "optimizer.lr"  # a chain of interpolations
    assert protocol_key("b.c", run) == "optimizer.lr"  # relative, from a nested key
    assert protocol_key("adam.factory.lr") == "optimizer.lr"  # any factory's lr, no config
    assert protocol_key("seed") == "seed"
    assert protocol_key("optimizer.factory", run) == "optimizer.lr"  # a node holding it
    for free in ("optimizer.factory.gamma", "optimizer.split.rest_lr_ratio", "task.steps"):
        assert protocol_key(free, run) is None


def _compare_refuses(tmp_path, override: str, match: str) -> None:
    with initialize_config_dir(str(CONF), version_base=None):
        cfg = compose("compare", overrides=["+experiment=smoke", f"out_dir={tmp_path}", override])
        with pytest.raises(ConfigError, match=match):
            validate_compare(cfg)


def test_compare_report_path_must_be_writable(tmp_path, not_a_dir):
    _compare_refuses(tmp_path, f"report.plots_dir={not_a_dir}", "^report.plots_dir = ")


def test_compare_refuses_a_report_file_whose_markers_it_could_not_replace(tmp_path):
    # checked after the whole sweep before: every run made, then a traceback
    md = tmp_path / "r.md"
    pair = "<!-- report:smoke:begin -->\na\n<!-- report:smoke:end -->\n"
    md.write_text("# R\n" + pair + pair)
    _compare_refuses(tmp_path, f"report.markdown={md}", "^report.markdown = .*2 begin and 2 end")


def test_compare_refuses_a_report_onto_the_runs_records(tmp_path):
    # the report went into plan.json (exit 0), which the report command could then not read
    _compare_refuses(
        tmp_path, f"report.markdown={tmp_path}/plan.json", "^report.markdown = .*runs' records"
    )


def test_compare_refuses_lr_factors_whose_extensions_leave_the_numbers(tmp_path):
    # factors [1e-200, 1] extended to 1e-400: a tuning run at lr 0, then a traceback
    _compare_refuses(
        tmp_path, "lr_factors=[1e-200,1.0]", "^lr_factors = .*extension.*smallest lr would be 0"
    )
    _compare_refuses(
        tmp_path, "lr_factors=[1.0,1e200]", "^lr_factors = .*extension.*largest lr would be inf"
    )


def test_compare_refuses_lr_factors_that_round_to_one_learning_rate(tmp_path):
    # compare.tune runs base * factor at 6 significant digits: one lr ran twice, one folder
    _compare_refuses(tmp_path, "lr_factors=[1.0,1.0000001]", "^lr_factors = .*6 significant")


def test_compare_report_markdown_must_be_a_writable_file(tmp_path):
    # checked before the sweep: the report is written after every run has finished
    folder = tmp_path / "a_folder.md"
    folder.mkdir()
    _compare_refuses(tmp_path, f"report.markdown={folder}", "^report.markdown = .*is a directory")


def _cli(module: str, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_bad_override_exits_2_with_one_line(tmp_path):
    done = _cli("experiments.run", "task.steps=-5", "progress=false", f"hydra.run.dir={tmp_path}")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "config error: task.steps = -5: expected an integer >= 0"
    ]
    assert not (tmp_path / "summary.json").exists()


def test_cli_unwritable_cache_dir_fails_before_the_benchmark_is_built(tmp_path, not_a_dir):
    done = _cli(
        "experiments.run",
        *FORENSIC,
        f"data.cache_dir={not_a_dir}",
        "progress=false",
        f"hydra.run.dir={tmp_path}/run",
    )
    assert done.returncode == 2
    # One line: no traceback and no benchmark-building progress before it.
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"config error: data.cache_dir = '{not_a_dir}': expected a writable")


def test_cli_compare_checks_every_run_before_the_first(tmp_path):
    done = _cli(
        "experiments.compare", "+experiment=smoke", f"out_dir={tmp_path}",
        'overrides=["task.eval_every=x"]',
    )  # fmt: skip
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith("config error: task.eval_every (task=quadratic")
    )
    assert not list(tmp_path.glob("**/summary.json"))


# --- summary.json: skipped_steps -------------------------------------------------------------


class _NaNGradient:
    """A finite loss whose gradient is NaN (d/dx sqrt(x) at 0, times 0): the optimizer's guard
    skips every step and the parameters never move."""

    name = "nan_gradient"

    def __init__(self) -> None:
        self.w = torch.zeros(3, requires_grad=True)

    def parameters(self):
        return [self.w]

    def train_loss(self, step: int) -> torch.Tensor:
        return torch.sqrt(self.w * 0).sum()

    def evaluate(self) -> dict[str, float]:
        return {"val_loss": float((self.w.detach() - 1).pow(2).sum())}


def test_a_run_whose_guard_skipped_every_step_is_not_ok(tmp_path):
    task = _NaNGradient()
    factory = lambda ps: MemoryOptimizer(ps, memory="adam", lr=0.1)  # noqa: E731
    summary = train_run(task, factory, steps=6, eval_every=3, out_dir=tmp_path)
    assert summary["skipped_steps"] == 6 and summary["status"] == ALL_SKIPPED
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["skipped_steps"] == 6 and saved["status"] == ALL_SKIPPED
    assert torch.equal(task.w, torch.zeros(3))


def test_skipped_steps_is_recorded_for_every_run(tmp_path):
    from experiments.tasks.classic import Quadratic

    ours = train_run(
        Quadratic(seed=0, dim=4),
        lambda ps: MemoryOptimizer(ps, memory="adam", lr=0.01),
        steps=4,
        eval_every=2,
    )
    torch_sgd = train_run(
        Quadratic(seed=0, dim=4), lambda ps: torch.optim.SGD(ps, lr=0.01), steps=4, eval_every=2
    )
    assert ours["status"] == torch_sgd["status"] == "ok"
    assert ours["skipped_steps"] == torch_sgd["skipped_steps"] == 0
    assert math.isfinite(ours["final"]["val_loss"])


@pytest.mark.parametrize(
    ("module", "key"),
    [("experiments.compare", "out_dir"), ("experiments.run", "hydra.run.dir")],
)
def test_cli_a_run_folder_that_is_a_file_is_a_config_error(tmp_path, module, key):
    # hydra creates its run folder before the app's checks: this ended in NotADirectoryError
    afile = tmp_path / "afile"
    afile.write_text("")
    args = ["+experiment=smoke"] if module == "experiments.compare" else []
    done = _cli(module, *args, f"{key}={afile}")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"config error: {key} = '{afile}'")


@pytest.mark.parametrize(
    ("export", "message"),
    [
        ("{tmp}/mem.json", "would be its own sidecar"),
        ("{tmp}", "is a directory"),
        ("{tmp}/ck.safetensors", "is also checkpoint"),
        # the memory was written, then its sidecar failed: IsADirectoryError after the run
        ("{tmp}/sc/m.safetensors", "whose sidecar"),
    ],
)
def test_meta_train_refuses_an_export_path_before_training(tmp_path, export, message):
    (tmp_path / "sc" / "m.json").mkdir(parents=True)
    # checked only after the whole meta-training run before (its result lost with
    # checkpoint=null), and an export onto the checkpoint replaced the training state
    done = _cli(
        "experiments.meta_train", "progress=false", "train.meta_steps=4", "train.unroll=2",
        "train.horizon=4", "train.tasks_per_step=1", "train.families=[quadratic,logistic]",
        f"checkpoint={tmp_path}/ck.safetensors", f"export={export.format(tmp=tmp_path)}",
        f"hydra.run.dir={tmp_path}/run",
    )  # fmt: skip
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("config error: export = ") and message in line
    assert not (tmp_path / "ck.safetensors").exists()  # no meta-step was run


@pytest.mark.parametrize(
    ("override", "key", "wanted"),
    [
        ("checkpoint={tmp}/afile/ck.safetensors", "checkpoint", "is a file"),
        ("checkpoint={tmp}", "checkpoint", "is a directory"),
        ("resume=no", "resume", "true or false"),  # bool("no"): it resumed
        ("progress=maybe", "progress", "true or false"),
        ("threads=0", "threads", "an integer >= 1"),  # torch's RuntimeError, no key named
        ("threads=2.9", "threads", "an integer >= 1"),  # ran on 2
    ],
)
def test_meta_train_refuses_bad_switches_and_checkpoint_paths_before_training(
    tmp_path, override, key, wanted
):
    # a checkpoint path that cannot be written failed at the first save (checkpoint_every
    # meta-steps in); resume and progress took any string as true
    (tmp_path / "afile").write_text("")
    done = _cli(
        "experiments.meta_train", "progress=false", "train.meta_steps=4", "train.unroll=2",
        "train.horizon=4", "train.tasks_per_step=1", "train.families=[quadratic,logistic]",
        f"checkpoint={tmp_path}/ck.safetensors", override.format(tmp=tmp_path),
        f"hydra.run.dir={tmp_path}/run",
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"config error: {key} = ") and wanted in line, line
    assert not (tmp_path / "ck.safetensors").exists()  # no meta-step was run


# --- keys an override adds inside a node -----------------------------------------------------


def _compose_in(config_name: str, base: list[str]):
    def compose_job(job: list[str]):
        return compose(config_name, overrides=base + job)

    return compose_job


@pytest.mark.parametrize(
    ("config_name", "base", "added", "key"),
    [
        # the run trained its default 600 steps, exit 0 (an audit)
        ("config", ["task=quadratic"], "+task.step=5", "task.step"),
        ("config", ["task=quadratic"], "++task.step=5", "task.step"),  # ++: add or override
        ("config", ["optimizer=adam"], "+optimizer.betas=[0.5,0.9]", "optimizer.betas"),
        ("config", [], "+data.photos=3", "data.photos"),
        ("compare", [], "+report.markdwn=x.md", "report.markdwn"),
        ("compare", [], "+step_cost.sample=3", "step_cost.sample"),
        ("meta_train", [], "+train.meta_step=1", "train.meta_step"),
        # a mapping merged into a node adds its keys (a review)
        ("config", ["task=quadratic"], "++task={stepz: 3}", "task.stepz"),
        ("config", [], "++data={photo: 1}", "data.photo"),
        ("compare", [], "++report={markdwn: x.md}", "report.markdwn"),
    ],
)
def test_an_override_that_adds_a_nested_key_is_refused(config_name, base, added, key):
    from experiments.validate_config import check_added_keys

    with initialize_config_dir(str(CONF), version_base=None), pytest.raises(ConfigError) as err:
        check_added_keys([added], config_name, _compose_in(config_name, base))
    line = str(err.value)
    assert line.startswith(f"{key} = ") and "a typo?" in line, line
    # the node's own keys, so the typo can be seen
    assert "its keys: " in line


@pytest.mark.parametrize(
    ("config_name", "added"),
    [
        ("config", "++task.steps=5"),  # overrides a key the task has
        ("config", "+optimizer.factory.weight_decay=0.1"),  # the preset checks its arguments
        ("config", "+task.build.hidden=8"),  # the task's constructor checks its own
        ("config", "+optimizer.split.rest.momentum=0.9"),  # the optimizer checks the group's
        ("config", "+experiment=smoke"),  # a group, top level
        ("compare", "+variants.delta=[delta,momentum]"),  # free by design
        ("compare", "+report.command=make demo"),  # compare reads it when set
        ("config", "task.steps=5"),  # no addition at all
        ("config", "++task={steps: 5}"),  # a mapping of keys the node has
        ("config", "++task.build={hidden: 8}"),  # under a node its reader checks
    ],
)
def test_an_override_that_adds_a_key_its_reader_checks_is_left_to_it(config_name, added):
    from experiments.validate_config import check_added_keys

    with initialize_config_dir(str(CONF), version_base=None):
        check_added_keys([added], config_name, _compose_in(config_name, []))


def test_added_keys_that_compose_only_with_others_are_told_apart():
    from experiments.validate_config import check_added_keys

    with initialize_config_dir(str(CONF), version_base=None):
        compose_job = _compose_in("config", [])
        # ~key then ++key sets a key the config has: not an addition
        check_added_keys(["~data.seed", "++data.seed=3"], "config", compose_job)
        # the other overrides do not compose without it: still an addition (hydra's + rule),
        # named, not a traceback
        with pytest.raises(ConfigError, match="task.extra = '1': refused: adds a key"):
            check_added_keys(["+task.extra=1", "task.extra=2"], "config", compose_job)
        # + on a key the config has is hydra's to refuse, not called an addition
        check_added_keys(["+task.steps=5"], "config", compose_job)


def test_compare_refuses_a_run_override_that_adds_a_nested_key(tmp_path):
    with initialize_config_dir(str(CONF), version_base=None):
        cfg = compose(
            "compare",
            overrides=["+experiment=smoke", f"out_dir={tmp_path}", "overrides=['+task.step=3']"],
        )
        with pytest.raises(ConfigError) as err:
            validate_compare(cfg)
    assert str(err.value).startswith("task.step = '3': refused: adds a key"), str(err.value)


@pytest.mark.parametrize(
    "extra",
    [
        [],  # checked before hydra starts
        ["--config-name", "config"],  # a hydra flag: left to the job, which checks it too
        ["-m", "+task.step=2,3"],  # each job of a sweep
    ],
    ids=["before-hydra", "in-the-job", "sweep"],
)
def test_cli_run_refuses_an_added_nested_key_before_training(tmp_path, extra):
    added = [] if "-m" in extra else ["+task.step=5"]
    done = _cli(
        "experiments.run", "task=quadratic", *added, "progress=false",
        f"hydra.run.dir={tmp_path}/run", f"hydra.sweep.dir={tmp_path}/sweep", *extra,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("config error: task.step = ")
    assert not list(tmp_path.glob("**/summary.json"))


def test_meta_train_refuses_an_unknown_top_level_key_before_training(tmp_path):
    # +resum=false (for resume): hydra added the key and the run resumed its checkpoint, exit 0
    done = _cli(
        "experiments.meta_train", "progress=false", "train.meta_steps=4", "train.unroll=2",
        "train.horizon=4", "train.tasks_per_step=1", "train.families=[quadratic,logistic]",
        f"checkpoint={tmp_path}/ck.safetensors", "+resum=false",
        f"hydra.run.dir={tmp_path}/run",
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("config error: resum = False: refused: not a key of conf/meta_train")
    assert not (tmp_path / "ck.safetensors").exists()


def test_meta_train_expands_home_as_its_checks_do_and_refuses_resumes_in_one_line(tmp_path):
    import os

    home = tmp_path / "home"
    home.mkdir()
    tiny = ["experiments.meta_train", "progress=false", "train.meta_steps=2", "train.unroll=2",
            "train.horizon=2", "train.tasks_per_step=1", "train.families=[quadratic,logistic]",
            "learned.hidden=[4]", f"hydra.run.dir={tmp_path}/run"]  # fmt: skip
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", *tiny, "checkpoint='~/ck.safetensors'", "export='~/ex.safetensors'"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # written where the checks looked (they expanded "~"), not into ./~/ (an audit)
    assert {p.name for p in home.iterdir()} == {"ck.safetensors", "ex.safetensors", "ex.json"}
    assert not (tmp_path / "~").exists()
    # a checkpoint that cannot be resumed: one line, exit 2, not hydra's traceback
    done = subprocess.run(
        [sys.executable, "-m", *tiny, "checkpoint='~/ck.safetensors'", "train.seed=3"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("config error: checkpoint = '~/ck.safetensors': refused: ") and (
        "the training config differs" in line
    ), line
    # the loader names the file in the middle of its message ("learned-memory checkpoint X
    # is not a regular file"): one line too, not a traceback (a review)
    os.mkfifo(home / "fifo.safetensors")
    done = subprocess.run(
        [sys.executable, "-m", *tiny, "checkpoint='~/fifo.safetensors'"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("config error: checkpoint = '~/fifo.safetensors': refused: "), line
