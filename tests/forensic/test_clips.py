"""The clip (video) benchmark: determinism, split by photo, smooth real motion, frame-wise fakes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from assocmem.forensic.data import SPLITS, BenchmarkConfig, PostProcessConfig, build_benchmark
from assocmem.forensic.data.cache import fitted_generators
from assocmem.forensic.data.clips import ClipConfig, build_clip_benchmark
from assocmem.forensic.data.clips.camera import camera_path, min_level_side
from assocmem.forensic.data.clips.fakes import fake_clips
from assocmem.forensic.data.families import generate
from assocmem.forensic.data.photos import load_photos

# No post-processing, so a fake can be compared with its parent real clip; three families (one
# learned, one with per-frame random draws, the splice) keep the build to a few seconds.
CLEAN = ClipConfig.tiny(
    images=BenchmarkConfig.tiny(
        post=PostProcessConfig.none(), families=("ae_nearest", "double_jpeg", "splice")
    ),
    clips_per_photo=4,
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory):
    return tmp_path_factory.mktemp("clip-cache")


@pytest.fixture(scope="module")
def bench(cache):
    return build_clip_benchmark(CLEAN, cache, progress=False)


def _fields(bench, split):
    a = bench.arrays(split)
    return (a.images, a.labels, a.family, a.source, a.parent, a.post)


def test_same_seed_same_clips_from_cache_and_rebuilt_other_seed_differs(bench, cache):
    again = build_clip_benchmark(CLEAN, cache, progress=False)
    assert again.meta["loaded_from_cache"] and not bench.meta["loaded_from_cache"]
    rebuilt = build_clip_benchmark(CLEAN, progress=False, use_cache=False)
    for split in SPLITS:
        fields = zip(
            _fields(bench, split), _fields(again, split), _fields(rebuilt, split), strict=True
        )
        for a, b, c in fields:
            assert torch.equal(a, b) and torch.equal(a, c)
    other = build_clip_benchmark(
        dataclasses.replace(CLEAN, seed=1, clips_per_photo=1), progress=False, use_cache=False
    )
    first = bench.arrays("train").images[bench.arrays("train").source == 0][:1]
    assert not torch.equal(first, other.arrays("train").images[:1])
    assert CLEAN.key() != dataclasses.replace(CLEAN, seed=1).key()


def test_equal_configs_share_one_cache_key_and_hash():
    # np.int64(8) was hashed as the string "8" and an int zoom as "1" (a cache miss: the clip
    # benchmark rebuilt); a list pair (as from a YAML config) made the frozen config unhashable
    plain = ClipConfig.tiny()
    for same in (
        ClipConfig.tiny(frames=np.int64(8), seed=np.int32(0)),
        ClipConfig.tiny(zoom=(1, 1.5), fake_fraction=1, pan=np.float32(0.5)),
        ClipConfig.tiny(zoom=[1.0, 1.5], noise_std=[1, 3]),
    ):
        assert same == plain and same.key() == plain.key() and hash(same) == hash(plain)
    assert type(ClipConfig.tiny(frames=np.int64(4)).frames) is int


def test_split_by_photo_as_the_image_benchmark(bench, cache):
    images = build_benchmark(CLEAN.images, cache, progress=False)
    assert bench.meta["split_of_group"] == images.meta["split_of_group"]
    seen: dict[str, str] = {}
    for split in SPLITS:
        for name in bench.sources(split):
            assert name not in seen, f"photo {name} in {seen.get(name)} and {split}"
            seen[name] = split
        # every photo of the split is in the image benchmark's same split
        assert bench.sources(split) == images.sources(split)
    assert bench.counts()["train"]["real"] == CLEAN.clips_per_photo * len(images.sources("train"))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    (ta, la, sa), (tb, lb, sb) = a, b
    h = max(0.0, min(ta + sa, tb + sb) - max(ta, tb))
    w = max(0.0, min(la + sa, lb + sb) - max(la, lb))
    return h * w / (sa * sa + sb * sb - h * w)


def test_camera_paths_move_smoothly_inside_the_photo():
    config = ClipConfig()
    p = config.patch_size
    for seed in range(50):
        path = camera_path(np.random.default_rng(seed), 200, 300, config)
        assert path.shape == (config.frames, 3)
        top, left, side = path.T
        assert (top >= 0).all() and (left >= 0).all()
        assert (top + side <= 200).all() and (left + side <= 300).all()
        assert (side >= p * config.zoom[0]).all() and (side <= p * config.zoom[1] + 1e-9).all()
        # Per frame the window drifts <= pan * P / (T - 1) = 2.3 px, shakes by a difference of
        # two N(0, 0.3) (< 2.5 px at 6 sigma) and its side changes by <= 1.1 px, against a side
        # >= 32 px: the overlap per axis is >= 0.82, so IoU >= 0.82^2 / (2 - 0.82^2) ~ 0.5.
        ious = [_iou(path[t], path[t + 1]) for t in range(config.frames - 1)]
        assert min(ious) >= 0.5
    with pytest.raises(ValueError, match="too small"):
        camera_path(np.random.default_rng(0), 40, 300, config)
    assert min_level_side(config) > 40


def test_real_clips_move_smoothly(bench):
    """Consecutive frames of a real clip overlap: they differ far less than two clips do."""
    a = bench.arrays("train")
    real = a.images[a.labels == 0].float()
    consecutive = (real[:, 1:] - real[:, :-1]).abs().mean()
    other_clip = (real - real.roll(1, dims=0)).abs().mean()
    # measured 9 vs 96 (0..255); a third leaves room for other photos and seeds
    assert consecutive < other_clip / 3
    assert not torch.equal(real[:, 0], real[:, 1])  # and they do move (or carry fresh noise)


def test_fake_clips_are_framewise_family_outputs(bench, cache):
    a = bench.arrays("val")
    code = bench.family_names.index("ae_nearest")
    models = fitted_generators(build_benchmark(CLEAN.images, cache, progress=False))
    for row in torch.nonzero(a.family == code).flatten().tolist():
        parent = a.images[a.parent[row]].numpy()
        for f in range(CLEAN.frames):  # each frame alone through the family's model
            alone = generate(
                "ae_nearest",
                parent[f : f + 1],
                rng=np.random.default_rng(0),
                settings=CLEAN.images.generators,
                models=models,
            )[0]
            # one uint8 level: the conv of a frame alone vs in a batch may round differently
            diff = np.abs(alone.astype(int) - a.images[row, f].numpy().astype(int)).max()
            assert diff <= 1


def test_frame_independent_draws_flicker_and_the_splice_jitters():
    """A static clip (one patch repeated) stays static under no family, unless its draws are per
    frame: double JPEG with per-frame qualities flickers; the splice's region moves."""
    rng = np.random.default_rng(0)
    patch = rng.integers(0, 256, size=(3, 32, 32), dtype=np.uint8)
    static = np.repeat(patch[None, None], CLEAN.frames, axis=1)  # (1, T, 3, P, P)
    jpeg = fake_clips("double_jpeg", static, rng=rng, config=CLEAN, models={})
    assert len({jpeg[0, f].tobytes() for f in range(CLEAN.frames)}) > 1
    donor = np.zeros_like(static)
    spliced = fake_clips(
        "splice",
        static,
        rng=rng,
        config=CLEAN,
        models={},
        donors=donor,
        sources=np.array([0]),
        donor_sources=np.array([1]),
    )
    weight = np.abs(spliced[0].astype(float) - static[0]).sum(axis=1)  # (T, P, P)
    yy, xx = np.mgrid[0:32, 0:32]
    centre = np.array([[(w * yy).sum() / w.sum(), (w * xx).sum() / w.sum()] for w in weight])
    # the centre jitters with std splice_jitter = 1.5 px per axis: some movement, none wild
    spread = centre.std(axis=0)
    assert (spread > 0.2).all() and (spread < 4 * CLEAN.splice_jitter).all()
    with pytest.raises(ValueError, match=r"\(N, T, 3, P, P\)"):
        fake_clips("double_jpeg", static[0], rng=rng, config=CLEAN, models={})


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"frames": 1}, "frames"),
        ({"zoom": (0.5, 1.0)}, "zoom"),
        ({"clips_per_photo": 0}, "clips_per_photo"),
        ({"fake_fraction": 0.0}, "fake_fraction"),
        ({"shake": -1.0}, "shake"),
        # accepted before, then failed (or built garbage) when the benchmark was built
        ({"frames": 2.5}, "frames"),
        ({"frames": True}, "frames"),
        ({"pan": float("nan")}, "pan"),
        ({"shake": float("inf")}, "shake"),
        ({"zoom": (1.0, float("inf"))}, "zoom"),
        ({"fake_fraction": float("nan")}, "fake_fraction"),
        ({"clips_per_photo": 1.5}, "clips_per_photo"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
        # accepted, and its "fake" clips were byte-identical to their real parents
        ({"splice_jitter": 1e6}, "splice_jitter"),
        ({"noise_std": (1.0, 1e6)}, "noise_std"),
        ({"pattern_std": (0.5, 300.0)}, "pattern_std"),
    ],
)
def test_bad_config_is_refused(overrides, match):
    with pytest.raises(ValueError, match=match):
        ClipConfig(**overrides)
    with pytest.raises(ValueError, match=match):
        ClipConfig.tiny(**overrides)


def test_photos_fit_a_camera_path():
    need = min_level_side(ClipConfig())
    assert min(min(p.pixels.shape[:2]) for p in load_photos()) >= need


def test_a_camera_path_no_photo_fits_is_refused_before_the_image_build(tmp_path):
    """It was refused after the image benchmark was built and cached (its generators fitted)."""
    config = ClipConfig.tiny(zoom=(1.0, 50.0))
    with pytest.raises(ValueError, match="smaller than a camera path"):
        build_clip_benchmark(config, tmp_path, progress=False)
    assert not (tmp_path / "forensic").exists()


def test_a_clip_entry_of_another_shape_is_rebuilt_and_the_key_follows_the_image_format(
    tmp_path, monkeypatch
):
    from assocmem.forensic.data import config as image_config
    from assocmem.forensic.data.clips import config as clip_config

    config = ClipConfig.tiny(images=BenchmarkConfig.tiny(families=("double_jpeg",)))
    built = build_clip_benchmark(config, tmp_path, progress=False)
    entry = tmp_path / "clips" / config.key()
    with np.load(entry / "arrays.npz") as z:
        arrays = {k: z[k] for k in z.files}
    for split in SPLITS:  # 3 frames of 16 x 16, meta.json kept: it was served as it was
        arrays[f"{split}/images"] = arrays[f"{split}/images"][:, :3, :, :16, :16].copy()
    np.savez_compressed(entry / "arrays.npz", **arrays)
    with pytest.warns(UserWarning, match="items of"):
        again = build_clip_benchmark(config, tmp_path, progress=False)
    assert torch.equal(again.arrays("test").images, built.arrays("test").images)
    key = config.key()
    monkeypatch.setattr(clip_config, "FORMAT_VERSION", image_config.FORMAT_VERSION + 1)
    assert config.key() != key  # clips are cut from the image benchmark's format
