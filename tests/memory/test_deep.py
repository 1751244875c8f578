import pytest
import torch

from assocmem.memory import (
    DeepMemory,
    deep_memory,
    deep_read,
    deep_write,
    inner_grad,
    inner_loss,
    per_key_grads,
)


def pairs(n=16, k=4, v=3):
    return torch.randn(n, k), torch.randn(n, v)


def test_inner_loss_falls_over_repeated_writes():
    keys, values = pairs()
    M = deep_memory(4, 3, 32, seed=0)
    losses = [inner_loss(M, keys, values).item()]
    for _ in range(200):
        M = deep_write(M, keys, values, lr=0.2)
        losses.append(inner_loss(M, keys, values).item())
    assert losses[-1] < 0.2 * losses[0]
    assert all(
        b <= a + 1e-6 for a, b in zip(losses[:20], losses[1:21], strict=True)
    )  # monotone early on


def test_retention_toward_zero_shrinks_weights_when_lr_is_zero():
    keys, values = pairs()
    M = deep_memory(4, 3, 8, seed=1)
    M.skip.normal_()
    out = deep_write(M, keys, values, lr=0.0, retention=0.5)
    for new, old in zip(out, M, strict=True):
        torch.testing.assert_close(new, 0.5 * old)


def test_retention_toward_an_anchor():
    keys, values = pairs()
    anchor = deep_memory(4, 3, 8, seed=1)
    M = deep_write(anchor, keys, values, lr=0.5)
    out = deep_write(M, keys, values, lr=0.0, retention=0.25, anchor=anchor)
    for new, old, p0 in zip(out, M, anchor, strict=True):
        torch.testing.assert_close(new, p0 + 0.25 * (old - p0))
    assert all(
        torch.equal(a, b) for a, b in zip(deep_write(M, keys, values, lr=0.0), M, strict=True)
    )


def test_batched_write_equals_a_per_key_loop_mean():
    keys, values = pairs(n=6)
    M = deep_memory(4, 3, 8, seed=2, skip_init=torch.randn(3, 4))
    M = M._replace(b1=torch.randn(8))
    batched = deep_write(M, keys, values, lr=0.3, retention=0.9)
    loop = [inner_grad(M, k[None], v[None]) for k, v in zip(keys, values, strict=True)]
    by_hand = DeepMemory(
        *(0.9 * p - 0.3 * torch.stack([g[i] for g in loop]).mean(0) for i, p in enumerate(M))
    )
    for a, b in zip(batched, by_hand, strict=True):
        torch.testing.assert_close(a, b)
    vmapped = per_key_grads(M, keys, values)
    for a, b in zip(vmapped, zip(*loop, strict=True), strict=True):
        torch.testing.assert_close(a, torch.stack(b))


def test_skip_gradient_is_the_delta_rule_surprise():
    keys, values = pairs(n=5)
    M = deep_memory(4, 3, 8, seed=3, skip_init=torch.randn(3, 4))
    surprise = deep_read(M, keys) - values
    torch.testing.assert_close(inner_grad(M, keys, values).skip, surprise.mT @ keys / 5)


def test_read_shapes_and_no_skip():
    M = deep_memory(4, 3, 8, seed=0)
    assert deep_read(M, torch.randn(4)).shape == (3,)
    assert deep_read(M, torch.randn(7, 4)).shape == (7, 3)
    assert deep_read(M, torch.randn(2, 7, 4)).shape == (2, 7, 3)
    bare = deep_memory(4, 3, 8, skip=False, seed=0)
    assert bare.skip is None
    keys, values = pairs()
    assert deep_write(bare, keys, values, lr=0.1).skip is None


def test_fresh_memory_is_reproducible_and_zero_output_reads_the_skip():
    a, b = deep_memory(4, 3, 8, seed=5), deep_memory(4, 3, 8, seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a.w1, deep_memory(4, 3, 8, seed=6).w1)
    S = torch.randn(3, 4)
    M = deep_memory(4, 3, 8, seed=5, skip_init=S, zero_output=True)
    keys = torch.randn(9, 4)
    torch.testing.assert_close(deep_read(M, keys), keys @ S.T)


def test_custom_loss_activation_and_no_grad_context():
    keys, values = pairs()
    M = deep_memory(4, 3, 8, seed=0)
    l1 = lambda pred, v: (pred - v).abs().mean()  # noqa: E731
    with torch.no_grad():
        out = deep_write(M, keys, values, lr=0.1, loss=l1, activation="silu")
    assert inner_loss(out, keys, values, loss=l1, activation="silu") < inner_loss(
        M, keys, values, loss=l1, activation="silu"
    )
    with pytest.raises(ValueError, match="activation"):
        deep_read(M, keys, activation="swish")
    with pytest.raises(ValueError, match="skip_init"):
        deep_memory(4, 3, 8, skip_init=torch.zeros(4, 3))


def test_values_that_do_not_match_the_recall_are_refused():
    state = deep_memory(3, 2, 4, generator=torch.Generator().manual_seed(0))
    keys = torch.ones(4, 3)
    for values in (torch.ones(1, 2), torch.ones(4, 1)):  # would broadcast to (4, 2)
        with pytest.raises(ValueError, match="do not match"):
            deep_write(state, keys, values, lr=0.1)


def test_an_anchor_must_match_the_memory():
    state = deep_memory(3, 2, hidden=4, seed=0)
    k, v = torch.randn(5, 3), torch.randn(5, 2)
    other_width = deep_memory(3, 2, hidden=1, seed=0)
    as_double = DeepMemory(*(None if t is None else t.double() for t in state))
    for anchor, match in ((other_width, "'w1'"), (as_double, "float64")):
        with pytest.raises(ValueError, match=match):
            deep_write(state, k, v, retention=0.9, anchor=anchor)
    assert deep_write(state, k, v, retention=0.9, anchor=state).w1.shape == state.w1.shape


def test_skip_false_refuses_a_skip_init():
    # it built the skip path that skip=False turned off
    with pytest.raises(ValueError, match="skip=False"):
        deep_memory(4, 3, 8, skip=False, skip_init=torch.ones(3, 4))
    assert deep_memory(4, 3, 8, skip_init=torch.ones(3, 4)).skip.shape == (3, 4)


def test_a_width_that_is_not_a_positive_integer_is_refused():
    for hidden in (0, -1, 2.0, True):  # 0 was "0.0 cannot be raised to a negative power"
        with pytest.raises(ValueError, match="hidden must be an integer >= 1"):
            deep_memory(4, 3, hidden)
    with pytest.raises(ValueError, match="d_key must be an integer >= 1"):
        deep_memory(0, 3, 8)


def test_keys_that_do_not_fit_the_deep_memory_are_refused():
    # as the linear memories refuse them, not by an unnamed matmul error
    state = deep_memory(4, 3, 8, seed=0)
    values = torch.randn(6, 3)
    for keys, match in (
        (torch.randn(6, 5), "mapping 4 -> 3 cannot take keys \\(6, 5\\)"),
        (torch.randn(6, 4, dtype=torch.float64), "float32 memory cannot take torch.float64 keys"),
    ):
        with pytest.raises(ValueError, match=match):
            deep_write(state, keys, values, lr=0.1)
        with pytest.raises(ValueError, match=match):
            deep_read(state, keys)


@pytest.mark.parametrize("d_key, d_value, hidden", [(2, 3, 4096), (512, 64, 64)])
def test_a_fresh_memory_draws_its_weights_at_the_documented_scales(d_key, d_value, hidden):
    # W1 ~ N(0, 1/d_key), W2 ~ N(0, 1/hidden), biases and skip zero. Widths unequal, so a
    # scale taken from the wrong width differs by 45x / 2.8x. Tolerance: the sample std of
    # N >= 4096 normals is within 3 standard errors (1 / sqrt(2N) <= 1.1 %) of the truth with
    # probability > 0.99; 5 % allows that with the fixed seed on any CPU (randn is portable).
    m = deep_memory(d_key, d_value, hidden, seed=0)
    assert abs(float(m.w1.std()) * d_key**0.5 - 1) < 0.05
    assert abs(float(m.w2.std()) * hidden**0.5 - 1) < 0.05
    assert not m.b1.any() and not m.b2.any() and not m.skip.any()


def test_a_tensor_rate_that_would_grow_or_promote_the_memory_is_refused():
    # retain_and_step broadcast it silently: float64 fields, or biases with new dims
    D = deep_memory(4, 3, 8, seed=0)
    k, v = pairs(5)
    with pytest.raises(ValueError, match="lr and retention"):
        deep_write(D, k, v, lr=0.1, retention=torch.tensor([0.9], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"lr of shape \(2, 1, 1\) does not broadcast"):
        deep_write(D, k, v, lr=torch.full((2, 1, 1), 0.1))
    same = deep_write(D, k, v, lr=torch.tensor(0.1), retention=torch.tensor(0.9))
    assert all(getattr(same, f).shape == getattr(D, f).shape for f in ("w1", "b1", "w2", "b2"))


@pytest.mark.parametrize(
    ("keys", "values"),
    [
        (torch.randn(2, 5, 4), torch.randn(2, 5, 3)),  # one grad per batch, not per key
        (torch.randn(4), torch.randn(3)),  # a single pair: vmap over its coordinates
        (torch.randn(0, 4), torch.randn(0, 3)),  # IndexError inside vmap
        (torch.randn(5, 4), torch.randn(4, 3)),
    ],
)
def test_per_key_grads_takes_a_non_empty_batch_of_pairs(keys, values):
    with pytest.raises(ValueError, match=r"non-empty batch of pairs \(n, k\), \(n, v\)"):
        per_key_grads(deep_memory(4, 3, 8, seed=0), keys, values)


def test_a_memory_of_another_kind_is_named():
    from assocmem.memory import matrix_memory, read

    with pytest.raises(TypeError, match="expected a DeepMemory, got MatrixMemory"):
        deep_read(matrix_memory(4, 3), torch.randn(4))
    with pytest.raises(TypeError, match="ElementwiseMemory or a MatrixMemory, got DeepMemory"):
        read(deep_memory(4, 3, 8, seed=0), torch.randn(4))
    with pytest.raises(TypeError, match="got Tensor"):
        read(torch.zeros(3, 4), torch.randn(4))


@pytest.mark.parametrize("rate", ["lr", "retention"])
def test_a_rate_tensor_that_does_not_fit_a_field_is_named(rate):
    # torch's unnamed size error before (the check after the write never ran)
    memory = deep_memory(4, 3, 8, seed=0)
    keys, values = torch.ones(2, 4), torch.ones(2, 3)
    with pytest.raises(ValueError, match=rf"{rate} of shape \(5,\) does not broadcast"):
        deep_write(memory, keys, values, **{"lr": 0.1, "retention": 1.0, rate: torch.ones(5)})


def test_a_deep_memory_saved_with_torch_save_loads_with_torchs_defaults(tmp_path):
    memory = deep_memory(4, 3, 8, seed=0)
    torch.save(memory, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt")  # weights_only=True refused DeepMemory
    assert all(
        (a is None and b is None) or torch.equal(a, b) for a, b in zip(loaded, memory, strict=True)
    )
