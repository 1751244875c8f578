"""The non-finite check of large CPU gradients as squared norms, kept for the step that follows.

On the CPU, where a host read waits for nothing, ``MemoryOptimizer`` checks a contiguous
gradient of at least :data:`LARGE` elements by reading ``<g, g>`` back instead of running
torch's GradScaler kernel over it. The check stays exact: the sum of squares is finite only
if every element is (NaN and infinities stay non-finite under squaring and addition), so a
finite value settles the tensor; a non-finite one may be an overflow of finite elements
(``|g|`` near 1e19 and up in fp32), and that tensor goes to the exact kernel.

``delta`` (and ``muon``'s delta-rule momentum) needs the same ``||g||^2`` for its erase rate:
:func:`squared_norm` hands it the value the check computed for that very tensor in this step,
so the step reads the gradients once fewer. A gradient the step replaced (``maximize``, L2
weight decay) is a new tensor and has its norm computed anew. For the gradients whose norm the
step will read (``Preset.squares_grads``) the check computes it from :data:`REUSED` elements on:
there the dot product replaces the kernel's pass instead of adding one.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Collection, Iterator

import torch
from torch import Tensor

from assocmem.optim.stacks import SMALL

# From this many elements a gradient's dot product settles its check sooner than the GradScaler
# kernel on this CPU (one-off timings, 4 tensors: 2^18 elements 59 against 85 us, 2^20 0.20
# against 0.50 ms, 2^16 38 against 28 us; in cache, so the gain in a real step is smaller).
LARGE = 1 << 17

# From this many elements a gradient whose ``<g, g>`` the step reads anyway is settled by it.
# Smaller ones may be stepped stacked (assocmem.optim.stacks), which sums them along the stack
# and would not read a kept norm. At 0.1M parameters (bench_step's small model, its four
# matrices of 2^14-2^16 elements) this leaves delta one pass over the gradients fewer.
REUSED = SMALL

# Per thread, the norms kept during the step in progress: id(gradient) -> (gradient, <g, g>).
_STEP = threading.local()


@contextlib.contextmanager
def kept_for_step() -> Iterator[None]:
    """Inside, :func:`settle_large` keeps the norms it computes for :func:`squared_norm`; they
    are dropped on leaving (a later step's gradients may reuse the ids)."""
    outer = getattr(_STEP, "norms", None)
    _STEP.norms = {}
    try:
        yield
    finally:
        _STEP.norms = outer


def squared_norm(g: Tensor) -> Tensor:
    """``<g, g>`` as a 0-d tensor: the check's value for this tensor in this step, if it has one
    (the same dot product, so the same bits), else computed now."""
    if not torch.compiler.is_compiling():
        kept = (getattr(_STEP, "norms", None) or {}).get(id(g))
        if kept is not None and kept[0] is g:
            return kept[1]
    flat = g.reshape(-1)
    return torch.dot(flat, flat)


def _large(g: Tensor, reused: bool) -> bool:
    # contiguous only: a strided gradient would be copied to be read as a vector, where the
    # kernel reads it in place
    return g.numel() >= (REUSED if reused else LARGE) and g.is_contiguous()


def settle_large(grads: list[Tensor], reused: Collection[int] = ()) -> list[Tensor]:
    """The gradients whose finiteness is still open after each large (contiguous) one's
    ``<g, g>`` is read on the host (one read for all): the others, and a large one whose norm
    is not finite. ``reused``: the ids of the gradients whose norm the step reads, large from
    :data:`REUSED` elements instead of :data:`LARGE`. CPU tensors only, outside
    torch.compile."""
    large, small = [], []
    for g in grads:
        (large if _large(g, id(g) in reused) else small).append(g)
    if not large:
        return grads
    norms = [squared_norm(g) for g in large]
    finite = torch.stack(norms).isfinite().tolist()
    kept = getattr(_STEP, "norms", None)
    if kept is not None:
        kept.update((id(g), (g, n)) for g, n in zip(large, norms, strict=True))
    return small + [g for g, ok in zip(large, finite, strict=True) if not ok]
