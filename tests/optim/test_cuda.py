"""On a CUDA device: every preset equals its CPU run and steps without a host sync, the presets
that skip on the device skip a non-finite step without a host sync, and a model split across the
CPU and a GPU steps and skips as one.

Skipped where there is no CUDA device (this project's CI machine has none; docs/api.md says
what has been run where). The runs are float64, so they compare the algorithm on both devices,
not how each device's float32 kernels round.
"""

from __future__ import annotations

import pytest
import torch
from optim_support import (
    LOCKSTEP_TOL,
    assert_same_run,
    batch,
    compiled_against_eager,
    every_memory,
    in_float64,
    make_model,
)

from assocmem import MemoryOptimizer, get_preset

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

STEPS = 5
# The presets that skip a non-finite step on the device on TinyNet (test_syncs.py): the fused
# kernels take the flag (adam, momentum); the others (their counts on the device, or none to
# read) step, then select. Those need sync_free on: these tests pass sync_free=None, which
# turns it on where a gradient lives on an accelerator (the default, False, decides on the host).
DEVICE_SKIP = ("adam", "momentum", "delta", "muon", "cms", "learned", "deep", "landscape")


def _flat(model: torch.nn.Module) -> torch.Tensor:
    """Every parameter, flattened onto the CPU (a model may span devices)."""
    return torch.cat([p.detach().flatten().cpu() for p in model.parameters()])


def _backward(model: torch.nn.Module, t: int) -> None:
    x, y = batch(t)  # the same batch on every device
    like = {"device": model.gain.device, "dtype": model.gain.dtype}
    (model(x.to(**like)) - y.to(**like)).pow(2).mean().backward()


def _trained(memory: str, device: str, steps: int = STEPS, sync_free: bool | None = False):
    with in_float64():
        model = make_model().to(device)
        opt = MemoryOptimizer(model.parameters(), memory, lr=1e-3, sync_free=sync_free)
        for t in range(steps):
            opt.zero_grad()
            _backward(model, t)
            opt.step()
    return model, opt


@pytest.mark.parametrize("memory", every_memory())
def test_every_preset_on_cuda_equals_its_cpu_run(memory):
    cpu_model, cpu_opt = _trained(memory, "cpu")
    cuda_model, cuda_opt = _trained(memory, "cuda")
    # LOCKSTEP_TOL: float64 roundoff times the presets' per-step amplification (optim_support)
    torch.testing.assert_close(_flat(cuda_model), _flat(cpu_model), **LOCKSTEP_TOL)
    for p, q in zip(cuda_model.parameters(), cpu_model.parameters(), strict=True):
        for key, value in cpu_opt.state[q].items():
            if isinstance(value, torch.Tensor):
                got = cuda_opt.state[p][key]
                torch.testing.assert_close(got.cpu(), value, **LOCKSTEP_TOL)


@pytest.mark.parametrize("memory", DEVICE_SKIP)
def test_a_skipped_step_waits_for_nothing(memory):
    model, opt = _trained(memory, "cuda", steps=2, sync_free=None)
    opt.zero_grad()
    _backward(model, 2)
    model.fc.weight.grad[0, 0] = float("nan")
    before = [v.clone() for s in opt.state.values() for v in s.values()]
    params = _flat(model)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host-device sync inside step() raises
    try:
        opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert opt.skipped_steps == 1  # read after: this read is the sync
    assert torch.equal(_flat(model), params)
    after = [v for s in opt.state.values() for v in s.values()]
    assert all(torch.equal(a, b) for a, b in zip(after, before, strict=True))


@pytest.mark.parametrize("memory", DEVICE_SKIP)
def test_a_model_across_cpu_and_cuda_steps_and_skips_as_one(memory):
    model = make_model()
    model.fc.to("cuda")
    opt = MemoryOptimizer(model.parameters(), memory, lr=1e-2, sync_free=None)

    def backward(t, nan=False):
        opt.zero_grad()
        x = torch.randn(4, 2, 4, 4)
        h = model.conv(x).flatten(1).cuda()
        out = model.out(torch.tanh(model.fc(h)).cpu()) * model.gain
        out.pow(2).mean().backward()
        if nan:
            model.fc.weight.grad[0, 0] = float("nan")  # on the GPU; the CPU groups must skip too

    backward(0)
    opt.step()
    params = _flat(model)
    backward(1, nan=True)
    opt.step()
    assert opt.skipped_steps == 1
    assert torch.equal(_flat(model), params)
    assert all(int(s["step"]) == 1 for s in opt.state.values())
    backward(2)
    opt.step()
    assert not torch.equal(_flat(model), params)


@pytest.mark.parametrize("memory", every_memory())
def test_a_finite_step_waits_for_nothing(memory):
    # Past the first step (which creates the state): steady-state steps of every preset, with
    # the decisions on the device (sync_free=None turns it on for a CUDA gradient).
    model, opt = _trained(memory, "cuda", steps=2, sync_free=None)
    torch.cuda.synchronize()
    for t in range(2, 4):
        opt.zero_grad()
        _backward(model, t)
        torch.cuda.set_sync_debug_mode("error")  # any host-device sync inside step() raises
        try:
            opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert opt.skipped_steps == 0


def test_muon_with_bfloat16_newton_schulz_on_cuda_agrees_with_its_cpu_run():
    def trained(device):
        torch.manual_seed(0)
        model = make_model().to(device)
        opt = MemoryOptimizer(model.parameters(), "muon", lr=2e-2, ns_dtype="bfloat16")
        for t in range(STEPS):
            opt.zero_grad()
            _backward(model, t)
            opt.step()
        return _flat(model)

    # the two devices' bf16 products round differently: a few bf16 ulps (~2^-6 of entries of O
    # <= 1) per step, over 5 steps of lr * s <= 2e-2 * sqrt(2) (TinyNet): ~2e-3
    torch.testing.assert_close(trained("cuda"), trained("cpu"), rtol=0, atol=5e-3)


@pytest.mark.slow  # a cold compile per preset; scripts/gpu_check.sh runs these last
@pytest.mark.parametrize("memory", every_memory())
def test_a_compiled_step_on_cuda_gives_the_eager_numbers(memory):
    # as tests/optim/test_compile_step.py on the CPU (its TOL: a few float32 roundings of O(1)
    # values per step, with 50x to spare), here with inductor's GPU kernels
    if get_preset(memory).uncompilable is not None:
        pytest.skip(f"{memory} refuses a compiled step (tested on the CPU)")

    eager, compiled = compiled_against_eager(
        lambda: make_model().cuda(),
        lambda ps: MemoryOptimizer(ps, memory, lr=1e-2),
        _backward,
    )
    assert_same_run(compiled, eager, rtol=0.0, atol=1e-6)


@pytest.mark.slow  # a cold compile per preset; scripts/gpu_check.sh runs these last
@pytest.mark.parametrize("memory", [m for m in every_memory() if get_preset(m).compiles()])
def test_compile_true_on_cuda_follows_the_cpu_reference(monkeypatch, memory):
    # compile=True's inductor kernels on the GPU (Triton) against the CPU reference, float32:
    # the tolerance of tests/optim/test_compiled.py (inductor may contract into FMAs and
    # reorder the sums: ulps of O(1) values per step, compounded over the steps). TinyNet's
    # tensors are all small, which compile=True would step eagerly: every tensor compiled.
    from assocmem.optim import optimizer

    monkeypatch.setattr(optimizer, "COMPILED_FROM", 0)
    torch._dynamo.reset()
    runs = []
    for device, kw in (("cuda", {"compile": True}), ("cpu", {"foreach": False})):
        model = make_model().to(device)
        opt = MemoryOptimizer(model.parameters(), memory, lr=1e-2, **kw)
        for t in range(STEPS):
            opt.zero_grad()
            _backward(model, t)
            opt.step()
        runs.append(_flat(model))
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-5, atol=1e-6)
