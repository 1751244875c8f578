"""The CPU non-finite check of large gradients by their squared norms (assocmem.optim.grad_norms):
exact whatever the gradient holds, and its norms reused by delta's erase rate."""

from __future__ import annotations

import pytest
import torch

from assocmem import MemoryOptimizer
from assocmem.optim import grad_norms

LARGE = grad_norms.LARGE
BAD = {
    "nan": [float("nan")],
    "inf": [float("inf")],
    "-inf": [float("-inf")],
    "inf and -inf": [float("inf"), float("-inf")],  # their sum is NaN, not a cancellation
    "finite, norm overflows": [],
}


@pytest.mark.parametrize("sync_free", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bad", list(BAD))
def test_a_large_gradients_check_is_exact(bad, dtype, sync_free):
    # Every entry 3e38 is finite, but <g, g> overflows in either dtype's range of squares
    # (float64: 9e76 * 2^17 is finite, so its overflow case is the NaN/inf ones only). A
    # non-finite norm goes to the exact kernel, so finite entries still step.
    big = torch.nn.Parameter(torch.zeros(LARGE + 3, dtype=dtype))
    other = torch.nn.Parameter(torch.zeros(LARGE, dtype=torch.float32))  # a second dtype
    small = torch.nn.Parameter(torch.zeros(4))
    opt = MemoryOptimizer([big, other, small], "momentum", lr=1e-40, sync_free=sync_free)
    big.grad = torch.full_like(big, 3e38)
    other.grad = torch.ones_like(other)
    small.grad = torch.ones(4)
    for i, value in enumerate(BAD[bad]):
        big.grad[LARGE // 3 * (i + 1)] = value
    opt.step()
    assert opt.skipped_steps == (1 if BAD[bad] else 0)
    assert torch.isfinite(big).all()


def _delta_run(nonfinite: str, monkeypatch) -> tuple[list[torch.Tensor], int]:
    gen = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.randn(LARGE + 5, generator=gen))
    b = torch.nn.Parameter(torch.randn(7, generator=gen))
    opt = MemoryOptimizer([w, b], "delta", lr=1e-2, nonfinite=nonfinite)
    calls = []
    dot = torch.dot
    monkeypatch.setattr(torch, "dot", lambda x, y: calls.append(x.numel()) or dot(x, y))
    for _ in range(3):
        w.grad = torch.randn(w.shape, generator=gen)
        b.grad = torch.randn(b.shape, generator=gen)
        opt.step()
    monkeypatch.setattr(torch, "dot", dot)
    state = [opt.state[p]["momentum"].clone() for p in (w, b)]
    return [w.detach().clone(), b.detach().clone(), *state], calls.count(LARGE + 5)


def test_delta_takes_the_checks_norm_and_the_same_bits(monkeypatch):
    # With the check (the default) the large gradient's <g, g> is computed once per step, by
    # the check, and delta reads it from there: two dot products of the large tensor per step
    # (the check's and <g, m>) instead of three. The bits are those of a run without the check
    # (nonfinite="ignore"), which computes <g, g> itself: the same dot product.
    checked, dots_checked = _delta_run("skip", monkeypatch)
    unchecked, dots_unchecked = _delta_run("ignore", monkeypatch)
    assert dots_checked == 2 * 3
    assert dots_unchecked == 2 * 3
    assert all(torch.equal(a, b) for a, b in zip(checked, unchecked, strict=True))


def test_a_norm_is_kept_for_its_step_only():
    g = torch.ones(LARGE)
    with grad_norms.kept_for_step():
        assert grad_norms.settle_large([g]) == []
        kept = grad_norms.squared_norm(g)
        assert kept is grad_norms.squared_norm(g)  # the check's own tensor
        assert grad_norms.squared_norm(g.clone()) is not kept  # another tensor: computed
    assert grad_norms.squared_norm(g) is not kept  # after the step: computed anew
    assert float(kept) == LARGE


def test_a_strided_large_gradient_goes_to_the_kernel_and_is_still_checked():
    g = torch.ones(512, 512).t()  # 2^18 elements, not contiguous
    assert grad_norms.settle_large([g]) == [g]  # left to the kernel, not copied to a vector
    w = torch.nn.Parameter(torch.zeros(512, 512).t())
    opt = MemoryOptimizer([w], "momentum", lr=0.1)
    w.grad = g.clone()
    w.grad[3, 7] = float("nan")
    opt.step()
    assert opt.skipped_steps == 1
