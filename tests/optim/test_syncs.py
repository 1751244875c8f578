"""Host reads of device values inside ``opt.step()``: each one stalls an accelerator's queue.

On CPU nothing waits, so the tests count the reads instead: ``Tensor.__bool__``, ``item``,
``tolist``, ``__float__`` and ``__int__`` are wrapped during ``step()`` and every call on a
tensor that is not host-side bookkeeping is counted. Host-side by design, as in
``torch.optim``: the per-parameter ``step`` counters (and landscape's ``has_prev``/``pairs``
flags), which live on the CPU whatever the parameter's device. The counts are pinned, so a new
per-step read fails here; the ones left are named in ``REMAINING``.
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


def _reads_per_step(memory: str, nonfinite: str) -> list[list[str]]:
    model = make_model()
    opt = MemoryOptimizer(model.parameters(), memory, lr=1e-3, nonfinite=nonfinite)
    counts = []
    for t in range(3):
        opt.zero_grad()
        loss_at(model, t).backward()
        if t == 0:
            opt.step()  # creates the state (and the host-side counters to allow)
            continue
        with counting_reads(opt) as calls:
            opt.step()
        counts.append(calls)
    return counts


@pytest.mark.parametrize("memory", every_memory())
def test_a_step_reads_nothing_back_but_what_is_listed(memory):
    expected = REMAINING.get(memory, 0)
    for calls in _reads_per_step(memory, nonfinite="ignore"):
        assert len(calls) == expected, calls


def test_the_non_finite_check_reads_one_flag_per_step():
    # The skip is decided on the host (see docs/api.md, "Non-finite gradients"): one read per
    # device per step, on top of the preset's own.
    for calls in _reads_per_step("adam", nonfinite="skip"):
        assert calls == ["__bool__"]


def test_the_counter_sees_a_read():
    model = make_model()
    opt = MemoryOptimizer(model.parameters(), "adam")
    with counting_reads(opt) as calls:
        bool(torch.ones(()))
        model.fc.weight.sum().item()
    assert calls == ["__bool__", "item"]
