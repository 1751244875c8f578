"""``compile=True``: the preset's update fused by torch.compile equals the reference.

Compiling takes ~5-15 s per graph on 2 cores, so the tests that compile are marked ``slow``
(``make test-slow``, which ``.ci/run`` also runs); the argument checks run by default.
"""

import warnings

import pytest
import torch
from optim_support import assert_lockstep, in_float64, make_model, train, two_groups

from assocmem import MemoryOptimizer
from assocmem.optim import optimizer
from assocmem.optim.compiled import compiled
from assocmem.optim.presets.cms import ademamix_config
from assocmem.optim.presets.landscape_fast import secant_step

# A compiled path that cannot build falls back to eager with a warning and the same numbers, so
# a test comparing numbers would pass without testing compiled code: here the fallback fails the
# test (the tests of the fallback itself catch its warning with pytest.warns).
pytestmark = pytest.mark.filterwarnings("error:torch.compile could not build:RuntimeWarning")


@pytest.fixture(autouse=True)
def compile_every_tensor(monkeypatch):
    """TinyNet's tensors are all small, which ``compile=True`` steps eagerly
    (``COMPILED_FROM``): here every tensor is compiled, so the tests test the compiled code."""
    monkeypatch.setattr(optimizer, "COMPILED_FROM", 0)


def landscape_pair(channels_last=False, **kw):
    models = make_model(), make_model()
    if channels_last:  # a non-contiguous layout is compiled as it is, not flattened
        for m in models:
            m.conv.to(memory_format=torch.channels_last)
    kw = dict(lr=1e-2, weight_decay=0.01, **{"form": "diagonal", **kw})
    compiled_opt = MemoryOptimizer(two_groups(models[0], 1e-2), "landscape", compile=True, **kw)
    reference = MemoryOptimizer(two_groups(models[1], 1e-2), "landscape", foreach=False, **kw)
    return models[0], compiled_opt, models[1], reference


@pytest.mark.slow
@pytest.mark.parametrize(
    "kw", [{}, {"beta": 0.9, "rho": 0.5, "channels_last": True}, {"period": 3}]
)
def test_compiled_equals_reference_at_every_step(kw):
    # state included: torch 2.13's inductor once stored the updated parameter as prev_param.
    # Inductor fuses the update and may contract a * b + c into one FMA, so each op can round
    # differently from eager by an ulp. The secant curvature q = s / y divides differences of
    # nearly equal numbers (s = W - W_prev, y = g - g_prev): an ulp of W or g becomes a relative
    # error of up to eps |g| / |y| in q, and the mask lets |y| go down to y_tol |g| = 1e-6 |g|,
    # so the amplification is bounded only by 1 / y_tol, and 30 steps compound it. In float32
    # that bound (6e-8 / 1e-6) is larger than the bug's signal; measured, one element in 54 was
    # off by 5e-5 relative under ATEN_CPU_CAPABILITY=avx2 on a Sapphire Rapids CPU (1.8e-6 on
    # another, none on a third). So the lockstep runs in float64, where the bound is 1.1e-16 /
    # 1e-6 = 1.1e-10 a step: a relative tolerance of 1e-7 leaves a thousandfold for the
    # compounding, and a wrong stored value (the bug above) is still off by a step, ~1e-2.
    with in_float64():
        assert_lockstep(*landscape_pair(**kw), 30, rtol=1e-7, atol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("kw", [{}, {"beta": 0.5, "rho": 0.5, "sigma": 0.1, "channels_last": True}])
def test_compiled_weak_form_equals_reference_at_every_step(kw):
    # The weak form's compiled body (elementwise ops and whole-tensor sums) against its
    # reference (a matrix-memory write): the sums run in another order and inductor may
    # contract into FMAs, so each step's scalars differ by ulps; the read divides by B and the
    # next write reads that step, so 30 steps compound them. In float64, as the diagonal form's
    # test and for its reason (a division whose conditioning the data sets, not the code):
    # relative 1e-7. A wrong stored momentum or direction is off by a step's size, ~1e-2.
    with in_float64():
        assert_lockstep(*landscape_pair(form="weak", **kw), 30, rtol=1e-7, atol=1e-10)


@pytest.mark.slow
def test_compiled_weak_step_is_one_graph_without_breaks():
    from assocmem.optim.presets.landscape_weak_fast import weak_secant_step

    lists = [[torch.randn(n) for n in (300, 7)] for _ in range(5)]
    rates = [torch.tensor(0.3), torch.tensor(0.3)]
    explained = torch._dynamo.explain(weak_secant_step)(
        *lists, rates, lr=torch.tensor(0.1, dtype=torch.float64), rho=1.0, sigma=1.0
    )
    assert explained.graph_count == 1 and explained.graph_break_count == 0


@pytest.mark.slow
@pytest.mark.parametrize("kw", [{}, {"gamma": 1.0, "eta": 0.5, "channels_last": True}])
def test_compiled_delta_equals_reference_at_every_step(kw):
    models = make_model(), make_model()
    if kw.pop("channels_last", False):
        for m in models:
            m.conv.to(memory_format=torch.channels_last)
    kw = dict(lr=1e-2, weight_decay=0.01, alpha=0.8, **kw)
    fast = MemoryOptimizer(two_groups(models[0], 1e-2), "delta", compile=True, **kw)
    ref = MemoryOptimizer(two_groups(models[1], 1e-2), "delta", foreach=False, **kw)
    # float32, O(1) values: inductor's order of m * alpha + r * g rounds a few ulps apart
    assert_lockstep(models[0], fast, models[1], ref, 30, rtol=0, atol=1e-6)


def cms_pair(channels_last=False, **kw):
    models = make_model(), make_model()
    if channels_last:
        for m in models:
            m.conv.to(memory_format=torch.channels_last)
    kw = dict(lr=1e-2, weight_decay=0.01, **kw)
    fast = MemoryOptimizer(two_groups(models[0], 1e-2), "cms", compile=True, **kw)
    ref = MemoryOptimizer(two_groups(models[1], 1e-2), "cms", foreach=False, **kw)
    return models[0], fast, models[1], ref


@pytest.mark.slow
@pytest.mark.parametrize(
    "kw",
    [
        {},  # two levels, the slow one written every 10 steps with the mean gradient
        ademamix_config(),  # a debiased and a plain level, both every step
        {"accumulate": False, "freqs": (1, 3), "normalize": False, "debias": (False, True)},
        {"alphas": (0.8, 0.9, 0.99), "freqs": (1, 2, 5), "weights": (1.0, -0.5, 0.25),
         "debias": (True, False, True),
         "channels_last": True},
    ],
)  # fmt: skip
def test_compiled_cms_equals_reference_at_every_step(kw):
    torch._dynamo.reset()  # graphs of another configuration must not spend the recompile budget
    # Inductor fuses the writes, the read and Adam's denominator, may contract a * b + c into
    # an FMA and applies the 0-d float64 constants in another order than eager: each op can
    # round an ulp apart (6e-8 relative in float32), and 30 steps compound that through the
    # levels and the second moment. Measured at most 9e-8 absolute on state and parameters of
    # size 1e-3..1; atol 1e-6 (a dozen ulps of O(1) values) with rtol 1e-5. A wrong write or
    # a level written at the wrong step is off by a step's size, ~1e-2.
    assert_lockstep(*cms_pair(**kw), 30, rtol=1e-5, atol=1e-6)


def test_compiled_cms_without_host_reads_takes_the_eager_fast_path():
    # sync_free: the count stays on the device, so the write pattern (a graph constant) is
    # unknown on the host; the step is cms_fast's device-count path, nothing is compiled.
    models = make_model(), make_model()
    fast = MemoryOptimizer(two_groups(models[0], 1e-2), "cms", compile=True, sync_free=True)
    ref = MemoryOptimizer(two_groups(models[1], 1e-2), "cms", foreach=False)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()  # counts of the tests before
    with torch._dynamo.config.patch(error_on_recompile=True):
        assert_lockstep(models[0], fast, models[1], ref, 12, rtol=1e-5, atol=1e-6)
        assert not torch._dynamo.utils.counters["stats"]["unique_graphs"]


@pytest.mark.slow
def test_compiled_cms_follows_schedules_without_recompiling():
    # lr and the read weights (AdEMAMix's alpha warmup sets group["weights"] per step) are
    # data; only the write pattern shapes the graph: two graphs for freqs=(1, 10), both made
    # by step 10.
    torch._dynamo.reset()
    model, opt, ref_model, ref = cms_pair()
    train(model, opt, range(10))
    train(ref_model, ref, range(10))
    with torch._dynamo.config.patch(error_on_recompile=True):
        for t in range(10, 22):
            for m, o in ((model, opt), (ref_model, ref)):
                for group in o.param_groups:
                    group["lr"] = 1e-2 / (1 + t)
                    group["weights"] = (0.5, 0.5 * t / 20)
                train(m, o, range(t, t + 1))
    for p, q in zip(model.parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_compiled_cms_step_is_one_graph_without_breaks():
    from assocmem.optim.presets.cms_compiled import level_step

    tensors = [[torch.randn(n) for n in (300, 7)] for _ in range(5)]
    params, grads, fast, slow, second = tensors
    second = [s.abs() for s in second]
    numbers = [torch.tensor(x, dtype=torch.float64) for x in (0.9, 0.1, 0.5)]
    explained = torch._dynamo.explain(level_step)(
        params, grads, [fast, slow], [None, [torch.zeros_like(g) for g in grads]], second,
        numbers[:1] * 2, numbers[1:2] * 2, numbers[2:] * 2,
        lr=numbers[1], beta2=numbers[0], bc2=numbers[1], eps=numbers[1], due=(True, False),
    )  # fmt: skip
    assert explained.graph_count == 1 and explained.graph_break_count == 0


@pytest.mark.slow
def test_compiled_delta_write_is_one_graph_without_breaks():
    from assocmem.optim.presets.delta import write_and_step

    lists = [[torch.randn(n) for n in (300, 7)] for _ in range(3)]
    rates = [torch.tensor(0.3), torch.tensor(-0.2)]
    explained = torch._dynamo.explain(write_and_step)(*lists, rates, alpha=0.9, lr=0.1)
    assert explained.graph_count == 1 and explained.graph_break_count == 0


@pytest.mark.slow
@pytest.mark.parametrize(
    ("form", "rtol"),
    # the weak form's sums run in another order than its reference's (the test above)
    [("diagonal", 0.0), ("weak", 1e-5)],
)
def test_compiled_follows_an_lr_schedule_without_recompiling(form, rtol):
    # the weak form's bias-correction rate changes every step too: data, like lr
    model, opt, ref_model, ref = landscape_pair(form=form)
    schedules = [torch.optim.lr_scheduler.LambdaLR(o, lambda t: 1 / (1 + t)) for o in (opt, ref)]
    train(model, opt, range(2))  # the first write compiles
    train(ref_model, ref, range(2))
    with torch._dynamo.config.patch(error_on_recompile=True):
        for t in range(2, 12):
            for m, o, sched in zip((model, ref_model), (opt, ref), schedules, strict=True):
                train(m, o, range(t, t + 1))
                sched.step()
    assert opt.param_groups[0]["lr"] < 1e-3  # the schedule did change lr
    for p, q in zip(model.parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=rtol, atol=1e-6)


@pytest.mark.slow
def test_compiled_write_is_one_graph_without_breaks():
    torch.manual_seed(0)
    lists = [[torch.randn(n) for n in (300, 7)] for _ in range(5)]
    explained = torch._dynamo.explain(secant_step)(
        *lists, None, lr=0.1, beta=0.0, rho=1.0, h_min=1e-2, h_max=1e2, y_tol=1e-6
    )
    assert explained.graph_count == 1 and explained.graph_break_count == 0


@pytest.mark.slow
def test_compiled_secant_step_equals_eager_bit_for_bit():
    torch.manual_seed(1)
    base = [torch.randn(1000) for _ in range(5)]
    base[2] = torch.rand(1000) * 10  # curvature memory
    base[4][:50] = base[0][:50]  # s = 0: no write there
    base[3][50:100] = base[1][50:100]  # y = 0: no write there
    eager, fused = [[t.clone()] for t in base], [[t.clone()] for t in base]
    kw = dict(lr=0.1, beta=0.0, rho=0.7, h_min=1e-2, h_max=1e2, y_tol=1e-6)
    secant_step(*eager, None, **kw)
    compiled(secant_step)(*fused, None, **kw)
    for a, b in zip(eager, fused, strict=True):
        assert torch.equal(a[0], b[0])


@pytest.mark.slow
def test_without_a_compiler_it_warns_and_runs_eagerly():
    def double_into(x, out):  # a new graph: inductor's cache cannot serve it
        out.copy_(x * 2)

    # torch's own patch, not pytest's monkeypatch: undoing a monkeypatch of an inductor config
    # entry deletes the entry, and every later compile in the process then fails (and falls
    # back to eager, silently for a test that only compares numbers)
    config = torch._inductor.config
    cxx = config.cpp.cxx
    with config.patch({"cpp.cxx": (None, "/nonexistent/c++"), "fx_graph_cache": False}):
        x, out = torch.arange(4.0), torch.zeros(4)
        run = compiled(double_into)
        with pytest.warns(RuntimeWarning, match="could not build double_into.*same numbers"):
            run(x, out)
        assert out.tolist() == [0.0, 2.0, 4.0, 6.0]
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no second attempt, no second warning
            run(x + 1, out)
        assert out.tolist() == [2.0, 4.0, 6.0, 8.0]
    assert config.cpp.cxx == cxx and config.fx_graph_cache is not None  # restored


def test_without_torch_compile_it_warns_and_runs_eagerly(monkeypatch):
    def unsupported(fn):
        raise RuntimeError("torch.compile is not supported on this Python")

    def add_one(x):  # a function of its own: compiled() caches per function
        x.add_(1)

    monkeypatch.setattr(torch, "compile", unsupported)
    with pytest.warns(RuntimeWarning, match="could not build add_one .*not supported"):
        run = compiled(add_one)
    x = torch.zeros(3)
    run(x)
    assert run is add_one and x.tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("memory", "kw", "needle"),
    [
        (
            "adam",
            {},
            "memory='adam' has no compiled path (compile=True is available for: cms, delta, "
            "landscape)",
        ),
        ("landscape", {"foreach": False}, "foreach=False"),
        ("landscape", {"form": "lowrank"}, "diagonal and weak forms only"),
        ("landscape", {"form": "scalar"}, "diagonal and weak forms only"),
        ("landscape", {"compile": 1}, "invalid compile"),
        ("cms", {"orthogonalize": True}, "elementwise configurations only"),
    ],
)
def test_compile_refuses_what_it_cannot_do(memory, kw, needle):
    kw = {"compile": True, **kw}
    with pytest.raises(ValueError, match="invalid compile") as err:
        MemoryOptimizer(make_model().parameters(), memory, **kw)
    assert needle in str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize("memory", ["cms", "delta", "landscape"])
def test_compile_steps_small_tensors_eagerly_and_large_ones_compiled(monkeypatch, memory):
    # From COMPILED_FROM elements a tensor's update is compiled; the smaller ones take the
    # eager fast path, in the same step. Both follow the reference (float32, O(1) values: the
    # tolerance of the lockstep tests above).
    from assocmem.optim.registry import get_preset

    monkeypatch.undo()  # the default threshold
    preset = type(get_preset(memory))
    compiled_sizes = []
    real = preset.compiled_step

    def spy(self, params, *rest):
        compiled_sizes.append(sorted(p.numel() for p in params))
        return real(self, params, *rest)

    monkeypatch.setattr(preset, "compiled_step", spy)
    torch._dynamo.reset()
    big = optimizer.COMPILED_FROM
    runs = []
    for kw in ({"compile": True}, {"foreach": False}):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(n) * 0.1) for n in (big, 7, big + 3, 5)]
        opt = MemoryOptimizer(params, memory, lr=1e-2, **kw)
        gen = torch.Generator().manual_seed(1)
        for _ in range(12):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen) + p.detach()
            opt.step()
        runs.append([t.detach().clone() for p in params for t in (p, *opt.state[p].values())])
    assert compiled_sizes and all(sizes == [big, big + 3] for sizes in compiled_sizes)
    for fast, ref in zip(*runs, strict=True):
        torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)


def test_compile_is_per_group():
    model = make_model()
    opt = MemoryOptimizer(
        [
            {"params": [model.gain], "memory": "adam", "compile": False},
            {"params": [model.out.bias]},
        ],
        "landscape",
        compile=True,
        form="diagonal",
    )
    assert [g["compile"] for g in opt.param_groups] == [False, True]
    with pytest.raises(ValueError, match="no compiled path"):
        opt.add_param_group({"params": [model.fc.bias], "memory": "momentum", "compile": True})


@pytest.mark.slow
def test_cms_compiled_second_moment_overflows_where_torchs_does():
    # |g| = 1e20: g * g overflows fp32 (the compiled body squared first: v = inf, the tensor
    # frozen), (1 - beta2) g g does not (torch's order, the eager paths'). One float32 Adam
    # step's rounding of O(lr) updates apart, over 4 steps.
    runs = {}
    for compile_ in (False, True):
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.randn(256, 128))  # 2^15 elements: compiled
        opt = MemoryOptimizer([p], "cms", lr=1e-2, compile=compile_)
        for t in range(4):
            p.grad = 1e20 * torch.sin(p.detach() + t)
            opt.step()
        assert all(torch.isfinite(v).all() for v in opt.state[p].values() if torch.is_tensor(v))
        runs[compile_] = p.detach()
    torch.testing.assert_close(runs[True], runs[False], rtol=0, atol=1e-6)
