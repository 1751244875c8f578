"""The reads presets share (assocmem.optim.reads): each against its equation."""

import pytest
import torch

from assocmem.memory import ElementwiseMemory, hebbian_write
from assocmem.optim.reads import (
    adam_denominator,
    bias_corrected,
    foreach_momentum_,
    momentum_read,
    orthogonal_read,
    orthogonal_reads,
    spectral_scale,
)


@pytest.mark.parametrize("nesterov", [False, True])
def test_foreach_momentum_is_the_hebbian_write_and_the_read(nesterov):
    g = torch.Generator().manual_seed(0)
    bufs = [torch.randn(3, 4, generator=g), torch.randn(5, generator=g)]
    grads = [torch.randn_like(b) for b in bufs]
    expected = []
    for b, gr in zip(bufs, grads, strict=True):
        m = hebbian_write(ElementwiseMemory(b.clone()), None, gr, lr=1.0, retention=0.9)
        expected.append((m.m, momentum_read(m, gr, beta=0.9, nesterov=nesterov)))
    reads = foreach_momentum_(bufs, grads, beta=0.9, nesterov=nesterov)
    for b, u, (m, e) in zip(bufs, reads, expected, strict=True):
        assert torch.equal(b, m)
        torch.testing.assert_close(u, e)
    assert (reads[0] is bufs[0]) == (not nesterov)


def test_orthogonal_read_is_scaled_and_semi_orthogonal():
    u = torch.randn(20, 5, generator=torch.Generator().manual_seed(1))
    ortho, scale = orthogonal_read(u, steps=5)
    assert scale == spectral_scale(20, 5) == 2.0
    s = torch.linalg.svdvals(ortho)
    assert ((s > 0.5) & (s < 1.5)).all()


def test_orthogonal_reads_batch_equals_one_at_a_time():
    g = torch.Generator().manual_seed(2)
    updates = [
        torch.randn(*shape, generator=g) for shape in [(3, 2, 3, 3), (4, 6), (3, 18), (4, 6)]
    ]
    got = {}
    for index, orthos, scale in orthogonal_reads(updates, steps=5, scale="rms"):
        got.update({i: (o, scale) for i, o in zip(index, orthos, strict=True)})
    assert sorted(got) == [0, 1, 2, 3]
    for i, u in enumerate(updates):
        ortho, scale = orthogonal_read(u, steps=5, scale="rms")
        torch.testing.assert_close(got[i][0], ortho, rtol=1e-5, atol=1e-6)
        assert got[i][1] == scale and got[i][0].shape == u.shape


def test_bias_correction_reads_a_constant_stream_back():
    c, beta = torch.tensor([2.0, -3.0], dtype=torch.float64), 0.9
    m = ElementwiseMemory(torch.zeros(2, dtype=torch.float64))
    for t in range(1, 6):
        m = hebbian_write(m, None, c, lr=1 - beta, retention=beta)
        torch.testing.assert_close(bias_corrected(m.m, beta, t), c)


def test_adam_denominator_scales_with_the_gradient():
    v = torch.rand(6, generator=torch.Generator().manual_seed(3))
    scaled = adam_denominator(9.0 * v, 0.999, 7, eps=0.0)
    torch.testing.assert_close(scaled, 3.0 * adam_denominator(v, 0.999, 7, eps=0.0))
    torch.testing.assert_close(adam_denominator(v, 0.999, 1, eps=0.5), v.div(1e-3).sqrt() + 0.5)
