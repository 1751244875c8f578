"""Docs that are generated stay in sync with the code."""

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
