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

    If torch.compile is unavailable (a Python version dynamo does not support) or the
    compiler cannot be built (no working C++ compiler, say), ``fn`` runs eagerly, with one
    warning, for the rest of the process: the same numbers, only slower, instead of an
    optimizer that fails mid-training. A failed build raises before any tensor is touched.
    """
    # Imported here, not at module level: torch._dynamo costs about a second to import, and
    # only compile=True needs it.
    from torch._dynamo.exc import BackendCompilerFailed

    try:
        fast = torch.compile(fn)
    except RuntimeError as err:
        _warn_eager(fn, err)
        return fn
    broken: list[BackendCompilerFailed] = []

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        if not broken:
            try:
                return fast(*args, **kwargs)
            except BackendCompilerFailed as err:
                broken.append(err)
                _warn_eager(fn, err)
        return fn(*args, **kwargs)

    return run


def _warn_eager(fn: Callable[..., Any], err: Exception) -> None:
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    warnings.warn(
        f"torch.compile could not build {fn.__name__} ({reason}); running it eagerly from now "
        "on: same numbers, slower",
        RuntimeWarning,
        stacklevel=3,
    )
