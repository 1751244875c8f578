"""The training stream: fresh crops of train photos only, fakes made on the fly by the families
that made the cached sets, deterministic for a seed, usable with DataLoader workers."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from assocmem.forensic.data import BenchmarkConfig, PostProcessConfig, build_benchmark
from assocmem.forensic.data.benchmark import fitted_generators
from assocmem.forensic.data.families import generate
from assocmem.forensic.data.photos import load_photos
from assocmem.forensic.data.pipeline import _clean_reals
from assocmem.forensic.data.stream import TrainStream, augment, blend, stream_loader

SEEN = ("ae_nearest", "double_jpeg", "splice")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    config = BenchmarkConfig.tiny(
        families=("ae_nearest", "double_jpeg", "splice", "resample"), post=PostProcessConfig.none()
    )
    return build_benchmark(config, tmp_path_factory.mktemp("cache"), progress=False)


def take(stream, n, **kw):
    it = iter(stream_loader(stream, **kw))
    return [next(it) for _ in range(n)]


def test_batches_are_balanced_and_shaped(bench):
    images, labels, family = take(TrainStream(bench, SEEN, batch_size=10, seed=0), 1)[0]
    assert images.shape == (10, 3, 32, 32) and images.dtype == torch.float32
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    assert int(labels.sum()) == 5
    assert torch.equal(labels, (family > 0).float())
    allowed = {bench.family_names.index(f) for f in SEEN}
    assert set(family[family > 0].tolist()) <= allowed


def test_same_seed_same_stream_other_seed_other_stream(bench):
    a = take(TrainStream(bench, SEEN, batch_size=8, seed=3), 3)
    b = take(TrainStream(bench, SEEN, batch_size=8, seed=3), 3)
    c = take(TrainStream(bench, SEEN, batch_size=8, seed=4), 1)
    for x, y in zip(a, b, strict=True):
        assert all(torch.equal(u, v) for u, v in zip(x, y, strict=True))
    assert not torch.equal(a[0][0], c[0][0])


def test_workers_are_seeded_apart_and_deterministic(bench):
    stream = TrainStream(bench, SEEN, batch_size=8, seed=0)
    first = take(stream, 4, num_workers=2)
    again = take(stream, 4, num_workers=2)
    for x, y in zip(first, again, strict=True):
        assert torch.equal(x[0], y[0])
    # the loader alternates workers: batches 0 and 1 come from different generators
    assert not torch.equal(first[0][0], first[1][0])


def test_only_train_photos_are_ever_opened(bench):
    stream = TrainStream(bench, SEEN, batch_size=4, seed=0)
    split = bench.meta["split_of_group"]
    groups = {p.name: p.group for p in load_photos(bench.config.photos)}
    assert stream.photo_names
    assert all(split[groups[name]] == "train" for name in stream.photo_names)
    assert bench.sources("val").isdisjoint(stream.photo_names)
    assert bench.sources("test").isdisjoint(stream.photo_names)


def is_window(level, crop):
    """Whether ``crop`` (3, P, P) is a window of ``level`` (H, W, 3): candidates are the positions
    whose pixel equals the crop's first one, each then compared whole."""
    size = crop.shape[-1]
    h, w = level.shape[0] - size + 1, level.shape[1] - size + 1
    first = (level[:h, :w] == crop[:, 0, 0]).all(axis=-1)
    for i, j in zip(*np.nonzero(first), strict=True):
        if np.array_equal(level[i : i + size, j : j + size].transpose(2, 0, 1), crop):
            return True
    return False


def test_every_crop_is_a_window_of_a_train_photo(bench):
    """With no post-processing a real crop is, up to the 8 square symmetries, a window of one of
    the train photos' pyramid levels."""
    stream = TrainStream(bench, SEEN, batch_size=6, seed=1)
    images, labels, _ = stream.batch(np.random.default_rng(5))
    for img in images[labels == 0]:
        crop = (img * 255).round().to(torch.uint8).numpy()
        # undo the augmentation: rotate back, then flip back
        candidates = [
            np.ascontiguousarray(np.rot90(crop, -turns, axes=(1, 2))[:, :, :: -1 if flip else 1])
            for flip in (False, True)
            for turns in range(4)
        ]
        assert any(
            is_window(level, cand)
            for levels in stream.levels
            for level in levels
            for cand in candidates
        )


def test_held_out_families_are_refused_or_absent(bench):
    with pytest.raises(ValueError, match="families"):
        TrainStream(bench, ("denoiser",), batch_size=4)  # not a family of this benchmark
    with pytest.raises(ValueError, match="families"):
        TrainStream(bench, (), batch_size=4)
    stream = TrainStream(bench, ("double_jpeg",), batch_size=8, seed=0)
    _, _, family = stream.batch(np.random.default_rng(0))
    assert set(family.tolist()) == {0, bench.family_names.index("double_jpeg")}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"families": "double_jpeg"}, "sequence of names"),  # not its letters
        # a set's order changes with the hash seed: one seed, another stream per process
        ({"families": {"splice", "double_jpeg"}}, "a set has no fixed order"),
        ({"batch_size": 2.0}, "whole number >= 2"),  # said ">= 0", the minimum is 2
        ({"families": ("splice", "splice", "double_jpeg")}, "twice"),  # doubled its share
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"seed": None}, "seed"),
        ({"batch_size": 2.5}, "batch_size"),
    ],
)
def test_bad_arguments_are_refused_at_construction_not_at_the_first_batch(bench, kwargs, match):
    args = {"families": ("double_jpeg",), "batch_size": 4, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        TrainStream(bench, args.pop("families"), **args)


def test_on_the_fly_fakes_are_the_cached_family_functions(bench):
    """The stream's learned family is the very model that made the cached fakes: applied to the
    cached clean reals it reproduces the cached fakes bit for bit (no post-processing here)."""
    models = fitted_generators(bench)
    _, _, reals = _clean_reals(bench.config, load_photos(bench.config.photos))
    arrays = bench.arrays("train")
    code = bench.family_names.index("ae_nearest")
    rows = (arrays.family == code).nonzero().flatten()
    parents = arrays.parent[rows].numpy()
    remade = generate(
        "ae_nearest",
        reals["train"][0][parents],
        rng=np.random.default_rng(0),
        settings=bench.config.generators,
        models=models,
    )
    gray = reals["train"][2][parents]
    assert np.array_equal(remade[~gray], arrays.images[rows].numpy()[~gray])


def test_generators_round_trip_through_the_cache(bench, tmp_path):
    """A cache entry read back gives the same models (safetensors), and an entry without the
    file refits them deterministically."""
    again = build_benchmark(bench.config, bench.cache_entry.parent.parent, progress=False)
    assert again.meta["loaded_from_cache"] and again.generators is None
    loaded = fitted_generators(again)
    for name, model in fitted_generators(bench).items():
        for p, q in zip(model.parameters(), loaded[name].parameters(), strict=True):
            assert torch.equal(p, q)


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("turns", [0, 1, 2, 3])
def test_augment_is_a_square_symmetry(flip, turns):
    x = np.arange(3 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4)
    y = augment(x, flip, turns)
    assert sorted(y.ravel()) == sorted(x.ravel())  # a permutation of the pixels
    assert y.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(y[:, 1:3, 1:3].sum(), x[:, 1:3, 1:3].sum())  # centre stays


@settings(max_examples=50, deadline=None)
@given(a=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_blend_scales_the_trace_and_keeps_the_content(a, seed):
    rng = np.random.default_rng(seed)
    reals = rng.integers(0, 256, (3, 3, 8, 8), dtype=np.uint8)
    fakes = rng.integers(0, 256, (3, 3, 8, 8), dtype=np.uint8)
    out = blend(reals, fakes, np.full(3, a))
    assert out.dtype == np.uint8
    lo, hi = np.minimum(reals, fakes), np.maximum(reals, fakes)
    assert ((out >= lo) & (out <= hi)).all()  # on the segment from the real to the fake
    # the trace (fake - real) scaled by a, up to the rounding to uint8 (half a level)
    base = reals.astype(np.float64)
    assert np.abs(out - base - a * (fakes - base)).max() <= 0.5 + 1e-4
    assert np.array_equal(blend(reals, fakes, np.zeros(3)), reals)
    assert np.array_equal(blend(reals, fakes, np.ones(3)), fakes)


def test_trace_strength_blends_each_fake_with_its_own_crop_and_nothing_else(bench):
    """Strengths have a generator of their own: the stream's crops, families and reals are the
    same at any strength; a strength near 0 gives back each fake's parent crop, and a strength
    a gives exactly ``blend(parent, full-strength fake, a)`` (no post-processing here)."""

    def first(strength):
        stream = TrainStream(bench, SEEN, batch_size=12, seed=5, trace_strength=strength)
        return take(stream, 2)

    full, parents, half = first(None), first((1e-6, 1e-6)), first((0.5, 0.5))
    for f, p, h in zip(full, parents, half, strict=True):
        assert torch.equal(f[1], p[1]) and torch.equal(f[2], h[2])  # same labels, families
        real = f[1] == 0
        assert torch.equal(f[0][real], h[0][real]) and torch.equal(f[0][real], p[0][real])
        fake = ~real
        to_u8 = lambda x: (x * 255).round().to(torch.uint8).numpy()  # noqa: E731
        expect = blend(to_u8(p[0][fake]), to_u8(f[0][fake]), np.full(int(fake.sum()), 0.5))
        assert np.array_equal(to_u8(h[0][fake]), expect)
        assert not torch.equal(f[0][fake], h[0][fake])


@pytest.mark.parametrize("bad", [(0.0, 1.0), (0.6, 0.5), (0.5, 1.5), (0.5,)])
def test_bad_trace_strengths_are_refused(bench, bad):
    with pytest.raises(ValueError, match="trace_strength"):
        TrainStream(bench, SEEN, trace_strength=bad)


def test_paired_batches_hold_each_crop_as_its_real_and_its_fake(bench):
    """``paired=True``: reals first, their fakes after in the same order, one family per pair;
    an ``ae_nearest`` fake is exactly the cached family function of the real beside it (no
    post-processing in this benchmark); deterministic for a seed."""
    stream = TrainStream(bench, ("ae_nearest",), batch_size=10, seed=7, paired=True)
    images, labels, family = take(stream, 1)[0]
    assert images.shape == (10, 3, 32, 32)
    assert labels.tolist() == [0.0] * 5 + [1.0] * 5
    assert (family[:5] == 0).all() and (family[5:] == bench.family_names.index("ae_nearest")).all()
    to_u8 = lambda x: (x * 255).round().to(torch.uint8).numpy()  # noqa: E731
    reals, fakes = to_u8(images[:5]), to_u8(images[5:])
    models = fitted_generators(bench)
    expect = generate("ae_nearest", reals, rng=np.random.default_rng(0),
                      settings=bench.config.generators, models=models)  # fmt: skip
    gray = np.array([np.array_equal(r[0], r[1]) and np.array_equal(r[1], r[2]) for r in reals])
    expect[gray] = expect[gray].mean(axis=1, keepdims=True).round().astype(np.uint8)
    assert np.abs(fakes.astype(int) - expect.astype(int)).max() <= 1  # gray projection rounding
    again = take(TrainStream(bench, ("ae_nearest",), batch_size=10, seed=7, paired=True), 1)[0]
    assert all(torch.equal(u, v) for u, v in zip(again, (images, labels, family), strict=True))


def test_a_pair_goes_through_the_same_post_processing(bench):
    """With every processing step on (zoom, blur, JPEG at drawn scales, sigmas and qualities)
    and fakes blended back to their crop (strength 1e-6: the fake *is* its crop), a pair is the
    same image after processing only if both halves got the same draws; unpaired, the same
    stream's reals and fakes are different crops and differ."""
    post = PostProcessConfig(p_resize=1.0, p_blur=1.0, p_jpeg=1.0)
    stream = TrainStream(bench, SEEN, batch_size=16, seed=1, paired=True, post=post,
                         trace_strength=(1e-6, 1e-6))  # fmt: skip
    images, labels, _ = take(stream, 1)[0]
    assert torch.equal(images[:8], images[8:]) and labels[8:].all()
    crops = TrainStream(bench, SEEN, batch_size=16, seed=1, paired=True, post=post)
    processed_fakes = take(crops, 1)[0][0][8:]
    assert not torch.equal(processed_fakes, images[8:])  # full-strength traces survive it


@pytest.mark.parametrize("paired", [False, True])
def test_training_post_processing_changes_the_pixels_and_nothing_else(bench, paired):
    """``post`` is the training batches' own post-processing: every step on changes the images;
    the coin flips are drawn either way, so with ``PostProcessConfig.none()`` the stream is,
    batch for batch, the one of a benchmark made without post-processing (this one), and the
    labels and families are those of the processed stream."""
    every = PostProcessConfig(p_resize=1.0, p_blur=1.0, p_jpeg=1.0)
    own = take(TrainStream(bench, SEEN, batch_size=12, seed=3, paired=paired), 2)
    none = take(TrainStream(bench, SEEN, batch_size=12, seed=3, paired=paired,
                            post=PostProcessConfig.none()), 2)  # fmt: skip
    processed = take(TrainStream(bench, SEEN, batch_size=12, seed=3, paired=paired,
                                 post=every), 2)  # fmt: skip
    for a, b, c in zip(own, none, processed, strict=True):
        assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
        assert torch.equal(a[1], c[1]) and torch.equal(a[2], c[2])
        assert not torch.equal(a[0], c[0])
    assert TrainStream(bench, SEEN).post == bench.config.post


@pytest.mark.parametrize("paired", [False, True])
def test_real_twins_are_each_real_crop_again_and_leave_the_batch_as_it_was(bench, paired):
    """``real_twins=True`` appends one view per real (row order) and changes nothing else: the
    batch is the stream's without it. Without post-processing a twin *is* its real; with
    every step on (zoom at its own offset, blur, JPEG at drawn settings) it is another image
    of the same crop, and the same for a seed."""
    plain = take(TrainStream(bench, SEEN, batch_size=12, seed=4, paired=paired), 2)
    twinned = take(TrainStream(bench, SEEN, batch_size=12, seed=4, paired=paired,
                               real_twins=True), 2)  # fmt: skip
    for a, b in zip(plain, twinned, strict=True):
        assert len(a) == 3 and len(b) == 4
        assert all(torch.equal(u, v) for u, v in zip(a, b[:3], strict=True))
        images, labels, _, twins = b
        assert twins.shape == (int((labels == 0).sum()), *images.shape[1:])
        assert torch.equal(twins, images[labels == 0])  # this benchmark does not post-process
    every = PostProcessConfig(p_resize=1.0, p_blur=1.0, p_jpeg=1.0)
    kw = dict(batch_size=12, seed=4, paired=paired, post=every, real_twins=True)
    images, labels, _, twins = take(TrainStream(bench, SEEN, **kw), 1)[0]
    assert not torch.equal(twins, images[labels == 0])
    # the same crops: a twin is far closer to its own real than to another real of the batch
    reals = images[labels == 0]
    own = (twins - reals).abs().mean(dim=(1, 2, 3))
    other = (twins - reals.roll(1, dims=0)).abs().mean(dim=(1, 2, 3))
    assert (own < other).all()
    again = take(TrainStream(bench, SEEN, **kw), 1)[0]
    assert torch.equal(again[3], twins)


def test_spectral_masking_changes_the_pixels_and_nothing_else(bench):
    """The masks have a generator of their own (``[seed, worker, 3]``): the stream's crops,
    families and labels are the same with and without them, and each batch is exactly
    ``mask_spectra`` of the unmasked batch under that generator."""
    from assocmem.forensic.data.spectral_augment import mask_spectra

    plain = take(TrainStream(bench, SEEN, batch_size=12, seed=4), 2)
    masked = take(TrainStream(bench, SEEN, batch_size=12, seed=4, spectral_mask=(0.5, 0.2)), 2)
    masks = np.random.default_rng([4, 0, 3])
    to_u8 = lambda x: (x * 255).round().to(torch.uint8).numpy()  # noqa: E731
    for p, m in zip(plain, masked, strict=True):
        assert torch.equal(p[1], m[1]) and torch.equal(p[2], m[2])
        assert np.array_equal(to_u8(m[0]), mask_spectra(to_u8(p[0]), 0.5, 0.2, masks))
    assert not all(torch.equal(p[0], m[0]) for p, m in zip(plain, masked, strict=True))


def test_a_pair_loses_the_same_frequency_bins(bench):
    """Fakes blended back to their crops (strength 1e-6: the fake *is* its crop) and every
    image masked: the halves of a paired batch are equal only if both lost the same bins."""
    stream = TrainStream(bench, SEEN, batch_size=16, seed=2, paired=True,
                         trace_strength=(1e-6, 1e-6), spectral_mask=(1.0, 0.3))  # fmt: skip
    images = take(stream, 1)[0][0]
    unmasked = take(TrainStream(bench, SEEN, batch_size=16, seed=2, paired=True,
                                trace_strength=(1e-6, 1e-6)), 1)[0][0]  # fmt: skip
    assert torch.equal(images[:8], images[8:]) and not torch.equal(images, unmasked)


@pytest.mark.parametrize("bad", [(0.0, 0.2), (0.5, 1.0), (0.5,)])
def test_bad_spectral_masks_are_refused(bench, bad):
    with pytest.raises(ValueError, match="spectral_mask"):
        TrainStream(bench, SEEN, spectral_mask=bad)
