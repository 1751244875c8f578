"""Training data that does not run out: fresh crops of the train photos, fakes made on the fly.

The cached benchmark (``benchmark.py``) holds a few thousand fixed patches per split, cut from
about fifteen train photos; a detector memorises them within a few hundred steps and its
validation loss then rises. ``TrainStream`` draws every training batch anew instead:

1. a crop of ``patch_size`` at a random position of a random train-split photo, at a random
   level of the benchmark's pyramid (``config.scales``), redrawn while it is near-flat
   (``config.min_std``, as the cached sets filter) (``crops.PhotoCrops``);
2. a random flip and rotation by a multiple of 90 degrees (both classes alike);
3. half of the batch becomes fake, each by a family drawn uniformly from ``families`` and
   applied to *that same crop* with the models that made the cached fakes
   (``fitted_generators``), so the pair differs only by the family's trace; fakes of gray photos
   are projected back to gray, as in the cached sets. With ``trace_strength=(lo, hi)`` each
   fake is then moved back towards its crop, ``crop + a (fake - crop)`` with ``a`` uniform in
   ``[lo, hi]`` per fake (rounded to uint8): the family's trace at a fraction of its strength,
   so the detector must also catch faint traces, not only each family's strongest cue. Off
   by default; with it only the strengths are new draws, from a generator of their own, so
   crops, families and post-processing are the same as without it;
4. the whole batch then goes through the benchmark's shared post-processing with one set of
   coin flips drawn independently of the labels, so no processing step is a label shortcut.
   ``post`` replaces it for training only (``PostProcessConfig.none()``: no crop is zoomed,
   blurred or compressed); ``postprocess`` makes the same draws whatever its config, so the
   crops, families and fakes are the same as with the shared post-processing.

With ``paired=True`` a batch is ``batch_size // 2`` crops, each present twice: as the real
and as its fake (a family drawn per crop), both through the *same* post-processing draws. The
only difference within a pair is then the family's trace, so the gradient of a pair carries
no content and no processing difference (unpaired, a fake's content and processing differ
from every real of its batch); the price is half as many distinct crops per batch.

With ``spectral_mask=(p, ratio)`` each image of a batch, real or fake, loses with probability
``p`` a random fraction ``ratio`` of its frequency bins after the post-processing
(:mod:`assocmem.forensic.data.spectral_augment`: frequency masking as an augmentation, Doloriel
and Cheung 2024), drawn from a generator of its own, so the batch is otherwise the same as
without it; in a paired batch a crop's real and its fake lose the same bins. Validation and test
images are never masked.

With ``real_twins=True`` a batch also carries, as a fourth tensor, a second view of each of its
reals (in row order): the same crop through an independent draw of the same post-processing,
from a generator of its own, so the batch itself is the same as without it. A training loss
can then ask a real to score alike however it was processed
(:mod:`assocmem.forensic.detector_loss`).

Only photos of the train split are ever opened, so nothing of the validation or test photos
(and nothing of a held-out family, unless it is named in ``families``) reaches training.

Shapes: batches are ``(images float32 (B, 3, P, P) in [0, 1], labels float32 (B,), family
int64 (B,)[, twins float32 (R, 3, P, P)])``, ``family`` coding into ``bench.family_names``
(0 = real), ``R`` the batch's reals.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import IterableDataset, get_worker_info

from assocmem.forensic.checks import whole_number
from assocmem.forensic.data.benchmark import ForensicBenchmark, fitted_generators
from assocmem.forensic.data.crops import PhotoCrops, augment
from assocmem.forensic.data.families import LEARNED_FAMILIES, generate
from assocmem.forensic.data.pipeline import gray_where
from assocmem.forensic.data.postprocess import PostProcessConfig, postprocess
from assocmem.forensic.data.spectral_augment import checked_spectral_mask, mask_spectra

__all__ = ["TrainStream", "augment", "blend", "checked_strength", "stream_loader"]


def blend(reals: np.ndarray, fakes: np.ndarray, strength: np.ndarray) -> np.ndarray:
    """``real + a (fake - real)`` per image (uint8 in, uint8 out, rounded to nearest): the
    fake's trace scaled by ``a`` in [0, 1] (one per image), content unchanged."""
    a = strength.astype(np.float32).reshape(-1, *([1] * (reals.ndim - 1)))
    base = reals.astype(np.float32)
    out = np.rint(base + a * (fakes.astype(np.float32) - base))
    return np.clip(out, 0, 255).astype(np.uint8)


def checked_strength(trace_strength: Sequence[float]) -> tuple[float, float]:
    """``(lo, hi)`` as floats, or a ``ValueError`` unless ``0 < lo <= hi <= 1``."""
    if len(trace_strength) != 2:
        raise ValueError(f"trace_strength must be (lo, hi), got {trace_strength}")
    lo, hi = (float(v) for v in trace_strength)
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(
            f"trace_strength must be (lo, hi), 0 < lo <= hi <= 1, got {trace_strength}"
        )
    return lo, hi


class TrainStream(IterableDataset):
    """Endless balanced training batches from ``bench``'s train photos (see module docstring).

    Args:
        bench: a built benchmark; its config gives patch size, pyramid, generators and
            post-processing, its split assignment which photos are train photos.
        families: the families fakes are drawn from (the seen families; held-out ones must not
            be named here).
        batch_size: images per batch, half real and half fake (an odd size rounds fakes down).
        seed: with the same seed (and the same ``num_workers``) the stream is identical.
        trace_strength: ``(lo, hi)`` with ``0 < lo <= hi <= 1``: blend each fake with its crop
            at a strength drawn from ``[lo, hi]`` (step 3 above); ``None``: full-strength fakes.
        paired: each crop in the batch as its real and as its fake, processed alike (above).
        post: the post-processing of training batches (step 4); ``None``: the benchmark's
            (``bench.config.post``), which its validation and test sets went through.
        real_twins: each batch also carries a second post-processed view of each real (above).
        spectral_mask: ``(p, ratio)``: with probability ``p`` an image of a batch loses a random
            fraction ``ratio`` of its frequency bins (above); ``None``: no masking.

    Use it with ``DataLoader(stream, batch_size=None, num_workers=k)``: each worker draws from its
    own generator ``(seed, worker id)``, and the loader interleaves workers in a fixed order.
    """

    def __init__(
        self,
        bench: ForensicBenchmark,
        families: Sequence[str],
        *,
        batch_size: int = 64,
        seed: int = 0,
        trace_strength: tuple[float, float] | None = None,
        paired: bool = False,
        post: PostProcessConfig | None = None,
        real_twins: bool = False,
        spectral_mask: tuple[float, float] | None = None,
    ) -> None:
        super().__init__()
        self.spectral_mask = None if spectral_mask is None else checked_spectral_mask(spectral_mask)
        self.paired = bool(paired)
        self.real_twins = bool(real_twins)
        self.post = bench.config.post if post is None else post
        self.trace_strength = None if trace_strength is None else checked_strength(trace_strength)
        # tuple("splice") would be its letters; a set's order changes with the process's hash
        # seed, and the family draw indexes that order: one seed, another stream per process
        if isinstance(families, str) or not isinstance(families, Sequence):
            raise ValueError(
                f"families must be a sequence of names (a list or tuple: a set has no fixed "
                f"order), got {families!r}"
            )
        for name, value, least in (("batch_size", batch_size, 2), ("seed", seed, 0)):
            if not whole_number(value, least):
                why = " (half real, half fake)" if name == "batch_size" else ""
                raise ValueError(f"{name} must be a whole number >= {least}{why}, got {value!r}")
        fams = tuple(families)
        if len(set(fams)) != len(fams):  # a repeat silently doubled that family's share
            raise ValueError(f"families names a family twice: {fams}")
        unknown = [f for f in fams if f not in bench.config.families]
        if not fams or unknown:
            raise ValueError(
                f"families must be a non-empty subset of {bench.config.families}, got {fams}"
            )
        self.crops = PhotoCrops(bench, "train")
        self.config = bench.config
        self.families = fams
        self.family_codes = {f: bench.family_names.index(f) for f in fams}
        self.batch_size = batch_size
        self.seed = seed
        self.photo_names, self.levels = self.crops.photo_names, self.crops.levels
        self.gray = self.crops.gray
        learned = [f for f in fams if f in LEARNED_FAMILIES]
        all_models = fitted_generators(bench) if learned else {}
        self.models = {f: all_models[f] for f in learned}

    def _crop(self, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        return self.crops.crop(rng)

    def batch(
        self,
        rng: np.random.Generator,
        strengths: np.random.Generator | None = None,
        twins: np.random.Generator | None = None,
        masks: np.random.Generator | None = None,
    ) -> tuple[Tensor, ...]:
        """One batch drawn from ``rng`` (the iterator calls this with its worker's generator).

        Trace strengths come from ``strengths``, the reals' twin views' post-processing from
        ``twins`` and the spectral masks from ``masks`` (default: ``rng``, each); the iterator
        keeps all three on generators of their own, so every crop, family and post-processing
        draw is the same with and without ``trace_strength``, ``real_twins`` and
        ``spectral_mask``."""
        strengths = rng if strengths is None else strengths
        twins = rng if twins is None else twins
        masks = rng if masks is None else masks
        if self.paired:
            return self._paired_batch(rng, strengths, twins, masks)
        n = self.batch_size
        crops, photos = zip(*(self._crop(rng) for _ in range(n)), strict=True)
        images = np.stack(crops)
        sources = np.array(photos, dtype=np.int64)
        family = np.zeros(n, np.int64)
        n_fake = n // 2
        fake_rows = np.sort(rng.choice(n, size=n_fake, replace=False))
        self._make_fakes(images, sources, family, fake_rows, rng, strengths)
        extra = self._twins(images[family == 0], twins)
        images, _ = postprocess(images, self.post, rng)
        images = self._masked(images, masks)
        return _tensors(images, family) + extra

    def _paired_batch(
        self,
        rng: np.random.Generator,
        strengths: np.random.Generator,
        twins: np.random.Generator,
        masks: np.random.Generator,
    ) -> tuple[Tensor, ...]:
        """``batch_size // 2`` crops, each as its real and its fake, the pair post-processed
        by the same draws (``paired=True``); reals first, then their fakes in the same order."""
        n = self.batch_size // 2
        crops, photos = zip(*(self._crop(rng) for _ in range(n)), strict=True)
        reals = np.stack(crops)
        sources = np.array(photos, dtype=np.int64)
        fakes, family = reals.copy(), np.zeros(n, np.int64)
        self._make_fakes(fakes, sources, family, np.arange(n), rng, strengths)
        extra = self._twins(reals, twins)
        # one seed for both halves: the same coin flips, scales, offsets, sigmas and qualities
        # for a crop's real and its fake (postprocess draws them up front, per row)
        seed = int(rng.integers(2**63))
        reals, _ = postprocess(reals, self.post, np.random.default_rng(seed))
        fakes, _ = postprocess(fakes, self.post, np.random.default_rng(seed))
        if self.spectral_mask is not None:  # one seed again: a pair loses the same bins
            seed = int(masks.integers(2**63))
            reals = self._masked(reals, np.random.default_rng(seed))
            fakes = self._masked(fakes, np.random.default_rng(seed))
        return (
            _tensors(
                np.concatenate([reals, fakes]), np.concatenate([np.zeros_like(family), family])
            )
            + extra
        )

    def _masked(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``images`` with ``spectral_mask``'s bins removed (drawn from ``rng``), or as they are
        without it."""
        if self.spectral_mask is None:
            return images
        return mask_spectra(images, *self.spectral_mask, rng)

    def _twins(self, reals: np.ndarray, rng: np.random.Generator) -> tuple[Tensor, ...]:
        """``(twin views,)`` of ``reals`` (unprocessed crops) under post-processing drawn from
        ``rng`` with ``real_twins``; ``()`` without."""
        if not self.real_twins:
            return ()
        views, _ = postprocess(reals, self.post, rng)
        return (torch.from_numpy(views).float().div_(255.0),)

    def _make_fakes(
        self,
        images: np.ndarray,
        sources: np.ndarray,
        family: np.ndarray,
        fake_rows: np.ndarray,
        rng: np.random.Generator,
        strengths: np.random.Generator,
    ) -> None:
        """Replace ``images[fake_rows]`` in place by fakes of their own crops, each by a family
        drawn uniformly, and write the families' codes into ``family``."""
        chosen = rng.integers(len(self.families), size=len(fake_rows))
        for k, fam in enumerate(self.families):
            rows = fake_rows[chosen == k]
            if len(rows) == 0:
                continue
            donors, donor_sources = None, None
            if fam == "splice":  # donors: fresh real crops, preferably of other photos
                donors_list, src_list = zip(
                    *(self._crop(rng) for _ in range(len(rows))), strict=True
                )
                donors, donor_sources = np.stack(donors_list), np.array(src_list, np.int64)
            fakes = generate(
                fam,
                images[rows],
                rng=rng,
                settings=self.config.generators,
                models=self.models,
                donors=donors,
                sources=sources[rows],
                donor_sources=donor_sources,
            )
            fakes = gray_where(fakes, self.gray[sources[rows]])
            if self.trace_strength is not None:  # after the gray projection: both are gray
                a = strengths.uniform(*self.trace_strength, len(rows))
                fakes = blend(images[rows], fakes, a)
            images[rows] = fakes
            family[rows] = self.family_codes[fam]

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        info = get_worker_info()
        worker = 0 if info is None else info.id
        rng = np.random.default_rng([self.seed, worker])
        strengths = np.random.default_rng([self.seed, worker, 1])
        twins = np.random.default_rng([self.seed, worker, 2])
        masks = np.random.default_rng([self.seed, worker, 3])
        while True:
            yield self.batch(rng, strengths, twins, masks)


def _tensors(images: np.ndarray, family: np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
    """A batch's ``(images in [0, 1], labels, family codes)`` as tensors."""
    return (
        torch.from_numpy(images).float().div_(255.0),
        torch.from_numpy((family > 0).astype(np.float32)),
        torch.from_numpy(family),
    )


def _one_thread(_: int) -> None:
    # Each worker makes its fakes with small convs: one intra-op thread per worker, or k
    # workers x all-cores threads oversubscribe the machine the training step runs on.
    torch.set_num_threads(1)


def stream_loader(stream: TrainStream, num_workers: int = 0) -> torch.utils.data.DataLoader:
    """A ``DataLoader`` over ``stream``'s batches (already batched: ``batch_size=None``), with
    ``num_workers`` background processes of one thread each (0: batches made in-process)."""
    return torch.utils.data.DataLoader(
        stream,
        batch_size=None,
        num_workers=num_workers,
        worker_init_fn=_one_thread if num_workers else None,
        persistent_workers=num_workers > 0,
    )
