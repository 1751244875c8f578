"""Is the training stream fast enough? Batch production against a detector's training step.

Measures, in turns (stream batch, train step, stream batch, ...) so a busy spell of the machine
hits both alike: the seconds to make one stream batch in-process, and one optimizer step of a
detector on such a batch (forward, backward, Adam). With ``k`` loader workers the stream keeps
up when ``batch_seconds / k <= step_seconds``; the ratio is printed. Then, for each worker count,
the rate at which a training loop (same step) actually runs with the DataLoader: one count after
another, not in turns (a loader's workers prefetch in the background, so loaders alive at once
would compete for the cores), which the section says.

    python -m experiments.bench_stream                    # npr_bn, batch 64, workers 0 1 2
    python -m experiments.bench_stream --write docs/results.md
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from assocmem.forensic.data import BenchmarkConfig, build_benchmark
from assocmem.forensic.data.stream import TrainStream, stream_loader
from experiments.cli_files import output_path
from experiments.detectors import MODELS, SEEN
from experiments.report import refuse_unreplaceable, replace_section


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="npr_bn", choices=MODELS)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--loop-steps", type=int, default=60)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--write", type=output_path)
    args = parser.parse_args(argv)
    refuse_unreplaceable(parser, args.write, "stream")
    # checked before the benchmark is built and measured (each failed after, in a traceback)
    for flag, value, least in (("--batch-size", args.batch_size, 2), ("--samples", args.samples,
                               1), ("--loop-steps", args.loop_steps, 1)):  # fmt: skip
        if value < least:
            parser.error(f"{flag} must be at least {least}, got {value}")
    if any(k < 0 for k in args.workers):
        parser.error(f"--workers must be counts >= 0, got {args.workers}")
    torch.set_num_threads(1)
    bench = build_benchmark(
        BenchmarkConfig.tiny() if args.tiny else BenchmarkConfig(), progress=False
    )
    seen = [f for f in SEEN if f in bench.config.families]
    stream = TrainStream(bench, seen, batch_size=args.batch_size, seed=0)
    torch.manual_seed(0)
    model = MODELS[args.model](bench.config.patch_size)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)

    def step(batch: tuple[torch.Tensor, ...]) -> None:
        images, labels = batch[0], batch[1]
        opt.zero_grad(set_to_none=True)
        F.binary_cross_entropy_with_logits(model(images), labels).backward()
        opt.step()

    batch = stream.batch(rng)
    step(batch)  # warm
    make, train = [], []
    for _ in range(args.samples):
        t0 = time.perf_counter()
        batch = stream.batch(rng)
        t1 = time.perf_counter()
        step(batch)
        t2 = time.perf_counter()
        make.append(t1 - t0)
        train.append(t2 - t1)
    make_s, step_s = statistics.median(make), statistics.median(train)
    lines = [
        "## Training stream throughput",
        "",
        # the arguments given (a fixed line named the defaults whatever was measured)
        "Regenerate: `python -m experiments.bench_stream "
        + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
        + "`",
        "",
        f"{args.model}, batch {args.batch_size}, 1 torch thread, medians of {args.samples} "
        "interleaved samples:",
        "",
        f"- one stream batch made in-process: {1e3 * make_s:.1f} ms "
        f"({args.batch_size / make_s:.0f} images/s)",
        f"- one training step on it (forward, backward, Adam): {1e3 * step_s:.1f} ms",
        f"- batch / step = {make_s / step_s:.2f}: the stream keeps up with k workers when this "
        "is at most k",
        "",
        "The loader rows are measured one worker count after another, not in turns: a "
        "loader's workers prefetch in the background, so loaders alive at once would compete "
        "for the cores; a busy spell of the machine moves one row, not all.",
        "",
        "| loader workers | training steps/s with the loader | ms per step |",
        "|---|---|---|",
    ]
    for k in args.workers:
        it = iter(stream_loader(stream, k))
        step(next(it))  # workers started, first batch in
        t0 = time.perf_counter()
        for _ in range(args.loop_steps):
            step(next(it))
        seconds = (time.perf_counter() - t0) / args.loop_steps
        lines.append(f"| {k} | {1 / seconds:.1f} | {1e3 * seconds:.1f} |")
        del it
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        replace_section(args.write, "stream", text)


if __name__ == "__main__":
    main()
