"""``experiments.score_cache``: an image set is scored once, whatever tensor holds its bytes,
and never mistaken for another (other bytes, shape or dtype, or another tag)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments.score_cache import ScoreCache, memoized


def counting(fn):
    calls = []

    def wrapped(images):
        calls.append(images)
        return fn(images)

    return wrapped, calls


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 255), min_size=1, max_size=24), st.integers(0, 23))
def test_memoized_scores_each_distinct_image_set_once(values, flip):
    images = torch.tensor(values, dtype=torch.uint8).reshape(len(values), 1, 1, 1)
    score, calls = counting(lambda x: x.float().flatten().sum().reshape(1))
    cached = memoized(score)
    first = cached(images)
    again = cached(images.clone())  # another tensor, the same bytes: not scored again
    assert len(calls) == 1 and again is first
    changed = images.clone()
    changed.view(-1)[flip % len(values)] ^= 1  # one bit of one pixel
    assert torch.equal(cached(changed), score(changed)) and len(calls) == 3
    assert len(cached.cache) == 2


def test_shape_dtype_and_tag_keep_image_sets_apart():
    cache = ScoreCache()
    flat = torch.zeros(4, dtype=torch.uint8)
    seen = [cache.get("z", x, lambda x=x: (tuple(x.shape), x.dtype)) for x in (
        flat, flat.reshape(2, 2), flat.to(torch.int8), flat.clone(),
    )]  # fmt: skip
    assert seen[0] == ((4,), torch.uint8) and seen[1] == ((2, 2), torch.uint8)
    assert seen[2] == ((4,), torch.int8) and seen[3] is seen[0] and len(cache) == 3
    assert cache.get("f", flat, lambda: "other tag") == "other tag" and len(cache) == 4
