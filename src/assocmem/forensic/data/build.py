"""CLI: build (or load) the offline forensic benchmark and print a summary.

    python -m assocmem.forensic.data.build [--patch-size 32] [--cache-dir DIR] [--tiny]

Prints image counts per split and family, the split of each photo, the build time, and the
one-feature HF-energy baseline AUC per family (train split -> test split).
"""

from __future__ import annotations

import argparse
import time

import torch

from assocmem.forensic.data.baseline import hf_energy_baseline
from assocmem.forensic.data.benchmark import SPLITS, BenchmarkConfig, build_benchmark


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patch-size", type=int, default=32)
    parser.add_argument("--stride", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cache-dir", default=None, help="default: $ASSOCMEM_CACHE or ~/.cache/assocmem"
    )
    parser.add_argument("--tiny", action="store_true", help="the seconds-long test config")
    parser.add_argument("--no-cache", action="store_true", help="build in memory, write nothing")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: the small convs oversubscribe busy cores)",
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    make = BenchmarkConfig.tiny if args.tiny else BenchmarkConfig
    config = make(patch_size=args.patch_size, stride=args.stride, seed=args.seed)
    start = time.perf_counter()
    bench = build_benchmark(
        config, args.cache_dir, progress=not args.no_progress, use_cache=not args.no_cache
    )
    wall = time.perf_counter() - start
    cached = bench.meta.get("loaded_from_cache", False)
    print(
        f"config key {config.key()}  ({'loaded from cache' if cached else 'built'} in {wall:.1f} s;"
        f" build time {bench.meta.get('build_seconds')} s)"
    )
    counts = bench.counts()
    families = bench.family_names
    print(f"{'family':<18}" + "".join(f"{s:>8}" for s in SPLITS))
    for fam in families:
        print(f"{fam:<18}" + "".join(f"{counts[s].get(fam, 0):>8}" for s in SPLITS))
    for s in SPLITS:
        print(f"{s} photos: {', '.join(sorted(bench.sources(s)))}")
    results = hf_energy_baseline(bench.split("train"), bench.split("test"))
    print("HF-energy logistic-regression baseline (train -> test):")
    print(f"{'family':<18}{'auc':>8}{'ap':>8}{'acc':>8}{'n_test':>8}")
    for fam, m in results.items():
        print(f"{fam:<18}{m['auc']:>8.3f}{m['ap']:>8.3f}{m['acc']:>8.3f}{m['n_test']:>8d}")


if __name__ == "__main__":
    main()
