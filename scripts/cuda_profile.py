"""Where a step's time goes on a CUDA device: kernel launches per step and the device's busy
time against the step's wall time, every preset (and bench_step's other default-path rows)
and torch's Adam, at 6M parameters.

A step whose device is busy for a small part of its wall time waits on the host (Python and
kernel launches), not on memory: more launches, not more bytes, is then what costs. Part of
``scripts/gpu_check.sh``; needs a CUDA device.

    PYTHONPATH=src:. python3 scripts/cuda_profile.py
"""

from __future__ import annotations

import time

import torch
from torch.profiler import ProfilerActivity, profile

from experiments.bench_step import SIZES, candidates, make_params

WARM, TIMED = 3, 5


def profiled(make) -> tuple[float, float, float]:  # noqa: ANN001
    """(wall ms per step, device kernels per step, device busy ms per step)."""
    opt = make(make_params(SIZES["large"], device="cuda"))
    for _ in range(WARM):
        opt.step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(TIMED):
        opt.step()
    torch.cuda.synchronize()
    wall = (time.perf_counter() - start) / TIMED * 1e3
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(TIMED):
            opt.step()
        torch.cuda.synchronize()
    # kernels and copies; not the "Optimizer.step#..." annotation that spans the whole step
    on_device = [
        e
        for e in prof.key_averages()
        if e.device_type.name == "CUDA" and not e.key.startswith("Optimizer.")
    ]
    kernels = sum(e.count for e in on_device) / TIMED
    busy = sum(e.self_device_time_total for e in on_device) / TIMED / 1e3
    return wall, kernels, busy


def main() -> None:
    # bench_step's candidates on the device, but the sync_free twins (the defaults' profile)
    makers = {
        name: make
        for name, make in candidates(compile=False, device="cuda").items()
        if "sync_free" not in name
    }
    rows = [
        "| optimizer | step ms | kernels per step | device busy ms | busy / step |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, make in makers.items():
        wall, kernels, busy = profiled(make)
        rows.append(f"| {name} | {wall:.2f} | {kernels:.0f} | {busy:.2f} | {busy / wall:.0%} |")
    n = sum(p.numel() for p in make_params(SIZES["large"]))
    print(f"{n / 1e6:.2f}M parameters on {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(f"(wall: mean of {TIMED} synchronised steps; kernels, busy time: torch.profiler)\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
