"""Host-device syncs per ``step()`` of every preset on a CUDA device, counted, as a table.

torch's sync debug mode warns at each synchronizing CUDA call; each warning inside ``step()`` is
counted, for the first step (which creates the state) and the steps after it, with the
decisions on the host (``sync_free=False``, the default) and on the device (``sync_free=None``,
on for a CUDA gradient). Part of ``scripts/gpu_check.sh``; needs a CUDA device.

    PYTHONPATH=src:. python3 scripts/cuda_syncs.py
"""

from __future__ import annotations

import warnings

import torch

from assocmem import MemoryOptimizer, available_memories
from experiments.bench_step import SIZES, make_params

STEADY = 5  # steps counted after the first


def syncs_in_step(opt: torch.optim.Optimizer) -> int:
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def main() -> None:
    rows = ["| preset | sync_free | syncs in step 1 | syncs per later step |", "|---|---|---|---|"]
    for memory in available_memories():
        for sync_free in (False, None):
            params = make_params(SIZES["small"], device="cuda")
            opt = MemoryOptimizer(params, memory=memory, lr=1e-3, sync_free=sync_free)
            first = syncs_in_step(opt)
            later = sum(syncs_in_step(opt) for _ in range(STEADY)) / STEADY
            rows.append(f"| {memory} | {sync_free} | {first} | {later:g} |")
    name = torch.cuda.get_device_name()
    print(f"Syncs per step, 0.1M parameters on {name}, torch {torch.__version__}:\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
