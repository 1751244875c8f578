"""The benchmark's cache: one directory per config key, written atomically, read without pickle.

Layout: ``<cache_dir>/forensic/<key>/{arrays.npz, meta.json, generators.safetensors}``; images
are stored as uint8 and served as float32 in [0, 1]; the fitted generator families are stored
so the training stream makes its fakes with the models that made the cached ones.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from torch import nn

from assocmem.forensic.data.autoencoders import make_generator
from assocmem.forensic.data.config import FORMAT_VERSION, REAL, SPLITS, BenchmarkConfig
from assocmem.forensic.data.families import LEARNED_FAMILIES
from assocmem.forensic.data.photos import PHOTO_GROUP, load_photos
from assocmem.forensic.data.pipeline import (
    _clean_reals,
    _generate_benchmark,
    build_threads,
    fit_families,
)
from assocmem.forensic.data.splits import ForensicBenchmark, SplitArrays

__all__ = ["build_benchmark", "cached_build", "default_cache_dir", "fitted_generators"]


def default_cache_dir() -> Path:
    """``$ASSOCMEM_CACHE`` if set, else ``~/.cache/assocmem``."""
    env = os.environ.get("ASSOCMEM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "assocmem"


_FIELDS = ("images", "labels", "family", "source", "parent", "post")


def _umask() -> int:
    """The process's umask (reading it means setting it: set back at once)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _save(bench: ForensicBenchmark, directory: Path, build_seconds: float) -> None:
    # directory.parent exists: cached_build made it before the build
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=".tmp-"))
    # mkdtemp makes it 0700: under a shared $ASSOCMEM_CACHE other users could not read the
    # entry; it gets the mode a folder made here gets (the umask's)
    tmp.chmod(0o777 & ~_umask())
    try:
        arrays = {
            f"{s}/{f}": getattr(a, f).numpy() for s, a in bench.splits.items() for f in _FIELDS
        }
        np.savez_compressed(tmp / "arrays.npz", **arrays)
        meta = {
            "format_version": getattr(bench.config, "FORMAT_VERSION", FORMAT_VERSION),
            "key": bench.config.key(),
            "config": bench.config.to_dict(),
            "family_names": list(bench.family_names),
            "source_names": list(bench.source_names),
            "counts": bench.counts(),
            "build_seconds": round(build_seconds, 2),
            **bench.meta,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
        if bench.generators is not None:
            _save_generators(bench.generators, tmp / _GENERATORS)
        # rename is atomic: a concurrent reader sees either no entry or a complete one
        try:
            tmp.rename(directory)
        except OSError:
            if not (directory / "meta.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


class DamagedEntry(ValueError):
    """A cache entry that cannot be read, or is not what its key says (rebuilt, not served)."""


def _load(config: Any, directory: Path) -> ForensicBenchmark:
    """The entry at ``directory``, checked: its meta names this config's key and format
    version, and every split's arrays are whole (uint8 images, one row each in every field,
    labels that say fake exactly where the family does). A ``DamagedEntry`` naming the entry
    otherwise: a truncated or edited file was served as it was, or failed in numpy's zip or
    JSON reader without a path."""
    try:
        meta = json.loads((directory / "meta.json").read_text())
        with np.load(directory / "arrays.npz") as z:
            splits = {
                s: SplitArrays(**{f: torch.from_numpy(z[f"{s}/{f}"]) for f in _FIELDS})
                for s in SPLITS
            }
    # zlib.error: a flipped bit in the compressed arrays
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise DamagedEntry(f"cache entry {directory} cannot be read ({error!r})") from None
    version = getattr(config, "FORMAT_VERSION", FORMAT_VERSION)
    problems = []
    if not isinstance(meta, dict):
        problems.append("its meta.json is not a mapping")
        meta = {}
    if meta.get("key") != config.key() or meta.get("format_version") != version:
        problems.append(
            f"its meta.json names key {meta.get('key')!r}, format {meta.get('format_version')!r}"
        )
    # an image (3, P, P); a clip (T, 3, P, P)
    patch = int(config.patch_size)
    shape = (*((int(config.frames),) if hasattr(config, "frames") else ()), 3, patch, patch)
    for name, split in splits.items():
        rows = {f: len(getattr(split, f)) for f in _FIELDS}
        if split.images.dtype != torch.uint8 or len(set(rows.values())) != 1:
            problems.append(f"{name}: {split.images.dtype} images, rows {rows}")
        elif tuple(split.images.shape[1:]) != shape:
            problems.append(f"{name}: items of {tuple(split.images.shape[1:])}, not {shape}")
        elif not torch.equal(split.labels.bool(), split.family > 0):
            problems.append(f"{name}: labels that disagree with the families")
    if not problems:
        problems += _meta_problems(config, meta, splits)
    if problems:
        raise DamagedEntry(f"cache entry {directory} is not this config's: {'; '.join(problems)}")
    extra = {k: meta[k] for k in ("split_of_group", "gray_sources", "source_formats") if k in meta}
    extra["build_seconds"] = meta.get("build_seconds")
    extra["loaded_from_cache"] = True
    return ForensicBenchmark(config, splits, meta["family_names"], meta["source_names"], extra)


def _meta_problems(config: Any, meta: dict[str, Any], splits: dict[str, SplitArrays]) -> list[str]:
    """What in ``meta`` disagrees with the config or the arrays: the family names the build
    gives (swapped names mislabelled every per-family result), photo names that number every
    row's source, and a photo split under which every row lies in its own split (a photo moved
    from val to train in ``split_of_group`` was cropped by the training stream)."""
    families = meta.get("family_names")
    if families != [REAL, *config.families]:
        return [f"its family names {families!r} are not {[REAL, *config.families]}"]
    sources, split_of_group = meta.get("source_names"), meta.get("split_of_group")
    if (
        not isinstance(sources, list)
        or not all(isinstance(n, str) and n in PHOTO_GROUP for n in sources)
        or len(set(sources)) != len(sources)
    ):
        return [f"its photo names {sources!r} are not distinct names of built photos"]
    if not isinstance(split_of_group, dict) or not set(split_of_group.values()) <= set(SPLITS):
        return [f"its split_of_group {split_of_group!r} does not map groups to {SPLITS}"]
    missing = sorted({PHOTO_GROUP[n] for n in sources} - set(split_of_group))
    if missing:
        return [f"its split_of_group lacks the groups {missing}"]
    problems = []
    for name, split in splits.items():
        codes = split.source.unique().tolist()
        if codes and not 0 <= min(codes) <= max(codes) < len(sources):
            problems.append(f"{name}: source codes outside its {len(sources)} photo names")
            continue
        elsewhere = sorted(
            sources[c] for c in codes if split_of_group[PHOTO_GROUP[sources[c]]] != name
        )
        if elsewhere:
            problems.append(f"{name}: rows of {elsewhere}, which split_of_group puts elsewhere")
    return problems


def _set_aside(directory: Path) -> None:
    """Move a damaged entry out of its key's place (``_save`` then writes the new one there
    with one rename), and remove it."""
    aside = directory.with_name(f".damaged-{directory.name}-{os.getpid()}")
    try:
        directory.rename(aside)
    except OSError:  # another process set it aside first, or rebuilt it already
        return
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside, ignore_errors=True)
    else:  # a file or a link where the entry's folder belongs
        aside.unlink(missing_ok=True)


_GENERATORS = "generators.safetensors"


def _save_generators(models: dict[str, nn.Module], path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {
        f"{fam}/{name}": t.detach().contiguous()
        for fam, model in models.items()
        for name, t in model.state_dict().items()
    }
    save_file(tensors, str(path))
    # safetensors writes 0600: under a shared $ASSOCMEM_CACHE the stream of another user could
    # not read the models the rest of the entry (0644 under umask 022) names
    path.chmod(0o666 & ~_umask())


def _load_generators(config: BenchmarkConfig, path: Path) -> dict[str, nn.Module]:
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    models = {}
    for fam in (f for f in config.families if f in LEARNED_FAMILIES):
        model = make_generator(LEARNED_FAMILIES[fam], 0, config.generators.ae_width)
        prefix = f"{fam}/"
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        model.load_state_dict(state)  # strict: a missing or extra tensor is an error
        models[fam] = model.eval()
    return models


def fitted_generators(bench: ForensicBenchmark) -> dict[str, nn.Module]:
    """The learned families' models that made ``bench``'s fakes.

    Taken from the build, else read from the cache entry (safetensors, no unpickling), else
    (an entry written before generators were cached) refitted with the build's own seeds on the
    same clean train reals, and saved into the entry for next time.
    """
    if bench.generators is not None:
        return bench.generators
    path = bench.cache_entry / _GENERATORS if bench.cache_entry is not None else None
    if path is not None and path.exists():
        try:
            bench.generators = _load_generators(bench.config, path)
            return bench.generators
        except (OSError, ValueError, RuntimeError, SafetensorError) as error:
            # damaged (cut short, not safetensors, another network's tensors): refit as for
            # an entry without them, never fail every later run on the same file
            warnings.warn(f"{path} cannot be read ({error}); fitting them again", stacklevel=2)
    config = bench.config
    _, _, reals = _clean_reals(config, load_photos(config.photos))
    bench.generators = fit_families(config, reals["train"][0])
    if path is not None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        _save_generators(bench.generators, tmp)
        tmp.replace(path)  # atomic, like the entry itself
    return bench.generators


def build_benchmark(
    config: BenchmarkConfig | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    progress: bool = True,
    use_cache: bool = True,
) -> ForensicBenchmark:
    """Build (or load from cache) the offline forensic benchmark for ``config``.

    ``cache_dir`` defaults to ``default_cache_dir()``; ``use_cache=False`` neither reads nor
    writes it. ``bench.meta["loaded_from_cache"]`` tells whether this call rebuilt anything.
    """
    config = config or BenchmarkConfig()
    return cached_build(
        config, "forensic", lambda: _generate_benchmark(config, progress), cache_dir, use_cache
    )


def cached_build(
    config: Any,
    kind: str,
    generate: Callable[[], ForensicBenchmark],
    cache_dir: str | os.PathLike[str] | None,
    use_cache: bool,
) -> ForensicBenchmark:
    """The entry ``<cache_dir>/<kind>/<config.key()>`` if it exists, else ``generate()`` saved
    there (atomically). ``config`` is any frozen config with ``key()`` and ``to_dict()``: the
    image benchmark's ``BenchmarkConfig`` (kind ``forensic``) or the clip benchmark's."""
    directory = Path(cache_dir or default_cache_dir()) / kind / config.key()
    # an entry is whole or absent (_save renames it into place): anything at its path without
    # a readable meta.json is damaged, and set aside (a folder left without it by a partial
    # removal made every build fail in the rename, "Directory not empty")
    if use_cache and (directory.exists() or directory.is_symlink()):
        try:
            bench = _load(config, directory)
        except DamagedEntry as error:
            # a cache: rebuilt beside it, and the damaged entry replaced once the new one is
            # whole (never served, never left half-replaced)
            warnings.warn(f"{error}; building it again", stacklevel=3)
            _set_aside(directory)
        else:
            bench.cache_entry = directory
            return bench
    if use_cache:  # a folder that cannot hold the entry: said now, not after the build
        try:
            directory.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OSError(
                f"the benchmark cache {directory.parent} cannot be made ({error}); give "
                "another cache_dir (or $ASSOCMEM_CACHE), or use_cache=False"
            ) from error
        if not os.access(directory.parent, os.W_OK | os.X_OK):
            raise PermissionError(
                f"the benchmark cache {directory.parent} is not writable; give another "
                "cache_dir (or $ASSOCMEM_CACHE), or use_cache=False"
            )
    start = time.perf_counter()
    with build_threads():
        bench = generate()
    seconds = time.perf_counter() - start
    bench.meta["build_seconds"] = round(seconds, 2)
    bench.meta["loaded_from_cache"] = False
    if use_cache:
        _save(bench, directory, seconds)
        bench.cache_entry = directory
    return bench
