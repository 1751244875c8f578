"""The README's example runs as written."""

import re
from pathlib import Path


def test_readme_example_runs(capsys):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"## The library in ten lines\s+```python\n(.*?)```", readme, re.S).group(1)
    assert len(block.strip().splitlines()) <= 16
    exec(compile(block, "README.md", "exec"), {})
    assert "delta" in capsys.readouterr().out
