"""What `muon` moves and computes per step under FSDP2: Newton-Schulz on every rank or on one.

    python -m experiments.bench_ns_comm                      # W = 2 and 4 gloo ranks on CPU
    python -m experiments.bench_ns_comm --write docs/results.md

Each of ``W`` processes (gloo on 127.0.0.1, every collective with a timeout) shards the same
stack of linear layers with ``fully_shard`` and steps it with ``MemoryOptimizer(memory="muon")``
under each ``ns_placement``: ``"all"`` (every rank all-gathers each matrix's read and
orthogonalises it) and ``"owner"`` (matrix ``j`` gathered onto rank ``j mod W``, orthogonalised
there, its rows scattered back). Measured on each rank during the timed steps: the elements it
received through the optimizer's row collectives (``torch.distributed.all_gather``, ``gather``
and ``scatter`` wrapped, each call counted by what it delivers to this rank; FSDP's own
all-gather and reduce-scatter of parameters and gradients are other functions and the same for
both), the matrices it orthogonalised, and ``step()``'s wall time (median; the two placements
take turns step by step). The CPU is shared by the ``W`` processes, so at ``W`` above the core
count the times say little; the counts do not depend on the machine.
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import statistics
import sys
import tempfile
import time
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from experiments.cli_files import output_path
from experiments.report import refuse_unreplaceable, replace_section

# Matrices of the stack: square, tall, wide and one whose rows do not divide by W.
LAYERS = [(512, 512), (512, 1024), (1024, 512), (512, 510), (510, 512)]
PLACEMENTS = ("all", "owner")
SECTION = "ns-communication"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Counter:
    """Elements delivered to this rank by the wrapped collectives, and matrices orthogonalised."""

    def __init__(self) -> None:
        self.received = 0
        self.orthogonalised = 0

    def install(self) -> None:
        from assocmem.optim import reads
        from assocmem.optim.presets import muon

        all_gather, gather, scatter = dist.all_gather, dist.gather, dist.scatter
        ortho = reads.orthogonal_reads

        def counted_all_gather(tensor_list, tensor, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            self.received += (len(tensor_list) - 1) * tensor.numel()
            return all_gather(tensor_list, tensor, *args, **kwargs)

        def counted_gather(tensor, gather_list=None, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            if gather_list is not None:
                self.received += (len(gather_list) - 1) * tensor.numel()
            return gather(tensor, gather_list, *args, **kwargs)

        def counted_scatter(tensor, scatter_list=None, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            if scatter_list is None:
                self.received += tensor.numel()
            return scatter(tensor, scatter_list, *args, **kwargs)

        def counted_orthogonal_reads(updates, **kwargs):  # noqa: ANN001, ANN003, ANN202
            self.orthogonalised += len(updates)
            return ortho(updates, **kwargs)

        dist.all_gather, dist.gather, dist.scatter = (
            counted_all_gather,
            counted_gather,
            counted_scatter,
        )
        muon.orthogonal_reads = counted_orthogonal_reads


def _model() -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    net = nn.Sequential(*[nn.Linear(i, o, bias=False) for i, o in LAYERS])
    for layer in net:
        fully_shard(layer)
    fully_shard(net)
    return net


def _rank_main(rank: int, world: int, port: int, steps: int, out: str) -> None:
    from assocmem import MemoryOptimizer

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(
        "gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120)
    )
    try:
        counter = _Counter()
        counter.install()
        runs = {}
        for placement in PLACEMENTS:
            net = _model()
            opt = MemoryOptimizer(net.parameters(), "muon", lr=0.02, ns_placement=placement)
            runs[placement] = (net, opt)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(64, LAYERS[0][0], generator=g)
        stats = {p: {"received": 0, "orthogonalised": 0, "ms": []} for p in PLACEMENTS}
        for step in range(steps + 1):
            for placement, (net, opt) in runs.items():
                opt.zero_grad()
                net(x).square().mean().backward()
                before = (counter.received, counter.orthogonalised)
                dist.barrier()
                start = time.perf_counter()
                opt.step()
                elapsed = time.perf_counter() - start
                if step == 0:  # warm-up: state created
                    continue
                stats[placement]["ms"].append(1e3 * elapsed)
                stats[placement]["received"] += counter.received - before[0]
                stats[placement]["orthogonalised"] += counter.orthogonalised - before[1]
        per_rank = [None] * world
        dist.all_gather_object(per_rank, stats)
        if rank == 0:  # whole or absent: written aside, then renamed into place
            torch.save(per_rank, out + ".partial")
            os.replace(out + ".partial", out)
        # every rank leaves together: a rank that tears its connections down while another
        # still uses them can make gloo abort that one (seen once in CI as SIGABRT)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def measure(world: int, steps: int) -> list[dict]:
    """Per rank and placement: elements received, matrices orthogonalised, step ms (per step)."""
    with tempfile.TemporaryDirectory() as root:
        out = os.path.join(root, "stats.pt")
        try:
            mp.spawn(_rank_main, args=(world, _free_port(), steps, out), nprocs=world, join=True)
        except mp.ProcessExitedException as e:
            # gloo can abort a rank with "terminate called without an active exception" and no
            # Python error of its own (seen in CI on shared cores). If rank 0 had already
            # written every rank's numbers, the measurement is complete and the abort came
            # after it; otherwise the failure is real.
            if not os.path.exists(out):
                raise
            warnings.warn(f"a rank failed after the results were gathered: {e}", stacklevel=2)
        return torch.load(out)


def table(results: dict[int, list[dict]], steps: int) -> str:
    numel = sum(i * o for i, o in LAYERS)
    lines = [
        f"Layers (in, out): {LAYERS} ({numel / 1e6:.2f}M elements, {len(LAYERS)} matrices); "
        f"per step, mean over {steps} steps; elements are float32 (4 bytes).",
        "",
        "| ranks W | ns_placement | elements received per step, all ranks | per rank (max) "
        "| × numel | matrices orthogonalised per rank (max) | step ms (median, rank 0) |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for world, per_rank in results.items():
        for placement in PLACEMENTS:
            received = [r[placement]["received"] / steps for r in per_rank]
            ortho = [r[placement]["orthogonalised"] / steps for r in per_rank]
            ms = statistics.median(per_rank[0][placement]["ms"])
            lines.append(
                f"| {world} | `{placement}` | {sum(received):,.0f} | {max(received):,.0f} | "
                f"{sum(received) / numel:.2f} | {max(ortho):g} | {ms:.1f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--write", type=output_path, help="markdown file whose section to refresh")
    args = parser.parse_args(argv)
    refuse_unreplaceable(parser, args.write, SECTION)
    # checked before the ranks are spawned: --steps 0 divided by zero after them, --worlds 0
    # ended in a missing file naming neither option
    if any(w < 2 for w in args.worlds):
        parser.error(f"--worlds must be at least 2 ranks each, got {args.worlds}")
    if args.steps < 2:  # step 0 is dropped (first-call set-up), so one more is needed
        parser.error(f"--steps must be at least 2, got {args.steps}")
    results = {w: measure(w, args.steps) for w in args.worlds}
    body = table(results, args.steps)
    print(body)
    if args.write:
        command = " ".join(["python -m experiments.bench_ns_comm", *(argv or sys.argv[1:])])
        heading = (
            "## Newton–Schulz under FSDP2: on every rank or on one\n\n"
            f"Command: `{command}` (torch {torch.__version__}, gloo on one CPU machine). "
            "What `muon`'s own collectives deliver to the ranks per step, counted on each "
            "rank from every call (FSDP's parameter and gradient collectives excluded: the "
            "same for both), how many matrices each rank orthogonalises, and the step time.\n\n"
        )
        replace_section(args.write, SECTION, heading + body)


if __name__ == "__main__":
    main()
