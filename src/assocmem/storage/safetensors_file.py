"""Writing and reading one safetensors checkpoint file (never unpickling anything).

``write_safetensors`` stores the tensors with the JSON ``header`` under the metadata key
``"assocmem"``, through a temporary file and ``os.replace`` (:func:`write_atomically`, which
also writes a sidecar with it), so an interrupted save leaves the previous checkpoint intact.
``read_safetensors`` reads the file once, whole, and returns the metadata and tensors (in
memory, independent of the file); every failure (missing, unreadable, not a regular file, not
safetensors) is a clear error naming the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load, save
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


def sharing_sidecar(path: str | os.PathLike[str]) -> list[Path]:
    """The files beside ``path`` (other than it) whose sidecar is ``path``'s: ``a`` and
    ``a.safetensors`` (any case of the suffix) both have ``a.json``, so saving one replaced the
    other's sidecar and the other then refused to load, as if edited."""
    path = Path(path)
    sidecar = sidecar_path(path)
    stem = sidecar.name[: -len(".json")]
    names = {stem.lower(), stem.lower() + ".safetensors"}
    try:
        entries = list(path.parent.iterdir())
    except OSError:  # a folder not there yet (or unreadable): nothing beside it to clash with
        return []
    return sorted(
        e
        for e in entries
        if e.name.lower() in names
        and e.name != path.name
        and sidecar_path(e) == sidecar
        and e.is_file()
    )


def refuse_shared_sidecar(path: str | os.PathLike[str]) -> None:
    """Raise ``ValueError`` if a checkpoint saved at ``path`` would share its sidecar with a
    file beside it (:func:`sharing_sidecar`)."""
    if others := sharing_sidecar(path):
        raise ValueError(
            f"cannot save to {path}: {others[0].name} beside it has the same sidecar "
            f"{sidecar_path(path).name}, which this save would replace (and {others[0].name} "
            "would then refuse to load); give another name"
        )


def write_safetensors(
    path: Path,
    tensors: dict[str, Tensor],
    header: dict[str, Any],
    *,
    beside: Sequence[tuple[Path, bytes]] = (),
) -> None:
    """Save ``tensors`` with ``header`` (JSON) to ``path``, atomically; parents are created.
    ``beside``: other files written with it (a ``.json`` sidecar), by :func:`write_atomically`.

    Raises:
        IsADirectoryError: ``path`` is a directory (nothing is written).
        ValueError: ``path`` is another kind of file that is no regular file (a FIFO, a
            device: it would be replaced; nothing is written).
        OSError: a file could not be written (its message names it); the temporary files are
            removed and the previous files at ``path`` and beside it are left as they were.
    """
    data = save(tensors, metadata={HEADER_KEY: json.dumps(header, sort_keys=True)})
    write_atomically([(path, data), *beside])


def _check_target(path: Path) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode) or (stat.S_ISLNK(mode) and path.is_dir()):
        raise IsADirectoryError(f"cannot save to {path}: it is a directory; give a file name")
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):  # a link itself is replaced, as ever
        raise ValueError(
            f"cannot save to {path}: it is no regular file (a FIFO or device), which a save "
            "would replace; give a file name"
        )


def write_atomically(files: Sequence[tuple[Path, bytes]]) -> None:
    """Write each ``(path, data)``: every file to a temporary file of its own beside it first
    (a unique name, created exclusively, synced), then each moved over its target with
    ``os.replace``. A failure while writing (a full disk, no permission) removes the temporary
    files and replaces nothing, so files saved together stay a pair; only a crash between the
    replaces (microseconds) can part them. A new file gets the mode ``open()`` gives one (the
    umask applies); a file written over keeps its mode. Every target is checked first (no
    directory, FIFO or device: see :func:`write_safetensors`), so a refused one writes nothing."""
    for path, _ in files:
        _check_target(path)
    written: list[tuple[Path, Path]] = []
    try:
        for path, data in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            written.append((_written_beside(path, data), path))
        for tmp, path in written:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in written:
            tmp.unlink(missing_ok=True)
        raise


def _written_beside(path: Path, data: bytes) -> Path:
    """``data`` in a new temporary file in ``path``'s folder (hidden, unique: two processes
    saving one path at once do not share it), synced to disk."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
        except OSError as e:
            raise _naming(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileNotFoundError):  # a new file: the mode open() gave it
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))  # the file written over's mode
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno is not None:
            raise _naming(path, e) from None
        raise
    return tmp


def _naming(path: Path, error: OSError) -> OSError:
    """``error`` (its type and errno) with a message that names the file being saved (not
    its temporary file)."""
    return type(error)(error.errno, f"cannot save {path}: {error.strerror}")


def read_regular_bytes(path: Path, what: str) -> bytes:
    """The bytes of the regular file ``path``, read through one open file (a file replaced
    meanwhile is read whole, old or new); ``what`` names it in errors.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: it cannot be read or is not a regular file (a FIFO is never read: that
            would block until some writer appears).
    """
    try:
        # O_NONBLOCK: opening a FIFO does not wait for a writer (it is refused just after)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise ValueError(f"{what} {path} cannot be read: {e}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError(
            f"{what} {path} is not a regular file (a directory, FIFO or device); expected a file"
        )
    with os.fdopen(fd, "rb") as f:
        try:
            return f.read()
        except OSError as e:
            raise ValueError(f"{what} {path} cannot be read: {e}") from None


def read_safetensors(path: Path, what: str) -> tuple[dict[str, str], dict[str, Tensor]]:
    """Metadata and tensors of the safetensors file ``path``; ``what`` names it in errors
    (e.g. ``"detector checkpoint"``).

    The file is read once, whole, and parsed from memory: opened by name, safetensors maps the
    file again for its tensors, so a reader racing a save got one version's header with the
    other's tensors, or bytes of neither.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: it cannot be read, is not a regular file, or is not safetensors.
    """
    data = read_regular_bytes(path, what)
    try:
        tensors = load(data)  # checks the header, offsets and sizes; tensors own their memory
        (size,) = struct.unpack("<Q", data[:8])
        metadata = json.loads(data[8 : 8 + size]).get("__metadata__") or {}
    except (SafetensorError, ValueError, RecursionError, struct.error) as e:
        raise ValueError(f"{path} is not a readable safetensors file ({e})") from None
    return metadata, tensors
