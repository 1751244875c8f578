"""Writing and reading one safetensors checkpoint file (never unpickling anything).

``write_safetensors`` stores the tensors with the JSON ``header`` under the metadata key
``"assocmem"``, through a temporary file and ``os.replace``, so an interrupted save leaves the
previous checkpoint intact. ``read_safetensors`` returns the metadata and tensors (copies in
memory, independent of the file once read); every failure (missing, unreadable, not a regular
file, not safetensors) is a clear error naming the file.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

HEADER_KEY = "assocmem"


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """The ``.json`` sidecar written beside a checkpoint at ``path``: ``x.safetensors`` ->
    ``x.json``; another name keeps its whole name (``detector_v1.0`` -> ``detector_v1.0.json``:
    replacing its last suffix gave ``detector_v1.0`` and ``detector_v1.1`` one sidecar, which
    the second save overwrote)."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        return path.with_suffix(".json")
    return path.with_name(path.name + ".json")


def write_safetensors(path: Path, tensors: dict[str, Tensor], header: dict[str, Any]) -> None:
    """Save ``tensors`` with ``header`` (JSON) to ``path``, atomically; parents are created.

    Raises:
        IsADirectoryError: ``path`` is a directory (nothing is written).
        OSError: the file could not be written; the temporary file is removed and a previous
            checkpoint at ``path`` is left as it was.
    """
    if path.is_dir():
        raise IsADirectoryError(f"cannot save to {path}: it is a directory; give a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file(tensors, str(tmp), metadata={HEADER_KEY: json.dumps(header, sort_keys=True)})
        # safetensors creates its file owner-only (0600) whatever the umask; a checkpoint is a
        # file like its .json sidecar and gets the mode open() gives one (0644 under umask 022)
        os.chmod(tmp, _creation_mode())
        os.replace(tmp, path)  # an interrupted save leaves the previous checkpoint intact
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _creation_mode() -> int:
    """``0o666`` less the process's umask: the mode ``open()`` gives a new file. (The umask
    can only be read by setting it; it is put back at once.)"""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def read_safetensors(path: Path, what: str) -> tuple[dict[str, str], dict[str, Tensor]]:
    """Metadata and tensors of the safetensors file ``path``; ``what`` names it in errors
    (e.g. ``"detector checkpoint"``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: it cannot be stat-ed, is not a regular file, or is not safetensors.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise ValueError(f"{what} {path} cannot be read: {e}") from None
    if not stat.S_ISREG(mode):
        # Never opened: reading a FIFO would block until some writer appears.
        raise ValueError(
            f"{what} {path} is not a regular file (a directory, FIFO or device); expected a "
            ".safetensors file"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            # copies: safe_open's tensors are views of a memory map of the file, so a loaded
            # checkpoint changed when the file was overwritten in place, and a process whose
            # file shrank died of SIGBUS at the next read
            tensors = {k: f.get_tensor(k).clone() for k in f.keys()}  # noqa: SIM118 (no dict)
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is not a readable safetensors file ({e})") from None
    return metadata, tensors
