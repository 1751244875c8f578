"""A hang (e.g. opening a FIFO for reading, which blocks until a writer appears) turned into a
test failure instead of a stuck suite."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Raise ``TimeoutError`` in the block if it runs past ``seconds`` (SIGALRM: main thread,
    POSIX)."""

    def _raise(*_: object) -> None:
        raise TimeoutError(f"still blocked after {seconds} s")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
