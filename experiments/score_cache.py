"""Scores computed once per image set: a memo keyed by the images' bytes.

An experiment often scores the same images more than once through different paths (the
protocol's report and the probability table both read the test split; a calibration and the
report both read the validation reals). Each split is built anew, so object identity says
nothing; the bytes do. Scoring is deterministic (``eval()``, fixed views), so a cached result
is the result a second call would compute.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from torch import Tensor

T = TypeVar("T")


def images_key(images: Tensor) -> tuple[tuple[int, ...], str, str]:
    """What identifies an image set: its shape, dtype and a digest of its bytes."""
    data = images.detach().cpu().contiguous().numpy().tobytes()
    return tuple(images.shape), str(images.dtype), hashlib.blake2b(data, digest_size=16).hexdigest()


class ScoreCache:
    """``get(tag, images, compute)``: ``compute()``'s result, computed the first time this
    ``tag`` (which model, which feature) meets these images' bytes and reused after."""

    def __init__(self) -> None:
        self._seen: dict[tuple[Hashable, ...], Any] = {}

    def get(self, tag: Hashable, images: Tensor, compute: Callable[[], T]) -> T:
        key = (tag, *images_key(images))
        if key not in self._seen:
            self._seen[key] = compute()
        return self._seen[key]

    def __len__(self) -> int:
        return len(self._seen)


def memoized(score_fn: Callable[[Tensor], T]) -> Callable[[Tensor], T]:
    """``score_fn`` that computes each distinct image set once (:class:`ScoreCache`)."""
    cache = ScoreCache()

    def score(images: Tensor) -> T:
        return cache.get(None, images, lambda: score_fn(images))

    score.cache = cache  # type: ignore[attr-defined]
    return score
