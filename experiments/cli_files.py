"""The files a command reads and writes, declared in its argparse options, and the one check
that no output replaces an input or another output.

A command types each file option by its role: :func:`output_path` for what it writes when
its work is done (``--json``, ``--write``), :func:`input_path` for what it reads (a record, a
checkpoint, members' weights), and marks a custom ``type`` whose value holds paths with
:func:`reads_files`. :func:`refuse_clashes` then walks the parser's options, so an option
added later is checked without each command listing it again (each command used to pass its
own lists to ``validate_config.output_clash``, and five of them had missed an input: ``--json``
onto a member wrote the records over its weights, exit 0). Files that no option names (a
checkpoint's sidecar, the shipped checkpoint when none is given) are passed by the caller.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from experiments.validate_config import Named, output_clash

__all__ = [
    "input_path",
    "options_set",
    "output_folder",
    "output_path",
    "reads_files",
    "refuse_clashes",
]

T = TypeVar("T", bound=Callable[..., Any])


def output_path(text: str) -> Path:
    """argparse ``type`` of a file a command writes when its work is done (``--json``,
    ``--write``): a folder, a path under a regular file or in a folder that cannot be written is
    a usage error at once, not a traceback after the work."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a directory")
    for folder in (path.parent, *path.parent.parents):
        if folder.exists():
            if not folder.is_dir():
                raise argparse.ArgumentTypeError(f"{path}: {folder} is a file, not a folder")
            if not os.access(folder, os.W_OK):
                raise argparse.ArgumentTypeError(f"{path}: cannot write in {folder}")
            break
    return path


def output_folder(text: str) -> Path:
    """argparse ``type`` of a folder a command writes files into as it goes (``--save-weights``,
    ``--save-encoders``): one that is a file, or lies under a file or in a folder that cannot be
    written, is a usage error at once, not a traceback when the first run's training is done."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a file, not a folder")
    output_path(str(path / "file"))  # the folders above it
    return path


def input_path(text: str) -> Path:
    """argparse ``type`` of a file a command reads (a record, a checkpoint, a member's
    weights): :func:`refuse_clashes` keeps every output off it. Whether it exists is the
    reader's to say, with the file's own error."""
    return Path(text)


def reads_files(parse: T) -> T:
    """Mark a custom argparse ``type`` whose values hold input paths (``FAMILY=PATH``, a
    comma-separated list of weights): :func:`refuse_clashes` reads the paths in them."""
    parse.reads_files = True  # type: ignore[attr-defined]
    return parse


def _paths(value: Any) -> Iterator[Path]:
    """The paths in an option's value (a path, or lists and tuples holding paths)."""
    if isinstance(value, Path):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _paths(item)


def _label(action: argparse.Action) -> str:
    return max(action.option_strings, key=len) if action.option_strings else action.dest


def refuse_clashes(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    *,
    outputs: Named = (),
    inputs: Named = (),
) -> None:
    """``parser.error`` (exit 2) before any work if an output would replace an input or another
    output (``validate_config.output_clash``'s rule: the same file by any path). Outputs: every
    option typed :func:`output_path`, and ``outputs``; inputs: every option typed
    :func:`input_path` or marked :func:`reads_files`, and ``inputs`` (``(what, path)`` pairs,
    ``None`` paths skipped)."""
    found_outputs, found_inputs = [], []
    for action in parser._actions:  # noqa: SLF001 (argparse keeps its options only here)
        kind = action.type
        if kind is output_path:
            found = found_outputs
        elif kind is input_path or getattr(kind, "reads_files", False):
            found = found_inputs
        else:
            continue
        found += [(_label(action), path) for path in _paths(getattr(args, action.dest, None))]
    clash = output_clash([*found_outputs, *outputs], [*found_inputs, *inputs])
    if clash:
        parser.error(clash)


def options_set(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    *,
    among: Iterable[str] | None = None,
    besides: Iterable[str] = (),
) -> list[str]:
    """The options (``--flag`` names) set away from their defaults, of ``among`` (every one if
    ``None``) but ``besides``: what a mode that does not read them (``--from-json``,
    ``--table-only``, ``--members``) names in its refusal, rather than accepting them, ignoring
    them and writing them into its section's command."""
    dests = vars(args) if among is None else among
    skip = set(besides)
    return [
        "--" + dest.replace("_", "-")
        for dest in dests
        if dest not in skip and getattr(args, dest, None) != parser.get_default(dest)
    ]
