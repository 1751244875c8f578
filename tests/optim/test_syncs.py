"""Host reads of device values inside ``opt.step()``: each one stalls an accelerator's queue.

On CPU nothing waits, so the tests count the reads instead: ``Tensor.__bool__``, ``item``,
``tolist``, ``__float__`` and ``__int__`` are wrapped during ``step()`` and every call on a
tensor that is not host-side bookkeeping is counted. Host-side by design, as in
``torch.optim``: the per-parameter ``step`` counters (and landscape's ``has_prev``/``pairs``
flags) of presets that read them as Python numbers, which live on the CPU whatever the
parameter's device. The counters of the other presets live on the parameter's device (fused
kernels read them there; a skip decided on the device takes them back), so a read of one is
counted. The counts are pinned, so a new per-step read fails here; the ones left are named in
``REMAINING``, ``DEVICE_SKIP`` and ``READS_STEP_COUNT``.

``sync_free=True`` forces on the CPU what ``sync_free=None`` does on an accelerator: the
non-finite skip decided on the device (step, then select) and delta's overflow fallback
selected there. Those runs must read nothing and give the host decisions' bits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
from optim_support import batch, every_memory, loss_at, make_model

from assocmem import MemoryOptimizer, get_preset
from assocmem.optim.presets.cms import ademamix_config, m3_config

HOST_STATE = ("step", "has_prev", "pairs")
READS = ("__bool__", "item", "tolist", "__float__", "__int__")
# Reads per step that remain, by preset (with nonfinite="ignore"): delta asks once whether any
# tensor's overlap needs its overflow-safe fallback.
REMAINING = {"delta": 1}
# With nonfinite="skip" (the default), on an accelerator the presets whose fused kernels take
# the non-finite flag skip on the device; the others decide on the host, one flag read per
# device per step. On the CPU the host decides for all of them (sync_free.on_accelerator).
DEVICE_SKIP = ("adam", "momentum")
# With sync_free=True every other preset skips on the device too (step, then select), but
# those that read their step count on the host: a skip decided on the device could not take
# that count back, so they would read the flag (one read per step). None does in its default
# form: adam off its kernel, muon's Adam fallback (TinyNet has biases), learned, deep, cms and
# landscape's diagonal form take their counts on the device instead (Preset.counts_on_device).
READS_STEP_COUNT: tuple[str, ...] = ()


@contextlib.contextmanager
def counting_reads(opt: MemoryOptimizer) -> Iterator[list[str]]:
    host = {
        id(state[k])
        for p, state, group in _stepped(opt)
        for k in HOST_STATE
        if k in state and _on_host(p, group, opt.sync_free)
    }
    calls: list[str] = []
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def wrap(name: str):  # noqa: ANN202
        original = originals[name]

        def read(self, *args, **kwargs):  # noqa: ANN001, ANN202
            if id(self) not in host:
                calls.append(name)
            return original(self, *args, **kwargs)

        return read

    equal = torch.equal

    def equal_read(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append("equal")  # answers on the host: a wait, as a read is
        return equal(*args, **kwargs)

    try:
        for name in READS:
            setattr(torch.Tensor, name, wrap(name))
        torch.equal = equal_read
        yield calls
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
        torch.equal = equal


def _stepped(opt: MemoryOptimizer) -> Iterator[tuple[torch.Tensor, dict, dict]]:
    for group in opt.param_groups:
        for p in group["params"]:
            if opt.state.get(p):
                yield p, opt.state[p], group


def _on_host(p: torch.Tensor, group: dict, sync_free: bool | None) -> bool:
    """Whether the optimizer keeps ``p``'s counters on the host by design: its preset reads
    them as Python numbers, and with ``sync_free`` on does not take them on the device
    instead (the rule of ``optimizer._step_device``, restated)."""
    preset = get_preset(group["memory"])
    if preset.fuses(group) or not preset.reads_state_on_host(p, group):
        return False
    return sync_free is False or not preset.counts_on_device(p, group)


def _reads_per_step(
    memory: str, nonfinite: str, nan_at: int | None = None, **options
) -> tuple[list[list[str]], MemoryOptimizer]:
    model = make_model()
    opt = MemoryOptimizer(model.parameters(), memory, lr=1e-3, nonfinite=nonfinite, **options)
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


def _as_on_an_accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the optimizer treat the CPU tensors as an accelerator's (``sync_free.on_accelerator``)
    where it decides what a host read costs: on the CPU itself the host decides the skip for
    every preset (a read waits for nothing there)."""
    from assocmem.optim import sync_free

    monkeypatch.setattr(sync_free, "on_accelerator", lambda tensors: True)


@pytest.mark.parametrize("memory", every_memory())
def test_the_non_finite_skip_reads_a_flag_only_where_no_kernel_takes_it(memory, monkeypatch):
    # docs/api.md, "Non-finite gradients": on an accelerator the fused presets skip on the
    # device, a NaN step included; the others read one flag per device per step, on top of
    # their own reads.
    _as_on_an_accelerator(monkeypatch)
    flag = 0 if memory in DEVICE_SKIP else 1
    counts, opt = _reads_per_step(memory, nonfinite="skip", nan_at=2)
    for t, calls in enumerate(counts, start=1):
        # a step skipped on the host stops before the preset's own reads
        expected = flag if t == 2 and flag else flag + REMAINING.get(memory, 0)
        assert len(calls) == expected, calls
    assert opt.skipped_steps == 1  # exact, read after the steps
    assert all(s["step"] == 3 for s in opt.state.values())  # the skipped step did not count


@pytest.mark.parametrize("memory", DEVICE_SKIP)
def test_on_the_cpu_the_fused_presets_skip_on_the_host_with_the_same_result(memory, monkeypatch):
    # On the CPU the flag is read (one read per step) and a skipped step returns before the
    # kernels; the parameters, state and skip count are those of the skip decided in the kernel.
    counts, host = _reads_per_step(memory, nonfinite="skip", nan_at=2)
    assert [len(calls) for calls in counts] == [1, 1, 1]
    _as_on_an_accelerator(monkeypatch)
    _, device = _reads_per_step(memory, nonfinite="skip", nan_at=2)
    assert host.skipped_steps == device.skipped_steps == 1
    for a, b in zip(host.state.values(), device.state.values(), strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key
    params = (opt.param_groups[0]["params"] for opt in (host, device))
    for pa, pb in zip(*params, strict=True):
        assert torch.equal(pa, pb)


def _non_contiguous_model() -> torch.nn.Module:
    model = make_model()
    model.fc.weight = torch.nn.Parameter(model.fc.weight.detach().t().contiguous().t())
    return model


def _second_step_reads_off_the_kernel(
    memory: str, lr: float, sync_free: bool
) -> tuple[list[str], torch.nn.Module]:
    """Host reads of the second step (the first creates the state) of ``memory`` on a model
    with one non-contiguous weight, which keeps the group off its fused kernel."""
    model = _non_contiguous_model()
    opt = MemoryOptimizer(model.parameters(), memory, lr=lr, sync_free=sync_free)
    loss_at(model, 0).backward()
    opt.step()
    loss_at(model, 1).backward()
    with counting_reads(opt) as calls:
        opt.step()
    return calls, model


@pytest.mark.parametrize("sync_free", [False, True])
def test_a_tensor_the_kernel_cannot_take_reads_its_count_only_without_sync_free(sync_free):
    calls, model = _second_step_reads_off_the_kernel("adam", 1e-3, sync_free)
    # Without sync_free: the flag, then Adam's foreach path reads each step count (kept on the
    # device for the kernel) for its bias corrections, one read per tensor of the group, which
    # the kernel could not take as a whole. With it: the counts stay tensors (counts.py), and
    # the skip is a select.
    n = len(list(model.parameters()))
    assert calls == ([] if sync_free else ["__bool__"] + ["__float__"] * n)


@pytest.mark.parametrize("sync_free", [False, True])
def test_momentum_off_its_kernel_selects_where_sync_free(sync_free):
    # A non-contiguous tensor keeps momentum off the fused kernel; momentum reads no step
    # count, so with sync_free it steps, then selects, and reads nothing.
    calls, _ = _second_step_reads_off_the_kernel("momentum", 1e-2, sync_free)
    assert calls == ([] if sync_free else ["__bool__"])


def test_the_counter_sees_a_read():
    model = make_model()
    opt = MemoryOptimizer(model.parameters(), "adam")
    with counting_reads(opt) as calls:
        bool(torch.ones(()))
        model.fc.weight.sum().item()
    assert calls == ["__bool__", "item"]


@pytest.mark.parametrize("nonfinite", ["skip", "ignore"])
@pytest.mark.parametrize("memory", every_memory())
def test_sync_free_reads_nothing_but_the_flag_of_presets_that_count_on_the_host(memory, nonfinite):
    # A NaN at step 2: skipped on the device by every preset that reads no state on the host,
    # with no read on the skipped step either. delta's overflow check is selected on the
    # device, so its REMAINING read is gone too.
    counts, opt = _reads_per_step(memory, nonfinite, nan_at=2, sync_free=True)
    flag = int(nonfinite == "skip" and memory in READS_STEP_COUNT)
    for calls in counts:
        assert len(calls) == flag, calls
    if nonfinite == "skip":
        assert opt.skipped_steps == 1
        assert all(s["step"] == 3 for s in opt.state.values())


def test_muon_on_matrices_beside_adam_reads_nothing_with_sync_free():
    # The recommended split (docs/api.md): Newton-Schulz on the hidden matrices, which read no
    # step count, and Adam's fused kernel for the rest.
    model = make_model()
    mats = [model.conv.weight, model.fc.weight]
    rest = [p for p in model.parameters() if all(p is not m for m in mats)]
    groups = [{"params": mats, "memory": "muon", "lr": 0.02}, {"params": rest}]
    opt = MemoryOptimizer(groups, "adam", lr=1e-3, sync_free=True)
    for t in range(3):
        opt.zero_grad()
        loss_at(model, t).backward()
        if t == 2:
            model.fc.weight.grad[0, 0] = float("nan")
        if t == 0:
            opt.step()
            continue
        with counting_reads(opt) as calls:
            opt.step()
        assert calls == []
    assert opt.skipped_steps == 1


def _bits(opt: MemoryOptimizer, model: torch.nn.Module) -> list[torch.Tensor]:
    """Every parameter and state tensor, copied (torch.equal compares them bit for bit but
    NaN; there is none in a state that a skipped step left as it was)."""
    state = [v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    return [t.detach().clone() for t in (*model.parameters(), *state)]


CONFIGS = {
    "default": {},
    "L2 decay, maximize": {"weight_decay": 0.1, "decoupled_weight_decay": False, "maximize": True},
    "decoupled decay (momentum off its kernel)": {"weight_decay": 0.1},
    "reference path": {"foreach": False},
    # a transposed weight: adam (and the presets' fused levels) off the kernel, on foreach
    "non-contiguous weight": {},
}


def _model_for(config: str) -> torch.nn.Module:
    return _non_contiguous_model() if config == "non-contiguous weight" else make_model()


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("memory", every_memory())
def test_sync_free_steps_and_skips_to_the_bit_of_the_host_decision(memory, config):
    # Finite steps give the host path's bits; the NaN step (3) leaves every parameter and
    # state bit as it was, step counters included, and counts once.
    runs = {}
    for sync_free in (False, True):
        model = _model_for(config)
        opt = MemoryOptimizer(
            model.parameters(), memory, lr=1e-3, sync_free=sync_free, **CONFIGS[config]
        )
        trace = []
        for t in range(6):
            opt.zero_grad()
            loss_at(model, t).backward()
            if t == 3:
                model.fc.weight.grad[0, 0] = float("nan")
                model.out.bias.grad[0] = float("-inf")
                before = _bits(opt, model)
            opt.step()
            if t == 3:
                after = _bits(opt, model)
                assert len(after) == len(before)
                assert all(torch.equal(a, b) for a, b in zip(after, before, strict=True))
            trace.append(_bits(opt, model))
        assert opt.skipped_steps == 1
        assert all(int(s["step"]) == 5 for s in opt.state.values())
        runs[sync_free] = trace
    for host, device in zip(runs[False], runs[True], strict=True):
        _assert_same_step(memory, host, device)


# On the CPU the host decision lets delta read its sums back, take each tensor's write rate in
# double precision and hand the tensor to torch's fused SGD kernel (presets/delta.py,
# takes_host_rates); decided on the device it stays in float32 on foreach. The rate differs by
# a float32 rounding, and the kernel rounds a tensor's last elements (past its vector width)
# in a scalar loop: each step may differ by a few ulp of the memory's largest entry, so over
# these few steps a tensor differs by far less than 1e-5 of its own scale (whatever that
# scale: the overflow test's gradients are 1e20 and 1e-25).
KERNEL_ON_HOST = ("delta",)


def _assert_same_step(memory: str, host: list[torch.Tensor], device: list[torch.Tensor]) -> None:
    for a, b in zip(host, device, strict=True):
        if memory in KERNEL_ON_HOST:
            assert (a - b).abs().max() <= 1e-5 * b.abs().max()
        else:
            assert torch.equal(a, b)


@pytest.mark.parametrize("erase", ["tensor", "row"])
@pytest.mark.parametrize("scale", [1e20, 1e-25])
def test_delta_selects_its_overflow_fallback_on_the_device(erase, scale):
    # Gradients whose plain sums overflow (1e20: g^2 = 1e40 > fp32 max) or flush to zero
    # (1e-25): the fallback is taken. Selected on the device, it gives the host branch's bits
    # and reads nothing.
    runs = {}
    for sync_free in (False, True):
        model = make_model()
        # lr / scale: steps of the usual size, so no later gradient overflows (and is skipped)
        opt = MemoryOptimizer(
            model.parameters(), "delta", lr=1e-3 / scale, erase=erase, sync_free=sync_free
        )
        for t in range(3):
            opt.zero_grad()
            loss_at(model, t).backward()
            for p in model.parameters():
                p.grad.mul_(scale)
            with counting_reads(opt) as calls:
                opt.step()
            if sync_free:
                assert calls == []
        assert opt.skipped_steps == 0
        runs[sync_free] = _bits(opt, model)
    assert all(torch.isfinite(t).all() for t in runs[True])
    _assert_same_step("delta" if erase == "tensor" else "delta rows", runs[False], runs[True])


def test_sync_free_is_validated_and_defaults_to_the_host_on_the_cpu():
    with pytest.raises(ValueError, match="sync_free"):
        MemoryOptimizer(make_model().parameters(), sync_free="yes")
    counts, _ = _reads_per_step("delta", "ignore")
    assert all(len(calls) == REMAINING["delta"] for calls in counts)  # None: CPU decides on host


# The presets that read their count on the host without sync_free and on the device with it.
COUNTS_ON_DEVICE = ("adam", "muon", "cms")


@pytest.mark.parametrize("resumed_with", [False, True])
@pytest.mark.parametrize("saved_with", [False, True])
@pytest.mark.parametrize("memory", COUNTS_ON_DEVICE)
def test_a_state_dict_resumes_across_sync_free(memory, saved_with, resumed_with):
    # The step counter lives on the CPU without sync_free and on the parameter's device with
    # it; a state dict saved either way resumes either way, to the bits of never stopping.
    # adam on a transposed weight: its foreach path, where the count matters.
    def run(sync_free, opt=None, model=None, steps=range(6)):
        model = model or _non_contiguous_model()
        opt = opt or MemoryOptimizer(model.parameters(), memory, lr=1e-3, sync_free=sync_free)
        for t in steps:
            opt.zero_grad()
            loss_at(model, t).backward()
            opt.step()
        return opt, model

    _, straight = run(False)
    first, model = run(saved_with, steps=range(3))
    saved = first.state_dict()
    resumed = MemoryOptimizer(model.parameters(), memory, lr=1e-3, sync_free=resumed_with)
    resumed.load_state_dict(saved)
    assert all(s["step"].dtype == torch.float32 for s in resumed.state.values())
    run(resumed_with, resumed, model, range(3, 6))
    assert all(int(s["step"]) == 6 for s in resumed.state.values())
    for a, b in zip(straight.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "options",
    [{"period": 3}, {"beta": 0.9, "rho": 0.5}, {"period": 2, "beta": 0.5}],
    ids=["period 3", "momentum, rho 0.5", "period 2, momentum"],
)
def test_landscape_gates_its_write_on_the_device_to_the_bit(options):
    # landscape's diagonal form under sync_free writes every step, gated by "due and t > 1",
    # and remembers where due: the host's bits, with a write period, momentum and a partial
    # write (rho < 1), through a skipped very first step (has_prev must stay 0) and a later one.
    runs = {}
    for sync_free in (False, True):
        model = make_model()
        opt = MemoryOptimizer(
            model.parameters(),
            "landscape",
            lr=1e-2,
            form="diagonal",
            sync_free=sync_free,
            **options,
        )
        trace = []
        for t in range(9):
            opt.zero_grad()
            loss_at(model, t).backward()
            if t in (0, 4):
                model.fc.weight.grad[0, 0] = float("nan")
            if sync_free:
                with counting_reads(opt) as calls:
                    opt.step()
                assert calls == [], (t, calls)
            else:
                opt.step()
            trace.append(_bits(opt, model))
        assert opt.skipped_steps == 2
        runs[sync_free] = trace
    # from step 1 on (a first step skipped on the host creates no state; on the device it
    # creates the fresh state and selects it back)
    for t, (host, device) in enumerate(zip(runs[False], runs[True], strict=True)):
        if t > 0:
            assert all(torch.equal(a, b) for a, b in zip(host, device, strict=True)), t


CMS_OPTIONS = {
    "period 3, accumulate, debias, Adam's denominator": {"freqs": (1, 3)},
    "AdEMAMix": ademamix_config(),
    "M3, period 3": m3_config(freq=3),
    "M3, period 2, normalised": m3_config(freq=2, normalize=True),
    "periods 2 and 3, no accumulator, rates and a negative weight": {
        "freqs": (2, 3), "accumulate": False, "etas": (1.0, 0.5), "weights": (1.0, -0.5),
        "normalize": False,
    },
    "a level read with weight 0": {"freqs": (1, 2), "weights": (0.0, 1.0)},
    "Newton-Schulz, debiased, 1-D tensors debiased apart": {
        "orthogonalize": True, "normalize": False, "alphas": (0.9, 0.8), "freqs": (1, 3),
        "debias": (True, True),
    },
}  # fmt: skip


@pytest.mark.parametrize("contiguous", [True, False], ids=["kernel", "foreach"])
@pytest.mark.parametrize("options", list(CMS_OPTIONS))
def test_cms_takes_its_periods_and_constants_on_the_device_to_the_bit(options, contiguous):
    # cms under sync_free computes a periodic level's write every step and selects it where
    # due, with every per-step constant a tensor from the counter: the host's bits through
    # write periods, skipped steps (the very first one and a later one) and a tensor whose
    # count lags the others (no gradient at step 2), on and off torch's fused Adam kernel.
    runs = {}
    for sync_free in (False, True):
        model = make_model() if contiguous else _non_contiguous_model()
        opt = MemoryOptimizer(
            model.parameters(), "cms", lr=1e-2, sync_free=sync_free, **CMS_OPTIONS[options]
        )
        trace = []
        for t in range(10):
            opt.zero_grad()
            loss_at(model, t).backward()
            if t in (0, 5):
                model.fc.weight.grad[0, 0] = float("nan")
            if t == 2:
                model.out.bias.grad = None
            if sync_free:
                with counting_reads(opt) as calls:
                    opt.step()
                assert calls == [], (t, calls)
            else:
                opt.step()
            trace.append(_bits(opt, model))
        assert opt.skipped_steps == 2
        assert float(opt.state[model.out.bias]["step"]) == 7  # 10 steps, 2 skipped, 1 absent
        runs[sync_free] = trace
    # from step 1 on (a first step skipped on the host creates no state; on the device it
    # creates the fresh state and selects it back)
    for t, (host, device) in enumerate(zip(runs[False], runs[True], strict=True)):
        if t > 0:
            assert len(host) == len(device)
            assert all(torch.equal(a, b) for a, b in zip(host, device, strict=True)), t


@contextlib.contextmanager
def counting_device_copies() -> Iterator[list[str]]:
    """Records every ``torch.tensor``/``torch.as_tensor`` call that names a device: host data
    copied to that device. Off the CPU such a copy is blocking (torch synchronises the stream
    for a copy from pageable memory), so a step must make its host numbers device vectors with
    ``sync_free.host_constants`` instead, which names no device on the CPU."""
    calls: list[str] = []
    originals = {name: getattr(torch, name) for name in ("tensor", "as_tensor")}

    def wrap(name: str):  # noqa: ANN202
        original = originals[name]

        def make(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            if kwargs.get("device") is not None:
                calls.append(f"{name}(device={kwargs['device']})")
            return original(*args, **kwargs)

        return make

    try:
        for name in originals:
            setattr(torch, name, wrap(name))
        yield calls
    finally:
        for name, original in originals.items():
            setattr(torch, name, original)


@pytest.mark.parametrize("sync_free", [False, True])
@pytest.mark.parametrize("memory", every_memory())
def test_a_step_copies_no_host_data_to_the_device(memory, sync_free):
    model = make_model()
    opt = MemoryOptimizer(model.parameters(), memory, lr=1e-3, sync_free=sync_free)
    for t in range(3):
        opt.zero_grad()
        loss_at(model, t).backward()
        if t == 0:
            opt.step()  # creates the state
            continue
        with counting_device_copies() as calls:
            opt.step()
        assert calls == [], calls


def test_the_copy_counter_sees_a_copy_and_host_constants_make_none():
    from assocmem.optim import sync_free

    like = torch.zeros(2, dtype=torch.float64)
    with counting_device_copies() as calls:
        torch.tensor([1.0], device="cpu")
        made = sync_free.host_constants([0.1, 3.0], like)
    assert calls == ["tensor(device=cpu)"]
    assert torch.equal(made, torch.tensor([0.1, 3.0], dtype=torch.float64))  # dtype included


def test_host_constants_off_the_cpu_stage_through_pinned_memory(monkeypatch):
    # No accelerator here: the pinned staging is checked by what it asks torch for (pinned
    # memory, a non-blocking copy), with the meta device standing in; tests/optim/test_cuda.py
    # runs it for real (delta's step, with the sync debug mode set to error).
    from assocmem.optim import sync_free

    asked: list[dict] = []
    tensor, to = torch.tensor, torch.Tensor.to

    def fake_tensor(values, **kwargs):  # noqa: ANN001, ANN003, ANN202
        asked.append(dict(kwargs))
        kwargs.pop("pin_memory", None)  # no pinned allocator on a CPU-only build
        return tensor(values, **kwargs)

    def fake_to(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        asked.append({"to": args, **kwargs})
        return to(self, *args, **kwargs)

    like = torch.empty(3, device="meta")
    # a device without pinned memory: fill kernels there, no host data copied
    filled = sync_free.host_constants([1.0, 2.0], like)
    assert filled.device.type == "meta" and filled.shape == (2,)
    # a device with it (here the meta device stands in for CUDA): staged and copied async
    monkeypatch.setattr(sync_free, "PINNED_DEVICES", ("meta",))
    monkeypatch.setattr(torch, "tensor", fake_tensor)
    monkeypatch.setattr(torch.Tensor, "to", fake_to)
    made = sync_free.host_constants([1.0, 2.0], like)
    assert made.device.type == "meta" and made.dtype == torch.float32
    assert asked == [
        {"dtype": torch.float32, "pin_memory": True},
        {"to": (torch.device("meta"),), "non_blocking": True},
    ]


@pytest.mark.parametrize("memory", ["delta", "muon", "cms"])
def test_a_low_precision_parameters_master_is_resynced_on_the_device(memory):
    # A bf16 parameter steps an fp32 master; a change made to the parameter outside the
    # optimizer is taken into the master at the next step. Decided on the host, that is a
    # torch.equal per tensor and step; with sync_free it is a select, to the same bits.
    runs = {}
    for sync_free in (False, True):
        torch.manual_seed(0)
        model = make_model().to(torch.bfloat16)
        opt = MemoryOptimizer(model.parameters(), memory, lr=1e-2, sync_free=sync_free)
        reads = []
        for t in range(4):
            opt.zero_grad()
            x, y = batch(t)
            (model(x.bfloat16()) - y.bfloat16()).float().pow(2).mean().backward()
            if t == 2:
                with torch.no_grad():
                    model.fc.weight.mul_(0.5)  # outside the optimizer
            with counting_reads(opt) as calls:
                opt.step()
            reads.append(calls)
        runs[sync_free] = (model, opt, reads)
    (host, host_opt, host_reads), (dev, dev_opt, dev_reads) = runs[False], runs[True]
    assert all("equal" in calls for calls in host_reads[1:])  # the host decision reads
    assert all(calls == [] for calls in dev_reads), dev_reads
    for p, q in zip(host.parameters(), dev.parameters(), strict=True):
        assert torch.equal(p, q)
        masters = host_opt.state[p]["master_param"], dev_opt.state[q]["master_param"]
        _assert_same_step(memory, [masters[0]], [masters[1]])
