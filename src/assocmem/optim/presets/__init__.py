"""Importing this package registers the built-in presets of :mod:`assocmem.optim`.

``learned`` is not one of them: it lives with the learned memory (:mod:`assocmem.meta.preset`)
and registers itself when :mod:`assocmem.meta` is imported, which ``import assocmem`` does.
"""

from assocmem.optim.presets import (  # noqa: F401
    adam,
    cms,
    deep,
    delta,
    landscape,
    momentum,
    muon,
)
