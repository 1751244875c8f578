"""The built-in offline benchmark: build from a seed, cache on disk, hand out per-split subsets.

Pipeline (every random choice comes from a numpy/torch generator derived from ``config.seed``,
never from global state):

1. load the wheel-bundled photos (``photos.py``), cut them into patches (``patches.py``);
2. assign photo *groups* to train/val/test so no scene is in two splits, balancing patch counts;
3. fit the learned generator families on train-split real patches only;
4. per split and family, turn a seeded ``fake_fraction`` of the clean reals into fakes (``parent``
   records which real); fakes of grayscale photos are projected back to gray;
5. post-process every patch, real or fake, with the same coin flips (``postprocess.py``).

Cache layout: ``<cache_dir>/forensic/<key>/{arrays.npz,meta.json}`` where ``key`` hashes the full
config and ``FORMAT_VERSION``; images are stored as uint8 and served as float32 in [0, 1].
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from assocmem.forensic.data.autoencoders import make_generator
from assocmem.forensic.data.families import (
    FAMILY_NAMES,
    LEARNED_FAMILIES,
    GeneratorSettings,
    fit_generator,
    generate,
)
from assocmem.forensic.data.patches import cut_patches
from assocmem.forensic.data.photos import Photo, load_photos
from assocmem.forensic.data.postprocess import PostProcessConfig, postprocess

__all__ = [
    "FORMAT_VERSION",
    "SPLITS",
    "BenchmarkConfig",
    "ForensicBenchmark",
    "ForensicSubset",
    "SplitArrays",
    "build_benchmark",
    "default_cache_dir",
    "fitted_generators",
]

FORMAT_VERSION = 1
SPLITS: tuple[str, ...] = ("train", "val", "test")
REAL = "real"  # family name of real images; family code 0
_TINY_PHOTOS = ("astronaut", "coffee", "camera", "china", "rocket")


@dataclass(frozen=True)
class BenchmarkConfig:
    """Everything that determines the benchmark's bytes (hashed into the cache key)."""

    patch_size: int = 32
    stride: int | None = None  # None: non-overlapping (stride = patch_size)
    scales: tuple[float, ...] = (1.0, 0.5)  # pyramid levels cut into patches
    photos: tuple[str, ...] | None = None  # None: every photo in photos.PHOTO_NAMES
    max_patches_per_photo: int | None = 256
    min_std: float = 4.0  # drop near-flat patches (0..255 units)
    families: tuple[str, ...] = FAMILY_NAMES
    fake_fraction: float = 0.5  # per family, this fraction of each split's reals gets a fake
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    seed: int = 0
    generators: GeneratorSettings = field(default_factory=GeneratorSettings)
    post: PostProcessConfig = field(default_factory=PostProcessConfig)

    def __post_init__(self) -> None:
        if self.patch_size < 8 or self.patch_size % 4:
            raise ValueError(f"patch_size must be a multiple of 4 and >= 8, got {self.patch_size}")
        unknown = [f for f in self.families if f not in FAMILY_NAMES]
        if unknown or not self.families:
            raise ValueError(
                f"families must be a non-empty subset of {FAMILY_NAMES}, got {unknown}"
            )
        if len(self.split_fractions) != 3 or abs(sum(self.split_fractions) - 1.0) > 1e-6:
            raise ValueError(
                f"split_fractions must be 3 numbers summing to 1, got {self.split_fractions}"
            )
        if not 0.0 < self.fake_fraction <= 1.0:
            raise ValueError(f"fake_fraction must be in (0, 1], got {self.fake_fraction}")

    @classmethod
    def tiny(cls, **overrides: object) -> BenchmarkConfig:
        """A few photos, few patches, generators trained a handful of steps: builds in seconds,
        for tests and smoke runs. Keyword overrides replace any field."""
        base: dict[str, object] = {
            "photos": _TINY_PHOTOS,
            "scales": (1.0,),
            "max_patches_per_photo": 12,
            "fake_fraction": 1.0,
            "generators": GeneratorSettings(ae_steps=5, denoiser_steps=5),
        }
        base.update(overrides)
        return cls(**base)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    def key(self) -> str:
        """Hash of the config and the storage format: a changed config gets a new cache entry."""
        blob = json.dumps({"v": FORMAT_VERSION, **self.to_dict()}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SplitArrays:
    """One split, all rows aligned: ``images`` uint8 (N, 3, P, P); ``labels`` 0 real / 1 fake;
    ``family`` codes into ``ForensicBenchmark.family_names`` (0 = "real"); ``source`` codes into
    ``source_names`` (the photo); ``parent`` the row of the real a fake was made from (-1 for
    reals); ``post`` the POST_* flags of the shared post-processing."""

    images: Tensor
    labels: Tensor
    family: Tensor
    source: Tensor
    parent: Tensor
    post: Tensor

    def __len__(self) -> int:
        return len(self.labels)


class ForensicSubset(Dataset):
    """Rows of one split: yields ``(image float32 (3, P, P) in [0, 1], label int64)``.

    ``tensors`` mirrors ``TensorDataset`` for full-batch code; uint8 storage is kept and
    converted per access so a subset costs a quarter of the float memory.
    """

    def __init__(self, arrays: SplitArrays, rows: Tensor, family_names: Sequence[str]) -> None:
        self.images_uint8 = arrays.images[rows]
        self.labels = arrays.labels[rows]
        self.family = arrays.family[rows]
        self.source = arrays.source[rows]
        self.post = arrays.post[rows]
        self.family_names = tuple(family_names)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images_uint8[index].float().div_(255.0), self.labels[index]

    @property
    def images(self) -> Tensor:
        return self.images_uint8.float().div_(255.0)

    @property
    def tensors(self) -> tuple[Tensor, Tensor]:
        return self.images, self.labels

    def family_of(self, index: int) -> str:
        return self.family_names[int(self.family[index])]


class ForensicBenchmark:
    """A built benchmark: per-split arrays plus the name tables, and ``split`` to subset."""

    def __init__(
        self,
        config: BenchmarkConfig,
        splits: dict[str, SplitArrays],
        family_names: Sequence[str],
        source_names: Sequence[str],
        meta: dict[str, object] | None = None,
    ) -> None:
        self.config = config
        self.splits = splits
        self.family_names = tuple(family_names)
        self.source_names = tuple(source_names)
        self.meta = meta or {}
        # The fitted learned families (set by a build, or read back by ``fitted_generators``):
        # the training stream makes its fakes with the very models that made the cached ones.
        self.generators: dict[str, nn.Module] | None = None
        self.cache_entry: Path | None = None

    def arrays(self, name: str) -> SplitArrays:
        if name not in self.splits:
            raise KeyError(f"unknown split {name!r}; expected one of {SPLITS}")
        return self.splits[name]

    def split(
        self, name: str, families: Sequence[str] | None = None, *, include_real: bool = True
    ) -> ForensicSubset:
        """Reals of split ``name`` plus the fakes of ``families`` (default: all families).

        ``split("train", ["ae_transconv"])`` and ``split("test", ["splice"])`` is the held-out
        family protocol.
        """
        arrays = self.arrays(name)
        fams = self.config.families if families is None else tuple(families)
        unknown = [f for f in fams if f not in self.family_names or f == REAL]
        if unknown:
            raise ValueError(f"unknown families {unknown}; available: {self.config.families}")
        codes = [self.family_names.index(f) for f in fams] + ([0] if include_real else [])
        rows = torch.isin(arrays.family, torch.tensor(codes, dtype=torch.int64)).nonzero().flatten()
        return ForensicSubset(arrays, rows, self.family_names)

    def counts(self) -> dict[str, dict[str, int]]:
        """{split: {family name: number of images}}."""
        out: dict[str, dict[str, int]] = {}
        for name, arr in self.splits.items():
            codes = torch.bincount(arr.family, minlength=len(self.family_names)).tolist()
            out[name] = {f: int(c) for f, c in zip(self.family_names, codes, strict=True) if c}
        return out

    def sources(self, name: str) -> set[str]:
        return {self.source_names[i] for i in self.arrays(name).source.unique().tolist()}


def default_cache_dir() -> Path:
    """``$ASSOCMEM_CACHE`` if set, else ``~/.cache/assocmem``."""
    env = os.environ.get("ASSOCMEM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "assocmem"


def _assign_groups(
    group_sizes: dict[str, int], fractions: Sequence[float], rng: np.random.Generator
) -> dict[str, str]:
    """Groups -> split names. Seeded order; each split first gets one group, then each next group
    goes to the split furthest below its target patch count (greedy balancing)."""
    groups = list(group_sizes)
    if len(groups) < len(SPLITS):
        raise ValueError(f"need at least {len(SPLITS)} photo groups to split, got {groups}")
    order = [groups[i] for i in rng.permutation(len(groups))]
    total = sum(group_sizes.values())
    have = dict.fromkeys(SPLITS, 0)
    out: dict[str, str] = {}
    for k, g in enumerate(order):
        if k < len(SPLITS):
            split = SPLITS[k]
        else:
            split = max(SPLITS, key=lambda s: fractions[SPLITS.index(s)] * total - have[s])
        out[g] = split
        have[split] += group_sizes[g]
    return out


def _progress(total: int, enabled: bool):  # noqa: ANN202 - tqdm or a no-op stand-in
    if enabled:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc="forensic benchmark", unit="step")

    class _Null:
        def update(self, n: int = 1) -> None: ...
        def set_postfix_str(self, s: str) -> None: ...
        def close(self) -> None: ...

    return _Null()


def _generate_benchmark(config: BenchmarkConfig, progress: bool) -> ForensicBenchmark:
    seed = config.seed
    photos = load_photos(config.photos)
    learned = [f for f in config.families if f in LEARNED_FAMILIES]
    bar = _progress(len(photos) + len(learned) + len(SPLITS) * (len(config.families) + 1), progress)
    patches, assignment, reals = _clean_reals(config, photos, bar)

    models = {}
    for k, fam in enumerate(learned):
        bar.set_postfix_str(f"train {fam}")
        models[fam] = fit_generator(fam, reals["train"][0], config.generators, seed * 1000 + k)
        bar.update()

    family_names = (REAL, *config.families)
    splits: dict[str, SplitArrays] = {}
    for s_idx, split in enumerate(SPLITS):
        imgs, src, is_gray = reals[split]
        n = len(imgs)
        parts_img, parts_fam, parts_src, parts_parent = [imgs], [np.zeros(n, np.int64)], [src], []
        parts_parent.append(np.full(n, -1, np.int64))
        for f_idx, fam in enumerate(config.families):
            bar.set_postfix_str(f"{split} {fam}")
            rng = np.random.default_rng([seed, 3, s_idx, f_idx])
            m = max(1, round(config.fake_fraction * n))
            rows = np.sort(rng.choice(n, size=m, replace=False))
            fakes = generate(
                fam,
                imgs[rows],
                rng=rng,
                settings=config.generators,
                models=models,
                donors=imgs,
                sources=src[rows],
                donor_sources=src,
            )
            g = is_gray[rows]
            if g.any():  # gray photo -> gray fake: colour is not allowed to be the label
                mean = fakes[g].astype(np.float32).mean(axis=1, keepdims=True)
                fakes[g] = np.repeat(np.round(mean).astype(np.uint8), 3, axis=1)
            parts_img.append(fakes)
            parts_fam.append(np.full(m, f_idx + 1, np.int64))
            parts_src.append(src[rows])
            parts_parent.append(rows.astype(np.int64))
            bar.update()
        bar.set_postfix_str(f"{split} post-processing")
        all_imgs = np.concatenate(parts_img)
        all_imgs, flags = postprocess(
            all_imgs, config.post, np.random.default_rng([seed, 4, s_idx])
        )
        fam_codes = np.concatenate(parts_fam)
        splits[split] = SplitArrays(
            images=torch.from_numpy(all_imgs),
            labels=torch.from_numpy((fam_codes > 0).astype(np.int64)),
            family=torch.from_numpy(fam_codes),
            source=torch.from_numpy(np.concatenate(parts_src)),
            parent=torch.from_numpy(np.concatenate(parts_parent)),
            post=torch.from_numpy(flags),
        )
        bar.update()
    bar.close()
    meta = {
        "split_of_group": assignment,
        "gray_sources": [ph.name for ph in photos if ph.gray],
        "source_formats": {ph.name: ph.file_format for ph in photos},
    }
    bench = ForensicBenchmark(config, splits, family_names, [p.name for p in photos], meta)
    bench.generators = models
    return bench


def _clean_reals(
    config: BenchmarkConfig, photos: Sequence[Photo], bar: Any = None
) -> tuple[list[np.ndarray], dict[str, str], dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Steps 1-2 of the pipeline: every photo's patches, the split of each photo group, and per
    split the clean real patches with their photo index and gray flag (before any fake or
    post-processing). Deterministic in ``config``; the learned families are fitted on
    ``reals["train"][0]``."""
    seed = config.seed
    bar = bar if bar is not None else _progress(0, False)
    stride = config.stride or config.patch_size
    patches, gray = [], []
    for i, photo in enumerate(photos):
        bar.set_postfix_str(f"patches {photo.name}")
        p = cut_patches(
            photo.pixels,
            config.patch_size,
            stride,
            scales=config.scales,
            min_std=config.min_std,
            max_patches=config.max_patches_per_photo,
            rng=np.random.default_rng([seed, 1, i]),
        )
        patches.append(p)
        gray.append(photo.gray)
        bar.update()

    group_sizes: dict[str, int] = {}
    for photo, p in zip(photos, patches, strict=True):
        group_sizes[photo.group] = group_sizes.get(photo.group, 0) + len(p)
    assignment = _assign_groups(
        group_sizes, config.split_fractions, np.random.default_rng([seed, 2])
    )

    reals: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for split in SPLITS:
        idx = [i for i, ph in enumerate(photos) if assignment[ph.group] == split]
        imgs = np.concatenate([patches[i] for i in idx])
        src = np.concatenate([np.full(len(patches[i]), i, np.int64) for i in idx])
        is_gray = np.array([gray[i] for i in src], dtype=bool)
        reals[split] = (imgs, src, is_gray)
    return patches, assignment, reals


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
            "format_version": FORMAT_VERSION,
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
    learned = [f for f in config.families if f in LEARNED_FAMILIES]
    bench.generators = {
        fam: fit_generator(fam, reals["train"][0], config.generators, config.seed * 1000 + k)
        for k, fam in enumerate(learned)
    }
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
    directory = Path(cache_dir or default_cache_dir()) / "forensic" / config.key()
    if use_cache and (directory / "meta.json").exists():
        bench = _load(config, directory)
        bench.cache_entry = directory
        return bench
    start = time.perf_counter()
    bench = _generate_benchmark(config, progress)
    seconds = time.perf_counter() - start
    bench.meta["build_seconds"] = round(seconds, 2)
    bench.meta["loaded_from_cache"] = False
    if use_cache:
        _save(bench, directory, seconds)
        bench.cache_entry = directory
    return bench
