"""Markdown reference of every preset's hyperparameters, generated from the registry.

    python -m assocmem.optim.describe      # prints the table that docs/api.md embeds
"""

from __future__ import annotations

from assocmem.optim.registry import available_memories, get_preset


def hyperparameter_table() -> str:
    lines = ["| memory | hyperparameter | default | meaning |", "|---|---|---|---|"]
    for name in available_memories():
        for hyper_name, hyper in get_preset(name).hyper.items():
            lines.append(f"| `{name}` | `{hyper_name}` | `{hyper.default!r}` | {hyper.doc} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(hyperparameter_table())
