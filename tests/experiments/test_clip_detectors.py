"""``experiments.clip_detectors``'s command line: what it refuses before building anything."""

from __future__ import annotations

import pytest


def test_a_bad_optimizer_name_is_refused_before_any_clip_is_built(tmp_path, capsys):
    from experiments.clip_detectors import main

    with pytest.raises(SystemExit):
        main(["--tiny", "--cache-dir", str(tmp_path), "--optimizers", "adam", "adamz"])
    assert "adamz" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing built, nothing trained
