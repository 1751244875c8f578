"""The offline forensic benchmark: determinism, splits, families, cache, shortcut controls."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from assocmem.forensic.data import (
    FAMILY_NAMES,
    SPLITS,
    BenchmarkConfig,
    PostProcessConfig,
    build_benchmark,
    hf_energy_baseline,
    hf_energy_feature,
    load_photos,
)
from assocmem.forensic.data.postprocess import POST_BLUR, POST_JPEG, POST_RESIZE, postprocess


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory):
    return tmp_path_factory.mktemp("forensic-cache")


@pytest.fixture(scope="module")
def bench(tiny_dir):
    return build_benchmark(BenchmarkConfig.tiny(), tiny_dir, progress=False)


@pytest.fixture(scope="module")
def clean_bench():
    """No post-processing: a fake can be compared with its parent real directly."""
    return build_benchmark(
        BenchmarkConfig.tiny(post=PostProcessConfig.none()), progress=False, use_cache=False
    )


def test_photos_load_offline_as_rgb_uint8():
    photos = load_photos()
    assert len(photos) >= 15
    for p in photos:
        assert p.pixels.dtype == np.uint8 and p.pixels.ndim == 3 and p.pixels.shape[2] == 3
    assert {p.name for p in photos if p.gray} >= {"camera", "moon"}


def test_same_seed_same_tensors_different_seed_differs(bench):
    again = build_benchmark(BenchmarkConfig.tiny(), progress=False, use_cache=False)
    other = build_benchmark(
        BenchmarkConfig.tiny(seed=1, families=("resample",)), progress=False, use_cache=False
    )
    for s in SPLITS:
        for field in ("images", "labels", "family", "source", "parent", "post"):
            assert torch.equal(getattr(bench.arrays(s), field), getattr(again.arrays(s), field))
    # another seed picks other patches (and other splits): the real images already differ
    reals = [b.split("train", [], include_real=True).images_uint8 for b in (bench, other)]
    assert reals[0].shape != reals[1].shape or not torch.equal(*reals)


def test_build_leaves_global_rng_untouched():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_benchmark(BenchmarkConfig.tiny(families=("ae_nearest",)), progress=False, use_cache=False)
    assert torch.equal(torch.rand(3), expected)


def test_split_by_photo(bench):
    sources = [bench.sources(s) for s in SPLITS]
    assert all(sources)
    for i in range(3):
        for j in range(i + 1, 3):
            assert not sources[i] & sources[j]


def test_labels_families_parents_consistent(bench):
    assert bench.family_names == ("real", *FAMILY_NAMES)
    for s in SPLITS:
        a = bench.arrays(s)
        assert a.images.dtype == torch.uint8 and a.images.shape[1:] == (3, 32, 32)
        assert torch.equal(a.labels, (a.family > 0).long())
        real = a.family == 0
        assert (a.parent[real] == -1).all()
        # every fake points at a real of the same split and photo
        assert (a.family[a.parent[~real]] == 0).all()
        assert torch.equal(a.source[a.parent[~real]], a.source[~real])


def test_subset_api(bench):
    sub = bench.split("train", ["ae_transconv", "splice"])
    names = {sub.family_of(i) for i in range(len(sub))}
    assert names == {"real", "ae_transconv", "splice"}
    x, y = sub[0]
    assert x.dtype == torch.float32 and x.shape == (3, 32, 32) and 0 <= x.min() <= x.max() <= 1
    assert y.dtype == torch.int64
    images, labels = sub.tensors
    assert images.shape == (len(sub), 3, 32, 32) and labels.shape == (len(sub),)
    with pytest.raises(ValueError, match="unknown families"):
        bench.split("train", ["nope"])


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_every_family_differs_from_its_parent(clean_bench, family):
    a = clean_bench.arrays("test")
    code = clean_bench.family_names.index(family)
    fakes = a.family == code
    assert fakes.any()
    x, parent = a.images[fakes].float(), a.images[a.parent[fakes]].float()
    assert x.shape[1:] == (3, 32, 32) and x.min() >= 0 and x.max() <= 255
    diff = (x - parent).abs().flatten(1).mean(1)
    assert (diff > 0).float().mean() >= 0.9, f"{family}: fakes identical to their source"


def test_gray_sources_give_gray_fakes(clean_bench):
    a = clean_bench.arrays("train")
    gray = [clean_bench.source_names.index(n) for n in clean_bench.meta["gray_sources"]]
    rows = torch.isin(a.source, torch.tensor(gray))
    if not rows.any():
        pytest.skip("no gray photo in the train split of the tiny config")
    x = a.images[rows]
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])


def test_postprocessing_hits_both_classes(bench):
    a = bench.arrays("train")
    for flag in (POST_RESIZE, POST_BLUR, POST_JPEG):
        hit = (a.post & flag) > 0
        assert hit[a.labels == 0].any() and hit[a.labels == 1].any()


def test_postprocess_rates_match_probabilities():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(400, 3, 16, 16), dtype=np.uint8)
    cfg = PostProcessConfig(p_resize=0.5, p_blur=0.25, p_jpeg=0.75, final_jpeg_quality=90)
    out, flags = postprocess(imgs, cfg, np.random.default_rng(1))
    assert out.shape == imgs.shape and out.dtype == np.uint8
    for flag, p in ((POST_RESIZE, 0.5), (POST_BLUR, 0.25), (POST_JPEG, 0.75)):
        assert abs(((flags & flag) > 0).mean() - p) < 0.08
    assert ((flags & 8) > 0).all()


def test_processing_kinds_sort_images_by_their_flags():
    """An image is in the mask of every step it went through; 'unprocessed' only when none;
    the final JPEG counts as JPEG."""
    from assocmem.forensic.data.postprocess import POST_FINAL_JPEG, processing_kinds

    flags = np.array([0, POST_RESIZE, POST_BLUR | POST_JPEG, POST_FINAL_JPEG])
    kinds = processing_kinds(flags)
    assert kinds["unprocessed"].tolist() == [True, False, False, False]
    assert kinds["zoomed"].tolist() == [False, True, False, False]
    assert kinds["blurred"].tolist() == [False, False, True, False]
    assert kinds["JPEG"].tolist() == [False, False, True, True]


def test_cache_hit_and_config_change_rebuilds(bench, tiny_dir):
    assert bench.meta["loaded_from_cache"] is False
    again = build_benchmark(BenchmarkConfig.tiny(), tiny_dir, progress=False)
    assert again.meta["loaded_from_cache"] is True
    assert torch.equal(again.arrays("val").images, bench.arrays("val").images)
    assert again.family_names == bench.family_names
    changed = BenchmarkConfig.tiny(families=("resample",))
    assert changed.key() != BenchmarkConfig.tiny().key()
    rebuilt = build_benchmark(changed, tiny_dir, progress=False)
    assert rebuilt.meta["loaded_from_cache"] is False
    assert len(list((tiny_dir / "forensic").iterdir())) == 2


def test_cache_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ASSOCMEM_CACHE", str(tmp_path))
    build_benchmark(BenchmarkConfig.tiny(families=("double_jpeg",)), progress=False)
    assert any((tmp_path / "forensic").iterdir())


def test_config_validation():
    with pytest.raises(ValueError, match="families"):
        BenchmarkConfig(families=("gan",))
    with pytest.raises(ValueError, match="split_fractions"):
        BenchmarkConfig(split_fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="patch_size"):
        BenchmarkConfig(patch_size=30)


def test_hf_energy_feature_orders_blur_below_noise():
    gen = torch.Generator().manual_seed(0)
    noise = torch.rand(8, 3, 32, 32, generator=gen)
    smooth = torch.nn.functional.avg_pool2d(noise, 5, stride=1, padding=2)
    assert (hf_energy_feature(smooth) < hf_energy_feature(noise)).all()
    assert hf_energy_feature((noise * 255).to(torch.uint8)).shape == (8,)


def test_hf_energy_baseline_runs(bench):
    res = hf_energy_baseline(bench.split("train"), bench.split("test"))
    assert set(res) == {*FAMILY_NAMES, "all"}
    for m in res.values():
        assert 0.0 <= m["auc"] <= 1.0 and 0.0 <= m["acc"] <= 1.0 and m["n_test"] > 0


@pytest.mark.parametrize(
    "bad",
    [
        {"resize_scale": (0.5, 0.8)},  # a zoom-out cropped past the image: black borders
        {"resize_scale": (1.5, 1.1)},  # reversed: failed at the first batch, even at p = 0
        {"blur_sigma": (-2.0, -1.0)},  # blurred anyway
        {"jpeg_quality": (0, 120)},  # Pillow clamped it silently
        {"jpeg_quality": (60.5, 90)},
        {"jpeg_quality": 90},
    ],
)
def test_post_processing_ranges_are_checked_when_configured(bad):
    (name,) = bad
    with pytest.raises(ValueError, match=name):
        PostProcessConfig(**bad)


def test_post_processing_names_a_batch_that_is_not_uint8():
    # Pillow said "Cannot handle this data type"
    with pytest.raises(TypeError, match="uint8"):
        postprocess(
            np.zeros((2, 3, 8, 8), np.float32), PostProcessConfig(), np.random.default_rng(0)
        )


@pytest.mark.parametrize(
    "overrides",
    [
        {"stride": 0},  # built silently as the patch size, under another key
        {"scales": ()},
        {"scales": (2.0,)},
        {"photos": ()},
        {"photos": ("astronaut", "astronaut", "coffee")},
        {"photos": ("no_such_photo",)},
        {"max_patches_per_photo": 0},
        {"min_std": -1.0},
        {"split_fractions": (1.2, -0.1, -0.1)},  # sums to 1, built silently
        {"seed": -1},
        {"seed": 1.5},
        {"patch_size": 8.0},
        {"families": ("double_jpeg", "splice", "double_jpeg")},  # counted as one family
    ],
)
def test_a_config_that_cannot_build_what_it_says_is_refused_when_made(overrides):
    with pytest.raises(ValueError, match=next(iter(overrides))):
        BenchmarkConfig(**overrides)


@pytest.mark.parametrize(
    "overrides",
    [
        {"ae_steps": -1},
        {"ae_width": 0},
        {"ae_crop": 0},
        {"denoiser_noise": -1.0},
        # a reversed range failed after every generator was fitted (minutes at full size)
        {"jpeg_first_quality": (90, 10)},
        {"jpeg_second_quality": (0, 200)},
        {"resample_scale": (1.5, 2.0)},  # an upscale is no "resample" family
        {"splice_radius": (-1.0, 0.0)},
        # qualities are integers: 50.5 was truncated by the draw, under a cache key of its own
        {"jpeg_first_quality": (50.5, 80.5)},
        {"jpeg_second_quality": (True, 95)},
        # a feather of 0 divided by zero in every splice's mask (NaN weights cast to uint8)
        {"splice_feather": (0.0, 0.0)},
    ],
)
def test_generator_settings_are_checked_when_made(overrides):
    from assocmem.forensic.data.families import GeneratorSettings

    with pytest.raises(ValueError, match=next(iter(overrides))):
        GeneratorSettings(**overrides)


def test_a_damaged_cache_entry_is_rebuilt_not_served(tmp_path):
    """An entry whose files were truncated, or edited (labels, dtypes, rows, another key's
    meta), was served as it was, or failed in numpy's zip or JSON reader without its path."""
    import json
    import shutil

    config = BenchmarkConfig.tiny(families=("double_jpeg",))
    first = build_benchmark(config, tmp_path, progress=False)
    entry = tmp_path / "forensic" / config.key()
    pristine = tmp_path / "pristine"
    shutil.copytree(entry, pristine)

    def damage_arrays(edit) -> None:
        with np.load(pristine / "arrays.npz") as z:
            arrays = {k: z[k] for k in z.files}
        edit(arrays)
        np.savez_compressed(entry / "arrays.npz", **arrays)

    data = (pristine / "arrays.npz").read_bytes()
    meta = json.loads((pristine / "meta.json").read_text())
    damages = {
        "truncated arrays": lambda: (entry / "arrays.npz").write_bytes(data[: len(data) // 2]),
        "empty arrays": lambda: (entry / "arrays.npz").write_bytes(b""),
        "truncated meta": lambda: (entry / "meta.json").write_text('{"key": '),
        "another key": lambda: (entry / "meta.json").write_text(
            json.dumps({**meta, "key": "0" * 16})
        ),
        # a partial removal: every later build failed in _save's rename, "Directory not empty"
        "no meta": lambda: (entry / "meta.json").unlink(),
        "a file in the entry's place": lambda: (shutil.rmtree(entry), entry.write_text("x")),
        # edits to the meta that were served: names swapped (every per-family result
        # mislabelled), a validation photo moved to train (the stream cropped it), or a KeyError
        "swapped families": lambda: (entry / "meta.json").write_text(
            json.dumps({**meta, "family_names": meta["family_names"][::-1]})
        ),
        "no family names": lambda: (entry / "meta.json").write_text(
            json.dumps({k: v for k, v in meta.items() if k != "family_names"})
        ),
        "a photo moved to train": lambda: (entry / "meta.json").write_text(
            json.dumps({**meta, "split_of_group": {g: "train" for g in meta["split_of_group"]}})
        ),
        "labels": lambda: damage_arrays(lambda a: a["val/labels"].fill(0)),
        "rows": lambda: damage_arrays(lambda a: a.update({"test/labels": a["test/labels"][:5]})),
        "dtype": lambda: damage_arrays(
            lambda a: a.update({"train/images": a["train/images"].astype(np.float32)})
        ),
    }
    for name, damage in damages.items():
        damage()
        with pytest.warns(UserWarning, match=f"cache entry {entry}"):
            again = build_benchmark(config, tmp_path, progress=False)
        assert again.meta["loaded_from_cache"] is False, name
        assert torch.equal(again.arrays("val").images, first.arrays("val").images), name
        served = build_benchmark(config, tmp_path, progress=False)  # the rebuilt entry
        assert served.meta["loaded_from_cache"] is True, name


def test_a_cache_that_cannot_be_written_is_said_before_the_build(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(OSError, match="cannot be made"):
        build_benchmark(BenchmarkConfig.tiny(), tmp_path / "a_file", progress=False)


def test_the_build_is_the_same_under_any_torch_thread_count(tmp_path):
    """The generators' training reduced in an order set by the thread count: one key built
    different fakes under 1 and 2 threads. The build now runs on BUILD_THREADS, whatever the
    caller's count, which it gets back."""
    config = BenchmarkConfig.tiny(families=("ae_transconv", "denoiser"))
    threads = torch.get_num_threads()
    try:
        built = []
        for count in (1, 2):
            torch.set_num_threads(count)
            bench = build_benchmark(config, use_cache=False, progress=False)
            assert torch.get_num_threads() == count
            built.append(bench)
    finally:
        torch.set_num_threads(threads)
    # the generators' weights (5 steps: their images still round alike at this size; at 150
    # steps 24 of 36 test fakes differed) and the images
    for family, model in built[0].generators.items():
        other = built[1].generators[family].state_dict()
        assert all(torch.equal(t, other[k]) for k, t in model.state_dict().items()), family
    assert torch.equal(built[0].arrays("test").images, built[1].arrays("test").images)


def test_a_new_cache_entry_is_readable_as_the_umask_allows(tmp_path):
    import os
    import stat

    build_benchmark(BenchmarkConfig.tiny(families=("double_jpeg",)), tmp_path, progress=False)
    (entry,) = (tmp_path / "forensic").iterdir()
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(entry.stat().st_mode) == 0o777 & ~umask  # mkdtemp's was 0700
    # every file too: safetensors wrote the generators 0600, unreadable to the cache's others
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in entry.iterdir()}
    assert "generators.safetensors" in modes
    assert modes == dict.fromkeys(modes, 0o666 & ~umask)


def test_damaged_generators_are_fitted_again_not_failed_on(tmp_path):
    # a cut-short generators.safetensors failed every later stream in safetensors' reader,
    # naming neither the file nor the cache
    from assocmem.forensic.data.cache import fitted_generators

    config = BenchmarkConfig.tiny(families=("ae_transconv",))
    build_benchmark(config, tmp_path, progress=False)
    path = tmp_path / "forensic" / config.key() / "generators.safetensors"
    whole = path.read_bytes()
    for damaged in (whole[: len(whole) // 2], b""):
        path.write_bytes(damaged)
        bench = build_benchmark(config, tmp_path, progress=False)
        assert bench.meta["loaded_from_cache"] is True and bench.generators is None
        with pytest.warns(UserWarning, match="generators.safetensors cannot be read"):
            models = fitted_generators(bench)
        assert set(models) == {"ae_transconv"}
        reread = build_benchmark(config, tmp_path, progress=False)
        assert set(fitted_generators(reread)) == {"ae_transconv"}  # saved whole again


def test_the_clipped_values_feature_is_the_share_at_0_or_255():
    from assocmem.forensic.data.baseline import saturation_feature

    images = torch.full((3, 3, 4, 4), 128, dtype=torch.uint8)
    images[1, 0, 0, :2] = 0  # 2 of 48 values
    images[2] = 255
    assert saturation_feature(images).tolist() == [0.0, 2 / 48, 1.0]
    # float images in [0, 1]: their uint8 levels
    assert saturation_feature(images.float() / 255).tolist() == [0.0, 2 / 48, 1.0]
    with pytest.raises(ValueError, match="expected \\(N, C, H, W\\)"):
        saturation_feature(images[0])


@pytest.mark.parametrize("quality", [True, 90.5, 0, 101])
def test_the_final_jpeg_quality_is_an_integer_from_1_to_100(quality):
    # True was a quality-1 JPEG of every image
    with pytest.raises(ValueError, match="final_jpeg_quality must be an integer"):
        PostProcessConfig(final_jpeg_quality=quality)
    assert PostProcessConfig(final_jpeg_quality=90).final_jpeg_quality == 90


def test_every_family_makes_no_fakes_of_no_patches():
    # double_jpeg raised "need at least one array to stack"; the others return (0, 3, P, P)
    from assocmem.forensic.data.families import GeneratorSettings, generate

    empty = np.zeros((0, 3, 16, 16), np.uint8)
    rng = np.random.default_rng(0)
    for family in ("double_jpeg", "resample"):
        out = generate(family, empty, rng=rng, settings=GeneratorSettings(), models={})
        assert out.shape == (0, 3, 16, 16) and out.dtype == np.uint8, family
