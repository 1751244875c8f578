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


def _delta_run(
    nonfinite: str, monkeypatch, size: int = LARGE + 5, **options
) -> tuple[list[torch.Tensor], int]:
    gen = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.randn(size, generator=gen))
    b = torch.nn.Parameter(torch.randn(7, generator=gen))
    opt = MemoryOptimizer([w, b], "delta", lr=1e-2, nonfinite=nonfinite, **options)
    calls, checked = _spy_sums(monkeypatch)
    for _ in range(3):
        w.grad = torch.randn(w.shape, generator=gen)
        b.grad = torch.randn(b.shape, generator=gen)
        opt.step()
    monkeypatch.undo()
    assert checked.count(size) == 0  # the kernel's pass over w replaced by the dot product
    state = [opt.state[p]["momentum"].clone() for p in (w, b)]
    return [w.detach().clone(), b.detach().clone(), *state], calls.count(size)


def _spy_sums(monkeypatch) -> tuple[list[int], list[int]]:
    """The sizes of the vectors torch.dot is called on, and of the tensors torch's check
    kernel is handed, as they happen."""
    dots: list[int] = []
    checked: list[int] = []
    dot, kernel = torch.dot, torch._amp_foreach_non_finite_check_and_unscale_

    def check(grads, found, scale):
        checked.extend(g.numel() for g in grads)
        return kernel(grads, found, scale)

    monkeypatch.setattr(torch, "dot", lambda x, y: dots.append(x.numel()) or dot(x, y))
    monkeypatch.setattr(torch, "_amp_foreach_non_finite_check_and_unscale_", check)
    return dots, checked


@pytest.mark.parametrize("size", [LARGE + 5, grad_norms.REUSED, grad_norms.REUSED + 5])
def test_delta_takes_the_checks_norm_and_the_same_bits(monkeypatch, size):
    # With the check (the default) the gradient's <g, g> is computed once per step, by the
    # check, and delta reads it from there: two dot products of the tensor per step (the
    # check's and <g, m>) instead of three, and no pass of the check kernel over it: from
    # REUSED elements on, below the check's own threshold LARGE, since delta reads the norm.
    # The bits are those of a run without the check (nonfinite="ignore"), which computes
    # <g, g> itself: the same dot product.
    checked, dots_checked = _delta_run("skip", monkeypatch, size)
    unchecked, dots_unchecked = _delta_run("ignore", monkeypatch, size)
    assert dots_checked == 2 * 3
    assert dots_unchecked == 2 * 3
    assert all(torch.equal(a, b) for a, b in zip(checked, unchecked, strict=True))


@pytest.mark.parametrize(
    "options", [{"maximize": True}, {"weight_decay": 0.1, "decoupled_weight_decay": False}]
)
def test_a_replaced_gradient_is_left_to_the_kernel_below_large(monkeypatch, options):
    # maximize and L2 decay hand delta a new tensor, whose norm it computes itself: the check
    # does not compute one for it (it would be read by nobody), so one dot per step is delta's
    # <g, g> and one its <g, m>.
    gen = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.randn(grad_norms.REUSED + 5, generator=gen))
    opt = MemoryOptimizer([w], "delta", lr=1e-2, **options)
    dots, checked = _spy_sums(monkeypatch)
    for _ in range(3):
        w.grad = torch.randn(w.shape, generator=gen)
        opt.step()
    assert dots.count(w.numel()) == 2 * 3
    assert checked.count(w.numel()) == 3


def test_below_large_only_a_step_that_reads_the_norm_takes_it_from_the_check():
    g = torch.ones(grad_norms.REUSED)
    assert grad_norms.settle_large([g]) == [g]  # momentum: the kernel's pass is cheaper
    with grad_norms.kept_for_step():
        assert grad_norms.settle_large([g], reused={id(g)}) == []
        assert float(grad_norms.squared_norm(g)) == grad_norms.REUSED
    small = torch.ones(grad_norms.REUSED - 1)  # may be stacked: never settled by its norm
    assert grad_norms.settle_large([small], reused={id(small)}) == [small]


def test_muons_delta_momentum_takes_the_checks_norm(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.randn(128, 128, generator=gen))  # 2^14 elements
    opt = MemoryOptimizer([w], "muon", lr=1e-2, gamma=0.5)
    calls, checked = _spy_sums(monkeypatch)
    w.grad = torch.randn(w.shape, generator=gen)
    opt.step()
    assert calls.count(w.numel()) == 2  # the check's <g, g>, then <g, m>
    assert checked == []


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
