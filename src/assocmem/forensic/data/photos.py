"""Real photographs that ship inside installed wheels (no network, ever).

The files are read with Pillow straight from the installed skimage / scikit-learn / matplotlib
package directories (array-equal to ``skimage.data.*`` and ``load_sample_image``). Only
camera-made images are listed: synthetic ones (colorwheel, checkerboard, logo, phantom,
binary_blobs, horse) would make "real" mean "rendered" and are skipped; skimage datasets that
need a pooch download (brain, eagle, kidney, ...) are skipped because the build must be offline.

Each photo has a ``group``: photos of the same scene share one (the stereo motorcycle pair), and
splits are assigned per group so a scene never appears in two splits. ``skimage.data.cat`` is the
same array as ``chelsea`` and is therefore not listed twice.

A second, smaller registry (``FRESH_PHOTO_NAMES``) holds the camera-made images that ship in
the PyWavelets and mahotas wheels: photos added after every detector study had been run, kept
out of ``PHOTO_NAMES`` (and so out of every split) as a test set no choice had been made on
(``fresh.py``; read once since, under a plan fixed before: docs/results.md,
``detector-prior-fresh``). Left out of it: ``pywt.data.camera`` (skimage's ``camera``, array-equal),
mahotas' ``DepartmentStore.jpg`` (a scanned drawing, not a photo) and ``lena.jpg`` (withdrawn
from use by journals and societies since 2018-2024).

Grayscale photos are replicated to three channels (``gray=True`` in the record) so every patch is
(3, H, W); the benchmark projects fakes of gray sources back to gray so saturation is not a
real-vs-fake shortcut.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "FRESH_PHOTO_NAMES",
    "PHOTO_GROUP",
    "PHOTO_NAMES",
    "Photo",
    "available_photos",
    "load_fresh_photos",
    "load_photos",
    "photo_path",
]


@dataclass(frozen=True)
class Photo:
    """One real source photo as an (H, W, 3) uint8 array."""

    name: str
    group: str
    origin: str  # "skimage", "sklearn", "matplotlib"; fresh photos: "pywt", "mahotas"
    file_format: str  # "png" or "jpeg": the source's own compression history ("npz": raw array)
    gray: bool
    pixels: np.ndarray


def _package_dir(package: str) -> Path:
    # find_spec locates an installed package without importing it (importing skimage.data,
    # sklearn.datasets or matplotlib costs seconds; reading a PNG costs milliseconds)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {package!r} is not installed: it ships photos the benchmark reads "
            "(pip install 'assocmem[forensic]')"
        )
    return Path(next(iter(spec.submodule_search_locations)))


_DATA_DIRS: dict[str, tuple[str, ...]] = {
    "skimage": ("skimage", "data"),
    "sklearn": ("sklearn", "datasets", "images"),
    "matplotlib": ("matplotlib", "mpl-data", "sample_data"),
    "pywt": ("pywt", "data"),
    "mahotas": ("mahotas", "demos", "data"),
}


def photo_path(origin: str, filename: str) -> Path:
    """Path of a bundled photo file inside its installed wheel."""
    package, *sub = _DATA_DIRS[origin]
    return _package_dir(package).joinpath(*sub, filename)


def _read(origin: str, filename: str) -> np.ndarray:
    # the same bytes skimage.data / load_sample_image return (checked array-equal), minus imports
    if filename.endswith(".npz"):  # PyWavelets keeps its images as arrays (pywt.data.aero())
        with np.load(photo_path(origin, filename), allow_pickle=False) as z:
            return z["data"]
    with Image.open(photo_path(origin, filename)) as im:
        return np.asarray(im if im.mode in ("L", "RGB") else im.convert("RGB"))


# name -> (group, origin, file name). Order is fixed: it is part of the seeded build.
_REGISTRY: dict[str, tuple[str, str, str]] = {
    "astronaut": ("astronaut", "skimage", "astronaut.png"),
    "chelsea": ("chelsea", "skimage", "chelsea.png"),
    "coffee": ("coffee", "skimage", "coffee.png"),
    "rocket": ("rocket", "skimage", "rocket.jpg"),
    "hubble_deep_field": ("hubble_deep_field", "skimage", "hubble_deep_field.jpg"),
    "retina": ("retina", "skimage", "retina.jpg"),
    "immunohistochemistry": ("immunohistochemistry", "skimage", "ihc.png"),
    "motorcycle_left": ("motorcycle", "skimage", "motorcycle_left.png"),
    "motorcycle_right": ("motorcycle", "skimage", "motorcycle_right.png"),
    "camera": ("camera", "skimage", "camera.png"),
    "coins": ("coins", "skimage", "coins.png"),
    "moon": ("moon", "skimage", "moon.png"),
    "clock": ("clock", "skimage", "clock_motion.png"),
    "page": ("page", "skimage", "page.png"),
    "grass": ("grass", "skimage", "grass.png"),
    "gravel": ("gravel", "skimage", "gravel.png"),
    "brick": ("brick", "skimage", "brick.png"),
    "cell": ("cell", "skimage", "cell.png"),
    "china": ("china", "sklearn", "china.jpg"),
    "flower": ("flower", "sklearn", "flower.jpg"),
    "grace_hopper": ("grace_hopper", "matplotlib", "grace_hopper.jpg"),
}

PHOTO_NAMES: tuple[str, ...] = tuple(_REGISTRY)
# each photo's scene group (the unit the split assigns), by name
PHOTO_GROUP: dict[str, str] = {name: group for name, (group, _, _) in _REGISTRY.items()}

# The fresh test photos (module docstring): never in a split of the built benchmark.
_FRESH_REGISTRY: dict[str, tuple[str, str, str]] = {
    "aero": ("aero", "pywt", "aero.npz"),
    "ascent": ("ascent", "pywt", "ascent.npz"),
    "luispedro": ("luispedro", "mahotas", "luispedro.jpg"),
    "nuclear": ("nuclear", "mahotas", "nuclear.png"),
}

FRESH_PHOTO_NAMES: tuple[str, ...] = tuple(_FRESH_REGISTRY)


def _to_rgb_uint8(arr: np.ndarray) -> tuple[np.ndarray, bool]:
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        raise TypeError(f"expected a uint8 photo, got {arr.dtype}")
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2), True
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected (H, W) or (H, W, 3) photo, got shape {arr.shape}")
    gray = bool(
        np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])
    )
    return np.ascontiguousarray(arr), gray


def load_photos(names: Sequence[str] | None = None) -> list[Photo]:
    """Load the named photos (default: all of ``PHOTO_NAMES``) in registry order.

    Raises ``KeyError`` for an unknown name. A photo whose loader fails (e.g. an skimage build
    without the file) raises: silently dropping sources would change the splits.
    """
    return _load(_REGISTRY, names)


def load_fresh_photos(names: Sequence[str] | None = None) -> list[Photo]:
    """The fresh test photos (default: all of ``FRESH_PHOTO_NAMES``), as :func:`load_photos`.

    They need the ``pywt`` and ``mahotas`` packages (the ``forensic`` extra); a missing one
    raises ``FileNotFoundError`` naming it."""
    return _load(_FRESH_REGISTRY, names)


def _load(registry: dict[str, tuple[str, str, str]], names: Sequence[str] | None) -> list[Photo]:
    wanted = tuple(registry) if names is None else tuple(names)
    unknown = [n for n in wanted if n not in registry]
    if unknown:
        raise KeyError(f"unknown photo names {unknown}; available: {list(registry)}")
    photos = []
    for name, (group, origin, filename) in registry.items():
        if name not in wanted:
            continue
        pixels, gray = _to_rgb_uint8(_read(origin, filename))
        fmt = {".jpg": "jpeg", ".npz": "npz"}.get(Path(filename).suffix, "png")
        photos.append(Photo(name, group, origin, fmt, gray, pixels))
    return photos


def available_photos() -> list[str]:
    """Names whose loader works in this environment (for diagnostics; the build uses all)."""
    ok = []
    for name, (_, origin, filename) in _REGISTRY.items():
        try:
            _read(origin, filename)
        except Exception:  # noqa: BLE001 - any failure means "not available offline"
            continue
        ok.append(name)
    return ok
