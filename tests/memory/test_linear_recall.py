"""Recall properties of the linear memories (docs/theory.md, "Memories")."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from assocmem.memory import (
    ElementwiseMemory,
    MatrixMemory,
    delta_write,
    elementwise_memory,
    hebbian_write,
    matrix_memory,
    read,
)

dims = st.integers(min_value=2, max_value=12)
seeds = st.integers(min_value=0, max_value=2**31 - 1)


def _randn(*shape, seed):
    return torch.randn(
        tuple(shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


@given(d_key=dims, d_value=dims, seed=seeds)
def test_delta_write_with_inverse_key_norm_recalls_value_exactly(d_key, d_value, seed):
    M0 = matrix_memory(d_key, d_value, dtype=torch.float64)
    M0 = M0._replace(M=_randn(d_value, d_key, seed=seed))  # a memory that already holds things
    k, v = _randn(d_key, seed=seed + 1), _randn(d_value, seed=seed + 2)
    M = delta_write(M0, k, v, lr=1 / k.dot(k).item())
    torch.testing.assert_close(read(M, k), v)


@given(d_key=dims, d_value=dims, seed=seeds)
def test_delta_write_leaves_orthogonal_keys_untouched(d_key, d_value, seed):
    M0 = matrix_memory(d_key, d_value, dtype=torch.float64)._replace(
        M=_randn(d_value, d_key, seed=seed)
    )
    q, _ = torch.linalg.qr(_randn(d_key, d_key, seed=seed + 1))
    k, other = q[:, 0], q[:, 1]
    M = delta_write(M0, k, _randn(d_value, seed=seed + 2), lr=1.0)
    torch.testing.assert_close(read(M, other), read(M0, other))


@given(d=dims, d_value=dims, seed=seeds, data=st.data())
def test_orthonormal_keys_are_recalled_without_crosstalk(d, d_value, seed, data):
    n = data.draw(st.integers(min_value=1, max_value=d))
    q, _ = torch.linalg.qr(_randn(d, d, seed=seed))
    keys, values = q[:, :n].T, _randn(n, d_value, seed=seed + 1)
    for write in (hebbian_write, delta_write):
        M = write(matrix_memory(d, d_value, dtype=torch.float64), keys, values, lr=1.0)
        torch.testing.assert_close(read(M, keys), values)


@given(d=dims, n=st.integers(1, 10), d_value=dims, seed=seeds)
def test_hebbian_crosstalk_is_the_key_gram_mixture(d, n, d_value, seed):
    keys, values = _randn(n, d, seed=seed), _randn(n, d_value, seed=seed + 1)
    M = hebbian_write(matrix_memory(d, d_value, dtype=torch.float64), keys, values, lr=1.0)
    # read(k_i) = sum_j (k_i . k_j) v_j
    torch.testing.assert_close(read(M, keys), (keys @ keys.T) @ values)


@given(
    retention=st.floats(0.05, 0.99),
    t=st.integers(1, 30),
    seed=seeds,
)
def test_retention_decays_an_old_pair_geometrically(retention, t, seed):
    d = 6
    k, v = _randn(d, seed=seed), _randn(d, seed=seed + 1)
    M = hebbian_write(matrix_memory(d, d, dtype=torch.float64), k, v, lr=1.0)
    first = read(M, k)
    zero = torch.zeros(d, dtype=torch.float64)
    for _ in range(t):  # writes that carry no new pair: only the decay acts
        M = hebbian_write(M, k, zero, lr=1.0, retention=retention)
    torch.testing.assert_close(read(M, k), retention**t * first)


def test_recall_error_grows_once_pairs_outnumber_key_dimension():
    d, d_value = 16, 8
    g = torch.Generator().manual_seed(0)
    errors = {}
    for n in (4, 8, 16, 32, 64):
        keys = torch.nn.functional.normalize(
            torch.randn(n, d, generator=g, dtype=torch.float64), dim=1
        )
        values = torch.randn(n, d_value, generator=g, dtype=torch.float64)
        M = matrix_memory(d, d_value, dtype=torch.float64)
        for _ in range(400):  # delta rule to convergence: the least-squares memory
            M = delta_write(M, keys, values, lr=0.5 / n * d / 4)
        errors[n] = (read(M, keys) - values).pow(2).mean().item()
    # Below the key dimension the pairs fit (up to the conditioning of the random keys at n = d);
    # past it they cannot all be stored and the error climbs toward the value variance.
    assert errors[4] < 1e-6 and errors[8] < 1e-6, errors
    assert errors[8] < errors[16] < errors[32] < errors[64], errors
    assert errors[32] > 0.2, errors


@given(
    shape=st.lists(st.integers(1, 5), min_size=0, max_size=3),
    seed=seeds,
    retention=st.floats(0.0, 1.0),
    lr=st.floats(0.0, 2.0),
)
def test_elementwise_writes_follow_their_equations(shape, seed, retention, lr):
    m0 = _randn(*shape, seed=seed)
    k, v = _randn(*shape, seed=seed + 1), _randn(*shape, seed=seed + 2)
    heb = hebbian_write(ElementwiseMemory(m0), k, v, lr=lr, retention=retention)
    torch.testing.assert_close(heb.m, retention * m0 + lr * v * k)
    dlt = delta_write(ElementwiseMemory(m0), k, v, lr=lr, retention=retention)
    torch.testing.assert_close(dlt.m, retention * m0 - lr * (m0 * k - v) * k)
    keyless = hebbian_write(elementwise_memory(m0), None, v, lr=lr, retention=retention)
    torch.testing.assert_close(read(keyless), lr * v)


def test_writes_are_pure():
    M0 = matrix_memory(3, 2)
    before = M0.M.clone()
    delta_write(M0, torch.ones(3), torch.ones(2))
    hebbian_write(M0, torch.ones(3), torch.ones(2))
    assert torch.equal(M0.M, before)
    assert math.isclose(before.abs().sum().item(), 0.0)


def test_a_write_that_does_not_fit_the_memory_is_refused_with_the_shapes():
    import pytest

    m = elementwise_memory(torch.zeros(4))
    for write in (hebbian_write, delta_write):
        # a value of another shape would broadcast the memory into a batch; an f64 value
        # would promote it: both are refused, not done silently
        with pytest.raises(ValueError, match="shape"):
            write(m, None, torch.ones(2, 4))
        with pytest.raises(ValueError, match="float64"):
            write(m, None, torch.ones(4, dtype=torch.float64))
    M = matrix_memory(3, 2)
    for write in (hebbian_write, delta_write):
        with pytest.raises(ValueError, match="needs a key"):
            write(M, None, torch.ones(2))
        with pytest.raises(ValueError, match="mapping 3 -> 2"):
            write(M, torch.ones(4), torch.ones(2))
        with pytest.raises(ValueError, match="float64"):
            write(M, torch.ones(3, dtype=torch.float64), torch.ones(2, dtype=torch.float64))


def test_a_per_coordinate_rate_scales_the_update_of_a_matrix_memory():
    # "lr * V^T @ K" grouped as (lr * V^T) @ K: a (v, k) rate scaled the values instead of
    # the update (silently wrong for n = k pairs, a matmul error for one pair)
    g = torch.Generator().manual_seed(0)
    M0 = matrix_memory(3, 2, dtype=torch.float64)
    M0 = M0._replace(M=torch.randn(2, 3, generator=g, dtype=torch.float64))
    lr = torch.rand(2, 3, generator=g, dtype=torch.float64)
    for n in (1, 3):
        K = torch.randn(n, 3, generator=g, dtype=torch.float64)
        V = torch.randn(n, 2, generator=g, dtype=torch.float64)
        hebb = hebbian_write(M0, K, V, lr=lr).M
        torch.testing.assert_close(hebb, M0.M + lr * (V.mT @ K), rtol=0, atol=1e-14)
        delta = delta_write(M0, K, V, lr=lr).M
        error = K @ M0.M.mT - V
        torch.testing.assert_close(delta, M0.M - lr * (error.mT @ K), rtol=0, atol=1e-14)
    # one rate per stacked memory, (B, 1, 1), as before
    stacked = M0._replace(M=M0.M.expand(4, 2, 3).clone())
    rates = torch.rand(4, 1, 1, generator=g, dtype=torch.float64)
    K, V = torch.randn(4, 1, 3, dtype=torch.float64), torch.randn(4, 1, 2, dtype=torch.float64)
    torch.testing.assert_close(
        hebbian_write(stacked, K, V, lr=rates).M,
        stacked.M + rates * (V.mT @ K), rtol=0, atol=1e-14,
    )  # fmt: skip


def test_an_elementwise_read_or_surprise_never_grows_the_memory():
    import pytest

    from assocmem.memory import surprise

    m = elementwise_memory(torch.ones(4))
    with pytest.raises(ValueError, match="cannot take a key of shape"):
        read(m, torch.ones(4, 1))  # was (4, 4)
    with pytest.raises(ValueError, match="cannot take a value of shape"):
        surprise(m, None, torch.ones(4, 1))
    assert read(m, torch.tensor(2.0)).shape == (4,)  # a scalar key broadcasts to it
    with pytest.raises(ValueError, match="needs a key"):
        surprise(matrix_memory(3, 2), None, torch.ones(2))  # was an AttributeError


def test_surprise_has_the_shape_of_read_minus_value():
    # one pair (k,), (v,) came back as the batch of one (1, v) (stacked memories: (B, 1, v))
    from assocmem.memory import surprise

    g = torch.Generator().manual_seed(0)
    k, v = torch.randn(4, generator=g), torch.randn(3, generator=g)
    for batch in ((), (2,)):
        M = matrix_memory(4, 3)._replace(M=torch.randn(*batch, 3, 4, generator=g))
        error = surprise(M, k, v)
        assert error.shape == (*batch, 3)
        assert torch.equal(error, read(M, k) - v)
    K, V = torch.randn(5, 4, generator=g), torch.randn(5, 3, generator=g)
    assert torch.equal(surprise(M, K, V), read(M, K) - V)  # a batch of pairs: as it was


def test_a_read_refuses_the_keys_a_write_refuses():
    import pytest

    M = matrix_memory(4, 3)
    for key, match in ((torch.ones(5), "mapping 4 -> 3"), (torch.ones(2, 5), "mapping 4 -> 3")):
        with pytest.raises(ValueError, match=match):  # was torch's "size mismatch"
            read(M, key)
    with pytest.raises(ValueError, match="float64"):  # was "addmv input tensors must ..."
        read(M, torch.ones(4, dtype=torch.float64))
    half = ElementwiseMemory(torch.ones(3, dtype=torch.float16))
    with pytest.raises(ValueError, match="float64"):  # recalled float64 without a word
        read(half, torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="float64"):  # as the write with that key is refused
        hebbian_write(half, torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float16))
    # keys that keep the memory's dtype still read: a 0-d float64 key does not promote
    assert read(half, torch.tensor(2.0, dtype=torch.float64)).dtype == torch.float16
    assert read(M, torch.ones(2, 4)).shape == (2, 3)


def test_a_batched_memory_names_keys_of_another_batch_shape():
    """A batch of memories (4, v, k) with keys (5, n, k): torch's broadcasting error named
    neither the memory nor the key; keys whose batch broadcasts (1, n, k) or has none still
    work, one set of pairs per memory."""
    import pytest

    from assocmem.memory import delta_write

    M = matrix_memory(3, 2, batch_shape=(4,))
    keys, values = torch.ones(5, 7, 3), torch.ones(5, 7, 2)
    for call in (
        lambda: read(M, keys),
        lambda: hebbian_write(M, keys, values),
        lambda: delta_write(M, keys, values, lr=0.1),
    ):
        with pytest.raises(ValueError, match=r"batch shape \(4,\) cannot take keys \(5, 7, 3\)"):
            call()
    assert read(M, torch.ones(1, 7, 3)).shape == (4, 7, 2)
    assert read(M, torch.ones(7, 3)).shape == (4, 7, 2)
    assert hebbian_write(M, torch.ones(4, 7, 3), torch.ones(4, 7, 2), lr=1.0).M.shape == (4, 2, 3)


def test_unbroadcastable_elementwise_keys_and_rate_tensors_are_named():
    import pytest

    m = elementwise_memory(torch.zeros(4))
    with pytest.raises(ValueError, match=r"cannot take a key of shape \(3,\).*do not broadcast"):
        hebbian_write(m, torch.ones(3), torch.ones(4))
    # the culprit is lr, not "key and value"
    M = matrix_memory(4, 3)
    with pytest.raises(ValueError, match="key, value, lr and retention"):
        hebbian_write(
            M, torch.randn(4), torch.randn(3), lr=torch.tensor([0.5], dtype=torch.float64)
        )


def test_complex_memories_are_refused_not_recalled_wrongly():
    # the delta write used k^T: at lr 1/k.k-bar a complex memory missed v by 0.5
    import pytest

    k = torch.randn(4, dtype=torch.complex64)
    v = torch.randn(3, dtype=torch.complex64)
    M = matrix_memory(4, 3, dtype=torch.complex64)
    for write in (delta_write, hebbian_write):
        with pytest.raises(ValueError, match="real view"):
            write(M, k, v)
    with pytest.raises(ValueError, match="real view"):
        read(ElementwiseMemory(torch.zeros(3, dtype=torch.complex64)))


@pytest.mark.parametrize("write", [hebbian_write, delta_write])
@pytest.mark.parametrize("rate", ["lr", "retention"])
def test_a_rate_tensor_that_does_not_fit_the_memory_is_named(write, rate):
    # a rate that cannot broadcast failed in torch first: "The size of tensor a (5) must
    # match the size of tensor b (4)", naming neither the rate nor the memory
    with pytest.raises(ValueError, match=rf"{rate} of shape \(5,\) does not broadcast"):
        write(matrix_memory(4, 3), torch.ones(4), torch.ones(3), **{rate: torch.ones(5)})
    memory = elementwise_memory(torch.zeros(4))
    with pytest.raises(ValueError, match=rf"{rate} of shape \(5,\) does not broadcast"):
        write(memory, None, torch.ones(4), **{rate: torch.ones(5)})
    per_row = torch.full((3, 1), 0.5)  # one rate per value coordinate: fits
    written = write(matrix_memory(4, 3), torch.ones(4), torch.ones(3), **{rate: per_row})
    assert written.M.shape == (3, 4)


def test_a_memory_saved_with_torch_save_loads_with_torchs_defaults(tmp_path):
    # torch.load's weights_only=True refused the state types (UnpicklingError)
    for state in (matrix_memory(4, 3), elementwise_memory(torch.ones(5))):
        torch.save(state, tmp_path / "m.pt")
        loaded = torch.load(tmp_path / "m.pt")
        assert type(loaded) is type(state) and all(
            torch.equal(a, b) for a, b in zip(loaded, state, strict=True)
        )


def test_a_matrix_memory_of_fewer_than_two_dimensions_is_named():
    import pytest

    # a vector M failed in every read and write with "not enough values to unpack"
    for M in (torch.ones(4), torch.tensor(1.0)):
        memory = MatrixMemory(M)
        for call in (
            lambda m=memory: read(m, torch.ones(4)),
            lambda m=memory: hebbian_write(m, torch.ones(4), torch.ones(1)),
            lambda m=memory: delta_write(m, torch.ones(1), torch.ones(1)),
        ):
            with pytest.raises(ValueError, match=r"M has shape \(\.\.\., d_value, d_key\)"):
                call()
