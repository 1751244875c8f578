"""Loaders for users' own real-vs-fake image collections.

Three layouts, each a function returning ``Sample``s that ``ImageFileDataset`` serves:

- ``cnndetection_samples(root)``: ``{0_real,1_fake}`` pairs at ``root``, under
  ``root/<category>`` or ``root/<generator>/<category>``, in any mix (CNNDetection /
  ForenSynths); family = the pair's folder relative to ``root``;
- ``genimage_samples(root)``: ``root/{nature,ai}``, or ``root/<generator>/[<split>/]{nature,ai}``
  (GenImage; folder names matched case-insensitively); family = generator. A generator folder
  that lacks the split or one of ``nature``/``ai`` is an error naming it, never silently dropped;
- ``manifest_samples(csv)``: UTF-8 rows ``path,label[,family]`` (header optional, a BOM is
  ignored, paths relative to the CSV; labels 0/1 or real/fake).

Robustness policy (never crash mid-epoch, never change the label balance):
``ImageFileDataset`` decodes every file once in ``__init__`` (``validate=True``, the default).
Unreadable files (not an image, truncated, corrupt, a decompression bomb, not a regular file
such as a FIFO) and images smaller than ``min_size`` are dropped and counted in ``skipped``;
grayscale, 16-bit, float, CMYK, palette and alpha images are converted to RGB (alpha composited
on white, EXIF orientation applied when resizing) and counted in ``converted``; one ``UserWarning``
summarises both. With ``validate=False`` (huge folders), a file that fails at ``__getitem__`` is
replaced by a seeded choice among the readable files **of the same label**, so the labels an
epoch yields are exactly those of ``samples``. Such a file is counted once (however often it is
drawn), its name is warned about once, and the finding is kept in shared memory, so
``skipped``/``skipped_files`` in the main process include what ``DataLoader`` workers found.
"""

from __future__ import annotations

import csv
import io
import math
import os
import random
import stat
import struct
import sys
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "DECODE_ERRORS",
    "IMAGE_EXTENSIONS",
    "FolderScan",
    "ImageFileDataset",
    "Sample",
    "cnndetection_samples",
    "genimage_samples",
    "image_files",
    "load_rgb",
    "manifest_samples",
    "scan_folder",
    "require_regular_file",
    "signed_white",
    "to_rgb",
]


def _has_ghostscript() -> bool:
    from PIL import EpsImagePlugin

    return bool(EpsImagePlugin.has_ghostscript())


def _readable_extensions() -> frozenset[str]:
    """The file extensions of the formats this Pillow opens and decodes: those registered
    (``Image.registered_extensions``) with an open plugin, less the ones it only identifies
    (MPEG: no decoder), the stubs that need a handler nobody registered (HDF5, GRIB, BUFR,
    WMF off Windows) and PostScript without Ghostscript, whose every file would fail to load."""
    extensions = set()
    for ext, fmt in Image.registered_extensions().items():
        if fmt not in Image.OPEN or fmt == "MPEG":
            continue
        factory = Image.OPEN[fmt][0]
        stub = isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile)
        if stub and getattr(sys.modules.get(factory.__module__), "_handler", None) is None:
            continue
        if fmt == "EPS" and not _has_ghostscript():  # Pillow reads PostScript through it
            continue
        extensions.add(ext.lower())
    return frozenset(extensions)


# What a folder scan (``scan_folder``, ``image_files``) takes for an image: every extension the
# installed Pillow reads (``.jpg``, ``.jfif``, ``.png``, ``.webp``, ``.tif``, ``.tga``, ``.ppm``,
# ``.ico``, ``.avif`` where Pillow was built with it, ...), as registered when this module is
# imported.
IMAGE_EXTENSIONS: frozenset[str] = _readable_extensions()

# What decoding a corrupt or hostile file can raise. Pillow's own errors are OSError (including
# UnidentifiedImageError), SyntaxError and ValueError, but DecompressionBombError is none of
# those, and malformed headers reach struct/index/EOF errors inside the format plugins.
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    struct.error,
    MemoryError,
    Image.DecompressionBombError,
)


class Sample(NamedTuple):
    path: Path
    label: int  # 0 real, 1 fake
    family: str


class FolderScan(NamedTuple):
    """What :func:`scan_folder` found under a folder, each list sorted."""

    images: list[Path]  # files with an image extension (IMAGE_EXTENSIONS)
    not_images: list[Path]  # the other files, left out by their extension
    unreadable: list[tuple[Path, str]]  # folders that could not be listed, and why
    # names with an image extension that are no regular file (a dead link, a FIFO, a socket):
    # no image can be read from them, which a caller reporting on every image should say
    not_regular: list[Path]


def scan_folder(folder: str | os.PathLike[str]) -> FolderScan:
    """The files under ``folder``, recursively: images by extension (:data:`IMAGE_EXTENSIONS`),
    the other files, and the folders that could not be listed (no read permission), whose
    files are unknown.

    Symlinked folders are followed (``Path.rglob`` before Python 3.13 does not), each real
    folder once, so a link loop ends; hidden files and folders (a name starting with ``.``,
    e.g. ``.thumbs/``) are left out, and entries that are not regular files (a dead link, a
    FIFO, a socket) are not images: those with an image extension are listed apart
    (``not_regular``), the others left out."""
    found: list[Path] = []
    others: list[Path] = []
    not_regular: list[Path] = []
    unreadable: list[tuple[Path, str]] = []
    seen = set()

    def failed(e: OSError) -> None:
        unreadable.append((Path(e.filename or folder), f"{type(e).__name__}: {e}"))

    for root, dirs, files in os.walk(folder, onerror=failed, followlinks=True):
        try:
            st = os.stat(root)
        except OSError as e:  # removed meanwhile
            failed(e)
            dirs[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:  # reached again through a link
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        # walked in name order: which name of a folder linked twice is reported (the first
        # reached) does not depend on the order the file system lists it in
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.startswith("."):
                continue
            path = Path(root, name)
            image = path.suffix.lower() in IMAGE_EXTENSIONS
            if path.is_file():  # not a dead link, a FIFO or a socket
                (found if image else others).append(path)
            elif image:
                not_regular.append(path)
    return FolderScan(sorted(found), sorted(others), sorted(unreadable), sorted(not_regular))


def image_files(folder: Path) -> list[Path]:
    """Image files (by extension, :data:`IMAGE_EXTENSIONS`) under ``folder``, recursively, sorted
    (:func:`scan_folder`'s ``images``: symlinked folders followed, hidden ones left out).

    A folder that cannot be listed (no read permission) is warned about (``UserWarning``, naming
    it): the images in it are not among those returned."""
    scan = scan_folder(folder)
    if scan.unreadable:
        shown = "; ".join(f"{p} ({why})" for p, why in scan.unreadable[:3])
        more = f" and {len(scan.unreadable) - 3} more" if len(scan.unreadable) > 3 else ""
        warnings.warn(
            f"image_files: {len(scan.unreadable)} folder(s) under {folder} could not be listed, "
            f"their images are left out: {shown}{more}",
            UserWarning,
            stacklevel=2,
        )
    return scan.images


def _subdirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _child(folder: Path, name: str) -> Path | None:
    """The subfolder of ``folder`` called ``name``, compared case-insensitively."""
    matches = [folder / d for d in _subdirs(folder) if d.lower() == name.lower()]
    if len(matches) > 1:
        raise ValueError(f"{folder}: ambiguous folders {[m.name for m in matches]} for {name!r}")
    return matches[0] if matches else None


def _check_root(root: str | os.PathLike[str]) -> Path:
    path = Path(root)
    if not path.is_dir():
        raise FileNotFoundError(f"dataset root {path} does not exist or is not a directory")
    return path


def _pair_samples(pairs: Sequence[tuple[Path, Path, str]], layout: str) -> list[Sample]:
    """``pairs``: (real folder, fake folder, family of the fakes)."""
    samples: list[Sample] = []
    for real, fake, family in pairs:
        for folder, label in ((real, 0), (fake, 1)):
            files = image_files(folder)
            if not files:
                raise ValueError(
                    f"{layout}: no image files (by extension, any Pillow reads: .png, .jpg, "
                    f".webp, ...) under {folder}"
                )
            samples += [Sample(p, label, family if label else "real") for p in files]
    return samples


def cnndetection_samples(root: str | os.PathLike[str]) -> list[Sample]:
    """``0_real``/``1_fake`` folder pairs under ``root``: at ``root`` itself, under a
    category (``root/car/0_real``) or under a generator's category (``root/progan/car/0_real``),
    in any mix, as CNNDetection's test set mixes them (``crn/0_real`` beside
    ``progan/airplane/0_real``). A pair's family is its folder relative to ``root``
    (``car``, ``progan/car``; ``root``'s name for the pair at ``root``).

    Every pair is taken: a layout mixing levels lost the pairs of every level but the first it
    found. A folder holding one of ``0_real``/``1_fake`` without the other is an error naming
    it, as is a ``root`` with no pair at all; other folders (no pair within two levels) are not
    part of the layout and are left alone."""
    path = _check_root(root)
    pair = {"0_real", "1_fake"}
    pairs: list[tuple[Path, Path, str]] = []
    incomplete: list[str] = []

    def visit(folder: Path, family: str, depth: int) -> None:
        found = set(_subdirs(folder))
        if pair <= found:
            pairs.append((folder / "0_real", folder / "1_fake", family))
        elif pair & found:
            incomplete.append(str(folder.relative_to(path)) if folder != path else str(path))
        if depth < 2:
            for sub in sorted(found - pair):
                visit(folder / sub, sub if folder == path else f"{family}/{sub}", depth + 1)

    visit(path, path.name, 0)
    if incomplete or not pairs:
        raise ValueError(
            f"CNNDetection layout: expected subfolders 0_real and 1_fake under {path} "
            f"(or under each category, e.g. {path}/car/0_real, or {path}/progan/car/0_real); "
            f"found {_subdirs(path)}"
            + (f"; incomplete (one of 0_real/1_fake only): {incomplete}" if incomplete else "")
        )
    return _pair_samples(pairs, "CNNDetection layout")


def genimage_samples(root: str | os.PathLike[str], split: str | None = None) -> list[Sample]:
    """``nature``/``ai`` folders under ``root``, or under ``root/<generator>[/<split>]``.

    Folder names (``nature``, ``ai``, the split) match case-insensitively (``AI/``, ``Train/``).
    Every generator folder must hold the split (when given) and both ``nature`` and ``ai``; one
    that does not is reported by name in the ``ValueError`` instead of being left out.
    """
    path = _check_root(root)
    nature, ai = _child(path, "nature"), _child(path, "ai")
    if nature and ai:
        return _pair_samples([(nature, ai, path.name)], "GenImage layout")
    if nature or ai:
        have, lack = ("nature", "ai") if nature else ("ai", "nature")
        raise ValueError(f"GenImage layout: {path} has a {have}/ folder but no {lack}/ folder")
    pairs, problems = [], []
    for gen in _subdirs(path):
        base: Path | None = path / gen
        if split:
            base = _child(path / gen, split)
            if base is None:
                problems.append(f"{gen}/ has no {split}/ (found {_subdirs(path / gen)})")
                continue
        nature, ai = _child(base, "nature"), _child(base, "ai")
        missing = [name for name, p in (("nature", nature), ("ai", ai)) if p is None]
        if missing:
            where = base.relative_to(path)
            problems.append(f"{where}/ lacks {'/ and '.join(missing)}/ (found {_subdirs(base)})")
            continue
        pairs.append((nature, ai, gen))
    if problems or not pairs:
        where = f"{path}/<generator>/{split}" if split else f"{path}/<generator>"
        hint = "" if split else " (pass split= if each generator has train/val folders)"
        raise ValueError(
            f"GenImage layout: expected subfolders nature and ai under {path} or {where}{hint}; "
            + (f"unusable generator folders: {'; '.join(problems)}" if problems else "")
            + ("" if problems else f"found {_subdirs(path)}")
        )
    return _pair_samples(pairs, "GenImage layout")


_LABELS = {"0": 0, "1": 1, "real": 0, "fake": 1, "nature": 0, "ai": 1}


def manifest_samples(csv_path: str | os.PathLike[str]) -> list[Sample]:
    """UTF-8 CSV rows ``path,label[,family]``; a header row (first cell ``path``) is optional.

    A byte-order mark is ignored. Listed paths are not opened here: a missing or unreadable one
    (or a FIFO) is skipped and counted by ``ImageFileDataset``. Spaces around a path are
    dropped unless the name with them is a file (a quoted ``" lead space.png"``).
    """
    manifest = Path(csv_path)
    if not manifest.exists():
        raise FileNotFoundError(f"manifest {manifest} does not exist")
    if not manifest.is_file():
        raise ValueError(f"manifest {manifest} is not a regular file")
    raw = manifest.read_bytes()
    try:
        # utf-8-sig: spreadsheet programs save UTF-8 CSVs with a BOM that would otherwise become
        # part of the first path (or hide the header).
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ValueError(
            f"{manifest}:{line}: not UTF-8 text (byte {raw[e.start]:#04x}); save the manifest "
            "as UTF-8"
        ) from None
    samples = []
    line_no = 0
    try:
        for line_no, row in enumerate(csv.reader(io.StringIO(text, newline="")), start=1):
            # no comment rows: a file may start with '#' ('#1.png,1' was dropped, label and all)
            if not row or not "".join(row).strip():
                continue
            if line_no == 1 and row[0].strip().lower() == "path":
                continue
            if len(row) < 2 or row[1].strip().lower() not in _LABELS:
                raise ValueError(
                    f"{manifest}:{line_no}: expected 'path,label[,family]' with label in "
                    f"{sorted(_LABELS)}, got {row}"
                )
            label = _LABELS[row[1].strip().lower()]
            family = row[2].strip() if len(row) > 2 and row[2].strip() else None
            family = family or ("fake" if label else "real")
            samples.append(Sample(_listed_path(manifest, row[0]), label, family))
    except csv.Error as e:
        raise ValueError(f"{manifest}:{line_no + 1}: not a readable CSV ({e})") from None
    if not samples:
        raise ValueError(f"manifest {manifest} lists no images")
    return samples


def _listed_path(manifest: Path, cell: str) -> Path:
    """A manifest row's path, relative to the manifest's folder unless absolute. Spaces around
    it are dropped (``a.png , 1``) unless the name as written, spaces and all, is a file
    (a quoted ``" lead.png"``: the csv module keeps no quoting to tell the two apart)."""

    def placed(text: str) -> Path:
        p = Path(text)
        return p if p.is_absolute() else manifest.parent / p

    as_written = placed(cell)
    return as_written if cell != cell.strip() and as_written.exists() else placed(cell.strip())


def require_regular_file(path: str | os.PathLike[str]) -> None:
    """Raises ``OSError`` unless ``path`` is a regular file: opening a FIFO (or a character
    device) for reading blocks until a writer appears."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise OSError(f"{path} is not a regular file")


# Float images carry no scale: the white level is guessed from the values, the one of 1, 255 and
# 65535 that their 99.9th percentile does not exceed by more than half. A percentile, not the
# maximum: a [0, 1] image with a few overshooting pixels (1.02 after a sharpening filter) read
# by its maximum was taken for a 0-255 one, i.e. black.
FLOAT_WHITES = (1.0, 255.0, 65535.0)


def float_white(a: np.ndarray) -> float:
    """The white level of a float image's finite values ``a`` (``FLOAT_WHITES``; values above it
    are clipped, below 0 too). Raises ``ValueError`` when they are on none of those scales."""
    level = float(np.percentile(a, 99.9)) if a.size else 0.0
    for white in FLOAT_WHITES:
        if level <= 1.5 * white:
            return white
    raise ValueError(
        f"a float image whose values reach {level:g} (99.9th percentile): not on a 0-1, 0-255 or "
        "0-65535 scale; convert it to 8 or 16 bits first"
    )


def signed_white(im: Image.Image) -> float | None:
    """32767 for a TIFF of signed 16-bit samples (Pillow decodes it as 32-bit mode ``I``, values
    -32768..32767, where an unsigned 16-bit image's white is 65535), else ``None``."""
    tags = getattr(im, "tag_v2", None)
    if im.mode != "I" or tags is None:
        return None
    formats, bits = tags.get(339, (1,)), tags.get(258, ())
    formats = formats if isinstance(formats, tuple) else (formats,)
    bits = bits if isinstance(bits, tuple) else (bits,)
    return 32767.0 if 2 in formats and 16 in bits else None


def to_rgb(im: Image.Image, *, white: float | None = None) -> Image.Image:
    """Any decoded mode -> 8-bit RGB, keeping the picture's brightness; transparent pixels
    (an alpha channel, a palette's or a PNG's single transparent colour) on white.

    ``white``: a 32-bit int image's white level when its tags are not at hand (an EXIF-rotated
    copy of a signed 16-bit TIFF: :func:`signed_white` of the decoded file); negative values
    are black."""
    if im.mode in ("RGB", "L", "P") and "transparency" in im.info:
        # a PNG's tRNS colour key (RGB, L) or a palette's transparent entries: Pillow's
        # RGBA conversion applies them, as an alpha channel's would be; the key colour itself
        # was scored as picture before
        im = im.convert("RGBA")
    if im.mode == "RGB":
        return im
    if im.mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if im.mode.startswith("I;16"):  # 16-bit gray: 65535 is white
        a = np.asarray(im, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode == "I":  # 32-bit int gray: 16-bit data (e.g. older PNG decoders) or 8-bit data
        a = np.asarray(im, dtype=np.float64)
        white = white if white is not None else signed_white(im)
        if white is not None:  # signed 16-bit: read by the max, 65535, it was half as bright
            a = a * (255.0 / white)
        elif a.size and a.max() > 255:
            a = a / 257.0
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        a = a * (255.0 / float_white(a))
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    return im.convert("RGB")  # L, 1, P, CMYK, YCbCr; unsupported modes raise ValueError


def _decode(
    path: str | os.PathLike[str], shorter: int | None = None, *, orient: bool = True
) -> tuple[Image.Image, str, tuple[int, int]]:
    """(RGB image, original mode, original size after EXIF rotation).

    ``shorter``: a JPEG may be decoded at a reduced scale (``Image.draft``) as long as its
    shorter side stays >= ``shorter``, so a huge photo bound for a small resize never needs its
    full-resolution bitmap. ``orient=False`` keeps the pixels as stored (the size is then the
    stored one too).
    """
    require_regular_file(path)
    with Image.open(path) as im:
        mode, size = im.mode, im.size
        if shorter is not None and im.format == "JPEG":
            m = min(size)
            im.draft(None, (math.ceil(size[0] * shorter / m), math.ceil(size[1] * shorter / m)))
        im.load()  # decode fully, so truncation raises here
        white = signed_white(im)  # the tags a rotated copy no longer carries
        if not orient:
            rgb = to_rgb(im, white=white)
            return (rgb.copy() if rgb is im else rgb), mode, size
        try:
            # Orientation 5-8 swaps width and height; a malformed EXIF block is ignored.
            oriented = ImageOps.exif_transpose(im)
        except Exception:  # noqa: BLE001 (the pixels are fine; only the tag is broken)
            oriented = im
        if oriented is not im and oriented.size != im.size:
            size = (size[1], size[0])
        rgb = to_rgb(oriented, white=white)
        return (rgb.copy() if rgb is im else rgb), mode, size


def load_rgb(path: str | os.PathLike[str], *, orient: bool = True) -> tuple[Image.Image, str]:
    """Decode fully (so truncation raises here), apply EXIF orientation and convert to RGB;
    returns (image, original mode). Alpha is composited on white, the usual display convention;
    16-bit images are scaled by 1/257 and float images from the white level their values suggest
    (1, 255 or 65535: ``float_white``; a float image on none of those scales is refused).
    ``orient=False`` keeps the pixels as stored, where a JPEG's 8 x 8 block grid starts at the
    top-left pixel (an EXIF rotation moves it to another corner).

    Raises one of ``DECODE_ERRORS`` for anything that is not a readable image, including
    non-regular files (FIFOs are refused, never opened) and decompression bombs."""
    im, mode, _ = _decode(path, orient=orient)
    return im, mode


# resize="crop" starts its crop at a multiple of 8 of the pixels as stored: on a JPEG's 8 x 8
# block grid (and NPR's 2 x 2 cells), where Detector starts its tiles. A centred crop off the
# grid trained a block-DCT network on traces the shipped detector never scores (a user audit:
# its off-grid crops of one JPEG scored 6 logits from the on-grid ones on average).
CROP_GRID = 8

_REASONS = ("", "unreadable", "tiny")  # codes kept per sample in shared memory
_NAMED_WARNINGS = 10  # per process; the rest are in ``skipped_files``


class _Skip(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class ImageFileDataset(Dataset):
    """Yields ``(image float32 (3, size, size) in [0, 1], label int64)`` from ``Sample``s.

    ``resize="shorter"`` resamples the centred square of side ``min(width, height)`` to
    ``size`` × ``size`` (bilinear, antialiased; the same picture as scaling the shorter side to
    ``size`` and centre-cropping, without ever building the scaled whole image, so a 32×150000
    strip costs no more than its square); ``resize="crop"`` only crops, keeping
    pixel-level traces intact that resizing would wash out (images smaller than ``size`` are
    then skipped as tiny): of the pixels as stored (no EXIF rotation), the centred crop moved
    up and left onto the JPEG block grid (a start at multiples of ``CROP_GRID`` = 8), where
    :class:`~assocmem.forensic.detector.Detector` starts its tiles.

    ``seed`` fixes which same-label file replaces a file that fails at access (see the module
    docstring). ``skipped`` counts skipped files by reason and ``skipped_files`` lists them,
    including those found by ``DataLoader`` workers.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        size: int = 224,
        *,
        resize: Literal["shorter", "crop"] = "shorter",
        min_size: int = 32,
        validate: bool = True,
        seed: int = 0,
    ) -> None:
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        if resize not in ("shorter", "crop"):
            raise ValueError(f"resize must be 'shorter' or 'crop', got {resize!r}")
        if not samples:
            raise ValueError("no samples given")
        self.size, self.resize, self.validate, self.seed = size, resize, validate, seed
        self.min_size = max(min_size, size) if resize == "crop" else min_size
        self.converted: Counter[str] = Counter()
        self._dropped: list[tuple[Path, str]] = []  # found by the validation pass
        self._named = 0
        self._bad = torch.zeros(0, dtype=torch.uint8)  # sized once the samples are final
        if validate:
            kept = []
            for s in samples:
                try:
                    _, mode = self._load(s.path)
                except _Skip as e:
                    self._dropped.append((s.path, e.reason))
                    continue
                if mode != "RGB":
                    self.converted[mode] += 1
                kept.append(s)
            if not kept:
                raise ValueError(
                    f"none of the {len(samples)} images is usable: {dict(self.skipped)}; "
                    f"first: {self._dropped[0][0]}"
                )
            samples = kept
            if self._dropped or self.converted:
                self._warn_summary()
        self.samples: list[Sample] = list(samples)
        self._same_label: dict[int, list[int]] = {}
        for i, s in enumerate(self.samples):
            self._same_label.setdefault(s.label, []).append(i)
        # One code per sample (0 fine, else an index into _REASONS) in shared memory: what a
        # DataLoader worker finds is seen by the main process and by the other workers.
        self._bad = torch.zeros(len(self.samples), dtype=torch.uint8).share_memory_()

    @property
    def skipped(self) -> Counter[str]:
        """Skipped files by reason (``unreadable``, ``tiny``), each file counted once."""
        counts = Counter(reason for _, reason in self._dropped)
        for code, n in zip(*torch.unique(self._bad, return_counts=True), strict=True):
            if code:
                counts[_REASONS[int(code)]] += int(n)
        return counts

    @property
    def skipped_files(self) -> list[tuple[Path, str]]:
        """(path, reason) of every skipped file: at validation, then those found at access."""
        found = [
            (self.samples[int(i)].path, _REASONS[int(self._bad[i])]) for i in self._bad.nonzero()
        ]
        return self._dropped + found

    def _warn_summary(self) -> None:
        shown = ", ".join(str(p) for p, _ in self._dropped[:3])
        more = " ..." if len(self._dropped) > 3 else ""
        warnings.warn(
            f"ImageFileDataset: skipped {len(self._dropped)} files {dict(self.skipped)}"
            + (f" ({shown}{more}; all in .skipped_files)" if self._dropped else "")
            + f"; converted to RGB {sum(self.converted.values())} {dict(self.converted)}",
            UserWarning,
            stacklevel=3,
        )

    def _load(self, path: Path) -> tuple[Image.Image, str]:
        shorter = self.size if self.resize == "shorter" else None
        try:
            # a crop keeps the pixels as stored, where a JPEG's block grid starts at the corner
            im, mode, size = _decode(path, shorter, orient=self.resize == "shorter")
        except DECODE_ERRORS as e:
            raise _Skip("unreadable", f"{type(e).__name__}: {e}") from None
        if min(size) < self.min_size:
            raise _Skip("tiny", f"{size[0]}x{size[1]} is smaller than {self.min_size}")
        return im, mode

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> Tensor:
        return torch.tensor([s.label for s in self.samples], dtype=torch.int64)

    def _transform(self, im: Image.Image) -> Tensor:
        s = self.size
        w, h = im.size
        if self.resize == "shorter":
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            im = im.resize((s, s), Image.BILINEAR, box=(left, top, left + side, top + side))
        else:  # centred, moved to the JPEG grid as Detector's tiles are (off it scored otherwise)
            left, top = (w - s) // 2 // CROP_GRID * CROP_GRID, (h - s) // 2 // CROP_GRID * CROP_GRID
            im = im.crop((left, top, left + s, top + s))
        x = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
        return x.view(s, s, 3).permute(2, 0, 1).float().div_(255.0)

    def _candidates(self, index: int) -> Iterator[int]:
        """``index``, then same-label indices in an order fixed by (seed, index): random draws,
        then a scan of them all from a random start, so a readable one is always found."""
        pool = self._same_label[self.samples[index].label]
        rng = random.Random(f"{self.seed}/{index}")
        yield index
        for _ in range(min(32, len(pool))):
            yield pool[rng.randrange(len(pool))]
        start = rng.randrange(len(pool))
        for k in range(len(pool)):
            yield pool[(start + k) % len(pool)]

    def _mark_bad(self, index: int, skip: _Skip) -> None:
        if self._bad[index]:
            return
        self._bad[index] = _REASONS.index(skip.reason)
        self._named += 1
        if self._named <= _NAMED_WARNINGS:
            tail = "" if self._named < _NAMED_WARNINGS else "; further ones are not named here"
            sample = self.samples[index]
            warnings.warn(
                f"ImageFileDataset: skipping {skip.reason} file {sample.path} ({skip}); its "
                f"index now serves another label-{sample.label} file. All skipped files: "
                f".skipped_files{tail}",
                UserWarning,
                stacklevel=3,
            )

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        label = self.samples[index].label
        for candidate in self._candidates(index):
            if self._bad[candidate]:
                continue  # known bad (maybe found by another worker): not decoded again
            try:
                im, _ = self._load(self.samples[candidate].path)
            except _Skip as skip:
                self._mark_bad(candidate, skip)
                continue
            return self._transform(im), torch.tensor(label, dtype=torch.int64)
        raise RuntimeError(
            f"ImageFileDataset: no readable image with label {label} is left "
            f"({len(self._same_label[label])} listed); see .skipped_files"
        )
