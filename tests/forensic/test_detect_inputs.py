"""``assocmem-detect``'s inputs and what it says of them: every extension Pillow reads, files
left out by extension, folders that cannot be listed, the thresholds the summary and the table
show, and the count after a Ctrl-C."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from detector_support import ARCH_KWARGS, save_tiny_detector
from PIL import Image, features

from assocmem.forensic import Detector
from assocmem.forensic.checkpoint import build_model, save_detector
from assocmem.forensic.detect import EXIT_INTERRUPTED, EXIT_OK, EXIT_UNREADABLE, main
from assocmem.forensic.views import view_logits


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_detector(tmp_path_factory.mktemp("weights") / "tiny.safetensors")


def _png(path: Path, size: int = 40, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, "PNG")
    return path


def _rows(out_csv: Path) -> dict[str, dict[str, str]]:
    with out_csv.open(newline="") as f:
        return {r["path"]: r for r in csv.DictReader(f)}


def test_a_folder_scan_scores_every_extension_pillow_reads(weights, tmp_path, capsys):
    # .jfif, .jpe, .tga, .ppm, .ico (and .avif) were skipped without a word: "1 of 1 scored"
    root = tmp_path / "ext"
    im = Image.open(_png(tmp_path / "src.png")).convert("RGB")
    formats = {"a.jfif": "JPEG", "b.jpe": "JPEG", "c.tga": "TGA", "d.ppm": "PPM", "e.ICO": "ICO"}
    if features.check("avif"):
        formats["f.avif"] = "AVIF"
    root.mkdir()
    for name, fmt in formats.items():
        im.save(root / name, fmt)
    _png(root / "plain.png")
    (root / "noext").write_bytes((root / "plain.png").read_bytes())  # a PNG with no extension
    (root / "notes.txt").write_text("not an image")
    out_csv, out_json = tmp_path / "o.csv", tmp_path / "o.json"
    argv = [str(root), "--weights", str(weights), "--csv", str(out_csv), "--json", str(out_json)]
    assert main(argv) == EXIT_OK  # files left out by extension do not fail the run
    out, err = capsys.readouterr()
    scored = {Path(p).name for p, r in _rows(out_csv).items() if r["status"] == "ok"}
    assert scored == {*formats, "plain.png"}
    n = len(formats) + 1
    assert f"{n} of {n} images scored" in out
    # the files left out are counted and named on stderr
    assert "2 file(s) under the folders not scored, not an image extension" in err
    assert str(root / "noext") in err and str(root / "notes.txt") in err
    assert json.loads(out_json.read_text())["summary"]["not_images"] == 2


def test_files_left_out_by_extension_are_counted_and_a_few_named(weights, tmp_path, capsys):
    _png(tmp_path / "root" / "ok.png")
    for i in range(8):
        (tmp_path / "root" / f"data{i}.bin").write_bytes(b"x")
    assert main([str(tmp_path / "root"), "--weights", str(weights)]) == EXIT_OK
    err = capsys.readouterr().err
    assert "8 file(s) under the folders not scored" in err
    assert "data0.bin" in err and "data4.bin" in err and "data5.bin" not in err  # five named
    assert ", ...)" in err


def _lock(monkeypatch: pytest.MonkeyPatch, *folders: Path) -> None:
    """Listing ``folders`` raises PermissionError, as a chmod 000 folder does for a user that is
    not root (root ignores the mode): ``os.scandir`` (``os.walk``) and ``os.listdir``
    (``Path.iterdir``)."""
    locked = {os.path.normpath(f) for f in folders}
    real_scandir, real_listdir = os.scandir, os.listdir

    def check(path) -> None:
        if os.path.normpath(os.fspath(path)) in locked:
            raise PermissionError(13, "Permission denied", os.fspath(path))

    def scandir(path="."):
        check(path)
        return real_scandir(path)

    def listdir(path="."):
        check(path)
        return real_listdir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(os, "listdir", listdir)


@pytest.mark.parametrize(
    "locked",
    [
        "sub",  # crashed: PermissionError traceback from the layout check, exit 1
        "a/b/locked",  # silently never listed: exit 0, its images not mentioned
        "",  # the folder named on the command line itself
    ],
)
def test_a_folder_that_cannot_be_listed_is_reported_and_exits_3(
    weights, tmp_path, capsys, monkeypatch, locked
):
    root = tmp_path / "root"
    _png(root / "ok.png")
    folder = root / locked if locked else root
    _png(folder / "x.png", seed=1)
    _lock(monkeypatch, folder)
    out_csv = tmp_path / "o.csv"
    assert main([str(root), "--weights", str(weights), "--csv", str(out_csv)]) == EXIT_UNREADABLE
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    assert "unreadable folder(s)" in err and f"{folder}: a folder that cannot be listed" in err
    rows = _rows(out_csv)
    assert rows[str(folder)]["status"] == "unreadable"
    assert "PermissionError" in rows[str(folder)]["reason"]
    assert str(folder / "x.png") not in rows
    assert (rows.get(str(root / "ok.png"), {}).get("status") == "ok") == bool(locked)


def test_an_unlistable_category_of_a_labelled_layout_is_scored_without_labels(
    weights, tmp_path, capsys, monkeypatch
):
    root = tmp_path / "cnndet"
    _png(root / "car" / "0_real" / "r.png")
    _png(root / "car" / "1_fake" / "f.png", seed=1)
    (root / "locked").mkdir()
    _lock(monkeypatch, root / "locked")
    out_csv = tmp_path / "o.csv"
    assert main([str(root), "--weights", str(weights), "--csv", str(out_csv)]) == EXIT_UNREADABLE
    err = capsys.readouterr().err
    assert "not read as a labelled dataset (PermissionError" in err and "Traceback" not in err
    rows = _rows(out_csv)
    assert rows[str(root / "locked")]["status"] == "unreadable"
    assert {r["status"] for p, r in rows.items() if p.endswith(".png")} == {"ok"}


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any mode")
def test_a_chmod_000_folder_is_reported_and_exits_3(weights, tmp_path, capsys):
    root = tmp_path / "root"
    _png(root / "ok.png")
    _png(root / "sub" / "x.png", seed=1)
    _png(root / "a" / "b" / "locked" / "y.png", seed=2)
    locked = [root / "sub", root / "a" / "b" / "locked"]
    for d in locked:
        d.chmod(0)
    try:
        assert main([str(root), "--weights", str(weights)]) == EXIT_UNREADABLE
    finally:
        for d in locked:
            d.chmod(0o755)
    err = capsys.readouterr().err
    assert "2 unreadable folder(s)" in err and "Traceback" not in err


def _raised_checkpoint(path: Path) -> Path:
    """A tiny detector whose real 4-tile images score above its real patches (the case of a high
    ``--fpr`` on the shipped one): its image threshold is above the patch threshold, so
    ``threshold_for`` raises the patch threshold to it."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = build_model("npr", ARCH_KWARGS).eval()
    with torch.no_grad():
        val = view_logits(model, torch.rand(40, 3, 32, 32, generator=gen), "one")
    save_detector(path, model, architecture="npr", arch_kwargs=ARCH_KWARGS, patch_size=32,
                  val_real_logits=val, image_real_scores={4: val + 1.0})  # fmt: skip
    return path


def test_summary_and_json_give_the_patch_threshold_one_tile_is_decided_at(tmp_path, capsys):
    weights = _raised_checkpoint(tmp_path / "raised.safetensors")
    detector = Detector.load(weights)
    decided = detector.threshold_for(1)
    assert decided > detector.threshold  # the case: the patch threshold is raised
    image = _png(tmp_path / "tile.png", size=32)
    out_json = tmp_path / "o.json"
    assert main([str(image), "--weights", str(weights), "--json", str(out_json)]) == EXIT_OK
    out = capsys.readouterr().out
    assert f"({decided:+.4f} on the mean tile logit;" in out
    assert f"{detector.threshold:+.4f}" not in out
    report = json.loads(out_json.read_text())
    assert report["detector"]["threshold"] == pytest.approx(decided)
    assert report["images"][0]["threshold"] == pytest.approx(decided, abs=1e-6)


def test_the_table_shows_the_threshold_each_row_was_decided_at(weights, tmp_path, capsys):
    # 40 px: 4 overlapping tiles scored, decided as one whole tile; 64 px: 4 whole tiles
    small, large = _png(tmp_path / "s40.png", 40), _png(tmp_path / "l64.png", 64)
    assert main([str(small), str(large), "--weights", str(weights)]) == EXIT_OK
    table = capsys.readouterr().out.splitlines()
    head = table[0].split()
    assert "threshold" in head
    detector = Detector.load(weights)
    for path in (small, large):
        [line] = [row for row in table if row.startswith(str(path) + " ")]
        cells = dict(zip(head[1:], line.split()[1:], strict=True))
        result = detector.score_one(path)
        assert float(cells["threshold"]) == pytest.approx(result.threshold, abs=5e-4)
        assert cells["tiles"] == str(result.tiles)
    thresholds = {
        row.split()[head.index("threshold")] for row in table if row.startswith(str(tmp_path))
    }
    assert len(thresholds) == 2  # the same tile count, two thresholds: the table says so


def test_ctrl_c_summary_counts_every_input(weights, tmp_path, capsys, monkeypatch):
    paths = [str(_png(tmp_path / f"i{i:02}.png", 32, seed=i)) for i in range(20)]
    real, tried = Detector.score_one, []

    def interrupted_on_the_fourth(self, image, **kwargs):
        if len(tried) == 3:
            raise KeyboardInterrupt
        tried.append(image)
        return real(self, image, **kwargs)

    monkeypatch.setattr(Detector, "score_one", interrupted_on_the_fourth)
    assert main([*paths, "--weights", str(weights)]) == EXIT_INTERRUPTED
    out, err = capsys.readouterr()
    assert "interrupted after 3 of 20 images" in err
    assert "3 of 20 images scored" in out
