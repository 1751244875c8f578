"""Building the clip benchmark from its config, and its cache entry.

1. build (or load from cache) the image benchmark ``config.images``: its split of photo groups,
   its fitted generator families and its post-processing are reused, so a photo is in the same
   split in both benchmarks and the learned families are the very models of the image fakes;
2. per split, ``clips_per_photo`` real clips of each of its photos (``camera.py``);
3. per split and family, a seeded ``fake_fraction`` of the real clips becomes fakes
   (``fakes.py``; ``parent`` records which real clip); fakes of gray photos are made gray again;
4. every clip, real or fake, goes through the image benchmark's post-processing with one set of
   coin flips per clip, shared by its frames (a video is re-encoded as a whole).

Every random choice comes from a numpy generator derived from ``config.seed``, so a config always
builds the same bytes. The result is a :class:`ForensicBenchmark` whose ``images`` are clips
(N, T, 3, P, P) uint8, so ``split``, ``balanced`` and ``zero_shot_report`` serve it unchanged.
Cache layout: ``<cache_dir>/clips/<key>/{arrays.npz, meta.json}``.
"""

from __future__ import annotations

import os

import numpy as np

from assocmem.forensic.data.cache import build_benchmark, cached_build, fitted_generators
from assocmem.forensic.data.clips.camera import min_level_side, real_clip
from assocmem.forensic.data.clips.config import ClipConfig
from assocmem.forensic.data.clips.fakes import fake_clips
from assocmem.forensic.data.config import REAL, SPLITS
from assocmem.forensic.data.families import LEARNED_FAMILIES
from assocmem.forensic.data.patches import rescale
from assocmem.forensic.data.photos import Photo, load_photos
from assocmem.forensic.data.pipeline import _progress, gray_where
from assocmem.forensic.data.postprocess import PostProcessConfig, postprocess
from assocmem.forensic.data.splits import ForensicBenchmark, SplitArrays

__all__ = ["build_clip_benchmark", "postprocess_clips"]


def postprocess_clips(
    clips: np.ndarray, config: PostProcessConfig, seed: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Post-process (N, T, 3, P, P) uint8 clips; each frame of clip ``k`` draws from a generator
    seeded ``(*seed, k)``, so all its frames get the same coin flips and parameters. Returns
    (clips, per-clip POST_* flags)."""
    out = np.empty_like(clips)
    flags = np.zeros(len(clips), np.int64)
    for k, clip in enumerate(clips):
        for f, frame in enumerate(clip):
            done, flag = postprocess(frame[None], config, np.random.default_rng([*seed, k]))
            out[k, f], flags[k] = done[0], flag[0]
    return out, flags


def camera_levels(config: ClipConfig, photos: list[Photo]) -> list[list[np.ndarray]]:
    """Each photo's pyramid levels on which every camera path of ``config`` fits; a
    ``ValueError`` naming a photo on which none does (checked before the image benchmark is
    built: it came after, its generators fitted for nothing)."""
    need = min_level_side(config)
    levels = []
    for photo in photos:
        fits = []
        for scale in config.images.scales:
            level = rescale(photo.pixels, scale)
            if min(level.shape[:2]) >= need:
                fits.append(level)
        if not fits:
            raise ValueError(f"photo {photo.name!r} is smaller than a camera path ({need:.0f} px)")
        levels.append(fits)
    return levels


def _generate(
    config: ClipConfig,
    images: ForensicBenchmark,
    progress: bool,
    photos: list[Photo],
    levels: list[list[np.ndarray]],
) -> ForensicBenchmark:
    """The clips of ``config`` from the image benchmark ``images``; ``photos`` and their
    ``levels`` (:func:`camera_levels`) as ``build_clip_benchmark`` checked them."""
    seed, frames, size = config.seed, config.frames, config.patch_size
    split_of_group = images.meta.get("split_of_group")
    if not split_of_group:
        raise ValueError("the image benchmark has no photo split (meta['split_of_group'])")
    learned = [f for f in config.families if f in LEARNED_FAMILIES]
    models = fitted_generators(images) if learned else {}
    bar = _progress(len(SPLITS) * (len(config.families) + 2), progress)
    splits: dict[str, SplitArrays] = {}
    for s_idx, split in enumerate(SPLITS):
        bar.set_postfix_str(f"{split} real clips")
        rows_of = [i for i, ph in enumerate(photos) if split_of_group[ph.group] == split]
        reals, src = [], []
        for i in rows_of:
            rng = np.random.default_rng([seed, 1, i])
            for _ in range(config.clips_per_photo):
                reals.append(real_clip(levels[i], rng, config, photos[i].gray)[0])
                src.append(i)
        clips, sources = np.stack(reals), np.array(src, np.int64)
        gray = np.array([photos[i].gray for i in sources], dtype=bool)
        n = len(clips)
        parts_clip, parts_fam, parts_src = [clips], [np.zeros(n, np.int64)], [sources]
        parts_parent = [np.full(n, -1, np.int64)]
        bar.update()
        for f_idx, fam in enumerate(config.families):
            bar.set_postfix_str(f"{split} {fam}")
            rng = np.random.default_rng([seed, 3, s_idx, f_idx])
            m = max(1, round(config.fake_fraction * n))
            rows = np.sort(rng.choice(n, size=m, replace=False))
            fakes = fake_clips(
                fam,
                clips[rows],
                rng=rng,
                config=config,
                models=models,
                donors=clips,
                sources=sources[rows],
                donor_sources=sources,
            )
            flat = gray_where(fakes.reshape(-1, 3, size, size), np.repeat(gray[rows], frames))
            parts_clip.append(flat.reshape(fakes.shape))
            parts_fam.append(np.full(m, f_idx + 1, np.int64))
            parts_src.append(sources[rows])
            parts_parent.append(rows.astype(np.int64))
            bar.update()
        bar.set_postfix_str(f"{split} post-processing")
        all_clips, flags = postprocess_clips(
            np.concatenate(parts_clip), config.images.post, (seed, 4, s_idx)
        )
        splits[split] = SplitArrays.from_parts(
            all_clips, np.concatenate(parts_fam), parts_src, parts_parent, flags
        )
        bar.update()
    bar.close()
    meta = {
        "split_of_group": dict(split_of_group),
        "gray_sources": [ph.name for ph in photos if ph.gray],
        "source_formats": {ph.name: ph.file_format for ph in photos},
    }
    names = [p.name for p in photos]
    return ForensicBenchmark(config, splits, (REAL, *config.families), names, meta)


def build_clip_benchmark(
    config: ClipConfig | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    progress: bool = True,
    use_cache: bool = True,
) -> ForensicBenchmark:
    """Build (or load from cache) the offline clip benchmark for ``config``.

    ``bench.split(name, families)`` then yields clips: float (T, 3, P, P) in [0, 1] per item,
    ``images`` (N, T, 3, P, P). The image benchmark ``config.images`` is built (or loaded) first,
    only when the clip entry is not cached. ``use_cache=False`` neither reads nor writes either.
    """
    config = config or ClipConfig()

    def generate() -> ForensicBenchmark:
        photos = load_photos(config.images.photos)
        levels = camera_levels(config, photos)  # refused before the image build, not after it
        images = build_benchmark(config.images, cache_dir, progress=progress, use_cache=use_cache)
        return _generate(config, images, progress, photos, levels)

    return cached_build(config, "clips", generate, cache_dir, use_cache)
