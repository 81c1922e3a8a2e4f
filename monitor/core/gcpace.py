"""Garbage collection paced for a process that keeps a large, long-lived heap.

The writer keeps rule state for every (rule, device) pair (alerts/incremental.py): hundreds
of thousands of objects that live for the whole run and are partly replaced by every batch.
CPython's oldest-generation collection walks all of them, and the new survivors of every
batch keep triggering it: measured in-process, 18 full collections took 2.6 s of a 13.3 s
drain, a fifth of the writer's time (docs/benchmarks.md, "Garbage collection").

`GcPacer.after_batch()` freezes what is alive after each batch (`gc.freeze`: moved to the
permanent generation, which collections skip; an object freed by its reference count is
still freed at once). Only reference cycles among frozen objects wait: the pacer unfreezes
and runs one full collection, which frees them, once the frozen objects have grown by
`growth` (half) over what was alive after the last full collection (CPython's own rule
for its oldest generation, which counts a quarter), and at least every `full_every_s`.
The growth rule bounds the garbage kept to a share of the live heap whatever the message
rate: a soak at 300 msg/s with the time rule alone grew the ingestor by 240 MiB in four
minutes (docs/benchmarks.md, "Soak"), and a faster stream would keep more.

`GcPacer.when_idle()` (the writer calls it once nothing has come for `IDLE_S`) collects what
the batches since the last full collection froze, then hands freed heap back to the system:
a burst followed by quiet (10,000 HJ 212 loggers logging in) would otherwise keep its
garbage frozen, and the process at its high-water mark, for up to `full_every_s`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import time
from collections.abc import Callable

FULL_EVERY_S = 600.0
GROWTH = 0.5
MIN_GROWTH = 200_000  # objects: a small heap is not collected for a few thousand new ones
IDLE_S = 1.0  # quiet this long (no batch) before the idle collection: not between batches


def malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None (another C library, another system)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


_trim = malloc_trim()


class GcPacer:
    def __init__(
        self,
        full_every_s: float = FULL_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
        *,
        growth: float = GROWTH,
        min_growth: int = MIN_GROWTH,
    ) -> None:
        self._every = full_every_s
        self._clock = clock
        self._growth = growth
        self._min_growth = min_growth
        self._last_full = clock()
        self._alive: int | None = None  # objects frozen just after the last full collection
        self._dirty = False  # batches frozen since the last full collection
        self.full_collections = 0

    def after_batch(self) -> None:
        """Call between batches, when what is alive is what the process keeps."""
        now = self._clock()
        if self._alive is None:  # the first batch: what is alive now is the baseline
            gc.freeze()
            self._alive = gc.get_freeze_count()
            return
        frozen = gc.get_freeze_count()
        grown = frozen - self._alive > max(self._alive * self._growth, self._min_growth)
        if grown or now - self._last_full >= self._every:
            self._full(now)
            return
        gc.freeze()
        self._dirty = True

    def when_idle(self) -> bool:
        """Call when no batch has come for a while (`IDLE_S`): one full collection of what
        was frozen since the last, then the freed heap handed back. Returns whether it ran
        (once per quiet spell: nothing to do until the next batch)."""
        if not self._dirty:
            return False
        self._full(self._clock())
        if _trim is not None:
            _trim(0)
        return True

    def _full(self, now: float) -> None:
        gc.unfreeze()
        gc.collect()
        self._last_full = now
        self.full_collections += 1
        gc.freeze()
        self._alive = gc.get_freeze_count()
        self._dirty = False


def freeze_startup() -> None:
    """Move what start-up made (modules, the app's routes and models, the engine) out of
    the collector's view, once it is built: a full collection then walks only what the
    process made since. In an API worker the start-up heap is some 125k-160k objects, and
    each full collection over it paused every request in the worker for 100-200 ms, the
    open loop's p99 (docs/benchmarks.md, "Read path")."""
    gc.collect()
    gc.freeze()
