"""The Muon-style param split: roles as documented, every parameter in exactly one group."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from assocmem import MemoryOptimizer
from assocmem.optim import param_groups, param_roles
from assocmem.optim.presets.cms import m3_config


class Net(nn.Module):
    """One parameter of every role, a tied embedding/head, and a frozen layer."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.pos = nn.Parameter(torch.zeros(1, 3, 8))  # a table, not a map
        self.conv = nn.Conv1d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm1d(8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.norm = nn.LayerNorm(8)
        self.frozen = nn.Linear(8, 8)
        self.frozen.requires_grad_(False)
        self.scale = nn.Parameter(torch.ones(()))
        self.head = nn.Linear(8, 10, bias=False)
        self.head.weight = self.embed.weight  # tied: one parameter, two owners

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.pos
        x = self.bn(self.conv(x.transpose(1, 2))).transpose(1, 2)
        x = self.norm(x + self.attn(x, x, x, need_weights=False)[0])
        return self.head(self.scale * self.frozen(x))


EXPECTED = {
    "embed.weight": "embedding",  # also head.weight: an embedding owner wins
    "pos": "other",
    "conv.weight": "hidden",
    "conv.bias": "bias",
    "bn.weight": "norm",
    "bn.bias": "norm",
    "attn.in_proj_weight": "hidden",
    "attn.in_proj_bias": "bias",
    "attn.out_proj.weight": "hidden",
    "attn.out_proj.bias": "bias",
    "norm.weight": "norm",
    "norm.bias": "norm",
    "frozen.weight": "hidden",
    "frozen.bias": "bias",
    "scale": "other",
}


def ids(params) -> list[int]:
    return [id(p) for p in params]


def test_roles_as_documented():
    assert param_roles(Net()) == EXPECTED


def test_the_head_is_the_last_layer_with_its_bias_and_an_mlp_input_layer_is_hidden():
    mlp = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 2))
    roles = param_roles(mlp)
    assert roles == {
        "0.weight": "hidden",
        "0.bias": "bias",
        "2.weight": "hidden",
        "2.bias": "bias",
        "4.weight": "head",
        "4.bias": "head",
    }


def test_every_parameter_in_exactly_one_group_shared_and_frozen_included():
    model = Net()
    groups = param_groups(model)
    grouped = [i for g in groups for i in ids(g["params"])]
    assert sorted(grouped) == sorted(ids(model.parameters()))  # parameters() lists a tie once
    assert len(grouped) == len(set(grouped))
    hidden = {id(p) for n, p in model.named_parameters() if EXPECTED[n] == "hidden"}
    assert [g["name"] for g in groups] == ["hidden", "rest"]
    assert set(ids(groups[0]["params"])) == hidden
    assert groups[1]["memory"] == "adam"


def test_trainable_only_leaves_out_frozen_parameters_only():
    model = Net()
    grouped = {i for g in param_groups(model, trainable_only=True) for i in ids(g["params"])}
    assert grouped == {id(p) for p in model.parameters() if p.requires_grad}
    assert id(model.frozen.weight) not in grouped


# Layers the strategy stacks (every one maps 6 features to 6).
LAYERS = {
    "linear": lambda: nn.Linear(6, 6),
    "linear_nobias": lambda: nn.Linear(6, 6, bias=False),
    "layernorm": lambda: nn.LayerNorm(6),
    "rmsnorm": lambda: nn.RMSNorm(6),
    "gelu": nn.GELU,
    "frozen": lambda: nn.Linear(6, 6).requires_grad_(False),
}


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from(sorted(LAYERS)), max_size=6), st.booleans())
def test_any_stack_is_partitioned_into_the_two_groups(layers, tie):
    torch.manual_seed(0)
    model = nn.Sequential(*[LAYERS[name]() for name in layers])
    ends = (model[0], model[-1]) if len(model) >= 2 else ()
    if tie and ends and all(isinstance(m, nn.Linear) for m in ends):
        model[-1].weight = model[0].weight  # tied first and last layer (same 6x6 shape)
    grouped = [i for g in param_groups(model) for i in ids(g["params"])]
    assert sorted(grouped) == sorted(ids(model.parameters()))
    assert len(grouped) == len(set(grouped))
    hidden = [g for g in param_groups(model) if g["name"] == "hidden"]
    for p in hidden[0]["params"] if hidden else []:
        assert p.dim() == 2  # only matrices are orthogonalised


def test_overrides_by_pattern_by_alias_and_by_predicate():
    model = Net()
    roles = param_roles(model, {"pos": "hidden", "attn.*": "other"})
    assert roles["pos"] == "hidden"
    assert roles["attn.in_proj_weight"] == roles["attn.out_proj.weight"] == "other"
    assert roles["conv.weight"] == "hidden"  # untouched
    # A tied parameter is matched under any of its names.
    assert param_roles(model, {"head.weight": "head"})["embed.weight"] == "head"
    by_shape = param_roles(model, lambda name, p: "other" if p.dim() == 3 else None)
    assert by_shape["conv.weight"] == "other" and by_shape["attn.in_proj_weight"] == "hidden"


@pytest.mark.parametrize(
    ("roles", "match"),
    [
        ({"pos": "matrix"}, "unknown role 'matrix'"),
        ({"nothing.*": "hidden"}, "match no parameter"),
        ({"embed.*": "hidden", "head.*": "head"}, "different roles"),
        (lambda name, p: "vector", "unknown role 'vector'"),
        (["pos"], "mapping of name patterns"),
    ],
)
def test_bad_overrides_are_named(roles, match):
    with pytest.raises((ValueError, TypeError), match=match):
        param_roles(Net(), roles)


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="needs an nn.Module"):
        param_groups([nn.Parameter(torch.ones(2))])
    with pytest.raises(ValueError, match="'params' and 'name' are chosen here"):
        param_groups(Net(), hidden={"params": []})


def make_mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.LayerNorm(7), nn.GELU(), nn.Linear(7, 7), nn.GELU(),
                         nn.Linear(7, 3))  # fmt: skip


def steps(model: nn.Module, opt, n: int = 5) -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(n):
        opt.zero_grad()
        x, y = torch.randn(16, 5, generator=g), torch.randint(3, (16,), generator=g)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize(
    ("memory", "hyper"), [("muon", {}), ("cms", m3_config())], ids=["muon", "cms_m3"]
)
def test_one_optimizer_over_the_groups_equals_two_optimizers(memory, hyper):
    """The composite is exactly the preset on the hidden matrices beside Adam on the rest: the
    same foreach kernels run on the same tensors in the same order, so the equality is exact."""
    split, apart = make_mlp(0), make_mlp(0)
    rest = {"memory": "adam", "lr": 1e-3, "betas": (0.9, 0.95)}
    opt = MemoryOptimizer(param_groups(split, rest=rest), memory=memory, lr=0.02, **hyper)
    steps(split, opt)
    groups = param_groups(apart)
    hidden_opt = MemoryOptimizer(groups[0]["params"], memory=memory, lr=0.02, **hyper)
    rest_opt = MemoryOptimizer(groups[1]["params"], memory="adam", lr=1e-3, betas=(0.9, 0.95))

    class Both:
        def step(self):
            hidden_opt.step()
            rest_opt.step()

        def zero_grad(self):
            hidden_opt.zero_grad()
            rest_opt.zero_grad()

    steps(apart, Both())
    for (name, a), b in zip(split.named_parameters(), apart.parameters(), strict=True):
        assert torch.equal(a, b), name
    assert opt.param_groups[0]["memory"] == memory and opt.param_groups[1]["memory"] == "adam"
    assert set(opt.state[split[0].weight]) == set(hidden_opt.state[apart[0].weight])


def test_the_split_changes_what_muon_does_to_the_head():
    """Without the split muon orthogonalises the head; with it the head is Adam's, vectors are
    Adam's either way (muon's own fallback has these betas). One step: same gradients."""
    plain, split = make_mlp(0), make_mlp(0)
    steps(plain, MemoryOptimizer(plain.parameters(), memory="muon", lr=0.02), n=1)
    rest = {"memory": "adam", "betas": (0.9, 0.95)}
    steps(split, MemoryOptimizer(param_groups(split, rest=rest), memory="muon", lr=0.02), n=1)
    for i in (0, 3):
        assert torch.equal(plain[i].weight, split[i].weight)  # hidden: the same muon step
        # A vector: Adam's equations in both, but the split's Adam group steps through torch's
        # fused kernel and muon's fallback through foreach ops, which round differently: one
        # step moves a bias by ~lr = 0.02 (|m_hat / sqrt(v_hat)| = 1 at step 1), so the two
        # differ by a few ulps of that move and of the bias itself (|b| < 1: ulp <= 1.2e-7).
        torch.testing.assert_close(plain[i].bias, split[i].bias, rtol=0, atol=2.5e-7)
    assert not torch.allclose(plain[5].weight, split[5].weight)


def test_a_rest_group_given_only_its_lr_stays_on_adam():
    # rest={"lr": ...} replaced the default {"memory": "adam"}: the tied embedding and head,
    # norms and biases were orthogonalised by the optimizer's muon (a user audit)
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 10))
    groups = param_groups(model, rest={"lr": 2e-3})
    assert [(g["name"], g.get("memory"), g.get("lr")) for g in groups] == [
        ("hidden", None, None), ("rest", "adam", 2e-3)
    ]  # fmt: skip
    assert param_groups(model, rest={"memory": "muon"})[1]["memory"] == "muon"  # when asked


def test_a_model_without_an_output_layer_has_no_head():
    # the last block's FFN matrix was the "head" (Adam) while the same layer one block earlier
    # was hidden: an encoder, a language model whose logits are F.linear of the embedding
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32), num_layers=2)
    roles = param_roles(encoder)
    assert "head" not in roles.values()
    assert roles["layers.0.linear2.weight"] == roles["layers.1.linear2.weight"] == "hidden"
    # a head after repeated blocks, and the last layer of a plain Sequential, are heads
    with_head = nn.Sequential(encoder, nn.Linear(16, 3))
    assert param_roles(with_head)["1.weight"] == "head"
    assert param_roles(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))[
        "2.weight"
    ] == "head"  # fmt: skip


def test_grouped_and_depthwise_conv_weights_are_not_orthogonalised():
    # a depthwise conv is C independent filters: orthogonalised as one (C, 9) matrix, channel
    # 0's update moved with channel 5's gradient (a user audit)
    model = nn.Sequential(
        nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 8, 3, groups=2), nn.Conv2d(8, 4, 1),
        nn.Flatten(), nn.Linear(4, 2),
    )  # fmt: skip
    roles = param_roles(model)
    assert roles["0.weight"] == roles["1.weight"] == "other"
    assert roles["2.weight"] == "hidden"
