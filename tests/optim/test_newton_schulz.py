import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from assocmem.optim.newton_schulz import NS_COEFFS, zeropower_via_newtonschulz5


def with_spectrum(shape: tuple[int, ...], s: torch.Tensor) -> torch.Tensor:
    """A batch of ``(r, c)`` matrices ``U diag(s) V^T`` with random orthonormal ``U, V``."""
    *batch, r, c = shape
    U = torch.linalg.qr(torch.randn(*batch, r, r)).Q[..., : min(r, c)]
    V = torch.linalg.qr(torch.randn(*batch, c, c)).Q[..., : min(r, c)]
    return U @ torch.diag_embed(s) @ V.mT, U, V


@given(
    rows=st.integers(1, 24),
    cols=st.integers(1, 24),
    batch=st.lists(st.integers(1, 3), max_size=2),
    seed=st.integers(0, 2**16),
)
def test_singular_values_land_in_the_quintic_band(rows, cols, batch, seed):
    torch.manual_seed(seed)
    k = min(rows, cols)
    # Singular values spread over a decade: the quintic lifts anything above ~1% of ||G||_F.
    s = torch.empty(*batch, k).uniform_(0.1, 1.0) * 10 ** torch.rand(())
    G, U, V = with_spectrum((*batch, rows, cols), s)
    O = zeropower_via_newtonschulz5(G)
    assert O.shape == G.shape
    sv = torch.linalg.svdvals(O)
    assert ((sv > 0.5) & (sv < 1.5)).all(), sv
    # Same singular vectors: U^T O V is diagonal (NS acts on the singular values only).
    core = U.mT @ O @ V
    off = core - torch.diag_embed(torch.diagonal(core, dim1=-2, dim2=-1))
    assert off.abs().max() < 1e-4


@pytest.mark.parametrize("shape", [(16, 48), (48, 16), (3, 20, 12), (2, 2, 8, 8)])
def test_random_matrices_are_nearly_orthogonal(shape):
    O = zeropower_via_newtonschulz5(torch.randn(*shape))
    k = min(shape[-2:])
    gram = O.mT @ O if shape[-2] >= shape[-1] else O @ O.mT  # (k, k)
    eye = torch.eye(k).expand_as(gram)
    assert (gram - eye).abs().max() < 0.8
    sv = torch.linalg.svdvals(O)
    assert sv.max() < 1.25
    # A Gaussian matrix's smallest singular values can be tiny; the bulk is in the band.
    assert ((sv > 0.5) & (sv < 1.5)).float().mean() > 0.9


def test_transpose_batch_dtype_and_zero():
    G = torch.randn(5, 9)
    torch.testing.assert_close(zeropower_via_newtonschulz5(G.T), zeropower_via_newtonschulz5(G).T)
    batch = torch.randn(4, 5, 9)
    torch.testing.assert_close(
        zeropower_via_newtonschulz5(batch),
        torch.stack([zeropower_via_newtonschulz5(b) for b in batch]),
        rtol=1e-5,
        atol=1e-6,
    )
    half = zeropower_via_newtonschulz5(G.to(torch.bfloat16))
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), zeropower_via_newtonschulz5(G), rtol=0, atol=1e-2)
    assert zeropower_via_newtonschulz5(torch.zeros(3, 4)).abs().max() == 0
    with pytest.raises(ValueError, match="2 dims"):
        zeropower_via_newtonschulz5(torch.ones(3))


def test_scale_invariance_and_fixed_point():
    G = torch.randn(6, 10)
    torch.testing.assert_close(
        zeropower_via_newtonschulz5(G), zeropower_via_newtonschulz5(1e3 * G), rtol=1e-4, atol=1e-5
    )


def test_quintic_maps_its_band_into_itself():
    a, b, c = NS_COEFFS
    s = torch.linspace(0.68, 1.2, 10_001, dtype=torch.float64)
    p = a * s + b * s**3 + c * s**5
    assert p.min() >= 0.68 and p.max() <= 1.2
    lifted = torch.tensor([0.01], dtype=torch.float64)
    for _ in range(5):
        lifted = a * lifted + b * lifted**3 + c * lifted**5
    assert 0.68 <= lifted.item() <= 1.2
