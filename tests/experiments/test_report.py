"""experiments.report's section writing: one section replaced, the rest of the file kept, and
the list of contents following the headings."""

from __future__ import annotations

import doctest

import experiments.report as report
from experiments.report import anchor, contents, replace_section


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
