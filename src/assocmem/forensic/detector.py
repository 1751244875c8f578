"""The runnable detector: a checkpoint's network applied to images of any size.

    >>> import torch
    >>> from assocmem.forensic import Detector
    >>> detector = Detector.load()  # the weights shipped in the package
    >>> results = detector.score(torch.rand(2, 3, 40, 70))  # or paths, or PIL images
    >>> [(r.tiles, r.height, r.width, r.fake in (True, False)) for r in results]
    [(6, 40, 70, True), (6, 40, 70, True)]

Each image is cut into the checkpoint's ``patch_size`` tiles (stride ``patch_size`` by default),
every tile that is not blank is scored, and the tile logits are averaged
(``assocmem.forensic.tiling`` states and documents the padding, tiling and combining rule). A
blank tile (pixels varying by less than one grey level: a flat colour, padding bars, a clipped
highlight; :data:`BLANK_STD`) is left out: training never showed the network one, and it gave
them +4 to +5, so white margins made a real product photo "fake". An image with no other tile
has no score (NaN) and is not decided fake. A checkpoint calibrated on ``"d4"`` views
(``assocmem.forensic.views``) scores each tile as the mean logit over its eight dihedral views
(eight times the compute); the views come from the checkpoint and cannot be changed on loading,
since its threshold was set on logits computed that way. The decision is
``score >= threshold`` where the threshold is the checkpoint's (calibrated on validation real
patches for its target false-positive rate), or one recalibrated for another rate from the
validation logits the checkpoint stores (:meth:`Detector.with_fpr`), or one given
(:meth:`Detector.with_threshold`).

``P(fake)`` (``ImageScore.probability``): where the checkpoint holds one, Platt's map of the score
(``calibration.platt_scaling``, fit on the validation reals and the seen families' validation
fakes, the classes weighted equally): a probability at even odds for fakes like those it was
trained on, monotone in the score; otherwise the logit's sigmoid, which is no probability.

Thresholds by image size: the checkpoint's threshold was set on single patches, and an image of
many tiles is scored by their mean, which varies less over real photos than one patch's logit;
measured on the test photos, no real image of 64 x 64 pixels or more was flagged at that
threshold (docs/results.md, "image-level"), so it decides larger images at far below its target
rate, and misses fakes for it. A checkpoint that also stores the scores of real *images* of a few
tile counts (``calibration.image_real_scores``: crops of the validation photos, made by
``experiments.ship_detector``) decides an image of ``a`` tiles (``a`` counted on the
non-overlapping grid, whole tiles only) at the threshold calibrated on the largest stored
count ``k <= a``, for the same target rate (:meth:`Detector.threshold_for`); fewer tiles than
any stored count use the patch threshold. Taking the largest count *not above* ``a`` errs
towards fewer false positives: fewer tiles, more spread, a higher threshold. A threshold given
by hand (:meth:`Detector.with_threshold`) holds for every size. Where the checkpoint also
stores fake images' scores of those counts (``calibration.image_fake_scores``: validation-photo
crops made fake by the seen families), ``P(fake)`` of an image is the Platt map fit on that
count's real and fake images, chosen the same way; else the patch map.

Images are read like the dataset loaders read them (``assocmem.forensic.data.loaders.load_rgb``:
grayscale, alpha on white, CMYK, 16-bit, float TIFF, decompression bombs), but as stored: an
EXIF orientation is not applied. The tiles must sit on a JPEG's 8 x 8 block grid, which starts
at the *stored* top-left pixel; rotating first moves it to another corner, off the tiles when a
side is not a multiple of 8 (the shipped detector's score then moved by 4.3 logits on average
on 100 x 100 JPEG crops, where its thresholds are 3.7-4.4). Under ``"d4"`` views (the shipped
checkpoint's) a tile's logit does not depend on which way up it is, so nothing is lost.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from assocmem.forensic.calibration import (
    ProbabilityScaling,
    allowed_false_positives,
    size_thresholds,
    threshold_at_fpr,
)
from assocmem.forensic.checkpoint import DEFAULT_CHECKPOINT, DetectorCheckpoint, load_detector
from assocmem.forensic.checks import whole_number
from assocmem.forensic.data.loaders import load_rgb, to_rgb
from assocmem.forensic.tiling import combine_logits, tile_batches, tile_grid, tiles
from assocmem.forensic.views import VIEWS, view_mean

__all__ = ["Detector", "ImageInput", "ImageScore", "as_image_tensor", "textured_patches"]

T = TypeVar("T")

# A tile whose pixels vary by less than one grey level in every channel (standard deviation
# over its pixels, 0..255 units, per channel; the largest of the three decides) is blank: a
# flat colour, a padding bar, a clipped highlight. Per channel, because a flat colour that is
# not grey differs between its channels (beige's R, G, B spread 11 levels pooled, sky blue's
# 45), and pooled those tiles were scored, +4 to +6, and called fake. The
# shipped network never saw one (the benchmark drops patches under 4 grey levels from both
# classes) and gives it +4 to +5, so a white margin made a real product photo "fake" and black
# bars moved a real frame by 6 logits; with noise of 0.5 grey levels a tile scores about -8.
# Why 1 and not the training filter's 4: on the validation photos' calibration crops (200 of
# 64 and of 256 px, real and made fake by the seen families) 0.1 % of tiles are under 1 grey
# level, against 6-18 % under 4, and under 4 a whole 64 px fake (smoothed by its family)
# escaped with no score at all.
BLANK_STD = 1.0
# The shortest side an image may have. Tiles of a thinner image are mostly reflected copies of
# its one to three rows, which is the trace of up-sampling the detector looks for: the shipped
# detector flagged 75 %, 25 % and 25 % of 1, 2 and 3 px strips of the fresh real photos, and
# none of 4 to 16 px ones (80 strips each, 2026-12-07).
MIN_SIDE = 4
_BLANK_CHUNK = 4096  # tiles whose spreads are computed at once (~100 MB of float64 at 32 px)
# Tiles cut from an image at once by score_one (12 MB as uint8 at 32 px): all of a large image's
# tiles at once held 9x its pixels at stride 32 and 82x at stride 8 (a 24 MP float image at
# stride 8: ~9 GB)
_TILE_CHUNK = 4096

ImageInput = Union[str, os.PathLike, Image.Image, Tensor]  # noqa: UP007 (a runtime alias)


class ImageScore(NamedTuple):
    """One image's result.

    ``score``: the mean of its tile logits (higher = more likely generated); ``probability``:
    ``P(fake)`` from the checkpoint's Platt map for the image's size (at even odds, for fakes
    like the seen families; ``sigmoid(score)`` for a checkpoint without one: Detector.probability);
    the decision is ``fake``, and ``probability`` at the threshold need not be 0.5; ``fake``:
    ``score >= threshold``; ``tiles``: how many tiles were scored; ``height``, ``width``: the
    pixels scored, as stored (an EXIF orientation is not applied: module docstring);
    ``undersized``: a side was shorter than a tile and was filled by reflection (a weaker
    score); ``threshold``: the one the decision used (:meth:`Detector.threshold_for` of the
    image's size, less its blank tiles); ``blank_tiles``: tiles left out as blank
    (:meth:`Detector.textured_tiles`). An image whose every tile is blank holds no evidence
    either way: its ``score`` and ``probability`` are NaN and ``fake`` is False (``blank``).
    """

    score: float
    probability: float
    fake: bool
    tiles: int
    height: int
    width: int
    undersized: bool
    threshold: float
    blank_tiles: int = 0

    @property
    def blank(self) -> bool:
        """Every tile was blank: no score, no decision of fake."""
        return self.tiles == 0


@dataclass(frozen=True)
class Detector:
    """A detector network with its tile size, stride, test-time views and decision threshold.

    Build one with :meth:`load`; ``threshold`` is on the logit scale of ``score``. ``views``
    (``"one"`` or ``"d4"``, ``views.VIEWS``) is the checkpoint's: a tile's logit is the mean over
    those views of the tile, the computation its threshold was calibrated on.
    """

    model: nn.Module
    patch_size: int
    threshold: float
    stride: int
    target_fpr: float | None = None  # the FPR the threshold was calibrated for, if it was
    val_real_logits: tuple[float, ...] = ()
    batch_size: int = 256  # tiles per forward pass
    source: str = ""  # where the weights came from
    views: str = "one"  # the test-time views each tile's logit is averaged over
    probability_scaling: ProbabilityScaling | None = None  # score -> P(fake); None: sigmoid
    # real images' scores by tile count, sorted ((k, scores), ...), and the thresholds they give
    # at target_fpr; () when the checkpoint has none or a threshold was given by hand
    image_real_scores: tuple[tuple[int, tuple[float, ...]], ...] = ()
    image_thresholds: tuple[tuple[int, float], ...] = ()
    # Platt maps of images by tile count ((k, map), ...), fit on the checkpoint's real and fake
    # images' scores; () when it stores no fake images
    image_probability: tuple[tuple[int, ProbabilityScaling], ...] = ()
    # tiles whose pixels' standard deviation (0..255 units) is below this in every channel are
    # blank and left out of an image's score (textured_tiles)
    min_std: float = BLANK_STD

    def __repr__(self) -> str:
        # a summary: the generated repr printed every stored logit (33 000 characters for the
        # shipped checkpoint) and the network's layers
        by_size = ", ".join(f"{k} tiles: {t:.4g}" for k, t in self.image_thresholds)
        fpr = f", target_fpr={self.target_fpr:g}" if self.target_fpr is not None else ""
        return (
            f"Detector({type(self.model).__name__} from {self.source or 'memory'}, "
            f"patch_size={self.patch_size}, stride={self.stride}, views={self.views!r}, "
            f"threshold={self.threshold:.4g}{fpr}"
            + (f", image thresholds {{{by_size}}}" if by_size else "")
            + f", {len(self.val_real_logits)} validation logits)"
        )

    def __post_init__(self) -> None:
        if self.views not in VIEWS:
            raise ValueError(f"views must be one of {VIEWS}, got {self.views!r}")
        if not math.isfinite(self.threshold):
            raise ValueError(f"threshold must be finite, got {self.threshold}")
        if not (isinstance(self.min_std, numbers.Real) and 0.0 <= self.min_std < math.inf):
            raise ValueError(f"min_std must be a finite number >= 0, got {self.min_std!r}")
        b = self.batch_size  # 2.5 failed at the first score, True was taken as 1
        if not whole_number(b, 1):
            raise ValueError(f"batch_size must be an integer >= 1, got {b!r}")
        tiles(
            torch.zeros(1, self.patch_size, self.patch_size),
            self.patch_size,
            self.stride,
            self.alignment,
        )

    @property
    def alignment(self) -> int:
        """Tiles start at multiples of this from the image's corner: the model's ``alignment``
        (8 for one that reads the JPEG grid), else 2 (NPR's ``2 x 2`` cells)."""
        return int(getattr(self.model, "alignment", 2))

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        stride: int | None = None,
        batch_size: int = 256,
        device: str | torch.device | None = None,
    ) -> Detector:
        """The detector in checkpoint ``path`` (``None``: the one shipped in the package), at its
        calibrated threshold and with its views; ``stride`` defaults to the patch size
        (non-overlapping tiles). ``device``: where its forward passes run (default the CPU;
        ``"cuda"``, ``"mps"``, ...); images stay where they are and only batches of tiles move.
        The threshold was calibrated on the CPU: another device's kernels round differently (on
        CUDA, torch's default lets cuDNN convolve in TF32, 10-bit mantissas; turn it off with
        ``torch.backends.cudnn.allow_tf32 = False`` for float32 scores), so a score that close
        to the threshold may be decided the other way.

        Raises:
            ValueError: ``device`` is not a device name, or not one this machine has.

        There is no ``views`` argument on purpose: the threshold (and the validation logits
        :meth:`with_fpr` recalibrates on) hold for logits under the checkpoint's views only.
        """
        _available_device(device)  # before the checkpoint is read: a typo fails fast
        return cls.from_checkpoint(
            load_detector(path),
            source=Path(DEFAULT_CHECKPOINT if path is None else path),
            stride=stride,
            batch_size=batch_size,
            device=device,
        )

    @classmethod
    def from_checkpoint(
        cls,
        ckpt: DetectorCheckpoint,
        *,
        source: str | os.PathLike[str] = "",
        stride: int | None = None,
        batch_size: int = 256,
        device: str | torch.device | None = None,
    ) -> Detector:
        """The detector of a checkpoint already read with
        :func:`~assocmem.forensic.checkpoint.load_detector` (whose ``info`` a caller may want
        too), as :meth:`load` builds it; ``source`` names where it came from. The detector's
        network is the checkpoint's, moved to ``device`` in place (``nn.Module.to``), not a copy.

        Raises:
            ValueError: ``device`` is not a device name, or not one this machine has.
        """
        where = _available_device(device)
        return cls(
            model=ckpt.model.to(where),
            patch_size=ckpt.patch_size,
            threshold=ckpt.threshold,
            stride=ckpt.patch_size if stride is None else stride,
            target_fpr=ckpt.target_fpr,
            val_real_logits=ckpt.val_real_logits,
            batch_size=batch_size,
            source=str(source),
            views=ckpt.views,
            probability_scaling=ckpt.probability,
            image_real_scores=ckpt.image_real_scores,
            image_thresholds=size_thresholds(ckpt.image_real_scores, ckpt.target_fpr),
            image_probability=ckpt.image_probability,
        )

    def with_threshold(self, threshold: float) -> Detector:
        """The same detector deciding at ``threshold`` (logit scale; no calibration claimed), for
        images of every size. A string or bool is refused (``"3"`` and ``True`` were read as the
        numbers 3 and 1)."""
        if isinstance(threshold, (str, bytes, bool)):
            raise TypeError(f"threshold must be a number (a logit), got {threshold!r}")
        return replace(self, threshold=float(threshold), target_fpr=None, image_thresholds=())

    def with_fpr(self, fpr: float) -> Detector:
        """The same detector with its threshold recalibrated on the stored validation-real logits
        for a false-positive rate of ``fpr`` (they are under the detector's views, as its scores).

        Raises:
            ValueError: no validation logits stored, or ``fpr`` outside ``[1/n, 1)`` for ``n``
                stored logits (a smaller rate cannot be told apart from 0 on ``n`` reals).
        """
        n = len(self.val_real_logits)
        if n == 0:
            raise ValueError(
                f"{self.source or 'this detector'} stores no validation-real logits, so no "
                "threshold can be calibrated for another FPR; give a threshold instead"
            )
        if not (0.0 <= fpr < 1.0 and allowed_false_positives(fpr, n) >= 1):
            raise ValueError(
                f"fpr must be in [1/{n}, 1) = [{1.0 / n:.2g}, 1): the checkpoint's {n} "
                f"validation reals cannot calibrate {fpr}"
            )
        return replace(
            self,
            threshold=threshold_at_fpr(self.val_real_logits, fpr),
            target_fpr=fpr,
            image_thresholds=size_thresholds(self.image_real_scores, fpr),
        )

    def threshold_for(self, tiles: int) -> float:
        """The threshold an image of ``tiles`` non-overlapping tiles is decided at: the one
        calibrated on real images of the largest stored tile count not above ``tiles``, else the
        patch threshold (module docstring), but never below a larger count's: at a high rate
        (``with_fpr(0.3)``) the patch threshold could fall below the image ones, and a 48 px
        image was decided at a lower threshold than a 64 px one."""
        patch = max([self.threshold, *(t for _, t in self.image_thresholds)])
        return _by_size(self.image_thresholds, tiles, patch)

    def area_tiles(self, height: int, width: int) -> int:
        """How many whole tiles of the non-overlapping grid fit in an image of this size (at
        least one): the count :meth:`threshold_for` reads, whatever the stride. A partial tile
        is not counted: the tile flush with a far edge overlaps its neighbour, so a 40 px image
        (four tiles, mostly the same pixels) varies like one tile, and decided at the 64 px
        threshold it flagged 6.8 % of validation-photo crops for a 5 % target. An image shorter
        than a tile on a side (``undersized``) counts as one tile however long it is: its tiles
        are partly reflection (``tiling``), which no threshold was calibrated on, so it is
        decided at the patch threshold, as the README says of small images."""
        p = self.patch_size
        return (height // p) * (width // p) or 1

    @torch.no_grad()
    def tile_logits(self, image: ImageInput) -> Tensor:
        """The logits of ``image``'s tiles, shape (n,), in ``tiling.tile_grid`` order; each one the
        mean over the detector's views of that tile."""
        return self._logits(self._tiles(as_image_tensor(image)))

    def _tiles(self, image: Tensor) -> Tensor:
        """``image``'s tiles (n, 3, P, P), in ``tiling.tile_grid`` order (:meth:`_check_side`)."""
        self._check_side(image)
        return tiles(image, self.patch_size, self.stride, self.alignment)

    @staticmethod
    def _check_side(image: Tensor) -> None:
        """Refuse an image with a side under ``MIN_SIDE`` (its tiles would be reflected copies
        of its rows)."""
        if min(image.shape[-2:]) < MIN_SIDE:
            raise ValueError(
                # width x height, as the command's table writes sizes
                f"an image of {image.shape[-1]} x {image.shape[-2]} px is too thin to score: "
                f"sides under {MIN_SIDE} px are filled by reflecting their rows, which reads as "
                "up-sampling (most real strips of 1-3 px were called fake)"
            )

    def _textured_logits(
        self, image: Tensor, progress: Callable[[int, int], None] | None
    ) -> tuple[Tensor, int, int]:
        """``(logits of the textured tiles, blank tiles, all tiles)`` of ``image``, its tiles cut
        ``_TILE_CHUNK`` at a time (not all at once). The network sees the batches it saw when
        every tile was cut first: textured tiles queue until a whole ``batch_size`` is there,
        so a score keeps its bits."""
        p, a = self.patch_size, self.alignment
        total = len(tile_grid(image.shape[1], image.shape[2], p, self.stride, a))
        out: list[Tensor] = []
        queued = image.new_empty((0, image.shape[0], p, p))
        blank = cut_so_far = 0
        for cut in tile_batches(image, p, self.stride, a, size=_TILE_CHUNK):
            textured = textured_patches(cut, self.min_std)
            blank += len(cut) - int(textured.sum())
            cut_so_far += len(cut)
            queued = torch.cat([queued, cut[textured]])
            last = cut_so_far == total
            ready = len(queued) if last else len(queued) - len(queued) % self.batch_size
            # tiles done: the blank ones found and the textured ones scored so far
            base = blank + sum(len(o) for o in out)
            if ready:

                def report(scored: int, _: int, base: int = base) -> None:
                    if progress is not None:
                        progress(base + scored, total)

                out.append(self._logits(queued[:ready], report))
                queued = queued[ready:]
            elif progress is not None:
                progress(base, total)
        logits = torch.cat(out) if out else torch.zeros(0)
        return logits, blank, total

    def _logits(self, cut: Tensor, progress: Callable[[int, int], None] | None = None) -> Tensor:
        """The logits of the tiles ``cut`` (n, 3, P, P), each the mean over the views."""
        if len(cut) == 0:
            return torch.zeros(0)
        was_training = self.model.training
        self.model.eval()  # BatchNorm's running statistics: a tile's score ignores its batch
        try:
            weight = next(self.model.parameters())
            out = []
            for start in range(0, len(cut), self.batch_size):
                batch = cut[start : start + self.batch_size]
                # the benchmark's convention: uint8 pixels / 255, in the network's dtype (a
                # float64 detector failed on the float32 tiles it was given; rounding them to
                # float32 on the way, and its logits after, scored it in float32)
                x = batch.to(device=weight.device, dtype=weight.dtype)
                if batch.dtype == torch.uint8:
                    x = x.div_(255.0)
                logits = self._view_mean(x)
                out.append((logits if logits.dtype == torch.float64 else logits.float()).cpu())
                if progress is not None:
                    progress(start + len(batch), len(cut))
        finally:
            self.model.train(was_training)
        return torch.cat(out)

    def _view_mean(self, x: Tensor) -> Tensor:
        """The model's logits of tiles ``x`` (n, 3, P, P), averaged over ``self.views``.

        ``views.view_mean``, the computation ``views.view_logits`` calibrated the threshold
        with. The views of a tile keep its grids: a tile starts at a
        multiple of the ``alignment`` A from the image's corner and its side P is a multiple of A
        (``tiling`` requires it), so a rotation or flip maps the cell ``[kA, (k+1)A)`` of a side
        onto ``[P-(k+1)A, P-kA)``, again a cell: NPR's ``2 x 2`` blocks and, for A = 8, the JPEG
        ``8 x 8`` blocks the DCT branch reads are moved and turned, never cut.
        """
        return view_mean(self.model, x, self.views)

    @torch.no_grad()
    def score_one(
        self, image: ImageInput, *, progress: Callable[[int, int], None] | None = None
    ) -> ImageScore:
        """One image (a path, a PIL image, or a tensor (3, H, W): uint8, or float in [0, 1]).
        ``progress(done, total)`` is called after each batch with the image's tiles done so far
        (scored, or found blank) of all of them (a 24-megapixel photo is ~23 000 tiles, minutes
        on a CPU)."""
        x = as_image_tensor(image)
        self._check_side(x)
        _, h, w = x.shape
        tile_logits, blank, cut_count = self._textured_logits(x, progress)
        # the count a threshold is chosen by: the whole tiles that fit, less the blank ones'
        # share (a mean over fewer tiles varies more: a higher threshold). As a share of the
        # tiles cut, it holds at any stride: with no blank tile it is the image's whole-tile
        # count (stride^2 / P^2 per overlapping tile undercounted the edges' tiles, and put an
        # image with no blank tile at a smaller size's threshold at strides under P)
        worth = self.area_tiles(h, w) * len(tile_logits) // cut_count
        area = max(1, worth)
        threshold = self.threshold_for(area)
        logit = combine_logits(tile_logits) if len(tile_logits) else math.nan
        return ImageScore(
            score=logit,
            probability=self.probability(logit, area) if len(tile_logits) else math.nan,
            fake=bool(logit >= threshold),  # NaN (every tile blank): not fake
            tiles=len(tile_logits),
            height=h,
            width=w,
            undersized=min(h, w) < self.patch_size,
            threshold=threshold,
            blank_tiles=blank,
        )

    def textured_tiles(self, image: ImageInput) -> Tensor:
        """Which of ``image``'s tiles (``tiling.tile_grid`` order) are scored: a bool (n,), False
        for a blank tile, one whose pixels' standard deviation (0..255 units) is below
        :attr:`min_std` (:data:`BLANK_STD`) in every channel: no texture, no evidence either
        way (a flat colour, grey or not). They are left out of the mean."""
        return textured_patches(self._tiles(as_image_tensor(image)), self.min_std)

    def probability(self, score: float, tiles: int = 1) -> float:
        """``P(fake)`` of the score of an image of ``tiles`` non-overlapping tiles: the map of
        the largest stored image count not above ``tiles`` (:attr:`image_probability`), else
        the patch map (:attr:`probability_scaling`), else the sigmoid."""
        scaling = _by_size(self.image_probability, tiles, self.probability_scaling)
        if scaling is None:
            return float(torch.sigmoid(torch.tensor(score, dtype=torch.float64)))
        return float(scaling([score])[0])

    def score(self, images: ImageInput | Sequence[ImageInput]) -> list[ImageScore]:
        """Per-image results of one image or a sequence of them (a 4-D tensor is a batch).

        Raises on the first unreadable file (``assocmem-detect`` instead lists each and goes on).
        """
        if isinstance(images, (str, os.PathLike, Image.Image)):
            return [self.score_one(images)]
        if isinstance(images, Tensor):
            if images.dim() == 3:
                return [self.score_one(images)]
            if images.dim() != 4:
                raise ValueError(
                    "an image tensor must be (3, H, W), or (N, 3, H, W) for a batch, got "
                    f"{tuple(images.shape)}"
                )
        elif isinstance(images, (bytes, bytearray, memoryview, np.ndarray)) or not isinstance(
            images, Iterable
        ):
            as_image_tensor(images)  # raises its TypeError, naming what is accepted
        return [self.score_one(x) for x in images]

    def describe(self) -> dict[str, Any]:
        """What decides: weights, tile size and stride, views, threshold and how it was chosen."""
        return {
            "weights": self.source,
            "patch_size": self.patch_size,
            "stride": self.stride,
            "alignment": self.alignment,
            "views": self.views,
            "device": str(next(self.model.parameters()).device),
            # the thresholds decisions are made at (threshold_for: at a high FPR the patch
            # threshold is raised to the image ones)
            "threshold": self.threshold_for(1),
            "target_fpr": self.target_fpr,
            # the thresholds of larger images (JSON keys are strings): tile count -> threshold
            "image_thresholds": {str(k): self.threshold_for(k) for k, _ in self.image_thresholds},
            "image_probability": {str(k): m.formula() for k, m in self.image_probability},
            "combine": "mean tile logit",
            "min_std": self.min_std,  # blank tiles (pixel std below it, 0..255) are left out
            "probability": (
                "sigmoid(score), uncalibrated"
                if self.probability_scaling is None
                else f"Platt: {self.probability_scaling.formula()}, fit on validation reals "
                "and seen-family fakes"
            ),
        }


def _available_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a ``torch.device`` (``None``: the CPU), refused with a ``ValueError`` that
    says why when it is no device name or this machine has no such device."""
    if device is None:
        return torch.device("cpu")
    try:
        where = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device {device!r} is not a device name ({e})") from None
    if where.type == "meta":
        raise ValueError("device 'meta' holds no data: a detector cannot score images on it")
    try:
        torch.empty(1, device=where)
    except (RuntimeError, AssertionError) as e:  # CPU builds raise AssertionError for cuda
        # torch's first sentence says why (no CUDA build, no such ordinal, no backend)
        reason = (str(e).split(". ")[0].splitlines() or [type(e).__name__])[0]
        raise ValueError(f"device {device!r} is not available here: {reason}") from None
    return where


def _by_size(by_count: tuple[tuple[int, T], ...], tiles: int, default: T) -> T:
    """The value of the largest count not above ``tiles`` (``by_count`` ascending), else
    ``default``: an image takes the calibration of the largest stored size it reaches."""
    chosen = default
    for count, value in by_count:
        if count <= tiles:
            chosen = value
    return chosen


def textured_patches(patches: Tensor, min_std: float = BLANK_STD) -> Tensor:
    """Which of ``patches`` (N, C, H, W; uint8, or float in [0, 1]) ``Detector`` scores: a bool
    (N,), False for a blank one, whose pixels' standard deviation (0..255 units) is under
    ``min_std`` in every channel. A detector of one's own calibrates on the patches it will
    score: blank validation reals (a flat sky, a letterbox bar) get logits ``Detector`` never
    computes, and counted in ``val_real_logits`` they move the threshold.

    >>> flat = torch.full((1, 3, 32, 32), 0.5)
    >>> textured_patches(torch.cat([flat, torch.rand(1, 3, 32, 32)])).tolist()
    [False, True]
    """
    if patches.dim() != 4:
        raise ValueError(f"patches must be (N, C, H, W), got {tuple(patches.shape)}")
    quantised = patches.dtype in (torch.float16, torch.bfloat16)
    if patches.dtype == torch.uint8 or quantised:
        # half precision rounds a level by up to 0.25 (float16) or 2 (bfloat16) grey levels, a
        # slack of that size made every bfloat16 tile textured: read its nearest grey levels
        # instead, as its uint8 copy would be read
        scale, slack = 1.0, 0.0
    else:
        # A float image holds its levels to its dtype's rounding: up to eps of the value,
        # i.e. 255 eps grey levels, by which a spread of exactly min_std (two levels
        # alternating) can fall short of it; a uint8 copy of the image must decide alike.
        scale, slack = 255.0, 255.0 * torch.finfo(patches.dtype).eps
    textured = torch.empty(len(patches), dtype=torch.bool, device=patches.device)
    # in chunks: a float64 copy of every tile of a large image at once took gigabytes
    for start in range(0, len(patches), _BLANK_CHUNK):
        part = patches[start : start + _BLANK_CHUNK].flatten(2).double()  # (n, channels, pixels)
        if quantised:
            part = (part * 255.0).round()
        spread = part.std(dim=2, correction=0).amax(dim=1) * scale
        textured[start : start + len(part)] = spread >= min_std - slack
    return textured


def as_image_tensor(image: ImageInput) -> Tensor:
    """``image`` as :class:`Detector` reads it, (3, H, W): uint8 as decoded (a file as stored,
    a PIL image as given: no EXIF rotation, so a JPEG's block grid stays at the top left), or a
    float tensor in [0, 1] as given. Raises ``ValueError``/``TypeError`` for another layout,
    dtype or type, with a hint for an (H, W, 3) array."""
    if isinstance(image, (str, os.PathLike)):
        im, _ = load_rgb(image, orient=False)  # as stored: on the JPEG grid (module docstring)
        return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)
    if isinstance(image, Image.Image):  # as given: its EXIF tag is not applied either
        return torch.from_numpy(np.asarray(to_rgb(image)).copy()).permute(2, 0, 1)
    if isinstance(image, Tensor):
        if image.device.type == "meta":  # failed later with a RuntimeError of the tiles
            raise ValueError("an image tensor on the meta device holds no pixels to score")
        if image.dim() != 3 or image.shape[0] != 3 or min(image.shape[1:]) < 1:
            raise ValueError(f"an image tensor must be (3, H, W), got {tuple(image.shape)}")
        if image.dtype == torch.uint8:
            return image
        if not image.is_floating_point():
            raise ValueError(f"an image tensor must be uint8 or float in [0, 1], got {image.dtype}")
        if not bool(image.isfinite().all()) or image.min() < 0 or image.max() > 1:
            raise ValueError("a float image tensor must hold finite values in [0, 1]")
        return image
    hint = (
        " (an (H, W, 3) array: torch.from_numpy(a).permute(2, 0, 1))"
        if isinstance(image, np.ndarray)
        else ""
    )
    raise TypeError(
        f"cannot score a {type(image).__name__}: give a path, a PIL image or a (3, H, W) "
        f"tensor{hint}"
    )
