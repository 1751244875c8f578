"""What the optimizer's non-finite guard did during a run, for its ``summary.json``.

``MemoryOptimizer`` (``nonfinite="skip"``, the default) leaves everything untouched on a step
whose gradients hold NaN/inf and counts it in ``skipped_steps``. A run where that happened on
every step never trained, yet its loss stays finite, so it would read as a finished "ok" run.
"""

from __future__ import annotations

from typing import Any

import torch

ALL_SKIPPED = "all_steps_skipped"


def record_skipped_steps(summary: dict[str, Any], opt: torch.optim.Optimizer) -> None:
    """Add ``skipped_steps`` (0 for optimizers without the guard) to ``summary``, and turn an
    "ok" status into ``"all_steps_skipped"`` when every step taken was skipped."""
    skipped = int(getattr(opt, "skipped_steps", 0))
    summary["skipped_steps"] = skipped
    if summary["status"] == "ok" and 0 < summary["steps_done"] <= skipped:
        summary["status"] = ALL_SKIPPED
