"""Worker of test_fsdp_compile.py: ``torch.compile(opt.step)`` of an FSDP2 model with uneven
shards (5 and 3 rows over 2 ranks), against the same optimizer stepped eagerly.

``python fsdp_compile_worker.py OUT PORT MEMORY``; rank 0 writes ``{"max_diff", "hooks",
"steps"}`` to OUT. Run twice with one ``TORCHINDUCTOR_CACHE_DIR``: the second run finds the
first one's compiled graphs in the cache.
"""

from __future__ import annotations

import datetime
import json
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.fsdp import fully_shard

from assocmem import MemoryOptimizer

WORLD = 2
STEPS = 3


def sharded_model() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))  # 5, 3 rows: uneven
    for layer in (net[0], net[2]):
        fully_shard(layer)
    fully_shard(net)
    return net


def train(memory: str, compiled: bool) -> tuple[list[torch.Tensor], int]:
    net = sharded_model()
    opt = MemoryOptimizer(net.parameters(), memory, lr=1e-2)
    hooks = []
    opt.register_step_post_hook(lambda *_: hooks.append(1))
    step = torch.compile(opt.step) if compiled else opt.step
    gen = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        (net(torch.randn(4, 4, generator=gen)) ** 2).mean().backward()
        step()
        opt.zero_grad()
    return [p.full_tensor() for p in net.parameters()], len(hooks)


def rank_main(rank: int, out: str, port: int, memory: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(
        "gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60)
    )
    try:
        eager, _ = train(memory, compiled=False)
        compiled, hooks = train(memory, compiled=True)
        diff = max(float((a - b).abs().max()) for a, b in zip(eager, compiled, strict=True))
        if rank == 0:  # whole or absent: written aside, then renamed into place
            with open(out + ".partial", "w") as f:
                json.dump({"max_diff": diff, "hooks": hooks, "steps": STEPS}, f)
            os.replace(out + ".partial", out)
    finally:
        dist.destroy_process_group()


def main() -> None:
    out, port, memory = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    mp.spawn(rank_main, args=(out, port, memory), nprocs=WORLD, join=True)


if __name__ == "__main__":
    main()
