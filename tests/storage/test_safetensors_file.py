"""``write_safetensors``: atomic, and the file gets the mode any file the process creates gets."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from assocmem.storage import read_safetensors, write_safetensors


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_a_checkpoint_gets_the_mode_the_umask_gives_a_new_file(tmp_path, umask):
    # safetensors creates its file 0600 whatever the umask: a checkpoint written for others
    # to read (a shipped detector, an exported memory) was owner-only beside a 0644 sidecar
    old = os.umask(umask)
    try:
        path = tmp_path / "c.safetensors"
        write_safetensors(path, {"w": torch.ones(2)}, {"k": 1})
        sidecar = tmp_path / "c.json"
        sidecar.write_text("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(sidecar.stat().st_mode)
    metadata, tensors = read_safetensors(path, "test file")
    assert torch.equal(tensors["w"], torch.ones(2)) and "assocmem" in metadata
    assert not list(tmp_path.glob("*.tmp"))
