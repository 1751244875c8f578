"""The built benchmark as data: per-split arrays, subsets for training code, the name tables."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from assocmem.forensic.data.config import REAL, SPLITS, BenchmarkConfig

if TYPE_CHECKING:  # a type only: clips/ imports this module
    from assocmem.forensic.data.clips.config import ClipConfig

__all__ = ["ForensicBenchmark", "ForensicSubset", "SplitArrays"]


@dataclass(frozen=True)
class SplitArrays:
    """One split, all rows aligned: ``images`` uint8 (N, 3, P, P) (clips: (N, T, 3, P, P), see
    ``clips/``); ``labels`` 0 real / 1 fake;
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

    @classmethod
    def from_parts(
        cls,
        images: np.ndarray,
        family: np.ndarray,
        sources: Sequence[np.ndarray],
        parents: Sequence[np.ndarray],
        post: np.ndarray,
    ) -> SplitArrays:
        """A split from the build's numpy pieces: labels follow from the family codes (0 is
        real), ``sources`` and ``parents`` are concatenated in the order of the rows."""
        return cls(
            images=torch.from_numpy(images),
            labels=torch.from_numpy((family > 0).astype(np.int64)),
            family=torch.from_numpy(family),
            source=torch.from_numpy(np.concatenate(sources)),
            parent=torch.from_numpy(np.concatenate(parents)),
            post=torch.from_numpy(post),
        )


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
    """A built benchmark: per-split arrays plus the name tables, and ``split`` to subset.

    ``config`` is the image benchmark's :class:`BenchmarkConfig`, or a ``ClipConfig`` for the
    clip benchmark (``clips/``), whose images are clips (N, T, 3, P, P)."""

    def __init__(
        self,
        config: BenchmarkConfig | ClipConfig,
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

    def with_test(
        self, test: SplitArrays, test_photos: str, *, sources: Sequence[str] = (), **meta: object
    ) -> ForensicBenchmark:
        """This benchmark with ``test`` in place of its test split (``fresh.with_fresh_test``,
        ``validation_test.with_validation_test``): train and validation the same arrays, the
        fitted generators and cache entry kept (they are those arrays'), ``sources`` appended to
        the source names and ``meta["test_photos"]`` (which ``crops.PhotoCrops`` reads) set, with
        ``meta``'s other entries."""
        out = ForensicBenchmark(
            self.config,
            {**self.splits, "test": test},
            self.family_names,
            [*self.source_names, *sources],
            {**self.meta, "test_photos": test_photos, **meta},
        )
        out.generators = self.generators
        out.cache_entry = self.cache_entry
        return out

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
        if isinstance(families, str):  # tuple("splice") would be its letters
            raise ValueError(f"families must be a sequence of names, got {families!r}")
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
