"""Docs that are generated stay in sync with the code."""

import re
from pathlib import Path

from assocmem.optim.describe import embed

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_api_hyperparameter_table_is_current():
    api = (DOCS / "api.md").read_text()
    assert embed(api) == api, "run `python -m assocmem.optim.describe --write`"


def test_every_preset_has_a_theory_section():
    from assocmem import available_memories

    theory = (DOCS / "theory.md").read_text()
    for name in available_memories():
        assert f"### `{name}`" in theory, name


def test_architecture_map_matches_the_tree():
    """Every module of the library and the harness is on the map, and the map names no file
    that is gone."""
    root = DOCS.parent
    text = (DOCS / "architecture.md").read_text()
    files = [*(root / "src" / "assocmem").rglob("*.py"), *(root / "experiments").rglob("*.py")]
    names = {p.name for p in files}
    missing = sorted(str(p.relative_to(root)) for p in files if p.name != "__init__.py")
    missing = [f for f in missing if Path(f).name not in text]
    assert missing == [], "add these to docs/architecture.md"
    tables = "\n".join(line for line in text.splitlines() if line.startswith("|"))
    stale = sorted(set(re.findall(r"(\w+\.py)", tables)) - names)
    assert stale == [], "docs/architecture.md names files that do not exist"


def test_the_table_command_refuses_a_file_without_its_markers(tmp_path, capsys):
    import pytest

    from assocmem.optim.describe import main

    doc = tmp_path / "api.md"
    doc.write_text("# API\n")
    with pytest.raises(SystemExit):
        main(["--write", str(doc)])
    assert "expected one" in capsys.readouterr().err and doc.read_text() == "# API\n"
    with pytest.raises(SystemExit):  # a typo is an error, not the table
        main(["--wrte"])
