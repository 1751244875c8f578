"""The fresh test photos: never a benchmark source, and scored by the benchmark's own recipe."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from assocmem.forensic.data import BenchmarkConfig, PostProcessConfig, build_benchmark
from assocmem.forensic.data.fresh import fresh_test_split, with_fresh_test
from assocmem.forensic.data.photos import (
    FRESH_PHOTO_NAMES,
    PHOTO_NAMES,
    load_fresh_photos,
    load_photos,
)
from assocmem.forensic.protocol import FamilySplit, zero_shot_report


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory):
    return build_benchmark(
        BenchmarkConfig.tiny(), tmp_path_factory.mktemp("fresh-cache"), progress=False
    )


def test_fresh_photos_are_no_benchmark_photo():
    fresh = load_fresh_photos()
    assert [p.name for p in fresh] == list(FRESH_PHOTO_NAMES)
    assert not set(FRESH_PHOTO_NAMES) & set(PHOTO_NAMES)
    known = load_photos()
    for p in fresh:
        assert p.pixels.dtype == np.uint8 and p.pixels.ndim == 3 and p.pixels.shape[2] == 3
        # pywt also ships skimage's camera (array-equal): a fresh photo must be none of them
        assert not any(np.array_equal(p.pixels, k.pixels) for k in known), p.name
    # nuclear.png is stored as RGB with three equal channels: gray, like the two arrays
    assert {p.name for p in fresh if p.gray} == {"aero", "ascent", "nuclear"}


def test_a_missing_package_is_named(monkeypatch):
    real = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "mahotas" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(FileNotFoundError, match="'mahotas' is not installed"):
        load_fresh_photos()
    assert [p.name for p in load_fresh_photos(["aero"])] == ["aero"]  # pywt alone still reads


def test_the_fresh_split_replaces_test_only_and_is_deterministic(bench):
    fresh = with_fresh_test(bench)
    assert fresh.splits["train"] is bench.splits["train"]
    assert fresh.splits["val"] is bench.splits["val"]
    assert fresh.sources("test") == set(FRESH_PHOTO_NAMES)
    assert not fresh.sources("test") & (fresh.sources("train") | fresh.sources("val"))
    assert fresh.meta["test_photos"] == "fresh"
    again = fresh_test_split(bench)
    for field in ("images", "labels", "family", "source", "parent", "post"):
        assert torch.equal(getattr(fresh.splits["test"], field), getattr(again, field)), field
    # every family gets its fake fraction of the reals (tiny: all of them), each made from a
    # real of the same photo
    test = fresh.splits["test"]
    n_real = int((test.family == 0).sum())
    counts = torch.bincount(test.family, minlength=len(fresh.family_names))
    assert counts[1:].tolist() == [n_real] * len(bench.config.families)
    fakes = test.family > 0
    assert torch.equal(test.source[fakes], test.source[test.parent[fakes]])
    assert (test.parent[~fakes] == -1).all()
    # the same photos are not re-sourced: a benchmark that already has them is refused
    with pytest.raises(ValueError, match="already sources"):
        fresh_test_split(fresh)
    clip_like = type(bench)(object(), bench.splits, bench.family_names, bench.source_names)
    with pytest.raises(ValueError, match="not the clip one"):
        fresh_test_split(clip_like)


def test_fresh_fakes_follow_the_recipe_and_gray_photos_stay_gray():
    clean = build_benchmark(
        BenchmarkConfig.tiny(post=PostProcessConfig.none()), progress=False, use_cache=False
    )
    test = with_fresh_test(clean).splits["test"]
    names = with_fresh_test(clean).source_names
    fakes = (test.family > 0).nonzero().flatten()
    img = test.images.int()
    # a fake differs from the real it was made from (no family is the identity)
    changed = (img[fakes] - img[test.parent[fakes]]).abs().flatten(1).amax(1)
    assert (changed > 0).all()
    gray = torch.tensor([names[s] in ("aero", "ascent", "nuclear") for s in test.source.tolist()])
    assert gray.any() and (~gray).any()
    g = img[gray]
    assert torch.equal(g[:, 0], g[:, 1]) and torch.equal(g[:, 1], g[:, 2])


def test_the_protocol_scores_the_fresh_photos_with_the_validation_threshold(bench):
    fresh = with_fresh_test(bench)
    families = FamilySplit(seen=("ae_transconv", "splice"), heldout=("denoiser",))

    def score(images: torch.Tensor) -> torch.Tensor:  # a fixed detector: mean brightness
        return images.mean(dim=(1, 2, 3))

    before = zero_shot_report(score, bench, families, scale="logits")
    after = zero_shot_report(score, fresh, families, scale="logits")
    assert after["threshold"] == before["threshold"]  # validation is unchanged
    assert after["val_real_fpr"] == before["val_real_fpr"]
    assert after["seen"]["mean"]["auc"] != before["seen"]["mean"]["auc"]  # other photos
