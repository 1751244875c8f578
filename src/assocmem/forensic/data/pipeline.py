"""Building the benchmark from its config: photos -> patches -> split -> fakes -> post-processing.

Every random choice comes from a numpy generator derived from ``config.seed``, never from global
state, and the build runs on a fixed number of torch threads (:func:`build_threads`), so a
config always builds the same bytes on one machine (the cache key relies on it; other CPU
kernels round otherwise).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from assocmem.forensic.data.config import REAL, SPLITS, BenchmarkConfig
from assocmem.forensic.data.families import LEARNED_FAMILIES, fit_generator, generate
from assocmem.forensic.data.patches import cut_patches
from assocmem.forensic.data.photos import Photo, load_photos
from assocmem.forensic.data.postprocess import postprocess
from assocmem.forensic.data.splits import ForensicBenchmark, SplitArrays


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


# The torch thread count of every build: the generators' training and forward passes reduce in
# an order set by it, and 2 is what built the caches every documented result was measured on
# (the sessions' builds ran at the 2-core machines' default; a 1-thread build differed in every
# learned fake, by up to 54 grey levels).
BUILD_THREADS = 2


@contextlib.contextmanager
def build_threads() -> Iterator[None]:
    """Run the block on :data:`BUILD_THREADS` torch intra-op threads, then restore the count.
    The same key built 24 of its 36 tiny test fakes differently under 1 and 2 threads (up to 19
    grey levels), and a refit in a process of another count did not equal the models that made
    the cache's fakes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(BUILD_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _generate_benchmark(config: BenchmarkConfig, progress: bool) -> ForensicBenchmark:
    """Steps 1-5 (``cached_build`` runs it under :func:`build_threads`)."""
    photos = load_photos(config.photos)
    learned = [f for f in config.families if f in LEARNED_FAMILIES]
    bar = _progress(len(photos) + len(learned) + len(SPLITS) * (len(config.families) + 1), progress)
    patches, assignment, reals = _clean_reals(config, photos, bar)

    models = fit_families(config, reals["train"][0], bar)

    family_names = (REAL, *config.families)
    splits: dict[str, SplitArrays] = {}
    for s_idx, split in enumerate(SPLITS):
        imgs, src, is_gray = reals[split]
        splits[split] = make_split(config, s_idx, imgs, src, is_gray, models, bar, split)
    bar.close()
    meta = {
        "split_of_group": assignment,
        "gray_sources": [ph.name for ph in photos if ph.gray],
        "source_formats": {ph.name: ph.file_format for ph in photos},
    }
    bench = ForensicBenchmark(config, splits, family_names, [p.name for p in photos], meta)
    bench.generators = models
    return bench


def make_split(
    config: BenchmarkConfig,
    s_idx: int,
    imgs: np.ndarray,
    src: np.ndarray,
    is_gray: np.ndarray,
    models: dict[str, torch.nn.Module],
    bar: Any = None,
    name: str = "",
) -> SplitArrays:
    """Steps 4-5 for one split's clean reals: per family a seeded ``fake_fraction`` of them made
    fake (seeds ``[seed, 3, s_idx, family]``), then every patch post-processed (``[seed, 4,
    s_idx]``). ``s_idx`` is the split's index in ``SPLITS``; the fresh test split takes the
    next one, so its draws are its own."""
    seed = config.seed
    bar = bar if bar is not None else _progress(0, False)
    n = len(imgs)
    parts_img, parts_fam, parts_src, parts_parent = [imgs], [np.zeros(n, np.int64)], [src], []
    parts_parent.append(np.full(n, -1, np.int64))
    for f_idx, fam in enumerate(config.families):
        bar.set_postfix_str(f"{name} {fam}")
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
        fakes = gray_where(fakes, is_gray[rows])
        parts_img.append(fakes)
        parts_fam.append(np.full(m, f_idx + 1, np.int64))
        parts_src.append(src[rows])
        parts_parent.append(rows.astype(np.int64))
        bar.update()
    bar.set_postfix_str(f"{name} post-processing")
    all_imgs = np.concatenate(parts_img)
    all_imgs, flags = postprocess(all_imgs, config.post, np.random.default_rng([seed, 4, s_idx]))
    split = SplitArrays.from_parts(
        all_imgs, np.concatenate(parts_fam), parts_src, parts_parent, flags
    )
    bar.update()
    return split


def fit_families(
    config: BenchmarkConfig, train_reals: np.ndarray, bar: Any = None
) -> dict[str, torch.nn.Module]:
    """Step 3: the learned families' models, fitted on the clean train reals with the build's
    seeds (``seed * 1000 + k`` for the k-th learned family), so a refit equals the build's."""
    bar = bar if bar is not None else _progress(0, False)
    models = {}
    learned = [f for f in config.families if f in LEARNED_FAMILIES]
    with build_threads():  # as the build fitted them (a refit equals the build's)
        for k, fam in enumerate(learned):
            bar.set_postfix_str(f"train {fam}")
            seed = config.seed * 1000 + k
            models[fam] = fit_generator(fam, train_reals, config.generators, seed)
            bar.update()
    return models


def gray_where(fakes: np.ndarray, gray: np.ndarray) -> np.ndarray:
    """Fakes of gray photos projected back to gray (in place): colour must not be the label."""
    if gray.any():
        mean = fakes[gray].astype(np.float32).mean(axis=1, keepdims=True)
        fakes[gray] = np.repeat(np.round(mean).astype(np.uint8), 3, axis=1)
    return fakes


def photo_patches(config: BenchmarkConfig, photo: Photo, rng: np.random.Generator) -> np.ndarray:
    """Step 1 for one photo: its patches (uint8 (N, 3, P, P)) as the config cuts them."""
    return cut_patches(
        photo.pixels,
        config.patch_size,
        config.stride or config.patch_size,
        scales=config.scales,
        min_std=config.min_std,
        max_patches=config.max_patches_per_photo,
        rng=rng,
    )


def _clean_reals(
    config: BenchmarkConfig, photos: Sequence[Photo], bar: Any = None
) -> tuple[list[np.ndarray], dict[str, str], dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Steps 1-2 of the pipeline: every photo's patches, the split of each photo group, and per
    split the clean real patches with their photo index and gray flag (before any fake or
    post-processing). Deterministic in ``config``; the learned families are fitted on
    ``reals["train"][0]``."""
    seed = config.seed
    bar = bar if bar is not None else _progress(0, False)
    patches, gray = [], []
    for i, photo in enumerate(photos):
        bar.set_postfix_str(f"patches {photo.name}")
        patches.append(photo_patches(config, photo, np.random.default_rng([seed, 1, i])))
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
