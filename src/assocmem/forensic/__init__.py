"""Forensic workload: real-vs-generated image detectors (see docs/DESIGN, "Forensic workload").

Submodules are imported lazily by users (``from assocmem.forensic.data import build_benchmark``)
so that ``import assocmem`` never pulls in Pillow, scikit-learn or scikit-image.
"""
