"""``assocmem-detect`` on folders of awkward files: table, CSV, JSON, exit codes, layouts."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch
from detector_support import save_tiny_detector
from hang_support import deadline
from PIL import Image

from assocmem.forensic import Detector
from assocmem.forensic import detect as detect_module
from assocmem.forensic.detect import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_STDOUT,
    EXIT_UNREADABLE,
    EXIT_USAGE,
    main,
)

ROOT = Path(__file__).resolve().parents[2]
# name -> (width, height) as the detector reads it; tiles = the padded grid of 32 x 32 tiles
GOOD = {
    "good.png": ((77, 100), 3 * 4),  # 78 -> 0, 32, 46; 100 -> 0, 32, 64, 68
    "huge.png": ((5000, 4), 157),  # 4 rows reflected to 32; 5000 -> 156 regular + 1 edge
    "tiny.png": ((7, 5), 1),
    "gray.png": ((40, 40), 4),
    "cmyk.jpg": ((40, 40), 4),
    "rgba.png": ((40, 40), 4),
    "gray16.png": ((40, 40), 4),
    "sub/deeper.png": ((64, 64), 4),
}


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_detector(tmp_path_factory.mktemp("weights") / "tiny.safetensors")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)

    def noise(*shape: int, dtype=np.uint8, high=256):
        return rng.integers(0, high, shape, dtype=dtype)

    Image.fromarray(noise(100, 77, 3)).save(d / "good.png")
    Image.fromarray(noise(4, 5000, 3)).save(d / "huge.png")  # 20 kpixels: cheap, extreme shape
    Image.fromarray(noise(5, 7, 3)).save(d / "tiny.png")
    Image.fromarray(noise(40, 40)).save(d / "gray.png")
    Image.fromarray(noise(40, 40, 4), "RGBA").convert("CMYK").save(d / "cmyk.jpg")
    Image.fromarray(noise(40, 40, 4), "RGBA").save(d / "rgba.png")
    Image.fromarray(noise(40, 40, dtype=np.uint16, high=65536)).save(d / "gray16.png")
    (d / "sub").mkdir()
    Image.fromarray(noise(64, 64, 3)).save(d / "sub" / "deeper.png")
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (d / "notes.txt").write_text("not an image: not listed")
    return d


def test_folder_table_csv_json_and_exit_code(weights, folder, tmp_path, capsys):
    out_csv, out_json = tmp_path / "out.csv", tmp_path / "out.json"
    code = main([str(folder), "--weights", str(weights), "--csv", str(out_csv),
                 "--json", str(out_json), "--batch", "7"])  # fmt: skip
    assert code == EXIT_UNREADABLE  # one corrupt file, the others scored
    captured = capsys.readouterr()
    table = captured.out.splitlines()
    head = ["path", "decision", "score", "threshold", "P(fake)", "tiles", "size"]
    assert table[0].split() == head
    detector = Detector.load(weights)
    for name, ((w, h), n_tiles) in GOOD.items():
        [line] = [row for row in table if row.startswith(str(folder / name) + " ")]
        decision, score, threshold, prob, tiles, size = line.split()[1:]
        result = detector.score_one(folder / name)
        assert decision.rstrip("*") == ("fake" if result.fake else "real")
        # the threshold of the image's size, the one its decision was made at
        assert float(threshold) == pytest.approx(result.threshold, abs=5e-4)
        assert decision.endswith("*") == (min(w, h) < 32)  # flagged undersized
        assert (int(tiles), size) == (n_tiles, f"{w}x{h}")
        assert float(score) == pytest.approx(result.score, abs=5e-4)  # printed to 3 decimals
    assert "corrupt" not in captured.out and "notes.txt" not in captured.out
    assert f"{len(GOOD)} of {len(GOOD) + 1} images scored" in captured.out
    assert "calibrated for a 5 % FPR on validation reals), views: one" in captured.out
    assert f"{folder / 'corrupt.png'}: " in captured.err  # listed with its reason

    with out_csv.open(newline="") as f:
        rows = {Path(r["path"]).relative_to(folder).as_posix(): r for r in csv.DictReader(f)}
    assert set(rows) == {*GOOD, "corrupt.png"}
    bad = rows["corrupt.png"]
    assert bad["status"] == "unreadable" and bad["reason"] and bad["score"] == ""
    for name, ((w, h), n_tiles) in GOOD.items():
        r = rows[name]
        assert r["status"] == "ok" and r["reason"] == ""
        assert (int(r["width"]), int(r["height"]), int(r["tiles"])) == (w, h, n_tiles)
        assert float(r["score"]) == pytest.approx(detector.score_one(folder / name).score, abs=1e-5)
        # each image at the threshold of its size (detector.threshold_for), written beside it
        expected = detector.score_one(folder / name)
        assert float(r["threshold"]) == pytest.approx(expected.threshold, abs=1e-6)
        assert r["decision"] == ("fake" if expected.fake else "real")

    report = json.loads(out_json.read_text())
    assert report["summary"]["scored"] == len(GOOD) and report["summary"]["unreadable"] == 1
    assert report["detector"]["threshold"] == detector.threshold_for(1)
    assert report["summary"]["not_images"] == 1  # notes.txt
    assert report["detector"]["views"] == "one"
    assert len(report["images"]) == len(GOOD) + 1


def test_a_d4_checkpoint_is_scored_and_reported_with_its_views(folder, tmp_path, capsys):
    weights = save_tiny_detector(tmp_path / "d4.safetensors", views="d4")
    out_json = tmp_path / "report.json"  # not d4.json: that is the checkpoint's sidecar
    good = folder / "good.png"
    assert main([str(good), "--weights", str(weights), "--json", str(out_json)]) == EXIT_OK
    assert "views: d4 (each tile's logit the mean over its 8 rotations" in capsys.readouterr().out
    report = json.loads(out_json.read_text())
    assert report["detector"]["views"] == "d4"
    expected = Detector.load(weights).score_one(good).score
    assert report["images"][0]["score"] == pytest.approx(expected, abs=1e-6)  # rounded to 6


def test_all_readable_exits_zero(weights, folder, capsys):
    files = [str(folder / name) for name in GOOD]
    assert main([*files, "--weights", str(weights)]) == EXIT_OK
    assert capsys.readouterr().err == ""


def test_only_unreadable_files_exit_3_and_list_each(weights, folder, tmp_path, capsys):
    # exit 3 whenever a file could not be read, even if none could: 2 means a usage error
    second = tmp_path / "also-corrupt.jpg"
    second.write_bytes(b"\xff\xd8\xff" + b"\x00" * 20)
    out_csv = tmp_path / "out.csv"
    code = main([str(folder / "corrupt.png"), str(second), "--weights", str(weights),
                 "--csv", str(out_csv)])  # fmt: skip
    assert code == EXIT_UNREADABLE
    err = capsys.readouterr().err
    assert "corrupt.png" in err and "also-corrupt.jpg" in err
    assert len(out_csv.read_text().splitlines()) == 3  # the header and one row per file


def test_a_named_file_is_tried_whatever_its_extension(weights, folder, tmp_path, capsys):
    odd = tmp_path / "picture.data"
    odd.write_bytes((folder / "good.png").read_bytes())
    assert main([str(odd), "--weights", str(weights)]) == EXIT_OK
    assert "77x100" in capsys.readouterr().out


def test_threshold_and_fpr_options(weights, folder, capsys):
    good = str(folder / "good.png")
    assert main([good, "--weights", str(weights), "--threshold", "-1000"]) == EXIT_OK
    out = capsys.readouterr().out
    assert " fake " in out and "(given)" in out  # everything is above -1000
    assert main([good, "--weights", str(weights), "--fpr", "0.5"]) == EXIT_OK
    assert "calibrated for a 50 % FPR" in capsys.readouterr().out


def test_device_option_runs_there_and_says_so(weights, folder, tmp_path, capsys):
    out_json = tmp_path / "d.json"
    good = str(folder / "good.png")
    assert main([good, "--weights", str(weights), "--device", "cpu", "--json", str(out_json)]) == 0
    assert json.loads(out_json.read_text())["detector"]["device"] == "cpu"
    if not torch.cuda.is_available():  # a device this machine does not have: refused, named
        assert main([good, "--weights", str(weights), "--device", "cuda"]) == EXIT_USAGE
        assert "device 'cuda' is not available here" in capsys.readouterr().err


def test_labelled_layout_reports_rates(weights, folder, tmp_path, capsys):
    root = tmp_path / "cnndet"
    for sub, names in (("0_real", ["good.png", "gray.png"]), ("1_fake", ["rgba.png"])):
        (root / sub).mkdir(parents=True)
        for n in names:
            (root / sub / n).write_bytes((folder / n).read_bytes())
    out_csv = tmp_path / "l.csv"
    assert main([str(root), "--weights", str(weights), "--csv", str(out_csv)]) == EXIT_OK
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[-1] == "label"
    assert "TPR" in out and "FPR" in out and "AUC" in out
    with out_csv.open(newline="") as f:
        labels = {Path(r["path"]).name + r["label"] for r in csv.DictReader(f)}
    assert labels == {"good.png0", "gray.png0", "rgba.png1"}


def test_manifest_with_a_missing_file(weights, folder, tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,label\n{folder / 'good.png'},real\nabsent.png,fake\n")
    assert main([str(manifest), "--weights", str(weights)]) == EXIT_UNREADABLE
    assert "absent.png: FileNotFoundError" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["/nonexistent/dir"], "does not exist"),
        (["{folder}", "--threshold", "1", "--fpr", "0.1"], "not allowed with"),
        (["{folder}", "--fpr", "0.001"], "cannot calibrate"),  # 40 validation logits
        (["{folder}", "--batch", "0"], "--batch"),
        (["{folder}", "--weights", "{folder}/good.png"], "safetensors"),
        (["{empty}"], "no image files"),
        (["{folder}", "--csv", "{folder}/good.png/out.csv"], "cannot create the folder"),
        (["{folder}", "--json", "{folder}"], "is a directory"),
        (["{folder}", "--device", "gpu0"], "not a device name"),
        (["{folder}", "--device", "meta"], "holds no data"),
        ([], "required"),
    ],
)
def test_usage_errors_exit_2(weights, folder, tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    argv = [a.format(folder=folder, empty=tmp_path / "empty") for a in args]
    if "--weights" not in argv and argv:
        argv += ["--weights", str(weights)]
    assert main(argv) == EXIT_USAGE
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--json", "--csv"])
def test_a_report_never_overwrites_the_checkpoint_or_its_sidecar(weights, folder, capsys, flag):
    sidecar = weights.with_suffix(".json")
    before = (weights.read_bytes(), sidecar.read_bytes())
    for target in (sidecar, weights):
        argv = [str(folder / "good.png"), "--weights", str(weights), flag, str(target)]
        assert main(argv) == EXIT_USAGE
        assert "checkpoint or its sidecar" in capsys.readouterr().err
    assert (weights.read_bytes(), sidecar.read_bytes()) == before
    main([str(folder / "good.png"), "--weights", str(weights)])  # still loads


def test_a_report_never_overwrites_an_input(weights, folder, tmp_path, capsys):
    # `--csv a.jpg b.jpg`, meant as two images, replaced a.jpg with the report (exit 0)
    photo = tmp_path / "photo.png"
    photo.write_bytes((folder / "good.png").read_bytes())
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,label\n{photo},0\n")
    cases = [
        ([str(photo), "--csv", str(photo)], photo),
        (
            [str(folder), "--json", str(folder / "sub" / "deeper.png")],
            folder / "sub" / "deeper.png",
        ),
        ([str(manifest), "--json", str(manifest)], manifest),
    ]
    for argv, target in cases:
        before = target.read_bytes()
        assert main([*argv, "--weights", str(weights)]) == EXIT_USAGE
        assert "is one of the inputs" in capsys.readouterr().err
        assert target.read_bytes() == before


def test_a_refused_run_creates_no_report_folder(weights, folder, tmp_path, capsys):
    # --csv in a new folder beside --json onto an input: refused (exit 2), and the csv's
    # folders were created before the refusal
    image = tmp_path / "photo.png"
    image.write_bytes((folder / "good.png").read_bytes())
    argv = [str(image), "--weights", str(weights), "--csv", str(tmp_path / "new" / "x.csv")]
    assert main([*argv, "--json", str(image)]) == EXIT_USAGE
    assert "is one of the inputs" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_an_unreadable_name_with_a_newline_stays_on_one_stderr_line(weights, tmp_path, capsys):
    bad = tmp_path / "bad\nname.jpg"
    bad.write_bytes(b"x")
    assert main([str(bad), "--weights", str(weights)]) == EXIT_UNREADABLE
    listed = [line for line in capsys.readouterr().err.splitlines() if "name.jpg" in line]
    assert len(listed) == 1 and "bad\\nname.jpg: " in listed[0]


def test_csv_and_json_at_one_path_is_a_usage_error(weights, folder, tmp_path, capsys):
    out = tmp_path / "x.json"
    argv = [str(folder / "good.png"), "--weights", str(weights), "--csv", str(out)]
    assert main([*argv, "--json", str(out)]) == EXIT_USAGE
    assert "same file" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_report_that_cannot_be_written_still_prints_the_table(weights, folder, capsys):
    # a full disk behind --csv: the run's table is not lost to a traceback
    argv = [str(folder / "good.png"), "--weights", str(weights), "--csv", "/dev/full"]
    assert main(argv) == EXIT_STDOUT
    out, err = capsys.readouterr()
    assert "good.png" in out and "1 of 1 images scored" in out
    assert "cannot write the CSV report /dev/full" in err


def test_ctrl_c_keeps_what_was_scored(weights, folder, tmp_path, capsys, monkeypatch):
    scored = []
    real = Detector.score_one

    def interrupted_on_the_third(self, image, **kwargs):
        if len(scored) == 2:
            raise KeyboardInterrupt
        scored.append(image)
        return real(self, image, **kwargs)

    monkeypatch.setattr(Detector, "score_one", interrupted_on_the_third)
    out_csv = tmp_path / "partial.csv"
    assert main([str(folder), "--weights", str(weights), "--csv", str(out_csv)]) == EXIT_INTERRUPTED
    out, err = capsys.readouterr()
    assert "interrupted after 2 of" in err and "Traceback" not in err
    # of every input, not of the two tried (the folder's corrupt.png among them)
    assert f"1 of {len(GOOD) + 1} images scored" in out
    assert len(_labels(out_csv)) == 2


def test_console_script_and_shipped_files_are_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["assocmem-detect"] == "assocmem.forensic:detect_main"
    shipped = project["tool"]["setuptools"]["package-data"]["assocmem"]
    assert {"forensic/checkpoints/*.safetensors", "forensic/checkpoints/*.json"} <= set(shipped)


@pytest.mark.slow  # a fresh interpreter imports torch and scikit-learn: 3-40 s on a busy machine
def test_python_dash_m_runs(weights, folder):
    done = subprocess.run(
        [sys.executable, "-m", "assocmem.forensic.detect", str(folder / "tiny.png")]
        + ["--weights", str(weights), "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == EXIT_OK, done.stderr
    assert "7x5" in done.stdout


def _copy(folder: Path, root: Path, layout: dict[str, list[str]]) -> None:
    for sub, names in layout.items():
        (root / sub).mkdir(parents=True, exist_ok=True)
        for n in names:
            (root / sub / n).write_bytes((folder / "good.png").read_bytes())


def _labels(out_csv: Path) -> dict[str, str]:
    with out_csv.open(newline="") as f:
        return {r["path"]: r["label"] for r in csv.DictReader(f)}


def test_images_beside_a_labelled_layout_are_scored_without_a_label(
    weights, folder, tmp_path, capsys
):
    root = tmp_path / "cnndet"
    layout = {"0_real": ["r.png"], "1_fake": ["f.png"], "misc": ["m.png"], "": ["t.png"]}
    _copy(folder, root, layout)
    out_csv = tmp_path / "l.csv"
    assert main([str(root), "--weights", str(weights), "--csv", str(out_csv)]) == EXIT_OK
    labels = {Path(p).relative_to(root).as_posix(): v for p, v in _labels(out_csv).items()}
    assert labels == {"0_real/r.png": "0", "1_fake/f.png": "1", "misc/m.png": "", "t.png": ""}
    assert "4 of 4 images scored" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("layout", "problem"),
    [
        ({"car/0_real": ["a.png"], "car/1_fake": ["b.png"], "cat/0_real": ["c.png"]}, "cat"),
        ({"sd/nature": ["a.png"], "sd/ai": ["b.png"], "notes": ["c.png"]}, "notes"),
    ],
)
def test_a_malformed_labelled_layout_is_scored_without_labels_and_said_so(
    weights, folder, tmp_path, capsys, layout, problem
):
    root = tmp_path / "data"
    _copy(folder, root, layout)
    out_csv = tmp_path / "l.csv"
    assert main([str(root), "--weights", str(weights), "--csv", str(out_csv)]) == EXIT_OK
    assert set(_labels(out_csv).values()) == {""} and len(_labels(out_csv)) == 3
    captured = capsys.readouterr()
    assert "not read as a labelled dataset" in captured.err and problem in captured.err


def test_folder_scan_follows_symlinked_folders_and_skips_hidden_ones(weights, folder, tmp_path):
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    _copy(folder, elsewhere, {"": ["linked.png"]})
    _copy(folder, root, {"": ["top.png", ".hidden.png"], ".thumbs": ["t.png"]})
    (root / "link").symlink_to(elsewhere, target_is_directory=True)
    (root / "loop").symlink_to(root, target_is_directory=True)  # a loop ends
    out_csv = tmp_path / "l.csv"
    assert main([str(root), "--weights", str(weights), "--csv", str(out_csv)]) == EXIT_OK
    names = sorted(Path(p).relative_to(root).as_posix() for p in _labels(out_csv))
    assert names == ["link/linked.png", "top.png"]


@pytest.mark.skipif(sys.platform != "linux", reason="needs symlinks and FIFOs")
def test_a_dead_link_or_fifo_named_as_an_image_is_reported_unreadable(weights, folder, tmp_path):
    # They were passed over without a word ("1 of 1 images scored", exit 0): a link to a photo
    # that has moved is what a user needs to hear about. The other names stay left out.
    import os

    root = tmp_path / "dead"
    _copy(folder, root, {"": ["good.png"]})
    (root / "photo.jpg").symlink_to(tmp_path / "moved.jpg")
    os.mkfifo(root / "pipe.png")
    os.mkfifo(root / "pipe.txt")
    out_csv = tmp_path / "d.csv"
    with deadline(60):
        code = main([str(root), "--weights", str(weights), "--csv", str(out_csv)])
    assert code == EXIT_UNREADABLE
    with out_csv.open(newline="") as f:
        status = {Path(r["path"]).name: r["status"] for r in csv.DictReader(f)}
    assert status == {"good.png": "ok", "photo.jpg": "unreadable", "pipe.png": "unreadable"}


def test_a_manifest_path_keeps_spaces_that_are_part_of_its_name(weights, folder, tmp_path):
    # '" lead space.png",0' named a file whose name starts with a space; the path was stripped
    # (and not found), while 'b.png , 1' (spaces around a plain name) still reads as b.png
    _copy(folder, tmp_path, {"": [" lead space.png", "trail.png ", "b.png"]})
    manifest = tmp_path / "m.csv"
    manifest.write_text('" lead space.png",0\n"trail.png ",1\n b.png , 1\n')
    out_csv = tmp_path / "s.csv"
    assert main([str(manifest), "--weights", str(weights), "--csv", str(out_csv)]) == EXIT_OK
    names = sorted(Path(p).name for p in _labels(out_csv))
    assert names == [" lead space.png", "b.png", "trail.png "]


def test_the_table_aligns_names_with_wide_characters(weights, folder, tmp_path, capsys):
    _copy(folder, tmp_path / "w", {"": ["图像.png", "ab.png"]})
    assert main([str(tmp_path / "w"), "--weights", str(weights)]) == EXIT_OK
    rows = [r for r in capsys.readouterr().out.splitlines() if ".png" in r]
    # the same cells after the names: rows aligned iff they take the same terminal columns
    # (a wide character takes two; padding by len() made the 图像 row two columns longer)
    import unicodedata

    def columns(text: str) -> int:
        return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)

    assert len(rows) == 2 and rows[0].split(".png")[1] != rows[1].split(".png")[1]
    assert columns(rows[0]) == columns(rows[1])


@pytest.mark.skipif(sys.platform != "linux", reason="needs a file system that takes any bytes")
def test_a_file_name_that_is_not_utf8_is_reported_in_every_output(weights, folder, tmp_path):
    root = tmp_path / "names"
    root.mkdir()
    (root / "ok.png").write_bytes((folder / "good.png").read_bytes())
    (root / "x\udcff.png").write_bytes((folder / "good.png").read_bytes())  # bytes b"x\xff.png"
    out_csv, out_json = tmp_path / "n.csv", tmp_path / "n.json"
    cmd = [sys.executable, "-m", "assocmem.forensic.detect", str(root), "--weights", str(weights)]
    cmd += ["--csv", str(out_csv), "--json", str(out_json)]
    run = subprocess.run(cmd, capture_output=True, timeout=120, cwd=ROOT, check=False)
    assert run.returncode == EXIT_OK, run.stderr.decode(errors="replace")
    rows = out_csv.read_text(encoding="utf-8").splitlines()
    assert len(rows) == 3 and any("x\\udcff.png" in r for r in rows)
    assert len(json.loads(out_json.read_text(encoding="utf-8"))["images"]) == 2


def test_reports_are_written_even_when_stdout_is_closed_early(weights, folder, tmp_path):
    # `assocmem-detect ... --csv out.csv | head -1`: the reader leaves after one line; the
    # reports come first and the command ends quietly.
    out_csv = tmp_path / "p.csv"
    cmd = [sys.executable, "-m", "assocmem.forensic.detect", str(folder), "--weights", str(weights)]
    cmd += ["--csv", str(out_csv)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before anything is read: every write to stdout fails
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == EXIT_UNREADABLE  # corrupt.png, as without the pipe
    assert "Traceback" not in err
    assert len(_labels(out_csv)) == len(GOOD) + 1


def test_table_rows_stay_one_aligned_line_for_odd_file_names():
    from assocmem.forensic.detect import _table

    def row(path):
        return {"path": path, "status": "ok", "decision": "real", "undersized": False,
                "score": 0.5, "threshold": 1.0, "probability": 0.4, "tiles": 1, "width": 32,
                "height": 32, "label": None}  # fmt: skip

    # a byte that is not UTF-8 prints as a 6-character escape, a newline would break the row
    names = ["plain.png", "x\udcff.png", "two\nlines.png", "tab\there.png"]
    lines = _table([row(n) for n in names], labelled=False).splitlines()
    assert len(lines) == 1 + len(names)
    assert len({line.index("real") for line in lines[1:]}) == 1  # one column for the decision
    assert "x\\udcff.png" in lines[2] and "two\\nlines.png" in lines[3]


def test_a_large_image_reports_its_tiles_as_they_are_scored(weights):
    # a 24-megapixel photo is ~23 000 tiles: minutes without a word before the progress hook
    from assocmem.forensic.detect import _TILE_PROGRESS_FROM, _TileBar

    detector = Detector.load(weights, batch_size=64)
    image = torch.rand(3, 32 * 10, 32 * 20)  # 200 tiles
    calls = []
    result = detector.score_one(image, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (result.tiles, result.tiles) and len(calls) == 4  # 64, 128, 192, 200
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    bar = _TileBar(Path("big.jpg"))
    bar(64, _TILE_PROGRESS_FROM - 1)  # a small image: no bar
    assert bar.bar is None
    bar.close()


def test_without_the_forensic_extra_the_command_names_what_to_install(monkeypatch, capsys):
    # a plain `pip install assocmem` ran the console script into "No module named 'PIL'"
    import importlib.util

    import assocmem.forensic as forensic

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "PIL" else real(name, *a)
    )
    assert forensic.detect_main(["--help"]) == 1
    assert "pip install 'assocmem[forensic]' (missing: pillow)" in capsys.readouterr().err
    with pytest.raises(ModuleNotFoundError, match=r"assocmem\[forensic\]"):
        forensic.__getattr__("Detector")
    monkeypatch.setattr(importlib.util, "find_spec", real)
    assert forensic.detect_main(["--help"]) == 0


def test_ctrl_c_before_any_image_rewrites_the_reports_empty(
    weights, folder, tmp_path, capsys, monkeypatch
):
    """Interrupted before the first image was scored, the command returned before writing the
    reports: an earlier run's CSV at the path then read as this run's result, though stderr
    said the reports held what was scored."""

    def interrupted(self, image, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Detector, "score_one", interrupted)
    out_csv, out_json = tmp_path / "r.csv", tmp_path / "r.json"
    out_csv.write_text("path,decision\nOLD_RUN_image.png,fake\n")
    out_json.write_text('{"images": [{"path": "OLD_RUN_image.png"}]}')
    argv = [str(folder / "good.png"), "--weights", str(weights), "--csv", str(out_csv)]
    assert main([*argv, "--json", str(out_json)]) == EXIT_INTERRUPTED
    assert "interrupted after 0 of 1" in capsys.readouterr().err
    assert out_csv.read_text().splitlines()[0].startswith("path,label,family,status")
    assert len(out_csv.read_text().splitlines()) == 1  # the header alone
    report = json.loads(out_json.read_text())
    assert report["images"] == [] and report["summary"]["scored"] == 0


def test_an_image_named_twice_is_scored_once(weights, folder, tmp_path, capsys):
    """A folder and a file in it, or a path and a link to it, gave one row per naming: the
    summary counted the image twice (and a labelled run's rates weighed it twice)."""
    link = tmp_path / "link.png"
    link.symlink_to(folder / "good.png")
    out_json = tmp_path / "r.json"
    argv = [str(folder / "sub"), str(folder / "sub" / "deeper.png"), str(folder / "good.png"),
            str(link), "--weights", str(weights), "--json", str(out_json)]  # fmt: skip
    assert main(argv) == EXIT_OK
    err = capsys.readouterr().err
    assert "2 image(s) named more than once" in err
    rows = json.loads(out_json.read_text())["images"]
    assert [Path(r["path"]).name for r in rows] == ["deeper.png", "good.png"]


def test_postscript_is_no_image_extension_without_ghostscript(monkeypatch):
    """Pillow reads EPS through Ghostscript: without it every .eps in a scanned folder was an
    unreadable file (exit 3) instead of a file that is not an image."""
    from assocmem.forensic.data import loaders

    monkeypatch.setattr(loaders, "_has_ghostscript", lambda: False)
    assert not {".eps", ".ps"} & loaders._readable_extensions()
    monkeypatch.setattr(loaders, "_has_ghostscript", lambda: True)
    assert {".eps", ".ps"} <= loaders._readable_extensions()


def test_a_thin_image_is_refused_with_its_width_first(weights, tmp_path):
    Image.fromarray(np.zeros((40, 3, 3), np.uint8)).save(tmp_path / "strip.png")  # 3 wide
    with pytest.raises(ValueError, match="an image of 3 x 40 px"):
        Detector.load(weights).score_one(tmp_path / "strip.png")


@pytest.mark.parametrize("where", ["load", "collect"])
def test_ctrl_c_during_start_up_exits_130_without_a_traceback(
    where, weights, folder, tmp_path, capsys, monkeypatch
):
    """A Ctrl-C while the checkpoint loaded or the folders were walked ended in a traceback
    (exit status 130 from Python, but no word on what was written)."""

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    if where == "load":
        monkeypatch.setattr(Detector, "load", interrupted)
    else:
        monkeypatch.setattr(detect_module, "collect", interrupted)
    out_csv = tmp_path / "r.csv"
    argv = [str(folder / "good.png"), "--weights", str(weights), "--csv", str(out_csv)]
    assert main(argv) == EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert "interrupted before any image was scored; no report was written" in err
    assert not out_csv.exists()
