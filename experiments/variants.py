"""A preset's recommended configuration: its variants tuned on the tuning seed, the best one kept.

Some presets come in several configurations (``landscape``: diagonal, scalar, low-rank;
``muon`` with and without the param split). The comparison's ``variants`` maps a name in
``optimizers`` to its configurations (``conf/optimizer/*.yaml``); each is tuned on the tuning
seed exactly as a lone optimizer is (LR grid and extensions), and the one whose best tuning
loss is lowest becomes the preset's *recommended* configuration for that task: only it runs
the evaluation seeds. The choice never sees an evaluation seed. A preset with ``k`` variants
gets ``k`` times the tuning runs of a lone optimizer; the report says which configuration was
recommended, among which, and at what tuning losses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def configurations(name: str, variants: Mapping[str, Sequence[str]]) -> list[str]:
    """The optimizer configurations ``name`` stands for: its variants, or itself."""
    return list(variants.get(name, [name]))


def recommend(tuning_losses: Mapping[str, float]) -> str | None:
    """The configuration with the lowest finite best tuning loss; ties go to the one listed
    first (a preset lists its default first). ``None`` when every configuration diverged.

    Example:
        >>> recommend({"landscape": math.inf, "landscape_scalar": 0.2, "landscape_lowrank": 0.3})
        'landscape_scalar'
    """
    finite = [(loss, i, name) for i, (name, loss) in enumerate(tuning_losses.items())]
    finite = [entry for entry in finite if math.isfinite(entry[0])]
    return min(finite)[2] if finite else None
