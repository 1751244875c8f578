"""An output path that is also an input (or another output) is a usage error before any work, in
every command that writes a record, a section or a checkpoint (``validate_config.output_clash``),
as ``assocmem-detect`` refuses a report path that is an input, the checkpoint or its sidecar."""

from __future__ import annotations

import hashlib
import os

import pytest

from assocmem.storage import sidecar_path
from experiments.validate_config import output_clash, same_file


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_file_sees_through_relative_paths_links_and_dots(tmp_path, monkeypatch):
    a = tmp_path / "a.json"
    a.write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert same_file(a, "a.json") and same_file(a, tmp_path / "sub" / ".." / "a.json")
    os.link(a, tmp_path / "hard.json")
    (tmp_path / "soft.json").symlink_to(a)
    assert same_file(a, tmp_path / "hard.json") and same_file(a, tmp_path / "soft.json")
    assert not same_file(a, tmp_path / "b.json")  # neither need exist
    assert sidecar_path(tmp_path / "d.safetensors") == tmp_path / "d.json"


def test_output_clash_names_both_options():
    assert output_clash([("--json", None), ("--write", None)], [("--from-json", None)]) is None
    assert output_clash([("--json", "x.json"), ("--write", "r.md")], [("--in", "y")]) is None
    message = output_clash([("--json", "r.json")], [("--from-json", "r.json")])
    assert message and "--json r.json is also --from-json" in message
    message = output_clash([("--json", "x"), ("--write", "x")])
    assert message and "--write x is also --json" in message


# --write onto a JSON record is refused twice over: as one of the inputs, and as no markdown
# (report.check_markers); whichever a command checks first names it
NOT_MARKDOWN = "is a record, not markdown"


def _refused(main, argv, capsys, expected):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    alternatives = (expected,) if isinstance(expected, str) else expected
    assert any(e in err for e in alternatives), err


MEAN = {"mean": {"auc": 0.5, "tpr": 0.5}}
# the smallest records each command renders (--from-json), as its --json writes them
RECORDS = {
    "image_level": {
        "command": "c", "weights": "w", "views": "one", "target_fpr": 0.05, "seed": 0,
        "reports": [{"size": 64, "n": 1, "tiles": 4, "photos": ["p"], "threshold": 0.0,
                     "real_fpr": 0.0, "seen": MEAN, "heldout": MEAN}],
    },
    "detectors": [
        {"command": "c", "model": "npr", "optimizer": "adam", "lr": 1e-3, "seed": 0,
         "best_step": 1, "steps": 2,
         "report": {"seen": MEAN, "heldout": MEAN, "test_real_fpr": 0.05}},
    ],
}  # fmt: skip


@pytest.mark.parametrize("command", ["image_level", "detectors"])
def test_a_record_is_not_rewritten_by_the_command_that_renders_it(tmp_path, capsys, command):
    """``--from-json R --write R`` appended the section to the record (exit 0)."""
    import importlib
    import json

    main = importlib.import_module(f"experiments.{command}").main
    record = tmp_path / "r.json"
    record.write_text(json.dumps(RECORDS[command]) + "\n")
    main(["--from-json", str(record), "--write", str(tmp_path / "r.md")])  # a record it renders
    assert (tmp_path / "r.md").is_file()
    capsys.readouterr()
    before = _digest(record)
    _refused(main, ["--from-json", str(record), "--write", str(record)], capsys, "--from-json")
    assert _digest(record) == before


@pytest.mark.parametrize("command", ["image_level", "detectors", "clip_detectors"])
def test_json_and_write_to_one_file_is_refused_before_any_work(tmp_path, capsys, command):
    import importlib

    main = importlib.import_module(f"experiments.{command}").main
    cache, out = tmp_path / "cache", tmp_path / "x"
    argv = ["--tiny", "--cache-dir", str(cache), "--json", str(out), "--write", str(out)]
    _refused(main, argv, capsys, "--write")
    assert not out.exists() and not cache.exists()  # nothing built, nothing written


def test_image_level_never_writes_over_the_checkpoint_it_scores(tmp_path, capsys):
    from experiments.image_level import main

    weights = tmp_path / "d.safetensors"
    weights.write_bytes(b"weights")
    sidecar_path(weights).write_text("{}")
    for out, named in ((weights, "--weights"), (sidecar_path(weights), "the checkpoint's sidecar")):
        argv = ["--tiny", "--weights", str(weights), "--json", str(out)]
        _refused(main, [*argv, "--cache-dir", str(tmp_path / "cache")], capsys, f"is also {named}")
    assert weights.read_bytes() == b"weights" and sidecar_path(weights).read_text() == "{}"
    # the default --weights is the shipped checkpoint: its sidecar is protected too
    from assocmem.forensic.checkpoint import DEFAULT_CHECKPOINT

    argv = ["--tiny", "--write", str(sidecar_path(DEFAULT_CHECKPOINT))]
    _refused(main, argv, capsys, ("sidecar", NOT_MARKDOWN))


def test_ship_detector_never_writes_over_a_member_or_its_own_sidecar(tmp_path, capsys):
    from experiments.ship_detector import main

    cache = str(tmp_path / "cache")
    member = tmp_path / "w" / "a.safetensors"
    member.parent.mkdir()
    member.write_bytes(b"member weights")
    _refused(main, ["--tiny", "--cache-dir", cache, "--members", str(member), "--out",
                    str(member)], capsys, "--members")  # fmt: skip
    assert member.read_bytes() == b"member weights"
    out = tmp_path / "d" / "det.safetensors"
    for write in (
        sidecar_path(out),
        out,
    ):  # markdown over the sidecar made the checkpoint unloadable
        _refused(main, ["--tiny", "--cache-dir", cache, "--out", str(out), "--write", str(write)],
                 capsys, "--out")  # fmt: skip
    assert not (tmp_path / "d").exists() and not (tmp_path / "cache").exists()


def test_ship_detector_table_only_never_writes_over_the_checkpoint_it_reads(tmp_path, capsys):
    from experiments.ship_detector import main

    out = tmp_path / "det.safetensors"
    out.write_bytes(b"checkpoint")
    sidecar_path(out).write_text("{}")
    for write in (out, sidecar_path(out)):
        _refused(main, ["--table-only", "--out", str(out), "--write", str(write)], capsys, "--out")
    assert out.read_bytes() == b"checkpoint" and sidecar_path(out).read_text() == "{}"
    # a checkpoint that is not there is a usage error, not a traceback
    _refused(main, ["--table-only", "--out", str(tmp_path / "none.safetensors")], capsys, "--out")


REPO_RESULTS = __import__("pathlib").Path(__file__).resolve().parents[2] / "docs" / "results"
ZERO_SHOT = [f"detectors-npr_dct_dropout-muondeltasplit-ema0.995-seed{s}.json" for s in range(3)]
CEILING = [
    f"detectors-ceiling-npr_dct_dropout-muondeltasplit-ema0.995-seed{s}.json" for s in range(3)
]


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """Two tiny runs' weights files (experiments.detectors --save-weights) and their cache."""
    from detector_support import train_tiny_runs

    root = tmp_path_factory.mktemp("tiny")
    runs = train_tiny_runs(root, seeds=(0, 1))
    return root, [run["weights"] for run in runs]


def _copies(tmp_path, names):
    import shutil

    return [str(shutil.copy(REPO_RESULTS / name, tmp_path / name)) for name in names]


def _readers(tmp_path, tiny_weights):
    """Commands that had no clash check (an audit), each given valid inputs and an output onto
    one of them: ``(argv, the input written over, the option the refusal names)``. Before, each
    exited 0 having replaced its input: --json onto a member wrote the records over its weights
    (reloading them failed), --write onto a record appended markdown to it."""
    import shutil

    cache, (w0, w1) = tiny_weights
    records = str(shutil.copy(cache / "runs.json", tmp_path / "runs.json"))
    prior = _copies(tmp_path, ["detector-prior-fresh.json"])[0]
    fresh = _copies(tmp_path, ["shipped-detector-fresh.json"])[0]
    zero_shot, ceiling = _copies(tmp_path, ZERO_SHOT), _copies(tmp_path, CEILING)
    tiny = ["--tiny", "--cache-dir", str(cache)]
    return {
        "detector_ensemble": ([*tiny, "--members", w0, w1, "--json", w0], w0, "--members"),
        "detector_processing": (
            [*tiny, "--group", "A", w0, w1, "--records", records, "--write", records],
            records,
            "--records",
        ),
        "detector_prior": (["--from-json", prior, "--write", prior], prior, "--from-json"),
        "shipped_fresh": (["--from-json", fresh, "--write", fresh], fresh, "--from-json"),
        "detector_ceiling": (
            ["--zero-shot", *zero_shot, "--ceiling", *ceiling, "--write", ceiling[0]],
            ceiling[0],
            "--ceiling",
        ),
    }


@pytest.mark.parametrize(
    "command",
    ["detector_ensemble", "detector_processing", "detector_prior", "shipped_fresh",
     "detector_ceiling"],
)  # fmt: skip
def test_an_output_never_replaces_what_the_command_reads(tmp_path, capsys, tiny_weights, command):
    import importlib
    from pathlib import Path

    main = importlib.import_module(f"experiments.{command}").main
    argv, written_over, names = _readers(tmp_path, tiny_weights)[command]
    before = _digest(Path(written_over))
    _refused(main, argv, capsys, (f"is also {names}", NOT_MARKDOWN))
    assert _digest(Path(written_over)) == before


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        ("detector_prior", ["--members", "{a}", "{a}"]),  # one network, a spread of 0 over "two"
        ("detector_prior", ["--members", "{a}", "--views", "one", "one"]),
        ("detector_ensemble", ["--members", "{a}", "{a}"]),
        ("detector_ensemble", ["--members", "{a}", "--views", "one", "one"]),  # records refused
    ],
)
def test_a_member_or_view_named_twice_is_refused(tmp_path, capsys, command, argv):
    import importlib

    main = importlib.import_module(f"experiments.{command}").main
    a = tmp_path / "a"
    a.write_text("weights")
    _refused(main, [arg.format(a=a) for arg in argv], capsys, "names one twice")


def test_a_weights_file_of_another_network_is_a_usage_error(tmp_path, capsys, tiny_weights):
    # load_state_dict's RuntimeError passed the commands' ValueError/OSError catch: a traceback
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from experiments.detector_ensemble import main

    _, (w0, _) = tiny_weights
    with safe_open(w0, framework="pt") as f:
        header = json.loads(f.metadata()["assocmem"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open's API)
    other = tmp_path / "other.safetensors"
    save_file(
        tensors, str(other), metadata={"assocmem": json.dumps({**header, "model": "npr_dct"})}
    )
    _refused(main, ["--members", str(other)], capsys, "its tensors are not a npr_dct")


def test_image_level_refuses_a_benchmark_the_checkpoint_was_not_trained_on(tmp_path, capsys):
    # --tiny with the shipped checkpoint: the tiny benchmark's test photo is one the full
    # benchmark trained the checkpoint on, and its "unseen" crops were scored as such
    from experiments.image_level import main

    cache = tmp_path / "cache"
    argv = ["--tiny", "--cache-dir", str(cache), "--sizes", "64", "--n", "2"]
    _refused(main, argv, capsys, "the checkpoint was trained on the benchmark of key")
    assert not cache.exists()  # refused before the benchmark was built


def test_image_level_reads_its_checkpoint_once(tmp_path, capsys, monkeypatch):
    # Detector.load and then load_detector for the header read (and hashed) the file twice
    import assocmem.forensic.detector as detector_module
    import experiments.image_level as image_level
    from assocmem.forensic.checkpoint import load_detector

    reads = []

    def counted(path=None):
        reads.append(path)
        return load_detector(path)

    monkeypatch.setattr(detector_module, "load_detector", counted)
    monkeypatch.setattr(image_level, "load_detector", counted)
    argv = ["--tiny", "--cache-dir", str(tmp_path / "cache"), "--sizes", "64", "--n", "2"]
    _refused(image_level.main, argv, capsys, "the checkpoint was trained on the benchmark of key")
    assert reads == [None]


def test_detector_race_never_writes_over_its_runs(tmp_path, capsys):
    # it had no check: --json onto a --runs record replaced the runs with the race, exit 0
    from experiments.detector_race import main

    runs = tmp_path / "runs.json"
    runs.write_text("[]")
    before = _digest(runs)
    argv = ["--runs", str(runs), "--json", str(runs), "--no-step-cost"]
    _refused(main, argv, capsys, f"--json {runs} is also --runs")
    argv = ["--runs", str(runs), "--costs-from", str(tmp_path / "c.json")]
    _refused(main, [*argv, "--write", str(tmp_path / "c.json")], capsys, "is also --costs-from")
    assert _digest(runs) == before


class _Parsed(Exception):
    """Raised instead of parsing: the test wants the command's parser, not a run."""


def _commands():
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2] / "experiments"
    return sorted(
        path.stem
        for path in root.glob("*.py")
        if "def main(" in (text := path.read_text())
        and ("argparse.ArgumentParser(" in text or "build_parser()" in text)
    )


# options that name folders: an output file is never one (cli_files.output_path refuses a
# folder), so they take no part in the clash check
FOLDER_OPTIONS = {"cache_dir", "root", "plots_dir"}
# options whose role depends on another option, passed to refuse_clashes by their command:
# ship_detector's --out is written by a run and read by --table-only (refuse_out_clashes)
EITHER_ROLE = {("ship_detector", "out")}


@pytest.mark.parametrize("name", _commands())
def test_every_file_option_declares_its_role_and_the_command_refuses_clashes(name, monkeypatch):
    # an option typed a plain Path escapes refuse_clashes: each command listed its own files,
    # five had missed an input (--json onto a member) and detector_race had no check at all
    import argparse
    import importlib
    import inspect
    from pathlib import Path

    from experiments.cli_files import input_path, output_path

    module = importlib.import_module(f"experiments.{name}")
    parsers = []

    def capture(self, args=None, namespace=None):
        parsers.append(self)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(_Parsed):
        module.main([]) if inspect.signature(module.main).parameters else module.main()
    actions = parsers[0]._actions
    plain = [
        a.dest
        for a in actions
        if a.type is Path and a.dest not in FOLDER_OPTIONS and (name, a.dest) not in EITHER_ROLE
    ]
    assert not plain, f"{name}: type these input_path or output_path: {plain}"
    outputs = [a for a in actions if a.type is output_path]
    inputs = [a for a in actions if a.type is input_path or getattr(a.type, "reads_files", 0)]
    if len(outputs) > 1 or (outputs and inputs):
        assert "refuse_clashes(" in inspect.getsource(module), name
