"""Checkpoint files: safetensors tensors with a JSON header, written atomically, read safely.

The learned memory's checkpoints (:mod:`assocmem.meta.checkpoint`) and the detectors'
(:mod:`assocmem.forensic.checkpoint`) validate different contents but share how a file is
written and read; this part holds that, and the strict JSON (no ``NaN``/``Infinity``
tokens) of every JSON file the project writes (:mod:`assocmem.storage.strict_json`). It imports
nothing of ours.
"""

from assocmem.storage.safetensors_file import (
    read_regular_bytes,
    read_safetensors,
    refuse_shared_sidecar,
    sharing_sidecar,
    sidecar_path,
    write_atomically,
    write_safetensors,
)

__all__ = [
    "read_regular_bytes",
    "read_safetensors",
    "refuse_shared_sidecar",
    "sharing_sidecar",
    "sidecar_path",
    "write_atomically",
    "write_safetensors",
]
