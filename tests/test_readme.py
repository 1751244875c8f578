"""The README's example runs as written."""

import re
from pathlib import Path


def test_readme_example_runs(capsys):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"## The library in ten lines\s+```python\n(.*?)```", readme, re.S).group(1)
    assert len(block.strip().splitlines()) <= 16
    exec(compile(block, "README.md", "exec"), {})
    assert "delta" in capsys.readouterr().out


def test_readme_split_example_runs_on_the_example_model():
    """The param-group snippet, run on the ten-line example's model: muon on its hidden matrix,
    Adam on the head and the biases."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = re.search(r"## The library in ten lines\s+```python\n(.*?)```", readme, re.S).group(1)
    split = re.search(r"```python\n(from assocmem.optim import param_groups.*?)```", readme, re.S)
    scope: dict = {}
    exec(compile(example + split.group(1), "README.md", "exec"), scope)
    memories = [(g["name"], g["memory"], len(g["params"])) for g in scope["opt"].param_groups]
    assert memories == [("hidden", "muon", 1), ("rest", "adam", 3)]
