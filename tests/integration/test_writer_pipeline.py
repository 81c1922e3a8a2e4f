"""The writer's two threads: batch N+1 is validated while batch N commits, and still nothing is
acknowledged before its commit, and acknowledgements go out in the order messages came."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Connection, Engine, func, select, text

from ingest.contract import telemetry_topic
from ingest.mqtt import Message
from ingest.validate import DeviceInfo
from ingest.writer import Writer
from monitor.core.catalogue import DeviceKind
from monitor.core.db import make_engine
from monitor.core.models import Reading, table
from monitor.core.settings import Settings
from tests.conftest import register

WAIT_S = 20.0


def _message(mid: int) -> Message:
    """Message `mid`: a reading `mid` seconds before now (each its own key)."""
    now = datetime.now(UTC)
    ts = (now - timedelta(seconds=mid)).isoformat()
    payload = orjson.dumps({"ts": ts, "values": {"pm10": 50.0 + mid}})
    return Message(telemetry_topic("envmon", "dust-1"), payload, mid, 1, now, 1)


def _until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT_S} s: {what}")
        time.sleep(0.01)


class Harness:
    """A writer over SQLite with a registry that counts its lookups and an ack that records."""

    def __init__(self, engine: Engine, tmp_path: Path, batch: int) -> None:
        self.engine = engine
        self.inbox: queue.Queue[Message] = queue.Queue()
        self.acked: list[int] = []
        self.lookups: list[str] = []
        settings = Settings(
            database_url=str(engine.url),
            spool_file=tmp_path / "spool.sqlite",
            batch_max_age_ms=20,
            batch_max_messages=batch,
        )
        self.writer = Writer(settings, engine, self.inbox, self._lookup, self._ack)

    def _lookup(self, device_id: str) -> DeviceInfo:
        self.lookups.append(device_id)
        return DeviceInfo(DeviceKind.dust_monitor, True)

    def _ack(self, messages: list[Message]) -> None:
        self.acked.extend(m.mid for m in messages)

    def stored(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(table(Reading))).scalar_one())


@pytest.fixture
def engine(sqlite_url: str) -> Iterator[Engine]:
    engine = make_engine(sqlite_url)
    register(engine, devices={"dust-1": "dust_monitor"}, rules=False)
    yield engine
    engine.dispose()


def test_the_next_batch_is_validated_while_one_commits_and_acks_wait_for_their_commit(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = Harness(engine, tmp_path, batch=3)
    w = h.writer
    real = w._store
    in_store = threading.Event()
    release = threading.Event()
    seen: list[list[int]] = []

    def slow(conn: Connection, messages: list[Message]) -> Any:
        seen.append([m.mid for m in messages])
        if len(seen) == 1:
            in_store.set()
            assert release.wait(WAIT_S)
        return real(conn, messages)

    monkeypatch.setattr(w, "_store", slow)
    for mid in (1, 2, 3):
        h.inbox.put(_message(mid))
    w.start()
    try:
        assert in_store.wait(WAIT_S)
        for mid in (4, 5, 6):
            h.inbox.put(_message(mid))
        # batch 2 is validated ahead (each message looked up once) while batch 1 is held
        _until(lambda: len(h.lookups) == 6, "batch 2 validated while batch 1 commits")
        assert h.acked == [] and h.stored() == 0
        release.set()
        _until(lambda: len(h.acked) == 6, "both batches acknowledged")
        assert h.acked == [1, 2, 3, 4, 5, 6]
        assert seen == [[1, 2, 3], [4, 5, 6]]
        assert h.stored() == 6
        assert len(h.lookups) == 6  # the committer used the validation done ahead
        assert w._validated == {}  # forgotten once acknowledged
    finally:
        release.set()
        w.stop(5)


def test_stop_commits_and_acknowledges_everything_queued_in_order(
    engine: Engine, tmp_path: Path
) -> None:
    h = Harness(engine, tmp_path, batch=7)
    w = h.writer
    for mid in range(1, 51):
        h.inbox.put(_message(mid))
    w.start()
    w.stop(WAIT_S)
    assert h.acked == list(range(1, 51))
    assert h.stored() == 50


def test_a_batch_that_failed_is_retried_with_its_validation_and_acknowledged_once(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = Harness(engine, tmp_path, batch=5)
    w = h.writer
    real = w._store_batch
    failures = iter([RuntimeError("injected")])

    def flaky(messages: list[Message]) -> None:
        exc = next(failures, None)
        if exc is not None:
            raise exc
        real(messages)

    monkeypatch.setattr(w, "_store_batch", flaky)
    monkeypatch.setattr("ingest.writer.time.sleep", lambda _s: None)
    for mid in range(1, 6):
        h.inbox.put(_message(mid))
    w.start()
    try:
        _until(lambda: len(h.acked) == 5, "the retried batch acknowledged")
        assert h.acked == [1, 2, 3, 4, 5]
        assert h.stored() == 5
        assert len(h.lookups) == 5
    finally:
        w.stop(5)


@pytest.mark.parametrize("copy", [True, False], ids=["copy", "unnest"])
def test_the_writer_stores_through_either_postgresql_statement(
    pg_url: str, tmp_path: Path, copy: bool
) -> None:
    """ENVMON_INGEST_COPY picks the statement; both store, roll up and acknowledge alike."""
    engine = make_engine(pg_url)
    register(engine, devices={"dust-1": "dust_monitor"}, rules=False)
    inbox: queue.Queue[Message] = queue.Queue()
    acked: list[int] = []
    settings = Settings(
        database_url=pg_url,
        spool_file=tmp_path / "spool.sqlite",
        batch_max_age_ms=20,
        batch_max_messages=4,
        ingest_copy=copy,
    )
    writer = Writer(
        settings,
        engine,
        inbox,
        lambda _: DeviceInfo(DeviceKind.dust_monitor, True),
        lambda ms: acked.extend(m.mid for m in ms),
    )
    messages = [_message(mid) for mid in range(1, 11)]
    for m in [*messages, *messages[:3]]:  # three delivered twice
        inbox.put(m)
    writer.start()
    try:
        _until(lambda: len(acked) == 13, "every delivery acknowledged")
    finally:
        writer.stop(5)
    with engine.connect() as conn:
        stored = conn.execute(select(func.count()).select_from(table(Reading))).scalar_one()
        rolled = conn.execute(text("SELECT sum(count) FROM hourly_rollups")).scalar_one()
        watermark = conn.execute(
            text("SELECT watermark_at FROM devices WHERE id = 'dust-1'")
        ).scalar_one()
    engine.dispose()
    newest = max(datetime.fromisoformat(orjson.loads(m.payload)["ts"]) for m in messages)
    assert watermark == newest  # moved to the newest event time, not back by the repeats
    assert acked == [*range(1, 11), 1, 2, 3]
    assert stored == 10 and rolled == 10
    assert writer.stats.stored == 10 and writer.stats.duplicates == 3
