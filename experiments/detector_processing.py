"""Test AUC split by the post-processing of the test patches: what the shared processing hides.

The benchmark post-processes reals and fakes alike (zoom, blur, JPEG, each by its own coin
flip; ``assocmem.forensic.data.postprocess``), so a family's test AUC mixes patches that went
through some of it with patches that went through none. This command scores trained detectors
(weights files of ``experiments.detectors --save-weights``) on the test split and gives each
family's AUC on subsets chosen by the patches' recorded processing (``ForensicSubset.post``):

- ``all``: every test real against the family's fakes (the AUC of the detectors table);
- ``neither processed``: the reals that went through no step against the fakes that went
  through none;
- ``unprocessed reals``: the reals that went through no step against every fake;
- ``zoomed reals``, ``blurred reals``, ``JPEG reals``: the reals that went through that step
  (and perhaps others) against every fake.

Beside the AUCs, the share of each kind of test real (all, unprocessed, zoomed, blurred,
JPEG) that a member flags at its calibrated threshold (the one that flags ``--target-fpr`` of
the validation reals, as ``assocmem.forensic.protocol`` sets it): what a user whose real
images went through one kind of processing would see.

A group is the weights of one recipe (``experiments.detector_ensemble``'s check: every
``WEIGHTS_RECIPE`` entry the same, seeds different; ``--records`` gives the run records of
weights whose header predates an entry); each cell is the mean ± std of its
members' AUCs, each member scored alone. Nothing is trained or chosen here.

    python -m experiments.detector_processing --group shared W0 W1 W2 \\
        --group "no training post-processing" V0 V1 V2 --write docs/results.md
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from assocmem.forensic.calibration import threshold_at_fpr
from assocmem.forensic.data import BenchmarkConfig, build_benchmark
from assocmem.forensic.data.benchmark import ForensicSubset
from assocmem.forensic.data.postprocess import processing_kinds
from assocmem.forensic.metrics import false_positive_rate
from assocmem.forensic.views import VIEWS, view_logits
from experiments.cli_files import output_path, refuse_clashes
from experiments.detector_ensemble import add_records_option, ensemble_of, records_by_weights
from experiments.detectors import SEEN, family_split, run_label
from experiments.report import refuse_unreplaceable, replace_section

SECTION = "detector-processing"

# subset name -> (which reals, which fakes), each a kind of :func:`kinds`
SUBSETS: dict[str, tuple[str, str]] = {
    "all": ("all", "all"),
    "neither processed": ("unprocessed", "unprocessed"),
    "unprocessed reals": ("unprocessed", "all"),
    "zoomed reals": ("zoomed", "all"),
    "blurred reals": ("blurred", "all"),
    "JPEG reals": ("JPEG", "all"),
}
# the kinds of test real whose share flagged at the threshold the section reports
REAL_SUBSETS = ("all", "unprocessed", "zoomed", "blurred", "JPEG")


def kinds(post: np.ndarray) -> dict[str, np.ndarray]:
    """Every patch (``all``) and ``processing_kinds``' masks of the ``POST_*`` flags ``post``."""
    return {"all": np.ones(len(post), bool), **processing_kinds(post)}


def flagged(real_scores: np.ndarray, real_post: np.ndarray, threshold: float) -> dict[str, float]:
    """The share of each of :data:`REAL_SUBSETS` of real patches scored at or above
    ``threshold`` (called fake); NaN for an empty subset."""
    masks = kinds(real_post)
    return {
        name: false_positive_rate(real_scores[masks[name]], threshold)
        if masks[name].any()
        else math.nan
        for name in REAL_SUBSETS
    }


def subset_aucs(
    scores: np.ndarray, family: np.ndarray, post: np.ndarray, code: int
) -> dict[str, float]:
    """The AUC of ``scores`` (higher = more fake) for the family coded ``code`` against the
    reals (code 0) on each of :data:`SUBSETS`; NaN where a subset holds no real or no fake."""
    real, fake = family == 0, family == code
    masks = kinds(post)
    out = {}
    for name, (reals, fakes) in SUBSETS.items():
        r, f = real & masks[reals], fake & masks[fakes]
        if not r.any() or not f.any():
            out[name] = float("nan")
            continue
        y = np.r_[np.zeros(int(r.sum())), np.ones(int(f.sum()))]
        out[name] = float(roc_auc_score(y, np.r_[scores[r], scores[f]]))
    return out


def _logits(model: nn.Module, images: torch.Tensor, views: str, chunk: int = 2048) -> np.ndarray:
    with torch.no_grad():
        return torch.cat(
            [view_logits(model, images[i : i + chunk], views) for i in range(0, len(images), chunk)]
        ).numpy()


def member_table(
    model: nn.Module, test: ForensicSubset, val_reals: torch.Tensor, codes: dict[str, int],
    views: str = "one", target_fpr: float = 0.05,
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:  # fmt: skip
    """One network's logits (``views``) on the test patches: ``{family: {subset: AUC}}``, and
    the share of each kind of test real it flags at the threshold that flags ``target_fpr`` of
    the validation reals ``val_reals`` (as ``assocmem.forensic.protocol`` calibrates)."""
    z = _logits(model, test.images, views)
    family, post = test.family.numpy(), test.post.numpy()
    aucs = {name: subset_aucs(z, family, post, code) for name, code in codes.items()}
    threshold = threshold_at_fpr(_logits(model, val_reals, views), target_fpr)
    real = family == 0
    return aucs, flagged(z[real], post[real], threshold)


def _cell(values: Sequence[float]) -> str:
    if any(np.isnan(values)):
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


Tables = list[tuple[dict[str, dict[str, float]], dict[str, float]]]


def render(
    groups: dict[str, tuple[str, Tables]],
    heldout: Sequence[str],
    counts: dict[str, int],
    command: str,
    views: str,
    target_fpr: float,
) -> str:
    """The section: one table per group (families as rows, subsets as columns)."""
    lines = [
        "## Test AUC by the post-processing of the test patches",
        "",
        f"Command: `{command}`",
        "",
        "Each family's test AUC on subsets of the test patches chosen by the post-processing "
        "they went through (zoom, blur, JPEG: the benchmark's, for reals and fakes alike): "
        "*all* is the detectors table's AUC; *neither processed* sets the reals that went "
        "through no step against the family's fakes that went through none; the other columns "
        "set the reals named (that went through no step, or through that step among others) "
        "against all of the family's fakes. Mean ± std over each group's members, each scored "
        f"alone, {'one view' if views == 'one' else f'{views} views'}. Below each table, the "
        "share of the test reals of each kind that the member flags at its threshold, the one "
        f"that flags {target_fpr:.0%} of the validation reals. Test reals: "
        + ", ".join(f"{n} {k}" for k, n in counts.items())
        + ".",
        "",
    ]
    for label, (recipe, tables) in groups.items():
        lines += [f"### {label}: {recipe}, {len(tables)} members", ""]
        lines.append("| family | " + " | ".join(SUBSETS) + " |")
        lines.append("|---" * (len(SUBSETS) + 1) + "|")
        for fam in tables[0][0]:
            name = f"{fam} (held out)" if fam in heldout else fam
            cells = [_cell([aucs[fam][s] for aucs, _ in tables]) for s in SUBSETS]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Test reals flagged: "
            + ", ".join(f"{k} {_cell([rates[k] for _, rates in tables])}" for k in REAL_SUBSETS)
            + ".",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--group",
        nargs="+",
        action="append",
        required=True,
        metavar=("LABEL", "WEIGHTS"),
        help="a label, then the weights files of one recipe (experiments.detectors "
        "--save-weights); repeat for another group",
    )
    add_records_option(parser)
    parser.add_argument("--views", default="one", choices=VIEWS)
    parser.add_argument("--target-fpr", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="the seconds-long test benchmark")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--write", type=output_path, help="markdown file whose section to refresh")
    args = parser.parse_args(argv)
    refuse_unreplaceable(parser, args.write, SECTION)
    # --write onto a records file appended markdown to it; --group's label comes first
    refuse_clashes(parser, args, inputs=[("--group", Path(p)) for _, *ps in args.group for p in ps])
    command = "python -m experiments.detector_processing " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    if not 0.0 <= args.target_fpr < 1.0:
        parser.error(f"--target-fpr must be in [0, 1), got {args.target_fpr}")
    torch.set_num_threads(args.threads)
    try:
        records = records_by_weights(args.records)
    except (ValueError, OSError) as e:
        parser.error(str(e))
    loaded = {}
    for label, *paths in args.group:
        if not paths:
            parser.error(f"--group {label!r} names no weights file")
        if label in loaded:  # a second group of one label would replace the first
            parser.error(f"--group {label!r} is given twice: each group needs its own label")
        try:
            loaded[label] = ensemble_of([Path(p) for p in paths], records)
        except (ValueError, OSError) as e:
            parser.error(f"--group {label!r}: {e}")
    sizes = {recipe["patch_size"] for recipe, _ in loaded.values()}
    splits = {tuple(recipe["seen"]) for recipe, _ in loaded.values()}
    if len(sizes) > 1 or len(splits) > 1:
        parser.error("the groups differ in patch size or training families: one test split")
    config = BenchmarkConfig.tiny() if args.tiny else BenchmarkConfig()
    (size,), (seen,) = sizes, splits
    if size != config.patch_size:
        config = dataclasses.replace(config, patch_size=size)
    bench = build_benchmark(config, args.cache_dir, progress=False)
    families = family_split(config, None if seen == SEEN else list(seen))
    scored = (*families.seen, *families.heldout)
    test = bench.split("test", scored)
    codes = {f: bench.family_names.index(f) for f in scored}
    val = bench.split("val", families.seen)
    val_reals = val.images[val.labels == 0]
    real_post = test.post.numpy()[test.family.numpy() == 0]
    counts = {name: int(mask.sum()) for name, mask in kinds(real_post).items()}
    groups = {}
    for label, (recipe, ensemble) in loaded.items():
        tables = [
            member_table(m, test, val_reals, codes, args.views, args.target_fpr)
            for m in ensemble.members
        ]
        groups[label] = (run_label({**recipe, "ensemble": None}), tables)
        for fam in scored:
            print(
                f"{label} {fam}: "
                + ", ".join(f"{s} {_cell([a[fam][s] for a, _ in tables])}" for s in SUBSETS),
                flush=True,
            )
        print(
            f"{label} test reals flagged: "
            + ", ".join(f"{k} {_cell([r[k] for _, r in tables])}" for k in REAL_SUBSETS),
            flush=True,
        )
    if args.write:
        body = render(
            groups, families.heldout, counts, command.strip(), args.views, args.target_fpr
        )
        replace_section(args.write, SECTION, body)


if __name__ == "__main__":
    main()
