"""Forensic workload: real-vs-generated image detectors (docs/architecture.md maps its files).

Submodules are imported lazily by users (``from assocmem.forensic.data import build_benchmark``)
so that ``import assocmem`` never pulls in Pillow, scikit-learn, scikit-image or einops (the
``forensic`` extra). It takes any ``torch.optim`` optimizer and imports nothing of
``assocmem.optim`` or ``assocmem.meta`` (tests/test_architecture.py).
"""

from typing import Any

__all__ = ["Detector"]


def __getattr__(name: str) -> Any:
    # ``from assocmem.forensic import Detector`` without importing Pillow and scikit-learn on
    # ``import assocmem.forensic`` (PEP 562 module __getattr__)
    if name == "Detector":
        from assocmem.forensic.detector import Detector

        return Detector
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
