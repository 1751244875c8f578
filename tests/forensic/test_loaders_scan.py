"""Folder scans (``loaders.scan_folder``, ``image_files``): every extension Pillow reads, the
other files, and folders that cannot be listed."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from assocmem.forensic.data.loaders import IMAGE_EXTENSIONS, image_files, load_rgb, scan_folder


def test_image_extensions_are_those_pillow_opens():
    registered = Image.registered_extensions()
    for ext in (".jpg", ".jpeg", ".jfif", ".jpe", ".png", ".webp", ".tif", ".tga", ".ppm", ".ico"):
        assert ext in IMAGE_EXTENSIONS, ext
    assert all(registered[ext] in Image.OPEN for ext in IMAGE_EXTENSIONS)
    assert ".pdf" not in IMAGE_EXTENSIONS  # Pillow writes PDFs, it does not read them
    # identified but not decoded (no handler, no decoder): every such file would fail to load
    assert not {".h5", ".grib", ".bufr", ".mpg"} & IMAGE_EXTENSIONS


def test_scan_finds_images_by_any_readable_extension_and_lists_the_others(tmp_path):
    im = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    for name, fmt in {"a.jfif": "JPEG", "b.JPE": "JPEG", "c.tga": "TGA", "d.ppm": "PPM"}.items():
        im.save(tmp_path / name, fmt)
    im.save(tmp_path / "noext", "PNG")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".hidden.txt").write_text("x")  # hidden: neither an image nor counted
    scan = scan_folder(tmp_path)
    assert [p.name for p in scan.images] == ["a.jfif", "b.JPE", "c.tga", "d.ppm"]
    assert [p.name for p in scan.not_images] == ["noext", "notes.txt"]
    assert scan.unreadable == []
    assert image_files(tmp_path) == scan.images
    for p in scan.images:
        assert load_rgb(p)[0].size == (16, 16)  # each one readable


def test_a_folder_that_cannot_be_listed_is_reported_not_skipped(tmp_path, monkeypatch):
    # os.walk without onerror dropped it silently: its images were never listed
    deep = tmp_path / "a" / "b" / "locked"
    deep.mkdir(parents=True)
    (tmp_path / "ok.png").write_bytes(b"")
    (deep / "x.png").write_bytes(b"")
    real_scandir = os.scandir

    def scandir(path="."):
        if os.path.normpath(os.fspath(path)) == str(deep):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)  # what os.walk lists with
    scan = scan_folder(tmp_path)
    assert scan.images == [tmp_path / "ok.png"]
    [(where, why)] = scan.unreadable
    assert where == deep and why.startswith("PermissionError")
    with pytest.warns(UserWarning, match=f"could not be listed.*{deep}"):
        assert image_files(tmp_path) == [tmp_path / "ok.png"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any mode")
def test_a_chmod_000_folder_is_reported(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "x.png").write_bytes(b"")
    locked.chmod(0)
    try:
        scan = scan_folder(tmp_path)
    finally:
        locked.chmod(0o755)
    assert [p for p, _ in scan.unreadable] == [locked]


@pytest.mark.parametrize("listing", [sorted, lambda names: sorted(names, reverse=True)])
def test_a_folder_linked_twice_is_reported_by_one_name_whatever_the_listing(
    tmp_path, monkeypatch, listing
):
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "sub" / "b.png")
    (tmp_path / "sublink").symlink_to("sub")
    scandir = os.scandir

    class Listed:  # os.scandir's iterator, its entries in the order ``listing`` gives
        def __init__(self, path):
            with scandir(path) as it:
                by_name = {e.name: e for e in it}
            self.entries = iter([by_name[n] for n in listing(by_name)])

        def __iter__(self):
            return self

        def __next__(self):
            return next(self.entries)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def close(self):
            pass

    monkeypatch.setattr(os, "scandir", Listed)
    assert scan_folder(tmp_path).images == [tmp_path / "sub" / "b.png"]


def test_the_dataset_loaders_still_find_their_images(tmp_path):
    # the layouts read folders through image_files: a .jfif real and a .tga fake now count
    from assocmem.forensic.data import cnndetection_samples

    im = Image.new("RGB", (8, 8))
    (tmp_path / "0_real").mkdir()
    (tmp_path / "1_fake").mkdir()
    im.save(tmp_path / "0_real" / "r.jfif", "JPEG")
    im.save(tmp_path / "1_fake" / "f.tga", "TGA")
    assert [(s.path.name, s.label) for s in cnndetection_samples(tmp_path)] == [
        ("r.jfif", 0),
        ("f.tga", 1),
    ]
