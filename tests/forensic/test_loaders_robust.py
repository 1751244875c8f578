"""Bad input for the folder loaders: every file either comes out right or is skipped, counted
and named; no layout is silently dropped; the labels an epoch yields never change."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import warnings
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hang_support import deadline
from PIL import Image, ImageOps
from torch.utils.data import DataLoader

from assocmem.forensic.data import (
    ImageFileDataset,
    Sample,
    cnndetection_samples,
    genimage_samples,
    manifest_samples,
)

LOADERS = Path(__file__).resolve().parents[2] / "src/assocmem/forensic/data/loaders.py"


def _noise(w: int, h: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _write_good(folder: Path, n: int, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        paths.append(folder / f"good{i}.png")
        Image.fromarray(_noise(40, 36, seed + i)).save(paths[-1])
    return paths


def _bomb_gif(path: Path) -> None:
    """A 65535×65535 GIF header: Pillow raises DecompressionBombError (not an OSError)."""
    path.write_bytes(b"GIF89a" + struct.pack("<HHBBB", 65535, 65535, 0, 0, 0) + b";")


def _bomb_png(path: Path) -> None:
    ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    data = struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + data)


# --- decompression bombs ---------------------------------------------------------------------


def test_decompression_bombs_are_skipped_and_counted(tmp_path):
    _write_good(tmp_path / "0_real", 2)
    _write_good(tmp_path / "1_fake", 2, seed=10)
    _bomb_gif(tmp_path / "1_fake" / "bomb.gif")
    _bomb_png(tmp_path / "0_real" / "bomb.png")
    with pytest.warns(UserWarning, match="skipped 2 files"):
        ds = ImageFileDataset(cnndetection_samples(tmp_path), size=32)
    assert dict(ds.skipped) == {"unreadable": 2} and len(ds) == 4
    assert {p.name for p, _ in ds.skipped_files} == {"bomb.gif", "bomb.png"}
    lazy = ImageFileDataset(cnndetection_samples(tmp_path), size=32, validate=False)
    with pytest.warns(UserWarning, match="bomb"):
        labels = [lazy[i][1].item() for i in range(len(lazy))]
    assert labels == lazy.labels.tolist() and dict(lazy.skipped) == {"unreadable": 2}


# --- crop before resize ----------------------------------------------------------------------


def test_shorter_resize_of_a_long_strip_costs_no_more_than_its_square(tmp_path):
    """A 32×150000 strip resized to 224 (shorter side): scaling the whole strip first would
    allocate 224×1050000×3 bytes (~0.7 GB); only the centred square is needed."""
    strip = tmp_path / "strip.png"
    Image.new("RGB", (150_000, 32), (200, 100, 50)).save(strip)
    # The loaders module alone (importing the package would build much more than it needs).
    script = f"""
import importlib.util, json, pathlib, resource
spec = importlib.util.spec_from_file_location("loaders", {str(LOADERS)!r})
loaders = importlib.util.module_from_spec(spec)
spec.loader.exec_module(loaders)
ds = loaders.ImageFileDataset([loaders.Sample(pathlib.Path({str(strip)!r}), 0, "real")],
                              size=224, validate=False)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
x, _ = ds[0]
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"grew_mib": (after - before) / 1024, "shape": list(x.shape),
                   "pixel": x[:, 100, 100].tolist()}}))
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["shape"] == [3, 224, 224]
    assert np.allclose(result["pixel"], [200 / 255, 100 / 255, 50 / 255], atol=1 / 255)
    assert result["grew_mib"] < 150, result


@pytest.mark.parametrize("size", [(90, 60), (61, 97), (64, 64)])
def test_shorter_resize_equals_scale_then_centre_crop(tmp_path, size):
    path = tmp_path / "x.png"
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = np.stack([255 * xx / w, 255 * yy / h, 128 + 100 * np.sin(xx / 7 + yy / 5)], -1)
    Image.fromarray(smooth.astype(np.uint8)).save(path)
    (x, _) = ImageFileDataset([Sample(path, 0, "real")], size=32, validate=False)[0]
    im = Image.open(path).convert("RGB")
    w, h = im.size
    scale = 32 / min(w, h)
    im = im.resize((max(32, round(w * scale)), max(32, round(h * scale))), Image.BILINEAR)
    left, top = (im.size[0] - 32) // 2, (im.size[1] - 32) // 2
    ref = torch.from_numpy(np.asarray(im.crop((left, top, left + 32, top + 32))).copy())
    ref = ref.permute(2, 0, 1).float() / 255
    # Same region, resampled once instead of scaled then cut: equal up to sub-pixel rounding.
    assert (x - ref).abs().mean() < 0.02 and (x - ref).abs().max() < 0.1


def test_large_jpeg_is_decoded_at_reduced_scale(tmp_path):
    path = tmp_path / "big.jpg"
    Image.fromarray(np.kron(_noise(40, 30, 1), np.ones((64, 64, 1), np.uint8))).save(
        path, quality=95
    )  # 2560×1920, blocks of one colour
    (x, _) = ImageFileDataset([Sample(path, 0, "real")], size=64, validate=False)[0]
    full = (
        Image.open(path).convert("RGB").resize((64, 64), Image.BILINEAR, box=(320, 0, 2240, 1920))
    )
    ref = torch.from_numpy(np.asarray(full).copy()).permute(2, 0, 1).float() / 255
    assert x.shape == (3, 64, 64) and (x - ref).abs().mean() < 0.05


# --- validate=False keeps the label balance ---------------------------------------------------


def _lazy_folder(tmp_path: Path) -> tuple[list[Sample], set[Path]]:
    """12 real of which a run of 5 are bad, 10 fake: the old fallback (the next readable index)
    would map the whole run to one real and then into the fakes."""
    reals = _write_good(tmp_path / "0_real", 12)
    _write_good(tmp_path / "1_fake", 10, seed=50)
    bad = set(reals[7:12])
    for i, p in enumerate(sorted(bad)):
        p.write_bytes(b"" if i % 2 else b"\x89PNG\r\n\x1a\n broken")
    return cnndetection_samples(tmp_path), bad


def test_lazy_skips_keep_labels_count_each_file_once_and_name_it(tmp_path):
    samples, bad = _lazy_folder(tmp_path)
    ds = ImageFileDataset(samples, size=32, validate=False, seed=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _epoch in range(3):
            labels = [ds[i][1].item() for i in range(len(ds))]
            assert labels == [s.label for s in samples]  # 12 real, 10 fake, every epoch
    assert dict(ds.skipped) == {"unreadable": 5}  # per file, not per retry or epoch
    assert {p for p, _ in ds.skipped_files} == bad
    named = " ".join(str(w.message) for w in caught)
    assert all(str(p) in named for p in bad) and len(caught) == 5
    # The replacement is a fixed (seeded) choice among readable files of the same label.
    again = ImageFileDataset(samples, size=32, validate=False, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert all(torch.equal(ds[i][0], again[i][0]) for i in range(7, 12))
        first = [ds[i][0] for i in range(7, 12)]
    assert len({tuple(t.flatten()[:8].tolist()) for t in first}) > 1  # not all one image


def test_lazy_skip_counts_reach_the_main_process_from_workers(tmp_path):
    samples, bad = _lazy_folder(tmp_path)
    ds = ImageFileDataset(samples, size=32, validate=False)
    loader = DataLoader(ds, batch_size=4, num_workers=2, shuffle=True)
    for _epoch in range(2):
        labels = Counter(y for _, ys in loader for y in ys.tolist())
        assert labels == Counter(s.label for s in samples)
    assert dict(ds.skipped) == {"unreadable": 5}
    assert {p for p, _ in ds.skipped_files} == bad


def test_a_file_that_breaks_after_validation_is_replaced_not_raised(tmp_path):
    samples, _ = _lazy_folder(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = ImageFileDataset(samples, size=32)  # validated: the 5 bad reals are dropped
    ds.samples[0].path.write_bytes(b"")  # then one more breaks mid-training
    with pytest.warns(UserWarning, match="skipping unreadable file .*good0.png"):
        labels = [ds[i][1].item() for i in range(len(ds))]
    assert labels == ds.labels.tolist() and dict(ds.skipped) == {"unreadable": 6}


def test_lazy_all_files_of_a_label_bad_raises_naming_the_label(tmp_path):
    samples, _ = _lazy_folder(tmp_path)
    for s in samples:
        if s.label == 1:
            s.path.write_bytes(b"")
    ds = ImageFileDataset(samples, size=32, validate=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match="no readable image with label 1"):
            ds[len(ds) - 1]


# --- GenImage layouts ------------------------------------------------------------------------


def test_genimage_folder_names_are_case_insensitive(tmp_path):
    _write_good(tmp_path / "sdv4" / "train" / "nature", 2)
    _write_good(tmp_path / "sdv4" / "train" / "ai", 2)
    _write_good(tmp_path / "Midjourney" / "Train" / "Nature", 2)
    _write_good(tmp_path / "Midjourney" / "Train" / "AI", 3)
    samples = genimage_samples(tmp_path, split="train")
    assert Counter(s.family for s in samples) == {"real": 4, "sdv4": 2, "Midjourney": 3}


@pytest.mark.parametrize(
    ("layout", "named"),
    [
        (["wukong/train/nature"], "wukong/train/ lacks ai/"),
        (["wukong/train/ai"], "wukong/train/ lacks nature/"),
        (["wukong/val/nature", "wukong/val/ai"], "wukong/ has no train/"),
    ],
)
def test_genimage_incomplete_generator_is_named_not_dropped(tmp_path, layout, named):
    _write_good(tmp_path / "sdv4" / "train" / "nature", 1)
    _write_good(tmp_path / "sdv4" / "train" / "ai", 1)
    for folder in layout:
        _write_good(tmp_path / folder, 1)
    with pytest.raises(ValueError, match=named):
        genimage_samples(tmp_path, split="train")


def test_genimage_flat_root_with_only_one_class(tmp_path):
    _write_good(tmp_path / "nature", 1)
    with pytest.raises(ValueError, match="has a nature/ folder but no ai/"):
        genimage_samples(tmp_path)


# --- CSV manifests ---------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["path,label\n", ""])
def test_manifest_with_utf8_bom(tmp_path, header):
    _write_good(tmp_path / "imgs", 2)
    text = header + "imgs/good0.png,real\nimgs/good1.png,fake\n"
    (tmp_path / "m.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    samples = manifest_samples(tmp_path / "m.csv")
    assert [(s.path, s.label) for s in samples] == [
        (tmp_path / "imgs" / "good0.png", 0),
        (tmp_path / "imgs" / "good1.png", 1),
    ]
    assert len(ImageFileDataset(samples, size=16)) == 2


def test_manifest_not_utf8_names_the_file_and_line(tmp_path):
    (tmp_path / "m.csv").write_bytes("path,label\nbilder/größe.png,0\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"m\.csv:2: not UTF-8"):
        manifest_samples(tmp_path / "m.csv")


def test_manifest_that_is_not_a_regular_file(tmp_path):
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(ValueError, match="not a regular file"):
        manifest_samples(tmp_path / "dir.csv")


@pytest.mark.parametrize("validate", [True, False])
def test_fifo_listed_in_a_manifest_is_skipped_not_opened(tmp_path, validate):
    _write_good(tmp_path / "imgs", 2)
    os.mkfifo(tmp_path / "imgs" / "pipe.png")
    (tmp_path / "m.csv").write_text("imgs/good0.png,0\nimgs/pipe.png,0\nimgs/good1.png,1\n")
    with deadline(20), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = ImageFileDataset(manifest_samples(tmp_path / "m.csv"), size=16, validate=validate)
        labels = [ds[i][1].item() for i in range(len(ds))]
    assert dict(ds.skipped) == {"unreadable": 1}
    assert "pipe.png" in " ".join(str(w.message) for w in caught)
    assert labels == ([0, 1] if validate else [0, 0, 1])


# --- formats Pillow reads: each comes out as RGB in [0, 1], right ------------------------------


def _tensor(path: Path, size: int = 32) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = ImageFileDataset([Sample(path, 0, "real")], size=size, resize="crop")
    assert len(ds) == 1
    x, _ = ds[0]
    assert x.shape == (3, size, size) and x.dtype == torch.float32
    assert 0 <= x.min() <= x.max() <= 1
    return x


def _solid(x: torch.Tensor, rgb: tuple[float, float, float], atol: float = 2 / 255) -> bool:
    ref = torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1).expand_as(x)
    return torch.allclose(x, ref, atol=atol)


@pytest.mark.parametrize(
    ("name", "make", "expect"),
    [
        ("gray.png", lambda: Image.new("L", (40, 40), 128), (128 / 255,) * 3),
        ("bilevel.png", lambda: Image.new("1", (40, 40), 1), (1.0,) * 3),
        ("cmyk.jpg", lambda: Image.new("RGB", (40, 40), (255, 0, 0)).convert("CMYK"), (1, 0, 0)),
        ("cmyk.tif", lambda: Image.new("RGB", (40, 40), (0, 0, 255)).convert("CMYK"), (0, 0, 1)),
        ("rgba_half.png", lambda: Image.new("RGBA", (40, 40), (0, 0, 0, 128)), (127 / 255,) * 3),
        ("la.png", lambda: Image.new("LA", (40, 40), (0, 0)), (1.0,) * 3),
        (
            "gray16.png",
            lambda: Image.fromarray(np.full((40, 40), 32896, np.uint16)),
            (128 / 255,) * 3,
        ),
        (
            "gray16_white.tif",
            lambda: Image.fromarray(np.full((40, 40), 65535, np.uint16)),
            (1.0,) * 3,
        ),
        (
            "float01.tif",
            lambda: Image.fromarray(np.full((40, 40), 0.75, np.float32)),
            (0.75,) * 3,
        ),
        (
            "float255.tif",
            lambda: Image.fromarray(np.full((40, 40), 51.0, np.float32)),
            (0.2,) * 3,
        ),
        (
            "int32.tif",
            lambda: Image.fromarray(np.full((40, 40), 65535, np.int32)),
            (1.0,) * 3,
        ),
    ],
)
def test_pillow_modes_come_out_as_rgb_in_unit_range(tmp_path, name, make, expect):
    path = tmp_path / name
    make().save(path, **({"quality": 100} if name.endswith(".jpg") else {}))
    assert _solid(_tensor(path), expect, atol=3 / 255), _tensor(path)[:, 0, 0]


def test_float_images_take_the_white_level_their_values_suggest(tmp_path):
    from assocmem.forensic.data.loaders import load_rgb

    def read(a: np.ndarray) -> np.ndarray:
        path = tmp_path / "f.tif"
        Image.fromarray(a.astype(np.float32)).save(path)
        return np.asarray(load_rgb(path)[0])[..., 0]

    # a [0, 1] image with one overshooting pixel (a sharpening filter's 1.02) stays [0, 1]: read
    # by its maximum it was taken for a 0-255 image, i.e. black
    a = np.full((40, 40), 0.5)
    a[0, 0] = 1.02
    out = read(a)
    assert out[1:, 1:].min() == out[1:, 1:].max() == 128 and out[0, 0] == 255
    assert (read(np.full((40, 40), 51.0)) == 51).all()  # 0-255 floats
    assert (read(np.full((40, 40), 32896.0)) == 128).all()  # 16-bit range floats
    with pytest.raises(ValueError, match="not on a 0-1, 0-255 or 0-65535 scale"):
        read(np.full((40, 40), 1e7))


def test_signed_16_bit_tiffs_take_32767_as_white(tmp_path):
    """A TIFF of signed 16-bit samples decodes as 32-bit ``I`` with values up to 32767: read as
    unsigned 16-bit data (white 65535) it came out half as bright, its full scale mid grey. Also
    through an EXIF rotation (a transposed copy carries no TIFF tags) and a PIL image handed to
    ``to_rgb`` directly; negative samples are black."""
    from assocmem.forensic.data.loaders import load_rgb, to_rgb

    def save(a: np.ndarray, name: str, orientation: int | None = None) -> Path:
        # Pillow writes I;16 samples; the SampleFormat tag (339) = 2 makes them signed
        path = tmp_path / name
        im = Image.fromarray(a.astype(np.uint16))
        im.save(path, tiffinfo={339: 2, **({274: orientation} if orientation else {})})
        return path

    a = np.full((40, 24), 32767)
    a[:, :8] = 16384
    a[:, 8:16] = 0x8000  # -32768 as signed
    path = save(a, "signed.tif")
    with Image.open(path) as im:
        assert im.mode == "I" and np.asarray(im).max() == 32767
        direct = np.asarray(to_rgb(im))[..., 0]
    read = np.asarray(load_rgb(path)[0])[..., 0]
    for out in (read, direct):
        assert (out[:, 16:] == 255).all() and (out[:, :8] == 128).all()
        assert (out[:, 8:16] == 0).all()
    rotated = np.asarray(load_rgb(save(a, "rotated.tif", orientation=6))[0])[..., 0]
    assert rotated.shape == (24, 40) and (rotated[16:] == 255).all()
    # unsigned 16-bit data keep 65535 as white
    unsigned = tmp_path / "unsigned.tif"
    Image.fromarray(np.full((40, 40), 32767, np.uint16)).save(unsigned)
    assert (np.asarray(load_rgb(unsigned)[0]) == 127).all()


def test_exif_orientation_is_applied(tmp_path):
    """A 60×40 landscape file tagged 'rotate 90° CW' (orientation 6) is a 40×60 portrait."""
    a = np.zeros((40, 60, 3), np.uint8)
    a[:, :30] = (255, 0, 0)  # left half red, right half blue
    a[:, 30:] = (0, 0, 255)
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.png"
    im.save(path, exif=exif)
    ref = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    assert ref.size == (40, 60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shorter = ImageFileDataset([Sample(path, 0, "real")], size=40)[0][0]
    # the portrait's centre square: red top, blue bottom
    assert _solid(shorter[:, :8], (1, 0, 0)) and _solid(shorter[:, -8:], (0, 0, 1))
    # resize="crop" reads the pixels as stored, as Detector does (the JPEG grid stays at the
    # corner): the centred start 10 moved onto the grid, 8: columns 8-47, red up to 29
    stored = _tensor(path, size=40)
    assert _solid(stored[:, :, :22], (1, 0, 0)) and _solid(stored[:, :, 22:], (0, 0, 1))


def test_crops_start_on_the_jpeg_grid_of_the_stored_pixels(tmp_path):
    """``resize="crop"`` crops where Detector starts its tiles (multiples of 8 of the pixels as
    stored): a centred crop off the grid trained a block-DCT network on traces it never
    scored."""
    a = _noise(75, 61, 3)  # 75 wide, 61 high: the centred 32 px crop starts at 21, 14
    path = tmp_path / "noise.png"
    Image.fromarray(a).save(path)
    x = _tensor(path, size=32)
    expect = torch.from_numpy(a[8:40, 16:48]).permute(2, 0, 1).float() / 255  # moved to 16, 8
    assert torch.equal(x, expect)


# --- the sweep: generated corrupt folders end in a counted skip or a right image ---------------

FORMATS = {"png": {}, "jpg": {"quality": 90}, "gif": {}, "bmp": {}, "tif": {}, "webp": {}}


def _corrupt_variants(folder: Path, fmt: str, kwargs: dict) -> tuple[list[Path], list[Path]]:
    """(files that must load, files that must be skipped), written to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    good = folder / f"good.{fmt}"
    Image.fromarray(_noise(48, 40, 7)).save(good, **kwargs)
    data = good.read_bytes()
    bad = []
    for frac in (0.0, 0.02, 0.3, 0.6):
        p = folder / f"trunc{int(frac * 100)}.{fmt}"
        p.write_bytes(data[: int(len(data) * frac)])
        bad.append(p)
    (folder / f"text.{fmt}").write_text("not an image at all")
    bad.append(folder / f"text.{fmt}")
    return [good], bad


def test_sweep_corrupt_folders_end_in_counted_skips(tmp_path):
    expect_ok, expect_bad = [], []
    for fmt, kwargs in FORMATS.items():
        for sub in ("0_real", "1_fake"):
            ok, bad = _corrupt_variants(tmp_path / sub / fmt, fmt, kwargs)
            expect_ok += ok
            expect_bad += bad
    _bomb_gif(tmp_path / "1_fake" / "bomb.gif")
    _bomb_png(tmp_path / "0_real" / "bomb.png")
    expect_bad += [tmp_path / "1_fake" / "bomb.gif", tmp_path / "0_real" / "bomb.png"]
    os.mkfifo(tmp_path / "0_real" / "fifo.png")  # not listed: not a regular file
    (tmp_path / "1_fake" / "dir.png").mkdir()  # not listed: a directory
    (tmp_path / "0_real" / "dangling.png").symlink_to(tmp_path / "nowhere.png")  # not listed
    samples = cnndetection_samples(tmp_path)
    assert {s.path for s in samples} == set(expect_ok) | set(expect_bad)
    with deadline(60):
        with pytest.warns(UserWarning, match=f"skipped {len(expect_bad)} files"):
            ds = ImageFileDataset(samples, size=32, resize="crop")
        assert {s.path for s in ds.samples} == set(expect_ok)
        assert {p for p, _ in ds.skipped_files} == set(expect_bad)
        for i in range(len(ds)):
            x, y = ds[i]
            assert torch.isfinite(x).all() and 0 <= x.min() <= x.max() <= 1
            assert y.item() == ds.samples[i].label
        lazy = ImageFileDataset(samples, size=32, resize="crop", validate=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            labels = [lazy[i][1].item() for i in range(len(lazy))]
        assert labels == [s.label for s in samples]
        assert sum(lazy.skipped.values()) == len(expect_bad)
