"""``write_safetensors``: atomic, and the file gets the mode any file the process creates gets."""

from __future__ import annotations

import json
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


def test_a_read_racing_saves_gets_one_whole_version(tmp_path):
    # safe_open read the header from one open of the file and mapped it again by name for the
    # tensors: a reader racing a writer got one version's header with another's tensors, or
    # bytes of neither (an audit saw ~2 % of reads so in 10 s; 1.5 s here is hundreds of reads).
    # Versions differ in header length, so a mixed read cannot pass for a whole one.
    import threading
    import time

    path = tmp_path / "c.safetensors"

    def version(i: int) -> tuple[dict, dict]:
        return {"w": torch.full((64, 64), float(i))}, {"i": i, "pad": "x" * (i % 7) * 50}

    write_safetensors(path, *version(0))
    stop = time.monotonic() + 1.5
    errors: list[BaseException] = []

    def writer() -> None:
        i = 0
        while time.monotonic() < stop:
            i += 1
            try:
                write_safetensors(path, *version(i))
            except BaseException as e:  # noqa: BLE001 (reported below)
                errors.append(e)
                return

    thread = threading.Thread(target=writer)
    thread.start()
    mixed, reads = [], 0
    while time.monotonic() < stop:
        metadata, tensors = read_safetensors(path, "test file")
        i = json.loads(metadata["assocmem"])["i"]
        if not torch.equal(tensors["w"], torch.full((64, 64), float(i))):
            mixed.append(i)
        reads += 1
    thread.join()
    assert not errors and reads > 50 and mixed == []


def test_files_saved_together_stay_a_pair_when_one_cannot_be_written(tmp_path, monkeypatch):
    # save_detector wrote its sidecar in place after replacing the checkpoint: a full disk
    # while writing the sidecar left a new checkpoint beside a torn sidecar (neither loads)
    from assocmem.storage import safetensors_file, write_atomically

    a, b = tmp_path / "c.safetensors", tmp_path / "c.json"
    write_atomically([(a, b"old checkpoint"), (b, b"old sidecar")])
    written = safetensors_file._written_beside

    def full_disk(path, data):
        if path == b:
            raise OSError(28, "No space left on device")
        return written(path, data)

    monkeypatch.setattr(safetensors_file, "_written_beside", full_disk)
    with pytest.raises(OSError, match="No space"):
        write_atomically([(a, b"new checkpoint"), (b, b"new sidecar")])
    assert a.read_bytes() == b"old checkpoint" and b.read_bytes() == b"old sidecar"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json", "c.safetensors"]  # no temps


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_save_does_not_replace_a_fifo_and_a_read_does_not_wait_on_one(tmp_path):
    from hang_support import deadline

    pipe = tmp_path / "p.safetensors"
    os.mkfifo(pipe)
    with pytest.raises(ValueError, match="no regular file"):
        write_safetensors(pipe, {"w": torch.ones(1)}, {})
    assert stat.S_ISFIFO(os.lstat(pipe).st_mode)
    with deadline(10), pytest.raises(ValueError, match="not a regular file"):
        read_safetensors(pipe, "test file")


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_a_file_saved_over_keeps_its_mode(tmp_path):
    # re-saving a 0600 checkpoint made it 0644 while its sidecar kept 0600
    path = tmp_path / "c.safetensors"
    write_safetensors(path, {"w": torch.ones(1)}, {})
    path.chmod(0o600)
    write_safetensors(path, {"w": torch.zeros(1)}, {})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_header_nested_too_deep_is_a_clear_error(tmp_path):
    # json's RecursionError escaped the loaders' except clauses (JSONDecodeError only)
    from safetensors.torch import save_file

    from assocmem.meta import load_checkpoint

    path = tmp_path / "m.safetensors"
    save_file({"w": torch.ones(1)}, str(path), metadata={"assocmem": "[" * 100_000})
    with pytest.raises(ValueError, match="malformed"):
        load_checkpoint(path)


def test_a_learned_header_naming_a_key_twice_is_refused(tmp_path):
    # json keeps the last of two values without a word: an edit appended to a header loaded
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from assocmem.meta import LearnedConfig, init_meta_params, load_checkpoint, save_checkpoint

    config = LearnedConfig(hidden=(4,))
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, init_meta_params(config, torch.Generator().manual_seed(0)), config)
    with safe_open(str(path), "pt") as f:
        text = f.metadata()["assocmem"]
    save_file(load_file(str(path)), str(path), metadata={"assocmem": '{"version": 1, ' + text[1:]})
    with pytest.raises(ValueError, match="appears twice"):
        load_checkpoint(path)
