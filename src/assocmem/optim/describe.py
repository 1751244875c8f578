"""Markdown reference of every preset's hyperparameters, generated from the registry.

python -m assocmem.optim.describe             # print the table
python -m assocmem.optim.describe --write     # refresh it inside docs/api.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

from assocmem.optim.registry import available_memories, get_preset

BEGIN, END = "<!-- hyperparameters:begin -->", "<!-- hyperparameters:end -->"


def hyperparameter_table() -> str:
    lines = ["| memory | hyperparameter | default | meaning |", "|---|---|---|---|"]
    for name in available_memories():
        for hyper_name, hyper in get_preset(name).hyper.items():
            doc = hyper.doc.replace("|", "\\|")  # |y| would end the table cell
            lines.append(f"| `{name}` | `{hyper_name}` | `{hyper.default!r}` | {doc} |")
    return "\n".join(lines)


def embed(markdown: str) -> str:
    """``markdown`` with the text between the hyperparameter markers replaced by the table.

    Raises:
        ValueError: ``markdown`` lacks the pair of markers, in order.
    """
    if (
        markdown.count(BEGIN) != 1
        or markdown.count(END) != 1
        or (markdown.index(BEGIN) > markdown.index(END))
    ):
        raise ValueError(f"expected one {BEGIN} and one {END} after it")
    head, rest = markdown.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{hyperparameter_table()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Print every preset's hyperparameters as a markdown table, or refresh it "
        "between its markers in a markdown file"
    )
    parser.add_argument(
        "--write", nargs="?", type=Path, const=Path("docs/api.md"), default=None,
        metavar="FILE", help="the file to refresh (default docs/api.md)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.write is None:
        print(hyperparameter_table())
        return
    try:
        args.write.write_text(embed(args.write.read_text()))
    except (OSError, ValueError) as e:
        parser.error(f"{args.write}: {e}")


if __name__ == "__main__":
    main()
