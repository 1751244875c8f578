"""``assocmem-detect``: score images, folders or labelled datasets with a detector checkpoint.

    assocmem-detect PATH... [--weights FILE] [--threshold T | --fpr F] [--csv OUT] [--json OUT]
                    [--batch N] [--stride S] [--threads N] [--device D]
    python -m assocmem.forensic.detect PATH...        # the same

``PATH`` is an image file (any format Pillow reads, whatever its extension), a folder (every
file under it with the extension of a format the installed Pillow reads,
``loaders.IMAGE_EXTENSIONS``: ``.jpg``, ``.jfif``, ``.png``, ``.webp``, ``.tif``, ``.tga``,
``.ppm``, ``.ico``, ...; recursively: ``loaders.scan_folder``, which follows symlinked folders and
leaves out hidden files and folders; the other files are not scored, and stderr says how many and
names a few: name one as a PATH to try it whatever its extension; a folder that cannot be listed
is reported as unreadable), or a labelled dataset the loaders read: a folder in the
CNNDetection layout (``0_real``/``1_fake``, optionally per category) or the GenImage layout
(``nature``/``ai``, optionally per generator), or a ``.csv`` manifest (``path,label[,family]``).
Labelled inputs add a ``label`` column and the TPR/FPR (and AUC) of the decisions to the
summary; images beside a layout's folders are scored without a label. A folder that holds a
layout's folders but not in its shape (a category with ``0_real`` and no ``1_fake``) is scored
without labels, with a warning on stderr saying why. A multi-frame file (an animated GIF, a
multi-page TIFF) is scored on its first frame.

Each image is tiled, its tiles scored and their logits averaged (``assocmem.forensic.tiling``; a
checkpoint calibrated on ``d4`` views scores each tile as the mean over its eight dihedral views;
the summary line and the JSON's ``detector`` say which views); the table shows the decision, that
score, the threshold it was decided at (``fake`` when the score is at least the threshold),
``P(fake)`` (the checkpoint's Platt map of it, fit on validation reals and the seen families' fakes
at even odds; the sigmoid of the score for a checkpoint without one: ``Detector.probability``), the
number of tiles scored and the size. Blank tiles (pixels varying by under one grey level in every
channel: a flat colour, padding bars) are not scored (``Detector.textured_tiles``); an image with
nothing else is ``blank``: no score, not flagged, and left out of the AUC of labelled inputs.
The threshold is the checkpoint's (calibrated on validation real patches for its target
false-positive rate),
``--fpr F`` recalibrates it for another rate from the validation logits the checkpoint stores,
``--threshold T`` sets it on the score's (logit)
scale. A checkpoint that stores real images' scores decides an image by its size: at the
threshold of the number of whole tiles that fit in it (``Detector.threshold_for``; the table's
``tiles`` counts the tiles scored, overlapping ones at the edges included), which the summary line
lists; its patch threshold there (and the JSON's ``detector.threshold``) is the one an image of
one tile is decided at.

Exit status:
    0    every image was scored;
    1    an output could not be written: the table to stdout (other than a reader that left, as
         ``| head`` does, which is not an error; the ``--csv``/``--json`` reports are written
         first), or a report (a full disk: the table is still printed, the error on stderr);
    2    nothing was scored: a usage error (bad option, a PATH that does not exist, a malformed
         manifest, a checkpoint that is refused, an ``--fpr`` the checkpoint cannot calibrate, a
         ``--csv``/``--json`` path that is an input, the checkpoint, or both reports at once);
    3    some files or folders could not be read (each is listed on stderr and in the CSV/JSON,
         with the reason); every readable image, if there was one, was scored;
    130  interrupted (Ctrl-C): the images scored until then are in the table and the reports.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import unicodedata
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from assocmem.forensic.data.loaders import (
    DECODE_ERRORS,
    cnndetection_samples,
    genimage_samples,
    manifest_samples,
    scan_folder,
)
from assocmem.forensic.detector import Detector, ImageScore
from assocmem.storage import sidecar_path, strict_json

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_STDOUT",
    "EXIT_UNREADABLE",
    "EXIT_USAGE",
    "Found",
    "Item",
    "collect",
    "main",
]

EXIT_OK, EXIT_STDOUT, EXIT_USAGE, EXIT_UNREADABLE = 0, 1, 2, 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention
_PROGRESS_FROM = 50  # images; fewer finish before a bar would help
_NOT_IMAGES_NAMED = 5  # files left out by extension named on stderr (the rest counted)
# tiles of one image (about 2 megapixels at 32 px tiles, a minute or more with eight views on
# a CPU): a large photo scored alone shows its own bar, where it said nothing for minutes
_TILE_PROGRESS_FROM = 2048


class Item(NamedTuple):
    path: Path
    label: int | None  # 0 real, 1 fake, None unlabelled
    family: str | None


class Found(NamedTuple):
    """What one ``PATH`` argument names: the images to score, and under a folder the files left
    out as not images (by extension) and the folders that could not be listed, with why."""

    items: list[Item]
    not_images: list[Path]
    unreadable: list[tuple[Path, str]]


def collect(path: Path) -> Found:
    """The images one ``PATH`` argument names (see the module docstring).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a malformed ``.csv`` manifest.
    """
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_file() and path.suffix.lower() == ".csv":
        return Found([Item(s.path, s.label, s.family) for s in manifest_samples(path)], [], [])
    if not path.is_dir():
        return Found([Item(path, None, None)], [], [])  # named explicitly: tried whatever it is
    scan = scan_folder(path)
    # a dead link or FIFO with an image extension is tried like any image, so that it is
    # reported unreadable (with why) rather than passed over without a word
    every = sorted(scan.images + scan.not_regular)

    def found(items: list[Item]) -> Found:
        return Found(items, scan.not_images, scan.unreadable)

    for layout, folders in _LAYOUTS:
        if not _holds_any(path, folders):
            continue  # not that layout
        try:
            with warnings.catch_warnings():  # unreadable folders: in scan.unreadable already
                warnings.simplefilter("ignore", UserWarning)
                samples = layout(path)
        # that layout's folders, but not in its shape, or some not listable: say so
        except (ValueError, OSError) as e:
            why = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
            print(
                f"assocmem-detect: warning: {path} is not read as a labelled dataset ({why}); "
                "its images are scored without labels",
                file=sys.stderr,
            )
            return found([Item(p, None, None) for p in every])
        labelled = {s.path for s in samples}
        # images beside the layout's folders are scored too, without a label
        return found(
            [Item(s.path, s.label, s.family) for s in samples]
            + [Item(p, None, None) for p in every if p not in labelled]
        )
    return found([Item(p, None, None) for p in every])


def _columns(text: str) -> int:
    """The columns ``text`` takes in a terminal: wide (CJK) characters two, combining marks
    none (``len`` counts characters: a name with wide ones shifted its row's columns)."""
    return sum(
        0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1
        for ch in text
    )


# each labelled layout and the folder names that mark a folder as meant to be one
_LAYOUTS = (
    (cnndetection_samples, frozenset({"0_real", "1_fake"})),
    (genimage_samples, frozenset({"nature", "ai"})),
)


def _holds_any(root: Path, names: frozenset[str], depth: int = 3) -> bool:
    """Whether a folder named one of ``names`` (any case) lies within ``depth`` levels of
    ``root`` (GenImage's deepest: ``root/<generator>/<split>/nature``). A folder that cannot be
    listed is passed over (the folder scan reports it as unreadable)."""
    level = [root]
    for _ in range(depth):
        level = [d for folder in level for d in _listed(folder) if d.is_dir()]
        if any(d.name.lower() in names for d in level):
            return True
    return False


def _listed(folder: Path) -> list[Path]:
    """The entries of ``folder``; none where it cannot be listed (no read permission)."""
    try:
        return list(folder.iterdir())
    except OSError:
        return []


def _row(item: Item, result: ImageScore | None, reason: str = "") -> dict[str, Any]:
    # a missing value is None: null in the JSON, an empty cell in the CSV
    row: dict[str, Any] = {
        "path": str(item.path),
        "label": item.label,
        "family": item.family,
        "status": "ok" if result else "unreadable",
        "reason": reason,
    }
    if result:
        # every tile blank (Detector.textured_tiles): no score, decided neither way
        row.update(
            score=None if result.blank else round(result.score, 6),
            probability=None if result.blank else round(result.probability, 6),
            decision="blank" if result.blank else "fake" if result.fake else "real",
            threshold=round(result.threshold, 6),
            tiles=result.tiles,
            width=result.width,
            height=result.height,
            undersized=result.undersized,
            blank_tiles=result.blank_tiles,
        )
    else:
        scored = ("score", "probability", "decision", "threshold", "tiles", "width", "height")
        row.update(dict.fromkeys((*scored, "undersized", "blank_tiles")))  # in the same order
    return row


def _table(rows: list[dict[str, Any]], labelled: bool) -> str:
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return ""
    # the threshold of the row's size (Detector.threshold_for): fake when score >= threshold
    head = ["decision", "score", "threshold", "P(fake)", "tiles", "size"]
    head += ["label"] if labelled else []
    cells = [
        [
            r["decision"] + ("*" if r["undersized"] else ""),
            "-" if r["score"] is None else f"{r['score']:+.3f}",
            f"{r['threshold']:+.3f}",
            "-" if r["probability"] is None else f"{r['probability']:.3f}",
            str(r["tiles"]),
            f"{r['width']}x{r['height']}",
        ]
        + ([{0: "real", 1: "fake", None: "-"}[r["label"]]] if labelled else [])
        for r in ok
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]
    shown = [_shown(r["path"]) for r in ok]
    path_w = max(len("path"), *map(_columns, shown))

    def line(path: str, values: list[str]) -> str:
        padded = path + " " * (path_w - _columns(path))
        return "  ".join([padded] + [f"{v:>{w}}" for v, w in zip(values, widths, strict=True)])

    lines = [line("path", head)] + [line(p, c) for p, c in zip(shown, cells, strict=True)]
    if any(r["undersized"] for r in ok):
        lines.append("* smaller than one tile on a side: filled by reflection, a weaker score")
    if any(r["decision"] == "blank" for r in ok):
        lines.append(
            "blank: every tile varies by under one grey level (a flat colour): no evidence either "
            "way, not scored; blank tiles of other images are left out of their score"
        )
    return "\n".join(lines)


def _shown(path: str) -> str:
    """``path`` as the table prints it, one line of the width it takes: a byte that is not
    UTF-8 as its escape (``\\udcff``, as stdout writes it) and a control character (a newline
    in a file name) as its Python escape; the JSON keeps the name itself, the CSV its control
    characters (quoted) and a byte that is not UTF-8 as its escape, as here."""
    text = path.encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _summary(
    rows: list[dict[str, Any]], images: int, not_images: int = 0, unreadable_folders: int = 0
) -> dict[str, Any]:
    """``rows``: the images tried (fewer than ``images``, the inputs, after a Ctrl-C)."""
    ok = [r for r in rows if r["status"] == "ok"]
    summary: dict[str, Any] = {
        "images": images,
        "scored": len(ok),
        "unreadable": len(rows) - len(ok),
        "unreadable_folders": unreadable_folders,
        "not_images": not_images,  # files under the folders left out by their extension
        "flagged_fake": sum(r["decision"] == "fake" for r in ok),
        "blank": sum(r["decision"] == "blank" for r in ok),  # no score, not flagged
    }
    labelled = [r for r in ok if r["label"] is not None]
    for name, label in (("tpr", 1), ("fpr", 0)):
        group = [r for r in labelled if r["label"] == label]
        if group:
            summary[name] = sum(r["decision"] == "fake" for r in group) / len(group)
    # a blank image counts in the rates above as not flagged; the AUC ranks scores, which it has
    # none of, so it is over the others
    ranked = [r for r in labelled if r["score"] is not None]
    if {r["label"] for r in ranked} == {0, 1}:
        from sklearn.metrics import roc_auc_score

        summary["auc"] = float(
            roc_auc_score([r["label"] for r in ranked], [r["score"] for r in ranked])
        )
    return summary


def _unwritable(path: Path) -> str:
    """Why ``path`` (no directory: checked before) cannot be written ("" if it can); creates its
    missing parent folders."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"cannot create the folder of {path}: {e}"
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return f"{path} is not writable"
    return ""


# how each tile's logit is formed, per checkpoint views (``views.VIEWS``)
_VIEWS_TEXT = {
    "one": "views: one (each tile as it is)",
    "d4": "views: d4 (each tile's logit the mean over its 8 rotations and flips)",
}


def _describe_threshold(detector: Detector) -> str:
    # the one an image of one tile is decided at (raised to the image ones at a high --fpr)
    patch = f"{detector.threshold_for(1):+.4f} on the mean tile logit"
    t = f"threshold {patch}"
    if detector.image_thresholds:
        # whole tiles that fit (Detector.area_tiles), not the overlapping tiles the table counts:
        # a 48 px image is scored on 4 tiles but decided as one
        p = detector.patch_size
        larger = ", ".join(
            f"{k}+ whole {p} px tiles {detector.threshold_for(k):+.4f}"
            for k, _ in detector.image_thresholds
        )
        t = f"thresholds by image size ({patch}; {larger})"
    if detector.target_fpr is None:
        t = f"{t} (given)"
    else:
        t = f"{t} (calibrated for a {100 * detector.target_fpr:g} % FPR on validation reals)"
    # the views belong with the threshold: it holds for tile logits formed that way only
    return f"{t}, {_VIEWS_TEXT[detector.views]}"


def _parser() -> argparse.ArgumentParser:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(
        prog="assocmem-detect",
        description="Score images (files, folders, CNNDetection/GenImage folders, CSV manifests) "
        "as real or generated with a detector checkpoint.",
        epilog=doc[doc.index("Exit status:") :],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    parser.add_argument("--weights", type=Path, help="a detector checkpoint (default: shipped)")
    decide = parser.add_mutually_exclusive_group()
    decide.add_argument("--threshold", type=float, help="decide at this mean tile logit")
    decide.add_argument("--fpr", type=float, help="recalibrate for this false-positive rate")
    parser.add_argument("--csv", type=Path, help="write every row here")
    parser.add_argument("--json", type=Path, help="write the rows, detector and summary here")
    parser.add_argument("--batch", type=int, default=256, help="tiles per forward pass")
    parser.add_argument("--stride", type=int, help="tile stride (default: the tile size)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument(
        "--device", help="where the detector runs, e.g. cuda, cuda:1, mps (default: the CPU)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns its exit status (module docstring)."""
    scoring: list[bool] = []  # set once scoring begins (it reports its own interruption)
    try:
        return _run(argv, scoring)
    except KeyboardInterrupt:  # a traceback from the checkpoint load or a folder walk, before
        if scoring:  # a second Ctrl-C while the reports of the first were being written
            print("assocmem-detect: interrupted again while writing the reports", file=sys.stderr)
        else:
            print(
                "assocmem-detect: interrupted before any image was scored; no report was "
                "written (a file at --csv/--json is an earlier run's)",
                file=sys.stderr,
            )
        return EXIT_INTERRUPTED


def _run(argv: Sequence[str] | None, scoring: list[bool]) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # usage errors (2) and --help (0), as a return value
        return int(e.code or 0)

    def usage(message: str) -> int:
        parser.print_usage(sys.stderr)
        print(f"assocmem-detect: error: {message}", file=sys.stderr)
        return EXIT_USAGE

    if isinstance(sys.stdout, io.TextIOWrapper):  # a file name that is not valid UTF-8
        sys.stdout.reconfigure(errors="backslashreplace")
    if args.batch < 1:
        return usage(f"--batch must be >= 1, got {args.batch}")
    if args.threads is not None:
        if args.threads < 1:
            return usage(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    try:
        detector = Detector.load(
            args.weights, stride=args.stride, batch_size=args.batch, device=args.device
        )
        if args.fpr is not None:
            detector = detector.with_fpr(args.fpr)
        elif args.threshold is not None:
            detector = detector.with_threshold(args.threshold)
        found = [collect(p) for p in args.paths]
    except (FileNotFoundError, ValueError) as e:
        return usage(str(e))
    # one row per image: a file named twice (a folder and a file in it, a path and a link to
    # it) was scored twice, which counted it twice in the summary and the rates
    unique: dict[Path, Item] = {}
    for item in (item for f in found for item in f.items):
        unique.setdefault(item.path.resolve(), item)
    items = list(unique.values())
    repeated = sum(len(f.items) for f in found) - len(items)
    not_images = [p for f in found for p in f.not_images]
    # folders that could not be listed: unreadable rows of their own, as unreadable files are
    folder_rows = [
        _row(Item(p, None, None), None, f"a folder that cannot be listed: {why}")
        for f in found
        for p, why in f.unreadable
    ]
    if not items and not folder_rows:
        return usage(f"no image files under {', '.join(map(str, args.paths))}")
    # Checked before scoring: a long run must not end in a traceback over its output path,
    # and a report must never replace what it reports on. The checkpoint and its JSON sidecar
    # (written over, the sidecar would make the checkpoint refuse to load: it must equal its
    # header); every input, an image or a manifest (``--csv a.jpg b.jpg`` meant as two images
    # replaced a.jpg with the report).
    weights = Path(detector.source).resolve()
    protected = {weights, sidecar_path(weights)}
    outputs = [(out, out.resolve()) for out in (args.csv, args.json) if out is not None]
    if len({where for _, where in outputs}) < len(outputs):
        return usage(f"--csv and --json are the same file ({args.csv}); give each its own")
    # the images are resolved already (one row each); the named paths only where there is a
    # report to compare them with (a syscall each)
    inputs = ({p.resolve() for p in args.paths} | set(unique)) if outputs else set()
    for out, where in outputs:
        if where in protected:
            return usage(f"{out} is the detector checkpoint or its sidecar; write elsewhere")
        if out.is_dir():
            return usage(f"{out} is a directory, not a file to write")
        if where in inputs:
            return usage(f"{out} is one of the inputs; write the report elsewhere")
    for out, _ in outputs:  # last: it creates missing folders, which a refused run must not
        if problem := _unwritable(out):
            return usage(problem)

    from tqdm import tqdm

    rows = []
    scoring.append(True)
    bar = tqdm(items, desc="scoring", unit="image", file=sys.stderr,
               disable=True if len(items) < _PROGRESS_FROM else None)  # fmt: skip
    interrupted = False
    tile_bars = bar.disable  # one bar at a time on stderr: the images' or a large image's tiles
    try:
        for item in bar:
            try:
                progress = _TileBar(item.path) if tile_bars else None
                try:
                    rows.append(_row(item, detector.score_one(item.path, progress=progress)))
                finally:
                    if progress is not None:
                        progress.close()
            # one bad file never stops the run; RuntimeError: torch failing to allocate tiles
            except (*DECODE_ERRORS, RuntimeError) as e:
                rows.append(_row(item, None, f"{type(e).__name__}: {e}"))
    except KeyboardInterrupt:  # Ctrl-C: keep what was scored (the table and the reports)
        interrupted = True
        bar.close()
        # the reports are written even for none: an earlier run's report at the path would
        # otherwise read as this run's result
        print(
            f"assocmem-detect: interrupted after {len(rows)} of {len(items)} images; the "
            "table and reports hold those",
            file=sys.stderr,
        )
    labelled = any(item.label is not None for item in items)
    summary = _summary(rows, len(items), len(not_images), len(folder_rows))
    rows += folder_rows  # in the reports too, after the images

    table = _table(rows, labelled)
    line = (
        f"{summary['scored']} of {summary['images']} images scored, {summary['flagged_fake']} "
        f"flagged fake at {_describe_threshold(detector)}"
        + (f"; {summary['blank']} blank (no score, not flagged)" if summary["blank"] else "")
    )
    rates = [f"{k.upper()} {summary[k]:.3f}" for k in ("tpr", "fpr", "auc") if k in summary]
    bad = [r for r in rows if r["status"] != "ok"]
    # The reports first: a closed or full stdout (``| head``) must not lose them. A report
    # that cannot be written (a full disk) does not lose the table either.
    fields = list(_row(Item(Path(), None, None), None))  # every row's keys, in their order
    unwritten = _write_reports(args.csv, args.json, rows, detector, summary, fields)
    try:
        if table:
            print(table)
        print(line + (f"; on the labelled ones: {', '.join(rates)}" if rates else ""))
        sys.stdout.flush()
    except BrokenPipeError:  # the reader left (| head): the reports are written, stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except OSError as e:  # e.g. a full disk behind stdout
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print(f"assocmem-detect: error: cannot write the table to stdout: {e}", file=sys.stderr)
        return EXIT_STDOUT
    if bad:
        n_folders = len(folder_rows)
        what = [f"{len(bad) - n_folders} unreadable file(s)"] if len(bad) > n_folders else []
        if n_folders:
            what.append(f"{n_folders} unreadable folder(s) (the images in them not scored)")
        print(f"{', '.join(what)}:", file=sys.stderr)
        for r in bad:  # one line each, as the table shows names (a newline in one, escaped)
            print(_shown(f"  {r['path']}: {r['reason']}"), file=sys.stderr)
    if not_images:
        named = ", ".join(_shown(str(p)) for p in not_images[:_NOT_IMAGES_NAMED])
        more = ", ..." if len(not_images) > _NOT_IMAGES_NAMED else ""
        print(
            f"assocmem-detect: {len(not_images)} file(s) under the folders not scored, not an "
            f"image extension ({named}{more}); name one as a PATH to try it",
            file=sys.stderr,
        )
    if repeated:
        print(
            f"assocmem-detect: {repeated} image(s) named more than once (a folder and a file "
            "in it, or a link), scored once each",
            file=sys.stderr,
        )
    for message in unwritten:
        print(f"assocmem-detect: error: {message}", file=sys.stderr)
    if interrupted:
        return EXIT_INTERRUPTED
    if unwritten:
        return EXIT_STDOUT
    return EXIT_UNREADABLE if bad else EXIT_OK


class _TileBar:
    """``Detector.score_one``'s ``progress``: a tqdm bar of one image's tiles on stderr, opened
    once the image turns out to hold at least :data:`_TILE_PROGRESS_FROM` tiles."""

    def __init__(self, path: Path) -> None:
        self.name, self.bar = _shown(path.name), None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            if total < _TILE_PROGRESS_FROM:
                return
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, desc=self.name, unit="tile", file=sys.stderr, leave=False, disable=None
            )  # fmt: skip (None: on a terminal only)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _write_reports(
    csv_path: Path | None,
    json_path: Path | None,
    rows: list[dict[str, Any]],
    detector: Detector,
    summary: dict[str, Any],
    fields: list[str],
) -> list[str]:
    """Write the ``--csv`` and ``--json`` reports (``fields``: the CSV's columns, a header alone
    when no row was scored); returns why each that failed could not be written (a full disk, a
    folder removed meanwhile), for stderr after the table."""
    failed = []
    if csv_path:
        try:
            # a file name that is not valid UTF-8 is written with backslash escapes (\udcff), so
            # the CSV stays UTF-8; a name that holds such an escape literally reads alike here
            # (the JSON keeps every name exactly)
            with csv_path.open("w", newline="", encoding="utf-8", errors="backslashreplace") as f:
                writer = csv.DictWriter(f, fieldnames=fields)
                writer.writeheader()
                writer.writerows(rows)
        except OSError as e:
            failed.append(f"cannot write the CSV report {csv_path}: {e}")
    if json_path:
        report = {"detector": detector.describe(), "summary": summary, "images": rows}
        try:
            json_path.write_text(strict_json.dumps(report, indent=1) + "\n", encoding="utf-8")
        except OSError as e:
            failed.append(f"cannot write the JSON report {json_path}: {e}")
    return failed


if __name__ == "__main__":
    sys.exit(main())
