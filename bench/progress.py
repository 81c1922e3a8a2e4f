"""Progress lines on stderr: one per stage start and finish, and periodic ones in between."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

_T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[bench {time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Announce a stage, and its end with the elapsed time (also when it fails)."""
    say(f"{name}: start")
    started = time.monotonic()
    ok = False
    try:
        yield
        ok = True
    finally:
        state = "done" if ok else "FAILED"
        say(f"{name}: {state} in {time.monotonic() - started:.1f}s")


class Ticker:
    """True at most every `every_s` seconds: for periodic progress inside a loop."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self._next = time.monotonic() + every_s

    def due(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.every_s
        return True
