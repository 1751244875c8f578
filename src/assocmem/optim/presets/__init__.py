"""Importing this package registers every built-in preset."""

from assocmem.optim.presets import adam, momentum  # noqa: F401
