"""``torch.compile(opt.step)``, the whole step as a user compiles it, gives the eager numbers,
or the preset refuses it (``Preset.uncompilable``: ``learned``).

One test per preset, behind the slow marker (a cold compile of a step is 10-150 s here). The
runs are float32: torch 2.13's AOTAutograd drops in-place writes to 0-d float64 inputs (TinyNet's
gain, deep's scalar state), so a float64 compiled step is refused (``MemoryOptimizer.step``). The
two runs differ only where inductor reorders or fuses arithmetic: a few float32 roundings
(6e-8 each) of O(1) values per step, measured at most 2e-8 over these steps; ``TOL`` leaves 50x
on that, while the bugs this guards against moved parameters by 1e-4 to 0.1 or crashed: state
created inside the compiled graph aliased (landscape's previous gradient and parameter were one
buffer), cms's fused Adam kernel could not be traced, landscape's scalar, low-rank and reference
diagonal forms remembered the stepped parameter as the secant's start, so never wrote a pair.
"""

from __future__ import annotations

import pytest
import torch
from optim_support import (
    assert_same_run,
    compiled_against_eager,
    every_memory,
    in_float64,
    loss_at,
    make_model,
)

from assocmem import MemoryOptimizer, get_preset

pytestmark = pytest.mark.slow

STEPS = 3  # step 1 creates the state, steps 2 and 3 read what step 1 wrote
TOL = {"rtol": 0.0, "atol": 1e-6}


def _backward(model: torch.nn.Module, t: int) -> None:
    loss_at(model, t).backward()


@pytest.mark.parametrize("memory", every_memory())
def test_compiled_step_gives_the_eager_numbers(memory):
    def make_opt(params):
        return MemoryOptimizer(params, memory, lr=1e-2 if memory != "learned" else 1e-3)

    if get_preset(memory).uncompilable is not None:
        torch._dynamo.reset()
        model = make_model()
        loss_at(model, 0).backward()
        with pytest.raises(RuntimeError, match=f"not supported for memory='{memory}'"):
            torch.compile(make_opt(model.parameters()).step)()
        return
    eager, compiled = compiled_against_eager(make_model, make_opt, _backward, STEPS)
    assert_same_run(compiled, eager, **TOL)


def test_a_compiled_step_refuses_float64_scalars():
    torch._dynamo.reset()
    with in_float64():
        model = make_model()  # its gain is a 0-d float64 parameter
        opt = MemoryOptimizer(model.parameters(), "momentum")
        loss_at(model, 0).backward()
        with pytest.raises(RuntimeError, match="cannot step float64 scalars"):
            torch.compile(opt.step)()
        opt.step()  # eagerly it steps
        assert opt.state[model.gain]["step"] == 1
        # no 0-d parameter, but deep's state would hold float64 scalars: refused before the
        # first step writes them
        layer = torch.nn.Linear(3, 2)
        opt = MemoryOptimizer(layer.parameters(), "deep")
        layer(torch.ones(1, 3)).sum().backward()
        with pytest.raises(RuntimeError, match="cannot step float64 scalars"):
            torch.compile(opt.step)()
        assert not opt.state


def test_deep_repeated_layers_compile_to_the_eager_numbers():
    # TinyNet's tensors all differ in size; these repeat, so deep steps them as one batch of
    # MLPs (bmm), which the compiled step must give too. Relative: the normalised gradients
    # (state "prev_grad", up to ~2.6 here) came out up to 3 float32 ulps apart (3.6e-7) where
    # inductor fused the RMS's reduction; 1e-5 leaves ~30x on that
    def make():
        return torch.nn.Sequential(*(torch.nn.Linear(6, 6) for _ in range(3)))

    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(1))

    def backward(net, t):
        net(x + 0.1 * t).sin().sum().backward()

    eager, compiled = compiled_against_eager(
        make, lambda ps: MemoryOptimizer(ps, "deep", lr=1e-2), backward, STEPS
    )
    assert_same_run(compiled, eager, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("memory", ["adam", "delta"])
def test_a_compiled_step_after_eager_ones_counts_their_packed_counters(memory):
    # eager steps pack the counters into one vector (assocmem.optim.packed_steps); a compiled
    # step then gets views of one storage as its state and must count them as eager does
    def run(compiled_from: int) -> tuple[torch.Tensor, list[float]]:
        torch._dynamo.reset()
        model = make_model()
        opt = MemoryOptimizer(model.parameters(), memory, lr=1e-2)
        step = torch.compile(opt.step)
        for t in range(5):
            opt.zero_grad()
            loss_at(model, t).backward()
            (step if t >= compiled_from else opt.step)()
        params = torch.cat([p.detach().flatten() for p in model.parameters()])
        return params, [float(opt.state[p]["step"]) for p in model.parameters()]

    eager, mixed = run(5), run(3)
    torch.testing.assert_close(mixed[0], eager[0], **TOL)
    assert mixed[1] == eager[1] == [5.0] * len(eager[1])


def test_a_compiled_sync_free_step_counts_the_step_it_skips():
    # dynamo dropped the optimizer's attribute write inside the compiled step: the NaN step
    # was skipped (the parameters agree) but skipped_steps stayed 0, in the state dict too
    runs = {}
    for compile_step in (False, True):
        torch._dynamo.reset()
        model = make_model()
        opt = MemoryOptimizer(model.parameters(), "momentum", lr=1e-2, sync_free=True)
        step = torch.compile(opt.step) if compile_step else opt.step
        counts = []
        for t in range(4):
            opt.zero_grad()
            loss_at(model, t).backward()
            if t == 2:
                model.out.bias.grad[0] = float("nan")
            step()
            counts.append(opt.skipped_steps)
        runs[compile_step] = counts, opt.state_dict()["assocmem"]["skipped_steps"]
    assert runs[True] == runs[False] == ([0, 0, 1, 1], 1)


LANDSCAPE_STEPS = 7  # 6 secant pairs per tensor: the low-rank window (rank 4) fills and slides


def _landscape_runs(form, foreach, make, backward):
    """Eager and compiled runs of a landscape form, and each run's optimizer."""
    opts = []

    def make_opt(params):
        opts.append(MemoryOptimizer(params, "landscape", lr=1e-2, form=form, foreach=foreach))
        return opts[-1]

    eager, compiled = compiled_against_eager(make, make_opt, backward, LANDSCAPE_STEPS)
    return eager, compiled, opts


def _assert_memory_written(opt, form):
    # the secant pairs reached the memory (a compiled step once remembered the *stepped*
    # parameter as the pair's start: every s was 0, nothing was written, the step stayed h0 g)
    for st in opt.state.values():
        if form == "lowrank":
            assert float(st["pairs"]) > 0
        else:
            assert bool((st["curvature"] != 1.0).any())  # h0 = 1


@pytest.mark.parametrize(
    ("form", "foreach"), [("scalar", None), ("lowrank", None), ("diagonal", False)]
)
def test_landscape_secant_forms_compile_to_the_eager_numbers(form, foreach):
    # the forms stepped by the reference (scalar, low-rank; diagonal with foreach=False): the
    # pair's start prev_param <- W and then W's step in one graph, which torch 2.13's inductor
    # miscompiled (landscape.remembered)
    eager, compiled, opts = _landscape_runs(form, foreach, make_model, _backward)
    assert_same_run(compiled, eager, **TOL)
    for opt in opts:
        _assert_memory_written(opt, form)


def test_landscape_secant_forms_compile_to_the_eager_numbers_in_float64():
    # no 0-d parameter, so float64 compiles, except the scalar form, whose memory is a 0-d
    # float64 tensor: refused (torch 2.13's AOTAutograd drops in-place writes to those)
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def make():
        return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1))

    def backward(net, t):
        (net(x + 0.1 * t) - 0.3).pow(2).mean().backward()

    with in_float64():
        for form, foreach in (("lowrank", None), ("diagonal", False)):
            eager, compiled, opts = _landscape_runs(form, foreach, make, backward)
            # measured at most 1.3e-14 apart (inductor's fused reductions round differently)
            assert_same_run(compiled, eager, rtol=0.0, atol=1e-10)
            for opt in opts:
                _assert_memory_written(opt, form)
        torch._dynamo.reset()
        net = make()
        opt = MemoryOptimizer(net.parameters(), "landscape", form="scalar")
        backward(net, 0)
        with pytest.raises(RuntimeError, match="cannot step float64 scalars"):
            torch.compile(opt.step)()
