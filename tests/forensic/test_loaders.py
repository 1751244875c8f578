"""Loaders for user folders: odd files are converted or skipped with one warning, bad layouts
raise errors that say what was expected."""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from assocmem.forensic.data import (
    ImageFileDataset,
    cnndetection_samples,
    genimage_samples,
    manifest_samples,
)


def _noise(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)


def _write_good(folder: Path, n: int, size: tuple[int, int] = (48, 40)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(_noise(size, i)).save(folder / f"good{i}.png")


def _write_odd(folder: Path) -> None:
    """One of each awkward file: 4 convertible, 3 to skip, 1 ignored by extension."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(_noise((40, 40), 99))
    rgb.convert("L").save(folder / "gray.png")
    rgb.convert("CMYK").save(folder / "cmyk.jpg")
    rgb.convert("RGBA").save(folder / "rgba.png")
    rgb.convert("P").save(folder / "palette.gif")
    Image.fromarray(_noise((8, 8))).save(folder / "tiny.png")
    rgb.save(folder / "big.jpg", quality=90)
    data = (folder / "big.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "big.jpg").unlink()
    (folder / "not_an_image.png").write_text("hello")
    (folder / "notes.txt").write_text("ignored: not an image extension")


def test_cnndetection_flat_layout_counts_and_single_warning(tmp_path):
    _write_good(tmp_path / "0_real", 3)
    _write_good(tmp_path / "1_fake", 2)
    _write_odd(tmp_path / "1_fake")
    samples = cnndetection_samples(tmp_path)
    assert len(samples) == 3 + 2 + 7
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = ImageFileDataset(samples, size=32)
    assert len([w for w in caught if issubclass(w.category, UserWarning)]) == 1
    assert dict(ds.skipped) == {"unreadable": 2, "tiny": 1}
    assert dict(ds.converted) == {"L": 1, "CMYK": 1, "RGBA": 1, "P": 1}
    assert len(ds) == 3 + 2 + 4
    assert ds.labels.tolist().count(0) == 3
    for i in range(len(ds)):  # a full epoch, no crash
        x, y = ds[i]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() <= x.max() <= 1
        assert y.item() in (0, 1)


def test_rgba_composited_on_white(tmp_path):
    _write_good(tmp_path / "0_real", 1)
    (tmp_path / "1_fake").mkdir()
    Image.new("RGBA", (40, 40), (0, 0, 0, 0)).save(tmp_path / "1_fake" / "clear.png")
    with pytest.warns(UserWarning, match="RGBA"):
        ds = ImageFileDataset(cnndetection_samples(tmp_path), size=32)
    x, y = ds[1]
    assert y.item() == 1 and torch.allclose(x, torch.ones_like(x))


def test_a_png_transparent_colour_is_put_on_white_as_alpha_is(tmp_path):
    # the same picture, its left half transparent, stored with an alpha channel and with a
    # tRNS colour key (RGB and gray): the key colour was read as picture before
    from assocmem.forensic.data.loaders import load_rgb

    pixels = _noise((40, 40), 5)
    pixels[:, :20] = (10, 200, 30)
    alpha = np.full((40, 40), 255, np.uint8)
    alpha[:, :20] = 0
    Image.fromarray(np.dstack([pixels, alpha]), "RGBA").save(tmp_path / "alpha.png")
    Image.fromarray(pixels).save(tmp_path / "key.png", transparency=(10, 200, 30))
    gray = np.where(pixels[..., 0] == 7, 8, pixels[..., 0])  # 7 is the key: nowhere else
    gray[:, :20] = 7
    Image.fromarray(np.dstack([gray, alpha]), "LA").save(tmp_path / "gray_alpha.png")
    Image.fromarray(gray).save(tmp_path / "gray_key.png", transparency=7)
    read = {p.stem: np.asarray(load_rgb(p, orient=False)[0]) for p in tmp_path.glob("*.png")}
    assert (read["key"][:, :20] == 255).all() and (read["gray_key"][:, :20] == 255).all()
    np.testing.assert_array_equal(read["key"], read["alpha"])
    np.testing.assert_array_equal(read["gray_key"], read["gray_alpha"])
    np.testing.assert_array_equal(read["key"][:, 20:], pixels[:, 20:])  # the rest as it was


def test_cnndetection_nested_categories(tmp_path):
    for cat in ("car", "cat"):
        _write_good(tmp_path / cat / "0_real", 2)
        _write_good(tmp_path / cat / "1_fake", 2)
    samples = cnndetection_samples(tmp_path)
    assert {s.family for s in samples} == {"real", "car", "cat"}
    assert len(ImageFileDataset(samples, size=32, resize="crop")) == 8


def test_cnndetection_mixed_levels_keep_every_pair(tmp_path):
    """CNNDetection's test set holds ``crn/{0_real,1_fake}`` beside
    ``progan/<category>/{0_real,1_fake}``: the progan pairs were dropped without a word, as
    was a category beside a pair at the root."""
    for pair in ("crn", "progan/car", "progan/cat"):
        _write_good(tmp_path / pair / "0_real", 1)
        _write_good(tmp_path / pair / "1_fake", 2)
    samples = cnndetection_samples(tmp_path)
    assert Counter(s.family for s in samples) == {
        "real": 3, "crn": 2, "progan/car": 2, "progan/cat": 2
    }  # fmt: skip
    _write_good(tmp_path / "root" / "0_real", 1)
    _write_good(tmp_path / "root" / "1_fake", 1)
    _write_good(tmp_path / "root" / "extra" / "0_real", 1)
    _write_good(tmp_path / "root" / "extra" / "1_fake", 1)
    assert Counter(s.family for s in cnndetection_samples(tmp_path / "root")) == {
        "real": 2, "root": 1, "extra": 1
    }  # fmt: skip
    _write_good(tmp_path / "progan" / "dog" / "1_fake", 1)  # no reals: named, not dropped
    with pytest.raises(ValueError, match=r"incomplete .*\['progan/dog'\]"):
        cnndetection_samples(tmp_path)


def test_cnndetection_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        cnndetection_samples(tmp_path / "missing")
    (tmp_path / "real").mkdir()
    (tmp_path / "fake").mkdir()
    with pytest.raises(
        ValueError, match=r"expected subfolders 0_real and 1_fake .*found \['fake', 'real'\]"
    ):
        cnndetection_samples(tmp_path)
    _write_good(tmp_path / "0_real", 1)
    with pytest.raises(ValueError, match="expected subfolders 0_real and 1_fake"):
        cnndetection_samples(tmp_path)  # missing class folder
    (tmp_path / "1_fake").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        cnndetection_samples(tmp_path)  # empty class folder


def test_genimage_layouts(tmp_path):
    _write_good(tmp_path / "sdv4" / "train" / "nature", 2)
    _write_good(tmp_path / "sdv4" / "train" / "ai", 3)
    _write_good(tmp_path / "biggan" / "train" / "nature", 1)
    _write_good(tmp_path / "biggan" / "train" / "ai", 1)
    samples = genimage_samples(tmp_path, split="train")
    assert len(samples) == 7 and {s.family for s in samples} == {"real", "sdv4", "biggan"}
    flat = genimage_samples(tmp_path / "sdv4" / "train")
    assert [s.label for s in flat].count(1) == 3
    with pytest.raises(ValueError, match="expected subfolders nature and ai"):
        genimage_samples(tmp_path)  # split folder not given
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="expected subfolders nature and ai"):
        genimage_samples(tmp_path / "empty")


def test_manifest(tmp_path):
    _write_good(tmp_path / "imgs", 3)
    (tmp_path / "m.csv").write_text(
        "path,label,family\nimgs/good0.png,0,\nimgs/good1.png,fake,sd\nimgs/good2.png,1,gan\n"
    )
    samples = manifest_samples(tmp_path / "m.csv")
    assert [(s.label, s.family) for s in samples] == [(0, "real"), (1, "sd"), (1, "gan")]
    assert len(ImageFileDataset(samples, size=16)) == 3
    (tmp_path / "bad.csv").write_text("imgs/good0.png,maybe\n")
    with pytest.raises(ValueError, match="expected 'path,label"):
        manifest_samples(tmp_path / "bad.csv")
    # no comment rows: a file name may start with '#' (such a row was dropped, label and all)
    (tmp_path / "imgs" / "good1.png").rename(tmp_path / "imgs" / "#1.png")
    (tmp_path / "hash.csv").write_text("imgs/#1.png,1\nimgs/good0.png,0\n")
    assert [s.path.name for s in manifest_samples(tmp_path / "hash.csv")] == ["#1.png", "good0.png"]
    (tmp_path / "comment.csv").write_text("# made by hand\nimgs/good0.png,0\n")
    with pytest.raises(ValueError, match=r"comment.csv:1: expected 'path,label"):
        manifest_samples(tmp_path / "comment.csv")
    (tmp_path / "empty.csv").write_text("path,label\n")
    with pytest.raises(ValueError, match="lists no images"):
        manifest_samples(tmp_path / "empty.csv")


def test_lazy_mode_replaces_a_bad_file_by_one_of_the_same_label(tmp_path):
    _write_good(tmp_path / "0_real", 2)
    _write_good(tmp_path / "1_fake", 1)
    samples = cnndetection_samples(tmp_path)
    ds = ImageFileDataset(samples, size=32, validate=False)
    samples[0].path.write_bytes(b"corrupted after listing")
    with pytest.warns(UserWarning, match="skipping unreadable file .*0_real/good0.png"):
        x, y = ds[0]
    assert x.shape == (3, 32, 32) and y.item() == 0
    assert torch.equal(x, ds[1][0])  # the only other real
    assert dict(ds.skipped) == {"unreadable": 1}
    assert ds.skipped_files == [(samples[0].path, "unreadable")]


def test_all_unusable_raises(tmp_path):
    (tmp_path / "0_real").mkdir()
    (tmp_path / "0_real" / "a.png").write_text("x")
    (tmp_path / "1_fake").mkdir()
    (tmp_path / "1_fake" / "b.png").write_text("x")
    with pytest.raises(ValueError, match="none of the 2 images is usable"):
        ImageFileDataset(cnndetection_samples(tmp_path), size=32)
