"""Graph breaks of ``torch.compile(opt.step)`` per preset, counted by ``torch._dynamo.explain``.

A warm step (its state exists, so the first step's eager state creation is not counted) of a
small conv + linear model, in float32, with the preset's defaults and ``nonfinite`` as given.

    python -m experiments.graph_breaks                       # nonfinite="skip" (the default)
    python -m experiments.graph_breaks --nonfinite ignore
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch
from torch import nn

from assocmem import MemoryOptimizer, available_memories, get_preset


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.Flatten(), nn.Linear(48, 5), nn.Tanh(), nn.Linear(5, 1)
    )


def _backward(model: nn.Module, step: int) -> None:
    torch.manual_seed(100 + step)
    model.zero_grad()
    model(torch.randn(8, 2, 4, 4)).pow(2).mean().backward()


def breaks(memory: str, nonfinite: str = "skip") -> tuple[int, int, dict[str, int]]:
    """``(graphs, graph breaks, {reason: count})`` of one warm compiled step.

    Counted by dynamo's own counters with the ``eager`` backend (the breaks are dynamo's; the
    backend only runs the graphs). ``torch._dynamo.explain`` miscounts a step whose frames are
    partly skipped (it printed -1 breaks for a step of a few graphs).
    """
    from torch._dynamo.utils import counters

    model = _model()
    lr = 1e-3 if memory == "learned" else 1e-2
    opt = MemoryOptimizer(model.parameters(), memory, lr=lr, nonfinite=nonfinite)
    _backward(model, 0)
    opt.step()
    _backward(model, 1)
    torch._dynamo.reset()
    counters.clear()
    torch.compile(opt.step, backend="eager")()
    reasons = {r.splitlines()[0][:80]: n for r, n in counters["graph_break"].items()}
    return counters["stats"]["unique_graphs"], sum(reasons.values()), reasons


def table(nonfinite: str) -> str:
    lines = [
        f"Graph breaks of one warm `torch.compile(opt.step)`, nonfinite={nonfinite!r} "
        f"(torch {torch.__version__}):\n",
        "| preset | graphs | graph breaks | reasons (count) |",
        "|---|---:|---:|---|",
    ]
    for memory in available_memories():
        if get_preset(memory).uncompilable is not None:
            lines.append(f"| {memory} | refused | | `Preset.uncompilable` |")
            continue
        graphs, count, reasons = breaks(memory, nonfinite)
        summary = "; ".join(f"{r} ({n})" for r, n in Counter(reasons).most_common())
        lines.append(f"| {memory} | {graphs} | {count} | {summary} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nonfinite", default="skip", choices=["skip", "ignore", "raise"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(table(args.nonfinite))


if __name__ == "__main__":
    main()
