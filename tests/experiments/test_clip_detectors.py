"""``experiments.clip_detectors``'s command line: what it refuses before building anything, and
what its section says of the runs."""

from __future__ import annotations

import pytest


def test_a_bad_optimizer_name_is_refused_before_any_clip_is_built(tmp_path, capsys):
    from experiments.clip_detectors import main

    with pytest.raises(SystemExit):
        main(["--tiny", "--cache-dir", str(tmp_path), "--optimizers", "adam", "adamz"])
    assert "adamz" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing built, nothing trained


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--target-fpr", "1.5"], "--target-fpr"),
        (["--threads", "0"], "--threads"),
        (["--frames", "1"], "--frames"),
        (["--batch-size", "0"], "--batch-size"),
        (["--optimizers", "adam", "adam"], "more than once"),  # one run counted as two seeds
    ],
)
def test_options_are_refused_before_any_clip_is_built(tmp_path, capsys, argv, message):
    from experiments.clip_detectors import main

    with pytest.raises(SystemExit) as exit_:
        main(["--tiny", "--cache-dir", str(tmp_path), *argv])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def _run(model, optimizer, lr, seed, auc):
    mean = {"auc": auc, "tpr": 0.5}
    return {
        "model": model, "optimizer": optimizer, "lr": lr, "seed": seed, "best_step": 1,
        "steps": 2, "seconds": 1.0, "parameters": 10,
        "report": {"seen": {"mean": mean}, "heldout": {"mean": mean}, "test_real_fpr": 0.05},
    }  # fmt: skip


def test_the_section_has_a_row_per_learning_rate_and_says_what_ran():
    """``--optimizers adam adam --lr 1e-3 3e-2`` is two recipes: two rows (they were merged
    into one row of "2 seeds"); the text names the benchmark config and the threads used."""
    import argparse

    from experiments.clip_detectors import markdown

    args = argparse.Namespace(
        tiny=True, frames=4, threads=2, target_fpr=0.05, batch_size=8, max_steps=2
    )
    runs = [_run("gru", "adam", 1e-3, 0, 0.6), _run("gru", "adam", 3e-2, 0, 0.7)]
    text = markdown(runs, "`cmd`", args)
    rows = [line for line in text.splitlines() if line.startswith("| gru | adam")]
    assert len(rows) == 4  # the main table and the per-family table, one row per lr each
    assert "| gru | adam (lr 0.001) | 1 |" in text and "| gru | adam (lr 0.03) | 1 |" in text
    assert "`ClipConfig.tiny(frames=4)`: clips of 4 frames" in text
    assert "2 threads" in text and "one thread" not in text
    args.tiny, args.threads = False, 1
    text = markdown(runs, "`cmd`", args)
    assert "`ClipConfig(frames=4)`" in text and "one thread" in text


def test_the_section_describes_the_models_that_ran():
    # it said "`gru`: ... GRU" over a table of lstm and frames rows
    import argparse

    from experiments.clip_detectors import markdown

    args = argparse.Namespace(
        tiny=True, frames=4, threads=1, target_fpr=0.05, batch_size=8, max_steps=2
    )
    text = markdown([_run("lstm", "adam", 1e-3, 0, 0.6), _run("frames", "adam", 1e-3, 0, 0.7)],
                    "`cmd`", args)  # fmt: skip
    assert "`lstm`: per-frame CNN -> 2-layer LSTM -> logit; `frames`: the same" in text
    assert "`gru`" not in text


def test_the_published_section_renders_from_its_record(tmp_path, capsys):
    """--from-json: the section from the committed runs, without 12 minutes of training (there
    was no such option, and the record held neither the command nor the options)."""
    import json
    import re
    from pathlib import Path

    from experiments.clip_detectors import main

    repo = Path(__file__).resolve().parents[2]
    record = repo / "docs" / "results" / "clip-detectors.json"
    out = tmp_path / "r.md"
    main(["--from-json", str(record), "--write", str(out)])

    def section(text):
        found = re.search(r"<!-- report:clip-detectors:begin -->.*?:end -->", text, re.S)
        return [line for line in found.group(0).splitlines() if not line.startswith("Regenerate")]

    assert section(out.read_text()) == section((repo / "docs" / "results.md").read_text())
    # a record without the command and options (written before they were kept) is refused
    legacy = tmp_path / "legacy.json"
    runs = json.loads(record.read_text())
    legacy.write_text(json.dumps([{k: v for k, v in r.items() if k != "options"} for r in runs]))
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["--from-json", str(legacy)])
    assert "do not name one command and its options" in capsys.readouterr().err
