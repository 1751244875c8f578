"""Per-row normalisation of an orthogonalised update (NorMuon's second moment)."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from assocmem.optim.neuron_norm import foreach_row_normalize_, row_mean_squares, row_normalized


@given(rows=st.integers(1, 12), cols=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_frobenius_norm_kept_and_rows_equalised(rows, cols, seed):
    gen = torch.Generator().manual_seed(seed)
    O = torch.randn(rows, cols, generator=gen, dtype=torch.float64)
    out, v = row_normalized(O, torch.zeros(rows, dtype=torch.float64), beta2=0.0)
    # beta2 = 0: v is this step's row mean squares, so every row ends with the same norm
    torch.testing.assert_close(v, row_mean_squares(O))
    torch.testing.assert_close(torch.linalg.matrix_norm(out), torch.linalg.matrix_norm(O))
    norms = torch.linalg.vector_norm(out, dim=1)
    torch.testing.assert_close(norms, norms.mean().expand(rows))
    # each row keeps its direction (a positive multiple of itself)
    torch.testing.assert_close(
        out / norms[:, None], O / torch.linalg.vector_norm(O, dim=1)[:, None]
    )


def test_orthogonal_rows_are_left_alone_and_zero_rows_stay_zero():
    Q = torch.linalg.qr(torch.randn(7, 7, dtype=torch.float64)).Q  # rows of norm 1
    out, _ = row_normalized(Q, torch.rand(7, dtype=torch.float64) * 0, beta2=0.9)
    torch.testing.assert_close(out, Q)
    O = torch.randn(3, 4, 2, dtype=torch.float64)  # conv kernels: rows are the first dim
    O[1] = 0
    out, v = row_normalized(O, torch.zeros(3, dtype=torch.float64), beta2=0.5)
    assert out.shape == O.shape and bool((out[1] == 0).all()) and v[1] == 0
    assert bool(torch.isfinite(out).all())
    zero, _ = row_normalized(torch.zeros(2, 3), torch.zeros(2), beta2=0.5)
    assert bool((zero == 0).all())


def test_memory_has_retention_beta2():
    O1, O2 = torch.ones(2, 3, dtype=torch.float64), 2 * torch.ones(2, 3, dtype=torch.float64)
    _, v = row_normalized(O1, torch.zeros(2, dtype=torch.float64), beta2=0.9)
    _, v = row_normalized(O2, v, beta2=0.9)
    torch.testing.assert_close(v, torch.full((2,), 0.9 * 0.1 * 1 + 0.1 * 4, dtype=torch.float64))


@pytest.mark.parametrize("beta2", [0.0, 0.95])
def test_foreach_equals_reference(beta2):
    gen = torch.Generator().manual_seed(0)
    orthos = [torch.randn(5, 4, generator=gen), torch.randn(3, 2, 2, generator=gen)]
    refs = [torch.rand(5, generator=gen), torch.rand(3, generator=gen)]
    fast = [r.clone() for r in refs]
    for _ in range(3):
        outs = foreach_row_normalize_(orthos, fast, beta2=beta2)
        for i, o in enumerate(orthos):
            expected, refs[i] = row_normalized(o, refs[i], beta2=beta2)
            # fp32: the same operations in the same order, up to a fused multiply-add
            torch.testing.assert_close(outs[i], expected, rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(fast[i], refs[i], rtol=1e-6, atol=1e-7)
