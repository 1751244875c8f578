"""Loaders for users' own real-vs-fake image collections.

Three layouts, each a function returning ``Sample``s that ``ImageFileDataset`` serves:

- ``cnndetection_samples(root)``: ``root/0_real`` + ``root/1_fake``, or one level of categories
  ``root/<category>/{0_real,1_fake}`` (CNNDetection / ForenSynths); family = category;
- ``genimage_samples(root)``: ``root/{nature,ai}``, or ``root/<generator>/[<split>/]{nature,ai}``
  (GenImage); family = generator;
- ``manifest_samples(csv)``: rows ``path,label[,family]`` (header optional, paths relative to the
  CSV; labels 0/1 or real/fake).

Robustness policy (never crash mid-epoch): ``ImageFileDataset`` decodes every file once in
``__init__`` (``validate=True``, the default). Unreadable or truncated files and images smaller
than ``min_size`` are dropped and counted in ``skipped``; grayscale, 16-bit, CMYK, palette and
alpha images are converted to RGB (alpha composited on white) and counted in ``converted``; one
``UserWarning`` summarises both. With ``validate=False`` (huge folders), a file that fails at
``__getitem__`` is replaced by the next readable index, counted, and warned about once.
"""

from __future__ import annotations

import csv
import os
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, NamedTuple

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFileDataset",
    "Sample",
    "cnndetection_samples",
    "genimage_samples",
    "load_rgb",
    "manifest_samples",
]

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
)


class Sample(NamedTuple):
    path: Path
    label: int  # 0 real, 1 fake
    family: str


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )


def _subdirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


def _check_root(root: str | os.PathLike[str]) -> Path:
    path = Path(root)
    if not path.is_dir():
        raise FileNotFoundError(f"dataset root {path} does not exist or is not a directory")
    return path


def _pair_samples(
    roots: Sequence[tuple[Path, str]], real: str, fake: str, layout: str
) -> list[Sample]:
    samples: list[Sample] = []
    for folder, family in roots:
        for sub, label in ((real, 0), (fake, 1)):
            files = _images_in(folder / sub)
            if not files:
                raise ValueError(
                    f"{layout}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) "
                    f"under {folder / sub}"
                )
            samples += [Sample(p, label, family if label else "real") for p in files]
    return samples


def cnndetection_samples(root: str | os.PathLike[str]) -> list[Sample]:
    """``0_real``/``1_fake`` folders, directly under ``root`` or under each category folder."""
    path = _check_root(root)
    pair = {"0_real", "1_fake"}
    found = _subdirs(path)
    if pair <= set(found):
        return _pair_samples([(path, path.name)], "0_real", "1_fake", "CNNDetection layout")
    cats = [c for c in found if pair <= set(_subdirs(path / c))]
    partial = [c for c in found if c in pair or (pair & set(_subdirs(path / c)))]
    if not cats or set(partial) - set(cats):
        raise ValueError(
            f"CNNDetection layout: expected subfolders 0_real and 1_fake under {path} "
            f"(or under each category, e.g. {path}/car/0_real); found {found}"
            + (f"; incomplete: {sorted(set(partial) - set(cats))}" if partial else "")
        )
    return _pair_samples([(path / c, c) for c in cats], "0_real", "1_fake", "CNNDetection layout")


def genimage_samples(root: str | os.PathLike[str], split: str | None = None) -> list[Sample]:
    """``nature``/``ai`` folders under ``root``, or under ``root/<generator>[/<split>]``."""
    path = _check_root(root)
    pair = {"nature", "ai"}
    found = _subdirs(path)
    if pair <= set(found):
        return _pair_samples([(path, path.name)], "nature", "ai", "GenImage layout")
    roots = []
    for gen in found:
        base = path / gen / split if split else path / gen
        if base.is_dir() and pair <= set(_subdirs(base)):
            roots.append((base, gen))
    if not roots:
        where = f"{path}/<generator>/{split}" if split else f"{path}/<generator>"
        raise ValueError(
            f"GenImage layout: expected subfolders nature and ai under {path} or {where}; "
            f"found {found}"
        )
    return _pair_samples(roots, "nature", "ai", "GenImage layout")


_LABELS = {"0": 0, "1": 1, "real": 0, "fake": 1, "nature": 0, "ai": 1}


def manifest_samples(csv_path: str | os.PathLike[str]) -> list[Sample]:
    """CSV rows ``path,label[,family]``; a header row (first cell ``path``) is optional."""
    manifest = Path(csv_path)
    if not manifest.is_file():
        raise FileNotFoundError(f"manifest {manifest} does not exist")
    samples = []
    with manifest.open(newline="") as fh:
        for line_no, row in enumerate(csv.reader(fh), start=1):
            if not row or not "".join(row).strip() or row[0].startswith("#"):
                continue
            if line_no == 1 and row[0].strip().lower() == "path":
                continue
            if len(row) < 2 or row[1].strip().lower() not in _LABELS:
                raise ValueError(
                    f"{manifest}:{line_no}: expected 'path,label[,family]' with label in "
                    f"{sorted(_LABELS)}, got {row}"
                )
            label = _LABELS[row[1].strip().lower()]
            family = (
                row[2].strip() if len(row) > 2 and row[2].strip() else ("fake" if label else "real")
            )
            p = Path(row[0].strip())
            samples.append(Sample(p if p.is_absolute() else manifest.parent / p, label, family))
    if not samples:
        raise ValueError(f"manifest {manifest} lists no images")
    return samples


def load_rgb(path: str | os.PathLike[str]) -> tuple[Image.Image, str]:
    """Decode fully (so truncation raises here) and convert to RGB; returns (image, original
    mode). Alpha is composited on white, the usual display convention."""
    with Image.open(path) as im:
        im.load()
        mode = im.mode
        if mode == "RGB":
            return im.copy(), mode
        if mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")
        if im.mode in ("RGBA", "LA", "PA"):
            rgba = im.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB"), mode
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit gray: scale to 8 bit
            im = im.point(lambda v: v / 256).convert("L")
        return im.convert("RGB"), mode


class ImageFileDataset(Dataset):
    """Yields ``(image float32 (3, size, size) in [0, 1], label int64)`` from ``Sample``s.

    ``resize="shorter"`` scales the shorter side to ``size`` (bilinear, antialiased) then
    centre-crops; ``resize="crop"`` only centre-crops, keeping pixel-level traces intact that
    resizing would wash out (images smaller than ``size`` are then skipped as tiny).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        size: int = 224,
        *,
        resize: Literal["shorter", "crop"] = "shorter",
        min_size: int = 32,
        validate: bool = True,
    ) -> None:
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        if resize not in ("shorter", "crop"):
            raise ValueError(f"resize must be 'shorter' or 'crop', got {resize!r}")
        if not samples:
            raise ValueError("no samples given")
        self.size, self.resize, self.validate = size, resize, validate
        self.min_size = max(min_size, size) if resize == "crop" else min_size
        self.skipped: Counter[str] = Counter()
        self.converted: Counter[str] = Counter()
        self._warned = False
        if validate:
            kept = []
            for s in samples:
                reason = self._check(s.path)
                if reason is None:
                    kept.append(s)
                else:
                    self.skipped[reason] += 1
            if not kept:
                raise ValueError(
                    f"none of the {len(samples)} images is usable: {dict(self.skipped)}"
                )
            samples = kept
            if self.skipped or self.converted:
                self._warn()
        self.samples: list[Sample] = list(samples)

    def _check(self, path: Path) -> str | None:
        try:
            im, mode = load_rgb(path)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            return "unreadable"  # not an image, truncated, or corrupt
        if min(im.size) < self.min_size:
            return "tiny"
        if mode != "RGB":
            self.converted[mode] += 1
        return None

    def _warn(self) -> None:
        self._warned = True
        warnings.warn(
            f"ImageFileDataset: skipped {sum(self.skipped.values())} files "
            f"{dict(self.skipped)}; converted to RGB {sum(self.converted.values())} "
            f"{dict(self.converted)}",
            UserWarning,
            stacklevel=3,
        )

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> Tensor:
        return torch.tensor([s.label for s in self.samples], dtype=torch.int64)

    def _transform(self, im: Image.Image) -> Tensor:
        s = self.size
        if self.resize == "shorter":
            w, h = im.size
            scale = s / min(w, h)
            im = im.resize((max(s, round(w * scale)), max(s, round(h * scale))), Image.BILINEAR)
        w, h = im.size
        left, top = (w - s) // 2, (h - s) // 2
        im = im.crop((left, top, left + s, top + s))
        x = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
        return x.view(s, s, 3).permute(2, 0, 1).float().div_(255.0)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        for k in range(len(self.samples)):
            sample = self.samples[(index + k) % len(self.samples)]
            try:
                im, _ = load_rgb(sample.path)
                if min(im.size) < self.min_size:
                    raise ValueError("tiny")
                return self._transform(im), torch.tensor(sample.label, dtype=torch.int64)
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
                if self.validate:
                    raise  # validated at init: a failure now means the file changed on disk
                self.skipped["unreadable_at_access"] += 1
                if not self._warned:
                    self._warn()
        raise RuntimeError("no readable image in the dataset")
