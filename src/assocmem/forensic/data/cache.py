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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from assocmem.forensic.data.autoencoders import make_generator
from assocmem.forensic.data.config import FORMAT_VERSION, SPLITS, BenchmarkConfig
from assocmem.forensic.data.families import LEARNED_FAMILIES
from assocmem.forensic.data.photos import load_photos
from assocmem.forensic.data.pipeline import _clean_reals, _generate_benchmark, fit_families
from assocmem.forensic.data.splits import ForensicBenchmark, SplitArrays

__all__ = ["build_benchmark", "cached_build", "default_cache_dir", "fitted_generators"]


def default_cache_dir() -> Path:
    """``$ASSOCMEM_CACHE`` if set, else ``~/.cache/assocmem``."""
    env = os.environ.get("ASSOCMEM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "assocmem"


_FIELDS = ("images", "labels", "family", "source", "parent", "post")


def _save(bench: ForensicBenchmark, directory: Path, build_seconds: float) -> None:
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=".tmp-"))
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


def _load(config: BenchmarkConfig, directory: Path) -> ForensicBenchmark:
    meta = json.loads((directory / "meta.json").read_text())
    with np.load(directory / "arrays.npz") as z:
        splits = {
            s: SplitArrays(**{f: torch.from_numpy(z[f"{s}/{f}"]) for f in _FIELDS}) for s in SPLITS
        }
    extra = {k: meta[k] for k in ("split_of_group", "gray_sources", "source_formats") if k in meta}
    extra["build_seconds"] = meta.get("build_seconds")
    extra["loaded_from_cache"] = True
    return ForensicBenchmark(config, splits, meta["family_names"], meta["source_names"], extra)


_GENERATORS = "generators.safetensors"


def _save_generators(models: dict[str, nn.Module], path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {
        f"{fam}/{name}": t.detach().contiguous()
        for fam, model in models.items()
        for name, t in model.state_dict().items()
    }
    save_file(tensors, str(path))


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
        bench.generators = _load_generators(bench.config, path)
        return bench.generators
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
    if use_cache and (directory / "meta.json").exists():
        bench = _load(config, directory)
        bench.cache_entry = directory
        return bench
    start = time.perf_counter()
    bench = generate()
    seconds = time.perf_counter() - start
    bench.meta["build_seconds"] = round(seconds, 2)
    bench.meta["loaded_from_cache"] = False
    if use_cache:
        _save(bench, directory, seconds)
        bench.cache_entry = directory
    return bench
