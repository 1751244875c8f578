"""Forensic workload: real-vs-generated image detectors (docs/architecture.md maps its files).

Submodules are imported lazily by users (``from assocmem.forensic.data import build_benchmark``)
so that ``import assocmem`` never pulls in Pillow, scikit-learn, scikit-image or einops (the
``forensic`` extra). It takes any ``torch.optim`` optimizer and imports nothing of
``assocmem.optim`` or ``assocmem.meta`` (tests/test_architecture.py).
"""
