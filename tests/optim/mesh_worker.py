"""Worker of test_mesh_layouts.py: 2 gloo ranks, parameters sharded ``Shard(0)`` over both
dimensions of a 1 x 2 mesh (the layout FSDP over tensor parallel's row sharding makes); each
case steps them 3 times and rank 0 writes the whole tensors next to one process's."""

from __future__ import annotations

import datetime
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor

from assocmem import MemoryOptimizer

STEPS = 3


def _options(case: str) -> tuple[str, dict]:
    memory, *pairs = case.split(":")
    return memory, {k: (int(v) if v.isdigit() else v) for k, v in (p.split("=") for p in pairs)}


def _run(case: str, make) -> list[torch.Tensor]:
    memory, options = _options(case)
    g = torch.Generator().manual_seed(0)
    whole = [torch.randn(7, 4, generator=g, dtype=torch.float64),
             torch.randn(7, generator=g, dtype=torch.float64)]  # fmt: skip
    params = [torch.nn.Parameter(make(w)) for w in whole]
    opt = MemoryOptimizer(params, memory, lr=0.02, **options)
    for step in range(STEPS):
        for p, w in zip(params, whole, strict=True):
            grad = torch.sin(w * (step + 1)) + 0.1 * w  # the same on every rank
            p.grad = make(grad)
        opt.step()
    return [p.full_tensor() if hasattr(p, "full_tensor") else p.detach() for p in params]


def main(rank: int, port: int, out: str, cases: list[str]) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60))
    mesh = init_device_mesh("cpu", (1, 2))
    results = {}
    for case in cases:
        sharded = _run(case, lambda t: distribute_tensor(t, mesh, [Shard(0), Shard(0)]))
        alone = _run(case, lambda t: t.clone())
        results[case] = {"sharded": sharded, "alone": alone}
    if rank == 0:
        torch.save(results, out + ".tmp")
        os.replace(out + ".tmp", out)
    dist.destroy_process_group()


if __name__ == "__main__":
    out, port, *cases = sys.argv[1:]
    mp.spawn(main, args=(int(port), out, cases), nprocs=2)
