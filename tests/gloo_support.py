"""Running a distributed worker script (it spawns its gloo ranks on 127.0.0.1) from a test:
on a fresh port, in its own session, so that on a timeout the ranks are killed with it and a
failing collective never hangs the suite."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_worker(worker: Path, args: list[str], timeout_s: int) -> tuple[int, str]:
    """Run ``python worker <args...>`` with one thread per rank; its exit status and the tail
    of its stderr. A run past ``timeout_s`` is killed, ranks included, and fails the test."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [*sys.path, os.environ.get("PYTHONPATH")])),
    }
    cmd = [sys.executable, str(worker), *args]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stderr=subprocess.PIPE)
    try:
        _, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"{worker.name} did not finish in {timeout_s} s")
    return proc.returncode, err.decode()[-4000:]
