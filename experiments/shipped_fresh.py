"""The shipped detector on the fresh test photos: per tile, at its own threshold, per photo.

The shipped section (``experiments.ship_detector``) scores the checkpoint on the benchmark's
test split, the split every detector study read while choosing the recipe the checkpoint was
trained with. This scores the same checkpoint, untouched, on the fresh test photos
(``assocmem.forensic.data.fresh``: the benchmark's recipe on photos no study had scored), the
way ``Detector`` scores a tile (the checkpoint's views), with the threshold set on the same
validation reals (the protocol recomputes it and must find the checkpoint's), and gives each
fresh photo on its own beside the pooled table.

    python -m experiments.shipped_fresh --json R.json --write docs/results.md
    python -m experiments.shipped_fresh --from-json R.json --write docs/results.md
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from functools import partial
from pathlib import Path
from typing import Any

import torch

from assocmem.forensic.checkpoint import DEFAULT_CHECKPOINT, load_detector
from assocmem.forensic.data import BenchmarkConfig, build_benchmark
from assocmem.forensic.data.fresh import with_fresh_test
from assocmem.forensic.data.photos import FRESH_PHOTO_NAMES
from assocmem.forensic.protocol import FamilySplit, zero_shot_report
from assocmem.forensic.views import view_logits
from assocmem.storage import sidecar_path
from experiments.cli_files import input_path, output_path, refuse_clashes
from experiments.report import read_record, refuse_unreplaceable, replace_section, write_json
from experiments.score_cache import memoized

SECTION = "shipped-detector-fresh"


def measure(checkpoint: Path | None, cache_dir: str | None, threads: int) -> dict[str, Any]:
    """The record: the checkpoint's zero-shot report on the fresh photos (per photo included)
    at the threshold recomputed from the validation reals, which must be the checkpoint's."""
    torch.set_num_threads(threads)
    shipped = load_detector(checkpoint)
    data = shipped.info.get("data") or {}
    # the benchmark it was trained on: the built-in one (or the tests' tiny one), by its key
    configs = [c for c in (BenchmarkConfig(), BenchmarkConfig.tiny()) if c.key() == data.get("key")]
    if not configs:
        raise ValueError(
            f"the checkpoint was trained on a benchmark of key {data.get('key')!r}, neither the "
            "built-in one nor the tiny one: its fresh-photo numbers would not be its recipe's"
        )
    config = configs[0]
    bench = with_fresh_test(build_benchmark(config, cache_dir, progress=False))
    families = FamilySplit(data["seen"], data["heldout"])
    score = memoized(partial(view_logits, shipped.model, views=shipped.views))
    with torch.no_grad():
        report = zero_shot_report(
            score, bench, families, target_fpr=shipped.target_fpr, scale="logits", per_photo=True
        )
    # the same computation on the same validation logits, up to how this CPU rounds them (the
    # checkpoint's were computed on the machine that trained it; float32 logits of ~6 carry
    # ~1e-6 of rounding through the network): more than that is another calibration
    if not math.isclose(report["threshold"], shipped.threshold, rel_tol=1e-4):
        raise RuntimeError(
            f"the validation reals give threshold {report['threshold']}, the checkpoint holds "
            f"{shipped.threshold}: not the checkpoint's calibration"
        )
    return {
        "checkpoint": str(checkpoint or DEFAULT_CHECKPOINT.name),
        "network_sha256": shipped.header.get("network_sha256"),
        "views": shipped.views,
        "threshold": shipped.threshold,
        "threshold_here": report["threshold"],  # the protocol's, from this machine's logits
        "benchmark_test": {
            k: shipped.info["test"][k] for k in ("seen", "heldout", "test_real_fpr")
        },
        "fresh": report,
        "fresh_photos": list(FRESH_PHOTO_NAMES),
        "families": {"seen": list(families.seen), "heldout": list(families.heldout)},
    }


def markdown(record: dict[str, Any], command: str) -> str:
    fresh, old = record["fresh"], record["benchmark_test"]
    lines = [
        "## Shipped detector on the fresh test photos",
        "",
        f"Regenerate: {command}",
        "",
        f"The shipped checkpoint (`Detector.load()`, network digest "
        f"`{(record['network_sha256'] or '?')[:12]}…`), untouched, scored per tile (views "
        f"`{record['views']}`) on the fresh test photos ({', '.join(record['fresh_photos'])}: "
        "the benchmark's recipe on photos no study had scored, `assocmem.forensic.data.fresh`) "
        f"at the threshold set on its validation reals for 5 % ({record['threshold_here']:.6f} "
        f"from this machine's logits, {record['threshold']:.6f} in the checkpoint); each "
        "family against all fresh reals, beside the checkpoint's recorded numbers on the "
        "benchmark's test split (the `shipped-detector` section).",
        "",
        "| family | trained on | AUC (fresh) | AP (fresh) | TPR (fresh) | AUC (test split) "
        "| TPR (test split) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for group in ("seen", "heldout"):
        for fam in [*record["families"][group], "mean"]:
            m, o = fresh[group][fam], old[group][fam]
            side = "yes" if group == "seen" else "no (held out)"
            name = (
                f"**mean ({'seen' if group == 'seen' else 'held out'})**" if fam == "mean" else fam
            )
            lines.append(
                f"| {name} | {side} | {m['auc']:.3f} | {m['ap']:.3f} | {m['tpr']:.3f} "
                f"| {o['auc']:.3f} | {o['tpr']:.3f} |"
            )
    lines += [
        "",
        f"Real tiles flagged at the threshold: {fresh['test_real_fpr']:.3f} of the fresh "
        f"photos' (test split: {old['test_real_fpr']:.3f}). Per photo "
        "(`protocol.per_photo_metrics`: the photo's reals against the fakes made from them):",
        "",
        "| photo | reals | seen AUC | held-out AUC | reals flagged | reals' mean logit |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for photo, r in fresh["per_photo"].items():
        aucs = ["–" if r[g] is None else f"{r[g]:.3f}" for g in ("seen", "heldout")]
        lines.append(
            f"| {photo} | {r['reals']} | {aucs[0]} | {aucs[1]} | {r['real_fpr']:.3f} "
            f"| {r['real_mean']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=input_path, help="default: the shipped one")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--json", type=output_path, help="write the record here")
    parser.add_argument("--from-json", type=input_path, help="render a record written before")
    parser.add_argument("--write", type=output_path, help="markdown file whose section to refresh")
    args = parser.parse_args(argv)
    refuse_unreplaceable(parser, args.write, SECTION)
    checkpoint = DEFAULT_CHECKPOINT if args.checkpoint is None else args.checkpoint
    refuse_clashes(  # before anything is read: --write onto --from-json appended to it
        parser,
        args,
        inputs=[
            ("the checkpoint", checkpoint),
            ("the checkpoint's sidecar", sidecar_path(checkpoint)),
        ],
    )
    command = "python -m experiments.shipped_fresh " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    if args.from_json:
        record = read_record(parser, args.from_json, ("command", "fresh", "benchmark_test"))
        shown = f"`{record['command']}`, then `{command.strip()}`"
    else:
        try:
            record = measure(args.checkpoint, args.cache_dir, args.threads)
        except (OSError, ValueError) as e:
            parser.error(str(e))
        record["command"] = command.strip()
        shown = f"`{record['command']}`"
        if args.json:
            write_json(args.json, record)
    text = markdown(record, shown)
    print(text)
    if args.write:
        replace_section(args.write, SECTION, text)


if __name__ == "__main__":
    main()
