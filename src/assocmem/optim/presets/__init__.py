"""Importing this package registers every built-in preset."""

from assocmem.optim.presets import (  # noqa: F401
    adam,
    cms,
    deep,
    delta,
    landscape,
    learned,
    momentum,
    muon,
)
