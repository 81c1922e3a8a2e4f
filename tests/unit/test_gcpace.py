"""The writer's garbage-collection pacing: what is alive after a batch is frozen (full
collections skip it), and a reference cycle among frozen objects is still freed, by the full
collection that comes every `full_every_s`."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from monitor.core.gcpace import GcPacer, freeze_startup


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


def test_startup_freeze_frees_garbage_first_and_hides_what_lives_from_collections() -> None:
    """An API worker's start-up: garbage made so far is freed (not frozen for good), what is
    alive leaves the collector's view, and what the process makes later is collected."""
    gc.unfreeze()
    garbage = _cycle()
    kept = Node()
    freeze_startup()
    assert garbage() is None, "start-up garbage was frozen instead of freed"
    assert gc.get_freeze_count() > 0
    assert not any(o is kept for o in gc.get_objects()), "a live start-up object not frozen"
    later = _cycle()
    gc.collect()
    assert later() is None, "a cycle made after start-up was not collected"


def test_each_api_worker_freezes_its_startup_heap_while_it_runs(sqlite_url: str) -> None:
    from fastapi.testclient import TestClient

    from monitor.api.app import create_app
    from monitor.core.settings import Settings

    gc.unfreeze()
    with TestClient(create_app(Settings(database_url=sqlite_url))) as client:
        assert client.get("/v1/health").status_code == 200
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0, "a stopped app left its heap frozen"


def test_the_full_collection_comes_early_when_frozen_garbage_outgrows_the_live_heap() -> None:
    """Whatever the message rate, the cycles frozen between full collections stay a share of
    the heap: once the frozen objects grow by half, the next batch collects, long before the
    time rule would."""
    now = [0.0]
    pacer = GcPacer(full_every_s=1e9, clock=lambda: now[0], growth=0.5, min_growth=1_000)
    pacer.after_batch()
    alive = gc.get_freeze_count()

    def batch(cycles: int) -> list[weakref.ref[Node]]:
        """A batch whose objects are alive when it ends (frozen) and garbage after."""
        held = [Node() for _ in range(cycles)]
        for node in held:
            node.other = Node()
            node.other.other = node
        pacer.after_batch()
        return [weakref.ref(n) for n in held]

    few = batch(100)  # 200 objects: under the growth
    pacer.after_batch()
    assert pacer.full_collections == 0 and all(r() is not None for r in few)
    many = batch(alive // 4 + 1_000)  # more than half the heap again, in nodes
    assert pacer.full_collections == 0
    pacer.after_batch()
    assert pacer.full_collections == 1, "the frozen garbage grew past half the heap uncollected"
    assert all(r() is None for r in many) and all(r() is None for r in few)
    # what stays frozen is the heap and the weak references, not the nodes
    assert gc.get_freeze_count() < alive + len(many) + len(few) + 2_000


def test_a_quiet_writer_collects_what_its_last_batches_froze_once() -> None:
    """After a burst, quiet: the garbage the batches froze is freed then, not at the next
    time rule (10,000 HJ 212 logins kept their garbage, and the gateway its memory); and a
    quiet spell with nothing new frozen collects nothing."""
    now = [0.0]
    pacer = GcPacer(full_every_s=1e9, clock=lambda: now[0], min_growth=10**9)
    pacer.after_batch()
    assert not pacer.when_idle(), "nothing was frozen since the baseline"
    held = [Node() for _ in range(1_000)]
    for node in held:
        node.other = Node()
        node.other.other = node
    pacer.after_batch()
    refs = [weakref.ref(n) for n in held]
    del held, node
    assert pacer.full_collections == 0 and all(r() is not None for r in refs)
    assert pacer.when_idle()
    assert pacer.full_collections == 1 and all(r() is None for r in refs)
    assert not pacer.when_idle() and pacer.full_collections == 1
