"""Host reads of device values inside ``opt.step()``: each one stalls an accelerator's queue.

On CPU nothing waits, so the tests count the reads instead: ``Tensor.__bool__``, ``item``,
``tolist``, ``__float__`` and ``__int__`` are wrapped during ``step()`` and every call on a
tensor that is not host-side bookkeeping is counted. Host-side by design, as in
``torch.optim``: the per-parameter ``step`` counters (and landscape's ``has_prev``/``pairs``
flags), which live on the CPU whatever the parameter's device (or, for the presets with a
fused path, on the parameter's device, read there by the kernel). The counts are pinned, so a
new per-step read fails here; the ones left are named in ``REMAINING`` and ``HOST_SKIP``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
from optim_support import every_memory, loss_at, make_model

from assocmem import MemoryOptimizer

HOST_STATE = ("step", "has_prev", "pairs")
READS = ("__bool__", "item", "tolist", "__float__", "__int__")
# Reads per step that remain, by preset (with nonfinite="ignore"): delta asks once whether any
# tensor's overlap needs its overflow-safe fallback.
REMAINING = {"delta": 1}
# With nonfinite="skip" (the default), the presets whose fused kernels take the non-finite flag
# skip on the device; the others decide on the host, one flag read per device per step.
DEVICE_SKIP = ("adam", "momentum")


@contextlib.contextmanager
def counting_reads(opt: MemoryOptimizer) -> Iterator[list[str]]:
    host = {id(s[k]) for s in opt.state.values() for k in HOST_STATE if k in s}
    calls: list[str] = []
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def wrap(name: str):  # noqa: ANN202
        original = originals[name]

        def read(self, *args, **kwargs):  # noqa: ANN001, ANN202
            if id(self) not in host:
                calls.append(name)
            return original(self, *args, **kwargs)

        return read

    try:
        for name in READS:
            setattr(torch.Tensor, name, wrap(name))
        yield calls
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def _reads_per_step(
    memory: str, nonfinite: str, nan_at: int | None = None
) -> tuple[list[list[str]], MemoryOptimizer]:
    model = make_model()
    opt = MemoryOptimizer(model.parameters(), memory, lr=1e-3, nonfinite=nonfinite)
    counts = []
    for t in range(4):
        opt.zero_grad()
        loss_at(model, t).backward()
        if t == nan_at:
            model.fc.weight.grad[0, 0] = float("nan")
        if t == 0:
            opt.step()  # creates the state (and the host-side counters to allow)
            continue
        with counting_reads(opt) as calls:
            opt.step()
        counts.append(calls)
    return counts, opt


@pytest.mark.parametrize("memory", every_memory())
def test_a_step_reads_nothing_back_but_what_is_listed(memory):
    expected = REMAINING.get(memory, 0)
    for calls in _reads_per_step(memory, nonfinite="ignore")[0]:
        assert len(calls) == expected, calls


@pytest.mark.parametrize("memory", every_memory())
def test_the_non_finite_skip_reads_a_flag_only_where_no_kernel_takes_it(memory):
    # docs/api.md, "Non-finite gradients": the fused presets skip on the device, a NaN step
    # included; the others read one flag per device per step, on top of their own reads.
    flag = 0 if memory in DEVICE_SKIP else 1
    counts, opt = _reads_per_step(memory, nonfinite="skip", nan_at=2)
    for t, calls in enumerate(counts, start=1):
        # a step skipped on the host stops before the preset's own reads
        expected = flag if t == 2 and flag else flag + REMAINING.get(memory, 0)
        assert len(calls) == expected, calls
    assert opt.skipped_steps == 1  # exact, read after the steps
    assert all(s["step"] == 3 for s in opt.state.values())  # the skipped step did not count


def test_a_tensor_the_kernel_cannot_take_falls_back_to_a_host_read():
    model = make_model()
    model.fc.weight = torch.nn.Parameter(model.fc.weight.detach().t().contiguous().t())
    opt = MemoryOptimizer(model.parameters(), "adam", lr=1e-3)
    loss_at(model, 0).backward()
    opt.step()
    loss_at(model, 1).backward()
    with counting_reads(opt) as calls:
        opt.step()
    assert calls == ["__bool__"]


def test_the_counter_sees_a_read():
    model = make_model()
    opt = MemoryOptimizer(model.parameters(), "adam")
    with counting_reads(opt) as calls:
        bool(torch.ones(()))
        model.fc.weight.sum().item()
    assert calls == ["__bool__", "item"]
