"""The reads presets share (assocmem.optim.reads): each against its equation."""

import pytest
import torch

from assocmem import MemoryOptimizer
from assocmem.memory import ElementwiseMemory, hebbian_write
from assocmem.optim.reads import (
    adam_denominator,
    bias_corrected,
    foreach_momentum_,
    momentum_read,
    orthogonal_read,
    orthogonal_reads,
    second_moment_value,
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


def test_second_moment_value_overflows_where_torchs_adam_does():
    # (1 - beta2) g^2 squared first overflowed from |g| ~ 1.8e19 (float32); torch's Adam
    # kernels scale first, (1 - beta2) g, and overflow only from sqrt(max / (1 - beta2)).
    rate = 1 - 0.999
    g = torch.tensor([0.3, -2.0, 1e19, 1e20, -5e20, 1e21])
    got = second_moment_value(g, rate)
    torchs = torch.zeros_like(g).addcmul_(g, g, value=rate)  # torch.optim.Adam's write
    assert torch.isfinite(got[:5]).all() and torch.isinf(got[5])
    assert torch.equal(got[3:], torchs[3:])  # torch's order, bit for bit, past g g's overflow
    torch.testing.assert_close(got, torchs)
    # elsewhere the equation's grouping, the bits the references always had
    ordinary = torch.randn(1000, generator=torch.Generator().manual_seed(4)) * 1e3
    assert torch.equal(second_moment_value(ordinary, rate), rate * (ordinary * ordinary))
    assert torch.equal(second_moment_value(g, 0.0)[3:], torch.zeros(3))  # beta2 = 1: no write


@pytest.mark.parametrize("on_device", [False, True])
def test_adam_denominator_takes_the_root_first_where_v_hat_overflows(on_device):
    t = torch.tensor(1.0, dtype=torch.float64) if on_device else 1  # a count on the device
    v = torch.tensor([1e37, 3e38, 4.0, 0.0])  # v / (1 - 0.999) overflows for the first two
    got = adam_denominator(v, 0.999, t, eps=1e-8)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, (v.double() / 1e-3).sqrt().float() + 1e-8)
    assert torch.isinf(adam_denominator(torch.tensor([float("inf")]), 0.999, t, 1e-8)).all()
    ordinary = torch.rand(1000, generator=torch.Generator().manual_seed(5))
    plain = bias_corrected(ordinary, 0.999, t).sqrt() + 1e-8
    assert torch.equal(adam_denominator(ordinary, 0.999, t, eps=1e-8), plain)


def _huge_gradients(make, shape=(4, 5), scale=1e20, steps=3):
    """Parameters and second moment after ``steps`` gradients of ~``scale`` (float32)."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(shape))
    opt = make([p])
    g = torch.Generator().manual_seed(1)
    moved = []
    for _ in range(steps):
        before = p.detach().clone()
        p.grad = torch.randn(shape, generator=g) * scale
        opt.step()
        moved.append(not torch.equal(p.detach(), before))
    return p.detach(), opt.state[p]["exp_avg_sq"], moved


@pytest.mark.parametrize("sync_free", [False, True])
def test_adam_reference_stays_finite_where_torchs_adam_does(sync_free):
    # Gradients of ~1e20: g g overflows float32, (1 - beta2) g g does not. The reference once
    # squared first: v = inf, and m / inf = 0 stopped the parameter for good.
    def ours(foreach):
        return lambda ps: MemoryOptimizer(ps, "adam", lr=1e-2, foreach=foreach, sync_free=sync_free)

    ref_p, ref_v, ref_moved = _huge_gradients(ours(False))
    fast_p, fast_v, _ = _huge_gradients(ours(True))
    torch_p, torch_v, _ = _huge_gradients(
        lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.0, foreach=False)
    )
    assert torch.isfinite(ref_v).all() and ref_v.max() > 1e37 and all(ref_moved)
    torch.testing.assert_close(ref_v, fast_v)
    torch.testing.assert_close(ref_p, fast_p)
    torch.testing.assert_close(ref_v, torch_v)
    torch.testing.assert_close(ref_p, torch_p)
