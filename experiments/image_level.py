"""A detector checkpoint on images larger than a patch: tiles, mean logit, its own threshold.

For each ``--sizes`` S, ``assocmem.forensic.image_level.image_level_report``: ``--n`` real S x S
crops of the test split's photos and every family's fake of each, post-processed like the
benchmark, each image scored by ``Detector`` (the checkpoint's views, non-overlapping tiles,
mean tile logit) and decided at the checkpoint's threshold (calibrated on single validation
patches). Per size: the reals' FPR, and per family the AUC and the TPR.

    python -m experiments.image_level --sizes 32 64 128 256 --n 200 --json R.json \\
        --write docs/results.md
    python -m experiments.image_level --from-json R.json --write docs/results.md

``--patch-calibration`` decides every size at the threshold set on single patches and reads
``P(fake)`` with the patch map, as ``Detector`` did before checkpoints stored calibrations of
larger images (``--section`` names the section).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path
from typing import Any

import torch

from assocmem.forensic import Detector
from assocmem.forensic.checkpoint import DEFAULT_CHECKPOINT, load_detector
from assocmem.forensic.data import BenchmarkConfig, build_benchmark
from assocmem.forensic.data.fresh import with_fresh_test
from assocmem.forensic.image_level import image_level_report
from assocmem.storage import sidecar_path
from experiments.cli_files import input_path, output_path, refuse_clashes
from experiments.detectors import HELDOUT, SEEN, bad_run_options, family_split
from experiments.report import read_record, refuse_unreplaceable, replace_section, write_json

SECTION = "image-level"


def measure(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Every size's report, with the checkpoint and the command that made them."""
    torch.set_num_threads(args.threads)
    config = BenchmarkConfig.tiny() if args.tiny else BenchmarkConfig()
    ckpt = load_detector(args.weights)  # read once: its header and its network
    # the benchmark the checkpoint was trained on, where its header says (ship_detector's do):
    # another one splits the photos otherwise, and its "test" crops were the tiny benchmark's
    # test photo but the full one's training photo for the shipped checkpoint (an audit)
    trained_on = (ckpt.info.get("data") or {}).get("key")
    if trained_on is not None and trained_on != config.key():
        raise ValueError(
            f"the checkpoint was trained on the benchmark of key {trained_on}, this run builds "
            f"{config.key()} ({'--tiny' if args.tiny else 'the built-in one'}): its test "
            "photos may be ones the checkpoint trained on; score it on its own benchmark"
        )
    detector = Detector.from_checkpoint(
        ckpt, source=DEFAULT_CHECKPOINT if args.weights is None else args.weights
    )
    bench = build_benchmark(config, args.cache_dir, progress=False)
    if args.test_photos == "fresh":  # crops of the fresh photos; validation unchanged
        bench = with_fresh_test(bench)
    if args.patch_calibration:  # the rule before checkpoints stored image calibrations
        detector = dataclasses.replace(detector, image_thresholds=(), image_probability=())
    families = family_split(config)
    reports = [
        image_level_report(detector, bench, families, size=s, n=args.n, seed=args.seed)
        for s in args.sizes
    ]
    return {
        "command": command,
        # the package's checkpoint by name, not by where this machine installed it
        "weights": SHIPPED if args.weights is None else str(args.weights),
        "views": detector.views,
        "target_fpr": detector.target_fpr,
        "image_thresholds": {str(k): t for k, t in detector.image_thresholds},
        "image_probability": bool(detector.image_probability),
        "seed": args.seed,
        "test_photos": args.test_photos,
        "reports": reports,
    }


SHIPPED = "shipped (Detector.load())"


def _losses(report: dict[str, Any]) -> str:
    """The class-balanced log loss of ``P(fake)``, seen / held out (records from before the
    report had them: n/a)."""
    p = report.get("probability", {})
    return " / ".join(f"{p[g]['log_loss']:.3f}" if g in p else "n/a" for g in ("seen", "heldout"))


def _checkpoint_name(weights: str) -> str:
    return "The shipped checkpoint (`Detector.load()`)" if weights == SHIPPED else f"`{weights}`"


def markdown(record: dict[str, Any], rendered_by: str | None = None) -> str:
    """The results section of a :func:`measure` record."""
    reports = record["reports"]
    first = reports[0]
    pct = "a given" if record["target_fpr"] is None else f"a {100 * record['target_fpr']:g} %"
    # records written before checkpoints had image thresholds decided every size at the patch's
    by_size = record.get("image_thresholds", {})
    rule = (
        f"decided at {pct}-FPR threshold set on single validation patches (logit "
        f"{first['threshold']:.4f}) for every size"
        if not by_size
        else f"decided at {pct}-FPR threshold for the image's size (`Detector.threshold_for`: "
        "set on real crops of the validation photos of "
        + ", ".join(f"{k}" for k in by_size)
        + " tiles, the patch threshold below the smallest)"
    )
    rule += (
        "; `P(fake)` by the Platt map of the image's size (fit on the same validation crops "
        "and fakes of the seen families made from them)"
        if record.get("image_probability")
        else "; `P(fake)` by the patch map"
    )
    seen = [f for f in SEEN if f in first.get("seen", {})]
    held = [f for f in HELDOUT if f in first.get("heldout", {})]
    lines = [
        "## A detector on images larger than a patch (tiles, mean logit, "
        + ("the patch threshold for every size)" if not by_size else "thresholds by size)")
        + (" on the fresh test photos" if record.get("test_photos") == "fresh" else ""),
        "",
        f"Regenerate: `{record['command']}`"
        + (f", then `{rendered_by}`" if rendered_by else "")
        + ".",
        "",
        f"{_checkpoint_name(record['weights'])} (views `{record['views']}`), scored as "
        f"`Detector` scores images: non-overlapping tiles, the mean tile logit, {rule}. "
        f"Images: {first['n']} real S × S crops per size of the "
        + (
            "fresh test photos (photos no study had scored, `assocmem.forensic.data.fresh`) "
            if record.get("test_photos") == "fresh"
            else "test split's photos "
        )
        + f"({', '.join(first['photos'])}; crops overlap, so images are not independent photos) "
        "and each family's fake of every crop, post-processed like the benchmark "
        "(`assocmem.forensic.image_level`). Per family the AUC of its fakes against all the "
        "reals, the TPR at the threshold in brackets; FPR: the reals flagged at it.",
        "",
        "| S (tiles) | threshold | real FPR | "
        + " | ".join([*seen, "**seen mean**", *(f"{f} (held out)" for f in held)])
        + " | **held-out mean** | P(fake) log loss, seen / held out |",
        "|---|---:|---:|" + "---:|" * (len(seen) + len(held) + 3),
    ]
    for r in reports:

        def cell(group: str, fam: str, r: dict[str, Any] = r) -> str:
            m = r[group][fam]
            return f"{m['auc']:.3f} ({m['tpr']:.2f})"

        cells = [cell("seen", f) for f in seen] + [cell("seen", "mean")]
        cells += [cell("heldout", f) for f in held] + [cell("heldout", "mean")]
        lines.append(
            f"| {r['size']} ({r['tiles']}) | {r['threshold']:.4f} | {r['real_fpr']:.3f} | "
            + " | ".join(cells)
            + f" | {_losses(r)} |"
        )
    blank = []  # per size, the images with every tile blank, if any
    for r in reports:
        counts = [f"{r['real_blank']} of {r['n']} reals"] if r.get("real_blank") else []
        counts += [f"{m['blank']} {f}" for g in ("seen", "heldout")
                   for f, m in r.get(g, {}).items() if m.get("blank")]  # fmt: skip
        if counts:
            blank.append(f"{r['size']} px: " + ", ".join(counts))
    if blank:
        lines += [
            "",
            "Blank images (every tile varies by under one grey level, `Detector.textured_tiles`: "
            "no score, not flagged, ranked below every scored image, `P(fake)` 0.5): "
            + "; ".join(blank)
            + ".",
        ]
    # records written before the report split the reals' FPR by processing have no such table
    by_kind = [r for r in reports if "real_fpr_by_kind" in r]
    if by_kind:
        names = list(by_kind[0]["real_fpr_by_kind"])
        lines += [
            "",
            "The real images flagged, by what they went through (share flagged, and how many of "
            "the reals: an image that went through several steps counts under each):",
            "",
            "| S (tiles) | all | " + " | ".join(names) + " |",
            "|---|---:|" + "---:|" * len(names),
        ]
        for r in by_kind:
            cells = [_share(r["real_fpr_by_kind"][k]) for k in names]
            lines.append(
                f"| {r['size']} ({r['tiles']}) | {r['real_fpr']:.3f} ({r['n']}) | "
                + " | ".join(cells)
                + " |"
            )
    return "\n".join(lines) + "\n"


def _share(entry: dict[str, Any]) -> str:
    return "–" if entry["fpr"] is None else f"{entry['fpr']:.3f} ({entry['n']})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=input_path, default=None, help="default: the shipped one")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--n", type=int, default=200, help="real crops per size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--patch-calibration",
        action="store_true",
        help="decide every size at the patch threshold and read P(fake) with the patch map, "
        "ignoring the checkpoint's image calibrations",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="the tiny benchmark (tests)")
    parser.add_argument(
        "--test-photos",
        choices=("benchmark", "fresh"),
        default="benchmark",
        help="crop the test split's photos or the fresh test photos (assocmem.forensic.data."
        "fresh); thresholds come from the validation photos either way",
    )
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--json", type=output_path, help="write the record here")
    parser.add_argument("--from-json", type=input_path, help="no scoring: render this record")
    parser.add_argument("--write", type=output_path, help="markdown file whose section to refresh")
    parser.add_argument("--section", default=SECTION, help="its name in that file")
    args = parser.parse_args(argv)
    refuse_unreplaceable(parser, args.write, args.section)
    weights = DEFAULT_CHECKPOINT if args.weights is None else args.weights
    refuse_clashes(  # before anything is read or scored: an output never replaces an input
        parser,
        args,
        inputs=[
            ("the checkpoint (--weights)", weights),
            ("the checkpoint's sidecar", sidecar_path(weights)),
        ],
    )
    argv_text = shlex.join(sys.argv[1:] if argv is None else argv)
    command = f"python -m experiments.image_level {argv_text}"
    rendered_by = None
    if args.from_json:
        record = read_record(parser, args.from_json, ("command", "reports"))
        # the section says how it was rendered from the record, as shipped_fresh's does: the
        # scoring command alone re-scores, and wrote its record outside the repository
        rendered_by = command
    else:
        if args.n < 1 or any(s < 1 for s in args.sizes):
            parser.error("--n and --sizes must be positive")
        if problem := bad_run_options(args):  # --threads 0: as the training commands
            parser.error(problem)
        try:
            record = measure(args, command)
        except (ValueError, FileNotFoundError) as e:
            parser.error(str(e))
        if args.json:
            write_json(args.json, record)
    text = markdown(record, rendered_by)
    print(text)
    if args.write:
        replace_section(args.write, args.section, text)


if __name__ == "__main__":
    main()
