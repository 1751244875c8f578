"""Markdown reference of every preset's hyperparameters, generated from the registry.

python -m assocmem.optim.describe             # print the table
python -m assocmem.optim.describe --write     # refresh it inside docs/api.md
"""

from __future__ import annotations

import sys
from pathlib import Path

from assocmem.optim.registry import available_memories, get_preset

BEGIN, END = "<!-- hyperparameters:begin -->", "<!-- hyperparameters:end -->"


def hyperparameter_table() -> str:
    lines = ["| memory | hyperparameter | default | meaning |", "|---|---|---|---|"]
    for name in available_memories():
        for hyper_name, hyper in get_preset(name).hyper.items():
            lines.append(f"| `{name}` | `{hyper_name}` | `{hyper.default!r}` | {hyper.doc} |")
    return "\n".join(lines)


def embed(markdown: str) -> str:
    """``markdown`` with the text between the hyperparameter markers replaced by the table."""
    head, rest = markdown.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{hyperparameter_table()}\n{END}{tail}"


if __name__ == "__main__":
    if "--write" in sys.argv:
        api = Path("docs/api.md")
        api.write_text(embed(api.read_text()))
    else:
        print(hyperparameter_table())
