"""The one-feature shortcut checks: how far one number per image separates the classes.

    python -m experiments.shortcut_baseline --write docs/results.md

Per generator family, a logistic regression on one number per image is fit on train reals +
that family's train fakes and scored on the test split (unseen photos): the share of spectral
energy above half the Nyquist radius, and the share of clipped values (0 or 255). A family one
number already separates is an easy family; a detector's score there says little about
forensic features.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from assocmem.forensic.data import BenchmarkConfig, build_benchmark
from assocmem.forensic.data.baseline import (
    hf_energy_feature,
    one_feature_baseline,
    saturation_feature,
)
from experiments.cli_files import output_path
from experiments.report import refuse_unreplaceable, replace_section

# the features, by the words a table names them with
FEATURES = {
    "high-frequency energy (log share of spectral energy above half Nyquist)": hf_energy_feature,
    "clipped values (share of values at 0 or 255)": saturation_feature,
}


def table(cache_dir: Path | None = None) -> str:
    bench = build_benchmark(BenchmarkConfig(), cache_dir)
    train, test = bench.split("train"), bench.split("test")
    names = list(FEATURES)
    results = {name: one_feature_baseline(train, test, f) for name, f in FEATURES.items()}
    lines = [
        "| family | " + " | ".join(f"AUC, {n.split(' (')[0]}" for n in names) + " | AP, "
        + names[0].split(" (")[0] + " | accuracy, " + names[0].split(" (")[0] + " | test images |",
        "|---|" + "---:|" * (len(names) + 3),
    ]  # fmt: skip
    for family, m in results[names[0]].items():
        aucs = " | ".join(f"{results[n][family]['auc']:.3f}" for n in names)
        lines.append(f"| {family} | {aucs} | {m['ap']:.3f} | {m['acc']:.3f} | {int(m['n_test'])} |")
    counts = {split: len(bench.split(split)) for split in ("train", "val", "test")}
    features = "; ".join(names)
    return (
        "\n".join(lines)
        + f"\n\nFeatures: {features}.\n\nImages per split (reals + all fakes): {counts}."
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=output_path, help="markdown file to refresh the section of")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="the benchmark cache (default: $ASSOCMEM_CACHE, else ~/.cache/assocmem)",
    )
    args = parser.parse_args(argv)
    refuse_unreplaceable(parser, args.write, "shortcut-baseline")
    command = "python -m experiments.shortcut_baseline " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    text = table(args.cache_dir)
    print(text)
    if args.write:
        body = (
            "## Shortcut check: one high-frequency-energy feature (and one of clipped values)\n\n"
            f"Command: `{command}`. "
            "Logistic regression on one feature, per family, fit on train and scored on the test "
            "split; test reals outnumber each family's fakes 2:1, so read AUC, not accuracy. "
            "The clipped-values feature (added 2026-12-07, after an audit) measures a cue of the "
            "value range: the autoencoders' sigmoid output reaches 0 or 255 only through "
            "post-processing, where real photos keep clipped highlights and shadows.\n\n"
        )
        replace_section(args.write, "shortcut-baseline", body + text)


if __name__ == "__main__":
    main()
