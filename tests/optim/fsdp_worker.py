"""Two gloo ranks on 127.0.0.1 training every preset under FSDP2, for tests/optim/test_fsdp.py.

``python fsdp_worker.py OUT PORT CASE [CASE ...]`` (a case: a memory and options, see
:func:`optimizer`) spawns two processes; for each memory
both ranks train the same sharded TinyNet on the same batches (so FSDP's reduce-scatter
averages two identical gradients: exact, and the gradients equal one process's bit for bit),
save optimizer and model with ``get_*_state_dict`` + ``dcp.save`` midway, train on, then load
the checkpoint into a fresh sharded model and optimizer and train the same steps again. Rank
0 also trains an unsharded model. Rank 0 saves, per memory, the three runs' whole parameters
(or the error raised) to ``OUT``. Every collective times out (``init_process_group``), so a
bug that leaves one rank waiting fails instead of hanging; the test adds a subprocess timeout.
"""

from __future__ import annotations

import datetime
import faulthandler
import os
import sys
import tempfile
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # optim_support

from optim_support import loss_at, option_value, safe_lr  # noqa: E402

from assocmem import MemoryOptimizer  # noqa: E402

WORLD = 2
BEFORE_SAVE, AFTER_SAVE = 3, 2  # steps: enough for every memory's second-step branches


class ShardNet(nn.Module):
    """TinyNet's layers without its 0-d gain (FSDP2 shards dim 0, a scalar has none).

    Dim 0 of 3 and 5 splits 2 + 1 and 3 + 2 (uneven); the output layer's 1 row leaves rank 1
    an empty shard.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 4 * 4, 5)
        self.out = nn.Linear(5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.conv(x)).flatten(1)
        return self.out(torch.tanh(self.fc(h))).sum(-1)  # not a view (FSDP warns)


def model(sharded: bool) -> nn.Module:
    torch.manual_seed(0)
    net = ShardNet()
    if sharded:
        for layer in (net.conv, net.fc, net.out):
            fully_shard(layer)
        fully_shard(net)
    return net


def optimizer(net: nn.Module, case: str) -> MemoryOptimizer:
    """``case``: a memory, optionally with options (``"delta:erase=row"``, ``"deep:foreach=0"``)."""
    memory, *options = case.split(":")
    kw: dict[str, object] = {}
    for option in options:
        key, value = option.split("=")
        kw[key] = option_value(key, value)
    return MemoryOptimizer(net.parameters(), memory, lr=safe_lr(memory), **kw)


GATHERED: list[int] = []  # tensors stepped whole (all-gathered) in the current case


def count_gathers() -> None:
    step_gathered = MemoryOptimizer._step_gathered

    def counted(self, group, preset, params, *rest):  # noqa: ANN001, ANN002, ANN202
        GATHERED.append(len(params))
        return step_gathered(self, group, preset, params, *rest)

    MemoryOptimizer._step_gathered = counted  # type: ignore[method-assign]


# Elements this rank received through the optimizer's own row collectives
# (assocmem.optim.sharded: gather_rows, gather_rows_to, scatter_rows) in the current case,
# counted from each call's semantics; FSDP's and DTensor's collectives are other functions.
RECEIVED: dict[str, int] = {}


def _count(collective: str, elements: int) -> None:
    RECEIVED[collective] = RECEIVED.get(collective, 0) + elements


def count_received() -> None:
    all_gather, gather, scatter = dist.all_gather, dist.gather, dist.scatter

    def counted_all_gather(tensor_list, tensor, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        _count("all_gather", (len(tensor_list) - 1) * tensor.numel())
        return all_gather(tensor_list, tensor, *args, **kwargs)

    def counted_gather(tensor, gather_list=None, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if gather_list is not None:  # the destination receives every other rank's piece
            _count("gather", (len(gather_list) - 1) * tensor.numel())
        return gather(tensor, gather_list, *args, **kwargs)

    def counted_scatter(tensor, scatter_list=None, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if scatter_list is None:  # every rank but the source receives its piece
            _count("scatter", tensor.numel())
        return scatter(tensor, scatter_list, *args, **kwargs)

    dist.all_gather, dist.gather, dist.scatter = counted_all_gather, counted_gather, counted_scatter


NAN_STEP = 1  # rank 0 alone sees a NaN in its shard: every rank must skip this step


def train(net: nn.Module, opt: MemoryOptimizer, steps: range) -> None:
    for t in steps:
        opt.zero_grad()
        loss_at(net, t).backward()
        if t == NAN_STEP and dist.get_rank() == 0:
            grad = net.fc.weight.grad
            (grad.to_local() if hasattr(grad, "to_local") else grad)[0, 0] = float("nan")
        opt.step()


def whole(net: nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
        for name, p in net.named_parameters()
    }


def run_memory(memory: str, ckpt: str) -> dict[str, object]:
    GATHERED.clear()
    RECEIVED.clear()
    single = model(sharded=False)
    opt = optimizer(single, memory)
    train(single, opt, range(BEFORE_SAVE + AFTER_SAVE))

    net = model(sharded=True)
    opt = optimizer(net, memory)
    train(net, opt, range(BEFORE_SAVE))
    dcp.save(
        {"model": get_model_state_dict(net), "optim": get_optimizer_state_dict(net, opt)},
        checkpoint_id=ckpt,
    )
    train(net, opt, range(BEFORE_SAVE, BEFORE_SAVE + AFTER_SAVE))

    resumed = model(sharded=True)
    opt2 = optimizer(resumed, memory)
    loaded = {
        "model": get_model_state_dict(resumed),
        "optim": get_optimizer_state_dict(resumed, opt2),
    }
    dcp.load(loaded, checkpoint_id=ckpt)
    set_model_state_dict(resumed, loaded["model"])
    set_optimizer_state_dict(resumed, opt2, loaded["optim"])
    train(resumed, opt2, range(BEFORE_SAVE, BEFORE_SAVE + AFTER_SAVE))
    kinds = ("all_gather", "gather", "scatter")
    received = torch.tensor([RECEIVED.get(k, 0) for k in kinds], dtype=torch.int64)
    dist.all_reduce(received)  # summed over both ranks
    return {
        "single": whole(single),
        "sharded": whole(net),
        "resumed": whole(resumed),
        "skipped": (opt.skipped_steps, opt2.skipped_steps),
        "gathered": sum(GATHERED),
        "received": dict(zip(kinds, received.tolist(), strict=True)),
        **from_one_process(memory),
        "refused_on": refused_on(opt2),
        **(nonfinite_counts(memory) if memory.startswith("learned") else {}),
    }


OVERFLOW = 1e300  # finite, but its square overflows float64: learned zeroes that update


def nonfinite_counts(memory: str) -> dict[str, object]:
    """``learned``'s ``nonfinite_updates`` of ``fc.weight`` on each rank, after one step whose
    gradient overflows at one coordinate of rank 1's shard, and in one process at the same
    coordinate: each rank counted its own rows (rank 0 read 0), and DCP kept one rank's."""
    counts = []
    for sharded in (False, True):
        net = model(sharded)
        opt = optimizer(net, memory)
        opt.zero_grad()
        loss_at(net, 0).backward()
        grad = net.fc.weight.grad
        if sharded:
            if dist.get_rank() == 1:
                grad.to_local()[0, 0] = OVERFLOW
        else:
            grad[(grad.shape[0] + 1) // 2, 0] = OVERFLOW  # rank 1's first row (3 = 2 + 1)
        opt.step()
        counts.append(int(opt.state[net.fc.weight]["nonfinite_updates"]))
    single, local = counts
    each = [None] * WORLD
    dist.all_gather_object(each, local)
    return {"nonfinite_single": single, "nonfinite_per_rank": tuple(each)}


def clean_train(net: nn.Module, opt: MemoryOptimizer, steps: range) -> None:
    """:func:`train` without its NaN: the same numbers on every rank."""
    for t in steps:
        opt.zero_grad()
        loss_at(net, t).backward()
        opt.step()


def from_one_process(memory: str) -> dict[str, object]:
    """A one-process ``opt.state_dict()`` (the same on every rank) loaded with
    ``load_state_dict`` into the optimizer of the sharded model: each rank keeps its slice of
    every parameter-shaped state, so the sharded state, gathered, is the one-process state bit
    for bit, and a step from it runs. (Loaded whole, the fused kernels read rows of the other
    rank's shard, 0.25-0.75 off after two steps, and other presets failed mid-step.)"""
    plain = model(sharded=False)
    plain_opt = optimizer(plain, memory)
    clean_train(plain, plain_opt, range(BEFORE_SAVE))
    moved = model(sharded=True)
    set_model_state_dict(moved, plain.state_dict(), options=StateDictOptions(full_state_dict=True))
    moved_opt = optimizer(moved, memory)
    moved_opt.load_state_dict(plain_opt.state_dict())
    differ = []
    for (name, p), q in zip(moved.named_parameters(), plain.parameters(), strict=True):
        for key, value in moved_opt.state[p].items():
            loaded = value.full_tensor() if hasattr(value, "full_tensor") else value
            saved = plain_opt.state[q][key]
            if torch.is_tensor(saved) and not torch.equal(loaded, saved):
                differ.append(f"{name}.{key}")
            # a memory of the parameter's shape (not the step, nor deep's inner MLP, whose
            # tensors can share a 1-element bias's shape) is sharded as the parameter is
            elementwise = key != "step" and not key.startswith("mlp")
            if elementwise and saved.shape == p.shape and not hasattr(value, "to_local"):
                differ.append(f"{name}.{key} (whole, not sharded like its parameter)")
    clean_train(moved, moved_opt, range(BEFORE_SAVE, BEFORE_SAVE + 1))  # it steps
    return {"from_one_process_differs": differ, "stepped": bool(moved_opt.state)}


def refused_on(opt: MemoryOptimizer) -> tuple[int, int] | None:
    """A state dict whose NaN sits in rank 1's shard of ``fc.weight``'s first sharded state
    only: both ranks must refuse it (each checks its own shards) and keep their state. Returns
    (ranks that raised, ranks whose state changed), summed over the ranks; None where that
    parameter has no sharded state."""
    saved = opt.state_dict()
    fc_weight = 2  # conv.weight, conv.bias, fc.weight, ...: its 5 rows split 3 + 2
    keys = [k for k, v in saved["state"][fc_weight].items() if hasattr(v, "to_local")]
    if not keys:
        return None
    value = saved["state"][fc_weight][keys[0]].clone()
    if dist.get_rank() == 1:
        value.to_local().view(-1)[0] = float("nan")
    tampered = {**saved, "state": {**saved["state"], fc_weight: {
        **saved["state"][fc_weight], keys[0]: value}}}  # fmt: skip
    local = {(id(p), k): v.to_local().clone() for p, s in opt.state.items()
             for k, v in s.items() if hasattr(v, "to_local")}  # fmt: skip
    raised = 0
    try:
        opt.load_state_dict(tampered)
    except ValueError:
        raised = 1
    changed = any(
        not torch.equal(v.to_local(), local[(id(p), k)])
        for p, s in opt.state.items() for k, v in s.items() if hasattr(v, "to_local")
    )  # fmt: skip
    counts = torch.tensor([raised, int(changed)])
    dist.all_reduce(counts)
    return (int(counts[0]), int(counts[1]))


def rank_main(rank: int, out: str, port: int, memories: list[str], root: str) -> None:
    # a native crash (SIGSEGV) prints each thread's Python stack to stderr, which the test shows
    faulthandler.enable()
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(
        "gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60)
    )
    torch.set_default_dtype(torch.float64)  # compared as fast path vs reference (LOCKSTEP_TOL)
    count_gathers()
    count_received()
    results: dict[str, object] = {}
    try:
        for memory in memories:
            try:
                results[memory] = run_memory(memory, os.path.join(root, memory.replace(":", "_")))
            except Exception:  # noqa: BLE001 - reported per memory; the other rank fails too
                results[memory] = {"error": traceback.format_exc()}
            dist.barrier()
        if rank == 0:  # whole or absent: written aside, then renamed into place
            torch.save(results, out + ".partial")
            os.replace(out + ".partial", out)
    finally:
        dist.destroy_process_group()


def main() -> None:
    out, port, memories = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    with tempfile.TemporaryDirectory() as root:
        mp.spawn(rank_main, args=(out, port, memories, root), nprocs=WORLD, join=True)


if __name__ == "__main__":
    main()
