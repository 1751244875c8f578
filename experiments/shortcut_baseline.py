"""The one-feature shortcut check: how far high-frequency energy alone separates the classes.

    python -m experiments.shortcut_baseline --write docs/results.md

Per generator family, a logistic regression on one number per image (the share of spectral
energy above half the Nyquist radius) is fit on train reals + that family's train fakes and
scored on the test split (unseen photos). A family this feature already separates is an easy
family; a detector's score there says little about forensic features.
"""

from __future__ import annotations

import argparse

from assocmem.forensic.data import BenchmarkConfig, build_benchmark, hf_energy_baseline
from experiments.report import output_path, refuse_unreplaceable, replace_section


def table() -> str:
    bench = build_benchmark(BenchmarkConfig())
    results = hf_energy_baseline(bench.split("train"), bench.split("test"))
    lines = ["| family | AUC | AP | accuracy | test images |", "|---|---:|---:|---:|---:|"]
    for family, m in results.items():
        lines.append(
            f"| {family} | {m['auc']:.3f} | {m['ap']:.3f} | {m['acc']:.3f} | {int(m['n_test'])} |"
        )
    counts = {split: len(bench.split(split)) for split in ("train", "val", "test")}
    return "\n".join(lines) + f"\n\nImages per split (reals + all fakes): {counts}."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=output_path, help="markdown file to refresh the section of")
    args = parser.parse_args()
    refuse_unreplaceable(parser, args.write, "shortcut-baseline")
    text = table()
    print(text)
    if args.write:
        body = (
            "## Shortcut check: one high-frequency-energy feature\n\n"
            "Command: `python -m experiments.shortcut_baseline --write docs/results.md`. "
            "Logistic regression on one feature, per family, fit on train and scored on the test "
            "split; test reals outnumber each family's fakes 2:1, so read AUC, not accuracy.\n\n"
        )
        replace_section(args.write, "shortcut-baseline", body + text)


if __name__ == "__main__":
    main()
