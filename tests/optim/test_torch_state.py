"""A torch.optim checkpoint resumes in the preset that equals its optimizer, and back.

The fast paths of ``adam`` and ``momentum`` are torch's fused kernels (test_torch_equivalence),
so a run that switches optimizers at a checkpoint must give the very bits of the run that did
not switch: ``torch.equal``, no tolerance.
"""

import io

import pytest
import torch
from optim_support import TORCH_EQUIVALENTS, flat_params, make_model, train, two_groups

from assocmem import MemoryOptimizer
from assocmem.optim import torch_state

# every case of the equivalence tests: (torch optimizer, memory, torch kwargs, preset kwargs)
CASES = TORCH_EQUIVALENTS


def roundtrip(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_torch_checkpoint_resumes_in_the_preset_bit_for_bit(case):
    torch_cls, memory, kwargs, _ = CASES[case]
    # The run that never switches: torch's fused optimizer for 16 steps.
    model = make_model()
    opt = torch_cls(two_groups(model, 0.01), lr=0.01, fused=True, **kwargs)
    train(model, opt, range(16))
    expected = flat_params(model)

    # The run that switches at step 8: torch's checkpoint loaded into a fresh MemoryOptimizer
    # whose constructor arguments differ from it (they are the checkpoint's after loading).
    model = make_model()
    opt = torch_cls(two_groups(model, 0.01), lr=0.01, fused=True, **kwargs)
    train(model, opt, range(8))
    saved = roundtrip(opt.state_dict())
    ours = MemoryOptimizer(two_groups(model, 0.5), memory, lr=0.5)
    ours.load_state_dict(saved)
    train(model, ours, range(8, 16))
    assert torch.equal(flat_params(model), expected)
    # once loaded it is an ordinary checkpoint of ours
    again = ours.state_dict()
    assert [g["memory"] for g in again["param_groups"]] == [memory, memory]
    assert again["param_groups"][1]["lr"] == 0.005


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_preset_checkpoint_resumes_in_torch_bit_for_bit(case):
    # The way back: torch's load_state_dict takes the preset's state (same keys; group entries
    # torch does not know are carried along unread). It replaces its groups with the saved
    # ones, so its kernel options come from the checkpoint too: ours names none, and torch
    # falls back to its default (foreach) kernel, whose rounding differs from fused's.
    torch_cls, memory, kwargs, ours_kwargs = CASES[case]
    model = make_model()
    opt = torch_cls(two_groups(model, 0.01), lr=0.01, fused=True, **kwargs)
    train(model, opt, range(8))
    for group in opt.param_groups:
        group["fused"] = False
    train(model, opt, range(8, 16))
    expected = flat_params(model)

    model = make_model()
    ours = MemoryOptimizer(two_groups(model, 0.01), memory, lr=0.01, **ours_kwargs)
    train(model, ours, range(8))
    theirs = torch_cls(two_groups(model, 0.5), lr=0.5, fused=True, **kwargs)
    saved = roundtrip(ours.state_dict())
    if memory == "momentum":
        for group in saved["param_groups"]:
            group["dampening"] = 0  # SGD has no default for it; the preset has no such option
    theirs.load_state_dict(saved)
    assert not any(g["fused"] for g in theirs.param_groups)
    train(model, theirs, range(8, 16))
    assert torch.equal(flat_params(model), expected)


def test_sgd_without_momentum_loads_with_no_state():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    train(model, opt, range(3))
    assert all(s.get("momentum_buffer") is None for s in opt.state_dict()["state"].values())
    ours = MemoryOptimizer(model.parameters(), "momentum")
    ours.load_state_dict(opt.state_dict())
    assert ours.param_groups[0]["momentum"] == 0
    expected = make_model()
    for p, q in zip(expected.parameters(), model.parameters(), strict=True):
        p.data.copy_(q.detach())
    reference = torch.optim.SGD(expected.parameters(), lr=0.01)
    train(model, ours, range(3, 6))
    train(expected, reference, range(3, 6))
    assert torch.equal(flat_params(model), flat_params(expected))


def refused(make_torch, make_ours, match):
    """``make_ours``'s optimizer refuses ``make_torch``'s checkpoint and is left as it was."""
    model = make_model()
    theirs = make_torch(model)
    train(model, theirs, range(2))
    ours = make_ours(model)
    train(model, ours, range(1))
    before = ours.state_dict()
    with pytest.raises(ValueError, match=match):
        ours.load_state_dict(theirs.state_dict())
    after = ours.state_dict()
    assert after["param_groups"] == before["param_groups"]
    for k, s in before["state"].items():
        for key, v in s.items():
            assert torch.equal(after["state"][k][key], v)


def test_amsgrad_is_refused():
    refused(
        lambda m: torch.optim.Adam(m.parameters(), amsgrad=True),
        lambda m: MemoryOptimizer(m.parameters(), "adam"),
        "amsgrad=True",
    )


def test_dampening_is_refused():
    refused(
        lambda m: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, dampening=0.1),
        lambda m: MemoryOptimizer(m.parameters(), "momentum"),
        "dampening",
    )


@pytest.mark.parametrize(
    ("make_torch", "memory"),
    [
        (lambda m: torch.optim.Adam(m.parameters()), "delta"),
        (lambda m: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9), "adam"),
    ],
)
def test_another_presets_checkpoint_is_refused(make_torch, memory):
    refused(make_torch, lambda m: MemoryOptimizer(m.parameters(), memory), "loads into")


@pytest.mark.parametrize(
    "make_torch",
    [
        lambda m: torch.optim.RAdam(m.parameters()),  # Adam's state keys, other equations
        lambda m: torch.optim.RMSprop(m.parameters()),
        lambda m: torch.optim.Adagrad(m.parameters()),
    ],
)
def test_other_torch_optimizers_are_refused(make_torch):
    refused(make_torch, lambda m: MemoryOptimizer(m.parameters(), "adam"), "names no memory")


def test_another_librarys_optimizer_on_sgds_arguments_is_refused():
    # torch_optimizer's SGDW (decoupled weight decay) saves SGD's group keys and state, but
    # not the keys every torch optimizer writes: it must not load as SGD (L2 decay)
    model = make_model()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    train(model, sgd, range(2))
    saved = sgd.state_dict()
    for group in saved["param_groups"]:
        for key in ("maximize", "foreach", "differentiable", "fused"):
            del group[key]
    opt = MemoryOptimizer(model.parameters(), "momentum", lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="names no memory"):
        opt.load_state_dict(saved)
    # timm's LARS: SGD's keys and its own
    lars = {**sgd.state_dict()["param_groups"][0], "trust_coeff": 0.001, "trust_clip": False}
    del lars["maximize"], lars["differentiable"]
    assert torch_state.torch_kind(lars) is None


def test_an_old_checkpoint_that_hides_its_decay_kind_is_refused_unless_it_has_none():
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), weight_decay=0.1)
    train(model, opt, range(2))
    saved = opt.state_dict()
    for group in saved["param_groups"]:
        del group["decoupled_weight_decay"]  # as torch < 2.6 wrote it
    with pytest.raises(ValueError, match="decoupled_weight_decay"):
        MemoryOptimizer(model.parameters(), "adam").load_state_dict(saved)
    for group in saved["param_groups"]:
        group["weight_decay"] = 0.0
    MemoryOptimizer(model.parameters(), "adam").load_state_dict(saved)


def test_recognition_is_by_the_groups_keys():
    model = make_model()
    adam = torch.optim.Adam(model.parameters()).state_dict()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1).state_dict()
    ours = MemoryOptimizer(model.parameters(), "adam").state_dict()
    assert torch_state.torch_kind(adam["param_groups"][0]) == "adam"
    assert torch_state.torch_kind(sgd["param_groups"][0]) == "momentum"
    assert torch_state.torch_kind(ours["param_groups"][0]) is None
    assert not torch_state.is_torch_state_dict(ours)
    assert not torch_state.is_torch_state_dict({"param_groups": []})


def test_tensor_betas_are_taken_as_numbers_from_the_constructor_and_a_torch_checkpoint():
    # torch's Adam takes betas=(tensor(0.9), tensor(0.999)) and keeps them in its checkpoint;
    # they were refused with "must be in [0, 1), got tensor(0.9000)"
    tensor_betas = (torch.tensor(0.9), torch.tensor(0.999))
    model = make_model()
    theirs = torch.optim.Adam(model.parameters(), lr=0.01, betas=tensor_betas, fused=True)
    train(model, theirs, range(8))
    saved = roundtrip(theirs.state_dict())
    expected_model = make_model()
    reference = MemoryOptimizer(expected_model.parameters(), "adam", lr=0.01, betas=tensor_betas)
    as_numbers = tuple(float(b) for b in tensor_betas)  # float32 0.9 is 0.89999997615...
    assert reference.param_groups[0]["betas"] == as_numbers
    assert all(isinstance(b, float) for b in reference.param_groups[0]["betas"])
    ours = MemoryOptimizer(model.parameters(), "adam", lr=0.01)
    ours.load_state_dict(saved)
    assert ours.param_groups[0]["betas"] == as_numbers
    train(model, ours, range(8, 16))
    train(expected_model, reference, range(16))
    assert torch.equal(flat_params(model), flat_params(expected_model))


@pytest.mark.parametrize("torch_cls", [torch.optim.Adam, torch.optim.SGD])
def test_a_torch_checkpoint_of_a_complex_parameter_resumes(torch_cls):
    # torch keeps a complex parameter's moments complex, the presets as its real view: the
    # checkpoint was refused ("must be a floating tensor, got a torch.complex64 tensor")
    kwargs = {"momentum": 0.9} if torch_cls is torch.optim.SGD else {}
    memory = "momentum" if torch_cls is torch.optim.SGD else "adam"

    def run(switch_at):
        torch.manual_seed(0)
        w = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.complex64))
        opt = torch_cls([w], lr=0.01, foreach=False, **kwargs)
        for s in range(6):
            if s == switch_at:
                ours = MemoryOptimizer([w], memory, lr=0.5)
                ours.load_state_dict(roundtrip(opt.state_dict()))
                opt = ours
            x = torch.randn(5, 4, dtype=torch.complex64, generator=torch.Generator().manual_seed(s))
            opt.zero_grad()
            (x @ w).abs().pow(2).mean().backward()
            opt.step()
        return w.detach()

    # torch's for-loop kernel against the presets' fused ones: equal to their rounding (a
    # float32 update of size ~lr = 0.01 rounds at ~1e-9; three steps after the switch)
    torch.testing.assert_close(run(switch_at=3), run(switch_at=None), rtol=0, atol=1e-7)
