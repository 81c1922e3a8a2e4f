"""The writer's garbage-collection pacing: what is alive after a batch is frozen (full
collections skip it), and a reference cycle among frozen objects is still freed, by the full
collection that comes every `full_every_s`."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from monitor.core.gcpace import GcPacer


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()


def _cycle() -> weakref.ref[Node]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_a_batch_freezes_what_is_alive_and_the_full_collection_frees_frozen_cycles() -> None:
    now = [0.0]
    pacer = GcPacer(full_every_s=60, clock=lambda: now[0])
    gone = _cycle()  # garbage already, but only a collection can see it
    pacer.after_batch()
    assert gc.get_freeze_count() > 0
    gc.collect()
    assert gone() is not None, "a frozen cycle was collected: freezing did nothing"
    now[0] = 59.0
    pacer.after_batch()
    assert gone() is not None and pacer.full_collections == 0
    now[0] = 60.0
    pacer.after_batch()
    assert gone() is None, "the full collection did not free the frozen cycle"
    assert pacer.full_collections == 1
    assert gc.get_freeze_count() > 0  # and what is alive is frozen again
