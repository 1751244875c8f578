"""How far the held-out families are from what the recipe reaches when it trains on them.

Zero-shot AUC on a held-out family mixes two things: whether the detector generalises to a trace
it never saw, and how separable that family is from the real photos at all after the shared
post-processing (resize, blur and JPEG drawn alike for both classes). This report separates
them: the same recipe trained on *every* family (``python -m experiments.detectors ... --seen``
with all eight; early stopping and calibration then also see every family) gives each family's
in-distribution AUC, the ceiling a zero-shot detector of this recipe could approach on it. The
ceiling runs are a measurement of the benchmark, never a detector for the held-out table: no
choice of the zero-shot recipe is made from them.

    python -m experiments.detector_ceiling --zero-shot Z.json ... --ceiling C.json ... \\
        [--views one] [--write docs/results.md]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

from experiments.cli_files import input_path, output_path, refuse_clashes
from experiments.detectors import (
    HELDOUT,
    LEGACY_DEFAULTS,
    SEEN,
    WEIGHTS_RECIPE,
    _ms,
    family_metric,
    is_default_split,
    run_label,
)
from experiments.report import read_runs, refuse_unreplaceable, replace_section

SECTION = "detector-ceiling"


def _load(paths: list[Path], views: str) -> list[dict[str, Any]]:
    """The runs of ``views`` in the records files ``paths`` (``experiments.detectors --json``);
    a file that is not such a list is a ``ValueError`` naming it (a traceback before)."""
    runs = [run for path in paths for run in read_runs(path)]
    return [r for r in runs if r.get("views", "one") == views]


def check_groups(zero_shot: list[dict[str, Any]], ceiling: list[dict[str, Any]]) -> None:
    """Refuse a comparison that would not be one: each side a single recipe (the same model,
    optimizer, lr and average), the zero-shot side trained on the default seen families, the
    ceiling side on every family."""
    if not zero_shot or not ceiling:
        raise ValueError("need runs on both sides (--zero-shot and --ceiling, for the views)")
    if not all(is_default_split(r) for r in zero_shot):
        raise ValueError(f"--zero-shot runs must train on the default seen families {SEEN}")
    every = {*SEEN, *HELDOUT}
    if not all(set(r.get("seen", ())) >= every for r in ceiling):
        raise ValueError("--ceiling runs must train on every family (--seen with all eight)")
    # every field of the recipe but the families and the patience (the ceiling's all-family
    # curve has a long plateau: its runs may wait longer, which the section's reading says);
    # model, optimizer, lr and average alone let a --paired ceiling pass as "the same recipe"
    fields = [f for f in WEIGHTS_RECIPE if f not in ("seen", "patience")]
    recipe = {
        tuple(repr(r.get(f, LEGACY_DEFAULTS.get(f))) for f in fields) for r in zero_shot + ceiling
    }
    if len(recipe) != 1:
        differ = [f for i, f in enumerate(fields) if len({key[i] for key in recipe}) > 1]
        raise ValueError(f"both sides must be one recipe; the runs differ in {differ}")
    if ensembles := sorted({str(r["seed"]) for r in zero_shot + ceiling if "ensemble" in r}):
        # its members' seeds are among the runs: an ensemble is no independent seed
        raise ValueError(f"ensemble records are not runs of one seed: {ensembles}")
    for side, runs in (("--zero-shot", zero_shot), ("--ceiling", ceiling)):
        seeds = [r["seed"] for r in runs]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"{side} repeats a seed: {sorted(seeds)}")


def markdown(zero_shot: list[dict[str, Any]], ceiling: list[dict[str, Any]], command: str) -> str:
    check_groups(zero_shot, ceiling)
    first = zero_shot[0]

    def cells(runs: list[dict[str, Any]], family: str) -> tuple[str, float]:
        aucs = [family_metric(r["report"], family) for r in runs]
        return _ms(aucs), statistics.mean(aucs)

    made_by = sorted({r.get("command", "?") for r in zero_shot + ceiling})
    sources = " and ".join(f"`{c}`" for c in made_by)
    lines = [
        "## Held-out families against a detector trained on them (ceiling)",
        "",
        f"Regenerate: {sources}, then `{command}`",
        "",
        f"Recipe: {run_label(first)}, {first['optimizer']} (lr {first['lr']:g}). *Seen four*: "
        f"trained on {', '.join(SEEN)} ({len(zero_shot)} seeds), so the families marked held "
        f"out are scored zero-shot. *All eight*: the same recipe trained, early-stopped and "
        f"calibrated on every family ({len(ceiling)} seeds), each family then in distribution. "
        "Test AUC per family (unseen photos), mean ± std over seeds.",
        "",
        "| family | trained on the seen four | trained on all eight | difference |",
        "|---|---|---|---|",
    ]
    means: dict[str, list[tuple[float, float]]] = {"seen": [], "heldout": []}
    for family in (*SEEN, *HELDOUT):
        z_text, z = cells(zero_shot, family)
        c_text, c = cells(ceiling, family)
        held = family in HELDOUT
        means["heldout" if held else "seen"].append((z, c))
        name = f"{family} (held out)" if held else family
        lines.append(f"| {name} | {z_text} | {c_text} | {c - z:+.3f} |")
    for group, label in (("seen", "seen mean"), ("heldout", "held-out mean")):
        z = statistics.mean(p[0] for p in means[group])
        c = statistics.mean(p[1] for p in means[group])
        lines.append(f"| **{label}** | {z:.3f} | {c:.3f} | {c - z:+.3f} |")
    fpr_z = _ms([r["report"]["test_real_fpr"] for r in zero_shot])
    fpr_c = _ms([r["report"]["test_real_fpr"] for r in ceiling])
    lines.append(f"| test-real FPR at the calibrated threshold | {fpr_z} | {fpr_c} | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zero-shot", type=input_path, nargs="+", required=True)
    parser.add_argument("--ceiling", type=input_path, nargs="+", required=True)
    parser.add_argument("--views", default="one", help="which records of the runs to compare")
    parser.add_argument("--write", type=output_path, help="markdown file whose section to refresh")
    args = parser.parse_args(argv)
    refuse_unreplaceable(parser, args.write, SECTION)
    refuse_clashes(parser, args)  # --write onto a records file appended markdown to it
    command = "python -m experiments.detector_ceiling " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    try:
        text = markdown(
            _load(args.zero_shot, args.views), _load(args.ceiling, args.views), command.strip()
        )
    except ValueError as error:
        parser.error(str(error))
    print(text)
    if args.write:
        replace_section(args.write, SECTION, text)


if __name__ == "__main__":
    main()
