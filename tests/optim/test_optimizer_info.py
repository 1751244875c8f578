"""torch.optim's generic contract, as one table: every test runs over every row.

A port of the generic tests of torch's ``test/test_optim.py`` (``TestOptimRenewed`` over its
``OptimizerInfo`` table): a preset joins every contract test by adding a row to ``INFOS``, with a
few configurations and the bad values its validators must refuse. Each row runs on both paths
(``foreach=True``, the fast path, and ``foreach=False``, the reference).

Besides torch's contract it holds what ``MemoryOptimizer`` promises on top: ``load_state_dict``
re-checks everything it loads and changes nothing when it refuses; complex parameters equal
their real view; fp16/bf16 parameters are stepped in fp32; empty parameters are harmless.
"""

from __future__ import annotations

import copy
import io
import math
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from optim_support import batch, flat_params, loss_at, make_model, train

from assocmem import MemoryOptimizer, available_memories, get_preset
from assocmem.optim.presets.cms import m3_config

NAN, INF = float("nan"), float("inf")


@dataclass(frozen=True)
class OptimizerInfo:
    """One preset: configurations every test runs, and values its validators must refuse."""

    memory: str
    configs: tuple[dict[str, Any], ...] = ({},)
    lr: float = 1e-2
    bad: dict[str, tuple[Any, ...]] = field(default_factory=dict)


INFOS = [
    OptimizerInfo(
        "adam",
        ({}, {"betas": (0.5, 0.8), "weight_decay": 0.1, "decoupled_weight_decay": False}),
        bad={"betas": ((NAN, 0.9), (0.9, 1.0), (0.9,)), "eps": (NAN, -1e-8, INF)},
    ),
    OptimizerInfo(
        "momentum",
        ({}, {"nesterov": True, "weight_decay": 0.1}),
        bad={"momentum": (NAN, -0.1, 1.0), "nesterov": (1,)},
    ),
    OptimizerInfo(
        "delta",
        ({}, {"erase": "row", "weight_decay": 0.1}),
        bad={"gamma": (1.5, NAN), "alpha": (INF,), "erase": ("column",)},
    ),
    OptimizerInfo(
        "deep",
        ({}, {"retention_target": "zero", "hidden": 3}),
        lr=1e-3,
        bad={"hidden": (0, 2.5), "eps": (NAN,), "retention": (1.5,)},
    ),
    OptimizerInfo(
        "muon",
        (
            {},
            {"scale": "rms", "nesterov": False},
            {"ns_coefficients": "polar_express", "ns_steps": 4, "ns_lower": 1e-2},
            {"gamma": 0.5, "erase": "row", "row_norm": True},
        ),
        lr=1e-3,
        bad={
            "ns_steps": (0,),
            "scale": ("frobenius",),
            "adam_betas": ((NAN, 0.9),),
            "ns_coefficients": ("cubic",),
            "ns_lower": (0.0, 1.0),
            "gamma": (1.5, NAN),
            "erase": ("column",),
            "row_norm": (1,),
            "row_beta2": (1.0,),
        },
    ),
    OptimizerInfo(
        "cms",
        (
            {},
            m3_config(freq=2),
            {"normalize": False, "accumulate": False, "freqs": (1, 3)},
            {**m3_config(freq=2), "ns_coefficients": "polar_express"},
        ),
        lr=1e-3,
        bad={"alphas": ((NAN, 0.9),), "freqs": ((1, 0),), "eps": (INF,), "beta2": (NAN,)},
    ),
    OptimizerInfo(
        "landscape",
        (
            {},
            {"form": "lowrank", "rank": 2},
            {"form": "scalar", "period": 2, "beta": 0.5},
            {"form": "diagonal", "beta": 0.5},
        ),
        bad={"form": ("dense",), "h_max": (NAN,), "rho": (2.0,), "period": (0,), "sigma": (0.0,)},
    ),
    OptimizerInfo("learned", lr=1e-3, bad={"checkpoint": (3,)}),
]
# Every preset has a row: a preset registered without one fails here, not silently untested.
assert sorted(i.memory for i in INFOS) == available_memories()

ROWS = [
    pytest.param(info, config, foreach, id=f"{info.memory}-{k}-{'fast' if foreach else 'ref'}")
    for info in INFOS
    for k, config in enumerate(info.configs)
    for foreach in (True, False)
]
# Tests of the plumbing around the preset (arguments, groups, loading) run on one path.
CONFIGS = [
    pytest.param(info, config, id=f"{info.memory}-{k}")
    for info in INFOS
    for k, config in enumerate(info.configs)
]
# Values every group must refuse, whatever its preset.
COMMON_BAD = {
    "lr": (NAN, INF, -1e-3, "abc", None, torch.tensor([1e-3, 1e-3])),
    "weight_decay": (NAN, -0.1),
    "maximize": ("yes",),
    "foreach": (1,),
    "decoupled_weight_decay": (None,),
}


def make_opt(params, info, config, foreach=None, **kw):
    return MemoryOptimizer(
        params,
        info.memory,
        **{"lr": info.lr, "foreach": foreach, **config, **kw},
    )


def gradients(shapes, step, dtype=torch.float32):
    """A fixed gradient sequence, spanning several orders of magnitude per tensor."""
    gen = torch.Generator().manual_seed(100 + step)
    out = []
    for shape in shapes:
        g = torch.randn(shape, generator=gen, dtype=torch.float64)
        scale = 10 ** (4 * torch.rand(shape, generator=gen, dtype=torch.float64) - 3)
        out.append((g * scale).to(dtype))
    return out


SHAPES = [(6, 4), (3, 2, 2, 2), (4,), ()]  # matrix, conv kernel, vector, scalar


def tensors(shapes, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64).to(dtype))
        for s in shapes
    ]


def step_with(opt, params, grads):
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    opt.step()


def snapshot(opt):
    """Everything ``load_state_dict`` may replace, deep-copied."""
    return copy.deepcopy({"sd": opt.state_dict(), "groups": opt.param_groups})


def assert_same(a, b):
    """Equal structures; tensors equal to the bit (NaN included), in dtype too."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a.view(-1).view(torch.uint8), b.view(-1).view(torch.uint8))
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b)
    else:
        assert a == b


def trained(info, config, foreach=None, steps=3, **kw):
    model = make_model()
    opt = make_opt(model.parameters(), info, config, foreach, **kw)
    train(model, opt, range(steps))
    return model, opt


# --- torch's generic contract -------------------------------------------------------------


@pytest.mark.parametrize(("info", "config"), CONFIGS)
def test_step_returns_the_closure_loss_and_moves_params(info, config, foreach=None):
    model = make_model()
    opt = make_opt(model.parameters(), info, config, foreach)
    before = flat_params(model)

    def closure():
        opt.zero_grad()
        loss = loss_at(model, 0)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.item() > 0
    assert not torch.equal(flat_params(model), before)
    assert torch.isfinite(flat_params(model)).all()
    repr(opt)  # printable


@pytest.mark.parametrize(("info", "config"), CONFIGS)
def test_step_without_gradients_is_a_no_op_and_creates_no_state(info, config, foreach=None):
    model = make_model()
    model.gain.requires_grad_(False)
    opt = make_opt(model.parameters(), info, config, foreach)
    before = flat_params(model)
    opt.step()  # no parameter has a gradient yet
    assert torch.equal(flat_params(model), before) and len(opt.state) == 0
    train(model, opt, range(3))
    assert model.gain not in opt.state and model.gain.item() == 1.0
    assert all(p in opt.state for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize(("info", "config", "foreach"), ROWS)
def test_zero_gradients_from_the_start_move_nothing(info, config, foreach):
    # torch's test_step_is_noop_for_zero_grads: an optimizer with an empty memory and zero
    # gradients (no weight decay) leaves the parameters where they are.
    params = tensors(SHAPES)
    before = [p.detach().clone() for p in params]
    opt = make_opt(params, info, config, foreach, weight_decay=0.0)
    for _ in range(3):
        step_with(opt, params, [torch.zeros_like(p) for p in params])
    for p, b in zip(params, before, strict=True):
        assert torch.equal(p, b)


@pytest.mark.parametrize(("info", "config"), CONFIGS)
def test_zero_grad_sets_gradients_to_none_or_zero(info, config, foreach=None):
    model, opt = trained(info, config, foreach, steps=1)
    loss_at(model, 1).backward()
    opt.zero_grad(set_to_none=False)
    assert all(torch.count_nonzero(p.grad) == 0 for p in model.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(("info", "config", "foreach"), ROWS)
def test_state_dict_round_trip_resumes_bit_exactly(info, config, foreach):
    reference, ref_opt = trained(info, config, foreach, steps=10, weight_decay=0.01)

    model, opt = trained(info, config, foreach, steps=4, weight_decay=0.01)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    kept = copy.deepcopy(saved["opt"])

    resumed = make_model(seed=123)  # another init: everything must come from the checkpoint
    resumed.load_state_dict(saved["model"])
    resumed_opt = make_opt(resumed.parameters(), info, config, foreach, weight_decay=0.01)
    resumed_opt.load_state_dict(saved["opt"])
    assert_same(saved["opt"], kept)  # loading did not modify the state dict it was given
    assert_same(resumed_opt.state_dict(), opt.state_dict())  # deterministic, equal params
    train(resumed, resumed_opt, range(4, 10))
    assert torch.equal(flat_params(resumed), flat_params(reference))


@pytest.mark.parametrize(("info", "config"), CONFIGS)
def test_plain_number_step_loads_like_a_tensor(info, config, foreach=None):
    # torch's test_load_nontensor_step: torch.optim turns a plain-number step into a tensor.
    model, opt = trained(info, config, foreach)
    saved = copy.deepcopy(opt.state_dict())  # its per-parameter dicts are opt's own
    for state in saved["state"].values():
        state["step"] = state["step"].item()
    other = make_model()
    other.load_state_dict(model.state_dict())
    other_opt = make_opt(other.parameters(), info, config, foreach)
    other_opt.load_state_dict(saved)
    assert all(isinstance(s["step"], torch.Tensor) for s in other_opt.state.values())
    train(model, opt, range(3, 5))
    train(other, other_opt, range(3, 5))
    assert torch.equal(flat_params(other), flat_params(model))


@pytest.mark.parametrize(("info", "config"), CONFIGS)
def test_load_casts_the_state_to_the_parameters_dtype(info, config, foreach=None):
    model64 = make_model().double()
    opt64 = make_opt(model64.parameters(), info, config, foreach)
    for t in range(2):
        opt64.zero_grad()
        x, y = (v.double() for v in batch(t))
        (model64(x) - y).pow(2).mean().backward()
        opt64.step()
    float64_state = [
        v for s in opt64.state.values() for k, v in s.items() if k != "step" and v.dim() > 0
    ]
    assert all(v.dtype == torch.float64 for v in float64_state)
    model32 = make_model()
    opt32 = make_opt(model32.parameters(), info, config, foreach)
    opt32.load_state_dict(opt64.state_dict())
    fresh_model = make_model()
    fresh = make_opt(fresh_model.parameters(), info, config, foreach)
    train(fresh_model, fresh, range(1))
    for loaded, made in zip(opt32.state.values(), fresh.state.values(), strict=True):
        for key, value in made.items():
            assert loaded[key].dtype == value.dtype and loaded[key].device == value.device
    train(model32, opt32, range(2, 4))
    assert torch.isfinite(flat_params(model32)).all()


@pytest.mark.parametrize(("info", "config"), CONFIGS)
def test_add_param_group_and_per_group_lr(info, config, foreach=None):
    model = make_model()
    opt = make_opt(
        [{"params": model.conv.parameters(), "lr": 0.0}, {"params": model.fc.parameters()}],
        info,
        config,
        foreach,
    )
    opt.add_param_group({"params": [*model.out.parameters(), model.gain]})
    assert opt.param_groups[2]["lr"] == info.lr
    conv = torch.cat([p.detach().flatten() for p in model.conv.parameters()])
    out = torch.cat([p.detach().flatten() for p in model.out.parameters()])
    train(model, opt, range(3))
    assert torch.equal(torch.cat([p.detach().flatten() for p in model.conv.parameters()]), conv)
    assert not torch.equal(torch.cat([p.detach().flatten() for p in model.out.parameters()]), out)
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [model.gain]})


@pytest.mark.parametrize(("info", "config", "foreach"), ROWS)
def test_maximize_on_minus_loss_equals_minimize(info, config, foreach):
    a, b = make_model(), make_model()
    opt_a = make_opt(a.parameters(), info, config, foreach)
    opt_b = make_opt(b.parameters(), info, config, foreach, maximize=True)
    for t in range(5):
        opt_a.zero_grad()
        loss_at(a, t).backward()
        opt_a.step()
        opt_b.zero_grad()
        (-loss_at(b, t)).backward()
        opt_b.step()
    assert torch.equal(flat_params(a), flat_params(b))


@pytest.mark.parametrize(("info", "config", "foreach"), ROWS)
def test_tensor_lr_equals_float_lr(info, config, foreach):
    # torch accepts a tensor lr (compiled steps then do not recompile when it changes).
    lr = torch.tensor(info.lr)
    base = lr.item()  # the scheduler below writes into lr
    a, b = make_model(), make_model()
    opt_a = make_opt(a.parameters(), info, config, foreach, lr=base)
    opt_b = make_opt(b.parameters(), info, config, foreach, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt_b, lambda t: 0.5**t)
    for t in range(4):
        train(a, opt_a, range(t, t + 1))
        train(b, opt_b, range(t, t + 1))
        assert torch.equal(flat_params(a), flat_params(b))
        sched.step()  # a scheduler writes into the tensor lr
        opt_a.param_groups[0]["lr"] = base * 0.5 ** (t + 1)  # exact: a power of two
    assert isinstance(opt_b.param_groups[0]["lr"], torch.Tensor)
    saved = opt_b.state_dict()
    c = make_model()
    make_opt(c.parameters(), info, config, foreach).load_state_dict(saved)


@pytest.mark.parametrize(("info", "config"), CONFIGS)
def test_bad_hyperparameters_are_refused_before_params_are_added(info, config):
    bad = {**COMMON_BAD, **info.bad}
    if not get_preset(info.memory).compiles():
        bad["compile"] = (True,)
    consumed = []

    def params():
        consumed.append(True)
        yield torch.nn.Parameter(torch.zeros(2))

    for key, values in bad.items():
        for value in values:
            with pytest.raises(ValueError, match=key):
                make_opt(params(), info, {**config, key: value})
            with pytest.raises(ValueError, match=key):  # an empty list: the argument first
                make_opt([], info, {**config, key: value})
            opt = make_opt([torch.nn.Parameter(torch.zeros(2))], info, config)
            with pytest.raises(ValueError, match=key):
                opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], key: value})
            assert len(opt.param_groups) == 1
    assert not consumed


@pytest.mark.parametrize(("info", "config"), CONFIGS)
def test_load_refuses_bad_hyperparameters_and_changes_nothing(info, config):
    bad = {**COMMON_BAD, **info.bad}
    if not get_preset(info.memory).compiles():
        bad["compile"] = (True,)
    _, opt = trained(info, config)
    good = opt.state_dict()
    before = snapshot(opt)
    for key, values in bad.items():
        for value in values:
            saved = copy.deepcopy(good)
            saved["param_groups"][0][key] = value
            with pytest.raises(ValueError, match=rf"param group 0 .*{key}"):
                opt.load_state_dict(saved)
            assert_same(snapshot(opt), before)


def _corruptions(opt):
    """(description, edit of a state dict) pairs that a load must refuse."""
    preset = get_preset(opt.param_groups[0]["memory"])
    state = opt.state_dict()["state"]
    pid = max(state, key=lambda i: max(v.numel() for v in state[i].values()))  # the largest
    out = []
    for key, value in state[pid].items():
        if key == "step" or not value.is_floating_point() or value.numel() == 0:
            continue
        # +inf in a sum of squares is what a finite 1e30 gradient leaves (as in torch's Adam)
        # and loads (test_contract); landscape's bounded curvature refuses it (test_landscape)
        squares = key in preset.non_negative_state
        for bad in (NAN, -INF) if squares else (NAN, INF, -INF):
            out.append(
                (key, lambda sd, k=key, b=bad: sd["state"][pid][k].view(-1).__setitem__(0, b))
            )
        if key in preset.non_negative_state:
            out.append((key, lambda sd, k=key: sd["state"][pid][k].view(-1).__setitem__(0, -1.0)))
        out.append(
            (key, lambda sd, k=key: sd["state"][pid].__setitem__(k, sd["state"][pid][k].int()))
        )
    for bad in (-1, NAN, INF, 2.5, "abc", torch.tensor([1.0, 2.0])):
        out.append(("step", lambda sd, b=bad: sd["state"][pid].__setitem__("step", b)))
    for bad in ("abc", None, NAN, [1], -1, 1.5):
        out.append(
            ("skipped_steps", lambda sd, b=bad: sd["assocmem"].__setitem__("skipped_steps", b))
        )
    out.append(("state keys", lambda sd: sd["state"][pid].pop(next(iter(sd["state"][pid])))))
    return out


@pytest.mark.parametrize(("info", "config"), CONFIGS)
def test_load_refuses_corrupt_state_and_changes_nothing(info, config):
    _, opt = trained(info, config)
    good = opt.state_dict()
    before = snapshot(opt)
    for key, corrupt in _corruptions(opt):
        saved = copy.deepcopy(good)
        corrupt(saved)
        with pytest.raises(ValueError, match=key):
            opt.load_state_dict(saved)
        assert_same(snapshot(opt), before)
    opt.load_state_dict(copy.deepcopy(good))  # and the intact one still loads


# --- what MemoryOptimizer adds: dtypes, complex and empty parameters ---------------------


@pytest.mark.parametrize(("info", "config", "foreach"), ROWS)
def test_complex_parameter_equals_its_real_view(info, config, foreach):
    # torch's test_complex: optimizing z equals optimizing view_as_real(z).
    shapes = [(6, 4), (5,), ()]
    gen = torch.Generator().manual_seed(0)
    zs = [torch.nn.Parameter(torch.randn(s, dtype=torch.complex64, generator=gen)) for s in shapes]
    reals = [torch.nn.Parameter(torch.view_as_real(z).detach().clone()) for z in zs]
    opt_z = make_opt(zs, info, config, foreach)
    opt_r = make_opt(reals, info, config, foreach)
    for t in range(4):
        grads = gradients([r.shape for r in reals], t)
        step_with(opt_z, zs, [torch.view_as_complex(g) for g in grads])
        step_with(opt_r, reals, grads)
        for z, r in zip(zs, reals, strict=True):
            assert torch.equal(torch.view_as_real(z), r)
    assert opt_z.skipped_steps == 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("info", "config", "foreach"), ROWS)
def test_low_precision_parameter_follows_the_float32_trajectory(info, config, foreach, dtype):
    # An fp16/bf16 parameter is the fp32 run rounded to its dtype, to the bit, and its memory
    # is the fp32 run's: the optimizer steps an fp32 master copy. (In fp16 arithmetic eps=1e-8
    # and squared gradients above 256 underflow or overflow; in bf16 steps below half an ulp
    # vanish: landscape's secant pairs then went to zero.) A change made to the parameter
    # outside the optimizer (here: halved) is picked up at the next step.
    init = [p.detach().to(dtype).float() for p in tensors(SHAPES)]
    low = [torch.nn.Parameter(x.to(dtype)) for x in init]
    ref = [torch.nn.Parameter(x.clone()) for x in init]
    if info.memory == "landscape":  # its noise floor must exceed the gradients' rounding
        config = {**config, "y_tol": 2 * torch.finfo(dtype).eps}
    opt_low = make_opt(low, info, config, foreach)
    opt_ref = make_opt(ref, info, config, foreach)
    for t in range(5):
        if t == 3:
            with torch.no_grad():
                for p, r in zip(low, ref, strict=True):
                    p.mul_(0.5)
                    r.copy_(p)
        grads = [g.to(dtype) for g in gradients(SHAPES, t)]
        step_with(opt_low, low, grads)
        step_with(opt_ref, ref, [g.float() for g in grads])
        for p, r in zip(low, ref, strict=True):
            assert p.dtype == dtype and torch.equal(p, r.to(dtype))
    assert opt_low.skipped_steps == 0
    for p, r in zip(low, ref, strict=True):
        state = dict(opt_low.state[p])
        assert torch.equal(state.pop("master_param"), r)
        assert_same(state, opt_ref.state[r])


@pytest.mark.parametrize(("info", "config", "foreach"), ROWS)
def test_empty_parameters_are_harmless(info, config, foreach):
    # An empty tensor neither crashes a preset nor writes NaN into its state, and the other
    # parameters step exactly as they would without it.
    params = tensors(SHAPES)
    plain = [torch.nn.Parameter(p.detach().clone()) for p in params]
    empties = [torch.nn.Parameter(torch.zeros(s)) for s in [(0, 4), (4, 0), (0,), (0, 2, 3, 3)]]
    opt = make_opt(params + empties, info, config, foreach)
    opt_plain = make_opt(plain, info, config, foreach)
    for t in range(4):
        grads = gradients(SHAPES, t)
        step_with(opt, params + empties, grads + [torch.zeros_like(e) for e in empties])
        step_with(opt_plain, plain, grads)
    for p, q in zip(params, plain, strict=True):
        assert torch.equal(p, q)
    for e in empties:
        assert e.numel() == 0 and e in opt.state
        assert all(bool(torch.isfinite(v).all()) for v in opt.state[e].values())
    other = make_opt(
        [torch.nn.Parameter(p.detach().clone()) for p in params + empties], info, config, foreach
    )
    other.load_state_dict(opt.state_dict())
