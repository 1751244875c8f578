"""The ``compile=True`` fast path: a preset's update fused into one pass by ``torch.compile``.

An eager elementwise op on this CPU costs a pass over its block even in cache (about 50 us
per 2^18 floats), so an update of ~15 ops (the landscape write) cannot match torch's foreach
Adam however it is blocked. Inductor fuses the same equations into one C++ loop per tensor,
which reads each tensor once. The price is a compile on the first step (about 15 s cold on
this machine, ~5 s when inductor's on-disk cache is warm) and again for each new model
structure, which is why it is opt-in rather than the default.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch._dynamo.exc import BackendCompilerFailed


@functools.cache
def compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` compiled once per process, shared by every optimizer that uses it.

    torch's default (automatic) dynamic shapes: the first graph is specialised to the tensors'
    sizes, which gives the fastest kernels and guards (measured against ``dynamic=True`` on the
    bench_step models); another set of sizes recompiles once, with sizes symbolic. Callers pass
    values that change during training (``lr``) as 0-d tensors, so they never recompile.
    Not ``fullgraph``: past torch's recompile limit (8 graphs per function and process, e.g.
    many param groups of different tensor counts) dynamo runs ``fn`` eagerly with a warning,
    slower but with the same numbers, where ``fullgraph=True`` would raise mid-training. Tests
    hold the compiled path free of graph breaks.

    If the compiler cannot be built (no working C++ compiler, say), the call raises before any
    tensor is touched; ``fn`` then runs eagerly, with one warning, for the rest of the process:
    the same numbers, only slower, instead of an optimizer that fails mid-training.
    """
    fast = torch.compile(fn)
    broken: list[str] = []

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        if not broken:
            try:
                return fast(*args, **kwargs)
            except BackendCompilerFailed as err:
                broken.append(str(err).splitlines()[0])
                warnings.warn(
                    f"torch.compile could not build {fn.__name__} ({broken[0]}); running it "
                    "eagerly from now on: same numbers, slower",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return fn(*args, **kwargs)

    return run
