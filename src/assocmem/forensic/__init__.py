"""Forensic workload: real-vs-generated image detectors (docs/architecture.md maps its files).

Submodules are imported lazily by users (``from assocmem.forensic.data import build_benchmark``)
so that ``import assocmem`` never pulls in Pillow, scikit-learn, scikit-image or einops (the
``forensic`` extra). It takes any ``torch.optim`` optimizer and imports nothing of
``assocmem.optim`` or ``assocmem.meta`` (tests/test_architecture.py).
"""

import importlib.util
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["Detector", "detect_main"]

# The forensic extra's packages the detector imports, by import name: without them a plain
# ``pip install assocmem`` ran ``assocmem-detect`` into "No module named 'PIL'".
_EXTRA = {"PIL": "pillow", "sklearn": "scikit-learn", "einops": "einops"}


def _require_extra() -> None:
    """A ``ModuleNotFoundError`` naming the extra to install if one of its packages is absent
    (looked up, not imported: ``import assocmem.forensic`` stays light)."""
    missing = [pkg for module, pkg in _EXTRA.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise ModuleNotFoundError(
            f"the forensic detector needs the forensic extra: pip install 'assocmem[forensic]' "
            f"(missing: {', '.join(missing)})"
        )


def detect_main(argv: Sequence[str] | None = None) -> int:
    """The ``assocmem-detect`` command (:func:`assocmem.forensic.detect.main`), or exit status
    1 with one line naming the extra to install when its packages are absent."""
    try:
        _require_extra()
    except ModuleNotFoundError as e:
        print(f"assocmem-detect: {e}", file=sys.stderr)
        return 1
    from assocmem.forensic.detect import main

    return main(argv)


def __getattr__(name: str) -> Any:
    # ``from assocmem.forensic import Detector`` without importing Pillow and scikit-learn on
    # ``import assocmem.forensic`` (PEP 562 module __getattr__)
    if name == "Detector":
        _require_extra()
        from assocmem.forensic.detector import Detector

        return Detector
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
