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


def test_loaded_tensors_do_not_change_when_the_file_is_overwritten_in_place(tmp_path):
    # safe_open's tensors were views of a memory map of the file: an in-place overwrite (cp,
    # scp) changed a checkpoint already loaded, and a shorter file killed the process (SIGBUS)
    path = tmp_path / "x.safetensors"
    write_safetensors(path, {"w": torch.zeros(1000)}, {"v": 1})
    _, tensors = read_safetensors(path, "test file")
    other = tmp_path / "y.safetensors"
    write_safetensors(other, {"w": torch.ones(1000)}, {"v": 1})
    with open(path, "r+b") as f:  # in place, as cp does: same inode, new bytes
        f.write(other.read_bytes())
    assert torch.equal(tensors["w"], torch.zeros(1000))
    with open(path, "r+b") as f:
        f.truncate(16)  # what would be left of a mapping: a read past the end is SIGBUS
    assert float(tensors["w"].sum()) == 0.0
