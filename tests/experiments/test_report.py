"""experiments.report's section writing: one section replaced, the rest of the file kept, and
the list of contents following the headings."""

from __future__ import annotations

import doctest
import json
import subprocess
import sys
from pathlib import Path

import pytest

import experiments.report as report
from experiments.report import anchor, contents, replace_section

REPO = Path(__file__).resolve().parents[2]


def test_the_anchor_examples_run():
    runner = doctest.DocTestRunner()
    for test in doctest.DocTestFinder().find(report.anchor, "anchor", globs={"anchor": anchor}):
        runner.run(test)
    assert runner.failures == 0 and runner.tries > 0


def test_anchors_are_githubs_and_repeated_titles_get_a_counter():
    taken = {}
    assert anchor("Newton–Schulz under FSDP2: on every rank or on one", taken) == (
        "newtonschulz-under-fsdp2-on-every-rank-or-on-one"
    )
    assert anchor("Steps to tuned Adam's loss (`npr_bn`, muon/split)", taken) == (
        "steps-to-tuned-adams-loss-npr_bn-muonsplit"
    )
    assert anchor("A 10× horizon", taken) == "a-10-horizon"
    assert [anchor("Twice", taken) for _ in range(3)] == ["twice", "twice-1", "twice-2"]


def test_replacing_a_section_refreshes_the_contents_and_keeps_the_rest(tmp_path):
    md = tmp_path / "results.md"
    md.write_text(
        "# Results\n\nIntro.\n\n<!-- report:contents:begin -->\n<!-- report:contents:end -->\n\n"
        "<!-- report:a:begin -->\n## First `a`\nold\n<!-- report:a:end -->\n\nA hand-written "
        "reading.\n\n```\n## not a heading\n```\n"
    )
    replace_section(md, "a", "## First `a`\nnew")
    replace_section(md, "b", "## Second (b)\nbody")  # a new section, appended
    text = md.read_text()
    assert "- [First a](#first-a)\n- [Second (b)](#second-b)\n<!-- report:contents:end -->" in text
    assert "not a heading](" not in text and "A hand-written reading." in text
    assert "new" in text and "old" not in text
    assert text.index("report:contents:end") < text.index("report:a:begin")
    assert contents(text).splitlines()[0] == "## Contents"
    # a file without a contents section gets none
    plain = tmp_path / "plain.md"
    replace_section(plain, "a", "## First\nbody")
    assert "Contents" not in plain.read_text()


def test_the_report_command_examples_run():
    runner = doctest.DocTestRunner()
    finder = doctest.DocTestFinder()
    for test in finder.find(report.report_command, "report_command", globs=vars(report)):
        runner.run(test)
    assert runner.failures == 0 and runner.tries > 0


def test_the_report_command_names_the_files_unless_they_are_the_defaults():
    from pathlib import Path

    default = report.report_command(Path("out"), "a", Path("docs/results.md"), Path("docs/results"))
    assert default == "python -m experiments.report out --name a"  # committed sections: as before


def _entry(curves):
    runs = [
        ({"status": "ok"}, [{"step": s, "val_loss": v} for s, v in enumerate(c)]) for c in curves
    ]
    return {"protocol": {}, "runs": runs}


def test_a_band_that_reaches_zero_is_plotted_on_a_scale_that_shows_it(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(report.plt, "close", figures.append)
    # the means (1.5, 1.0, 0.55) are positive, the min-max band reaches -0.5: log clipped it
    report.plot_task("t", {"adam": _entry([[2.0, 1.5, 1.0], [1.0, 0.5, -0.5]])}, tmp_path / "a.png")
    ax = figures[-1].axes[0]
    assert ax.get_yscale() != "log" and ax.get_ylim()[0] <= -0.5
    report.plot_task("t", {"adam": _entry([[2.0, 1.0], [1.0, 0.5]])}, tmp_path / "b.png")
    assert figures[-1].axes[0].get_yscale() == "log"  # all positive: log, as before


def test_a_section_name_must_fit_its_markers_and_plot_files(tmp_path):
    # '-->' closed the marker's comment early, '/' put a plot in a new folder, '' headed a
    # section "Comparison ``" (a user audit); every name in docs/results.md fits the rule
    import re

    from experiments.report import check_section_name, replace_section

    names = re.findall(r"<!-- report:(.*?):begin -->", (REPO / "docs" / "results.md").read_text())
    names = [n for n in names if n != "contents"]  # the file's list of contents, reserved
    assert len(names) > 40 and all(check_section_name(n) == n for n in names)
    for bad in ("", "bad -->name", "a/b", "-x", "a b"):
        with pytest.raises(ValueError, match="section name"):
            replace_section(tmp_path / "r.md", bad, "body")
    assert not (tmp_path / "r.md").exists()
    run = subprocess.run(
        [sys.executable, "-m", "experiments.report", str(tmp_path), "--name", "a/b"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2 and "section name 'a/b'" in run.stderr


def test_a_record_that_is_not_json_is_named(tmp_path):
    from experiments.report import load_runs

    seed = tmp_path / "quadratic" / "adam" / "seed1"
    seed.mkdir(parents=True)
    (seed.parent / "protocol.json").write_text(json.dumps({"best_lr": 0.1, "seeds": [1]}))
    (seed / "summary.json").write_text(json.dumps({"status": "ok", "final": {"val_loss": 1}}))
    (seed / "metrics.jsonl").write_text('{"step": 1}\ngarbage\n')
    with pytest.raises(ValueError, match=r"seed1/metrics.jsonl:2: not a readable JSON record"):
        load_runs(tmp_path)
    (seed / "summary.json").write_text("{")
    with pytest.raises(ValueError, match=r"seed1/summary.json: not a readable JSON record"):
        load_runs(tmp_path)


def test_contents_is_not_a_section_name_a_report_may_take(tmp_path):
    # accepted before, then overwritten by the list of contents: the table vanished
    from experiments.report import check_section_name

    with pytest.raises(ValueError, match="reserved"):
        check_section_name("contents")
    md = tmp_path / "r.md"
    md.write_text("# R\n\n<!-- report:contents:begin -->\n<!-- report:contents:end -->\n")
    with pytest.raises(ValueError, match="reserved"):
        replace_section(md, "contents", "## Comparison `contents`\ntable")
    replace_section(md, "a", "## A\ntable")  # the list itself is still refreshed
    assert "- [A](#a)" in md.read_text()


def test_a_write_that_fails_leaves_the_file_as_it_was(tmp_path):
    # the file was rewritten in place: a full disk (here a file-size limit) cut it in half
    import resource
    import signal

    md = tmp_path / "r.md"
    replace_section(md, "a", "## A\n" + "x" * 20_000)
    before = md.read_bytes()
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) // 2, limits[1]))
    try:
        with pytest.raises(OSError):
            replace_section(md, "b", "## B\ntable")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert md.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["r.md"]  # no temporary file left


def _write_many(md: str, name: str, times: int) -> None:
    for i in range(times):
        replace_section(Path(md), name, f"## {name}\nvalue {i}")


def test_two_processes_writing_sections_of_one_file_keep_both(tmp_path):
    # read-modify-write raced: one writer's section was lost or its markers doubled
    import multiprocessing

    md = tmp_path / "r.md"
    md.write_text("# R\n")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_write_many, args=(str(md), n, 40)) for n in ("x", "y")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    text = md.read_text()
    for name in ("x", "y"):
        assert text.count(f"<!-- report:{name}:begin -->") == 1
        assert f"## {name}\nvalue 39" in text


def test_the_report_refuses_to_write_into_the_runs_folder(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "experiments.report", str(tmp_path), "--name", "x",
         "--markdown", str(tmp_path / "plan.json")],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2 and "inside the runs' folder" in run.stderr


# every command that measures or trains before it writes a section: module -> its section
WRITING_COMMANDS = {
    "bench_ns_comm": "ns-communication",
    "bench_step": "step-cost",
    "bench_stream": "stream",
    "clip_detectors": "clip-detectors",
    "detector_ceiling": "detector-ceiling",
    "detector_prior": "detector-prior",
    "detector_processing": "detector-processing",
    "detectors": "detectors",
    "image_level": "image-level",
    "meta_evaluate": "learned-classic",
    "ns_orthogonality": "ns-orthogonality",
    "pretraining_study": "pretraining",
    "ship_detector": "shipped-detector",
    "shipped_fresh": "shipped-detector-fresh",
    "shortcut_baseline": "shortcut-baseline",
}
# the arguments a command requires (files it would read only after the check)
REQUIRED = {
    "detector_ceiling": ["--zero-shot", "a.json", "--ceiling", "b.json"],
    "detector_processing": ["--group", "A"],
}


@pytest.mark.parametrize("module", sorted(WRITING_COMMANDS))
def test_a_section_that_could_not_be_replaced_is_refused_before_the_work(
    tmp_path, monkeypatch, capsys, module
):
    """A lone marker made ``replace_section`` refuse once the command's runs or timings were
    done (all of them lost); each command now says so before it starts."""
    import importlib
    import inspect

    markdown = tmp_path / "results.md"
    markdown.write_text(f"# R\n<!-- report:{WRITING_COMMANDS[module]}:begin -->\n")
    main = importlib.import_module(f"experiments.{module}").main
    argv = [*REQUIRED.get(module, []), "--write", str(markdown)]
    monkeypatch.setattr("sys.argv", [module, *argv])
    with pytest.raises(SystemExit) as exit_:
        main(argv) if inspect.signature(main).parameters else main()
    assert exit_.value.code == 2
    assert "1 begin and 0 end markers" in capsys.readouterr().err


def test_read_runs_names_the_file_it_cannot_read_as_run_records(tmp_path):
    from experiments.report import read_runs

    runs = tmp_path / "runs.json"
    runs.write_text('[{"seed": 0}, {"seed": 1}]')
    assert read_runs(runs) == [{"seed": 0}, {"seed": 1}]
    lone = tmp_path / "lone.json"
    lone.write_text('{"seed": 0}')
    assert read_runs(lone, lone=True) == [{"seed": 0}]
    with pytest.raises(ValueError, match="lone.json: not a list of run records"):
        read_runs(lone)  # a lone record only where the caller takes one
    for name, text in (("cut.json", "[{"), ("bytes.json", None), ("list.json", "[1, 2]")):
        path = tmp_path / name
        if text is None:
            path.write_bytes(b"\xff\xfe[]")
        else:
            path.write_text(text)
        with pytest.raises(ValueError, match=f"{name}: not a"):
            read_runs(path)
    with pytest.raises(ValueError, match="missing.json: not a readable records file"):
        read_runs(tmp_path / "missing.json")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="folder: not a readable records file"):
        read_runs(tmp_path / "folder")


def test_a_section_is_never_written_into_a_record(tmp_path):
    # --write onto a --json record appended a section to it, exit 0, and the record no longer
    # parsed (an audit: one swapped flag)
    from experiments.report import check_markers

    record = tmp_path / "runs.json"
    record.write_text('[{"seed": 0}]')
    disguised = tmp_path / "runs.txt"  # JSON under another name
    disguised.write_text('[{"seed": 0}]\n')
    for path, match in ((record, "a .json file is a record"), (disguised, "holds JSON")):
        with pytest.raises(ValueError, match=match):
            check_markers(path, "a")
        with pytest.raises(ValueError, match=match):
            replace_section(path, "a", "body")
    assert record.read_text() == '[{"seed": 0}]' and disguised.read_text() == '[{"seed": 0}]\n'
    with pytest.raises(ValueError, match="a .safetensors file is a record"):
        check_markers(tmp_path / "w.safetensors", "a")  # not there yet: refused by its name
    prose = tmp_path / "notes.txt"  # text that is not JSON takes a section
    prose.write_text("[draft] notes\n")
    replace_section(prose, "a", "body")
    assert "<!-- report:a:begin -->" in prose.read_text()


def test_the_shortcut_check_takes_a_cache_dir_and_records_its_command(tmp_path, monkeypatch):
    # it always read ~/.cache/assocmem, and its section named a fixed command (an audit)
    import experiments.shortcut_baseline as shortcut

    asked = []

    class Built(Exception):
        pass

    def build(config, cache_dir=None, **kwargs):
        asked.append(cache_dir)
        raise Built

    monkeypatch.setattr(shortcut, "build_benchmark", build)
    with pytest.raises(Built):
        shortcut.main(["--cache-dir", str(tmp_path)])
    assert asked == [tmp_path]
