"""Faults injected in the writer: nothing acknowledged that is not stored (or spooled), no
batch forgotten, and a transient PostgreSQL refusal retried, not taken for an outage."""

from __future__ import annotations

import queue
import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg.errors
import pytest
from sqlalchemy import Connection, func, select
from sqlalchemy.exc import OperationalError

from ingest import metrics
from ingest.contract import telemetry_topic
from ingest.mqtt import Message
from ingest.validate import DeviceInfo
from ingest.writer import Writer
from monitor.core.catalogue import DeviceKind
from monitor.core.db import make_engine
from monitor.core.models import Reading, table
from monitor.core.settings import Settings
from tests.conftest import register


def _message(mid: int) -> Message:
    payload = orjson.dumps({"ts": datetime.now(UTC).isoformat(), "values": {"pm10": 50.0 + mid}})
    return Message(telemetry_topic("envmon", "dust-1"), payload, mid, 1, datetime.now(UTC), 1)


class Harness:
    def __init__(self, url: str, tmp_path: Path) -> None:
        self.engine = make_engine(url)
        register(self.engine, devices={"dust-1": "dust_monitor"}, rules=False)
        self.inbox: queue.Queue[Message] = queue.Queue()
        self.acked: list[int] = []
        self.lock = threading.Lock()
        settings = Settings(
            database_url=url, spool_file=tmp_path / "spool.sqlite", batch_max_age_ms=20
        )
        self.writer = Writer(
            settings,
            self.engine,
            self.inbox,
            lambda _: DeviceInfo(DeviceKind.dust_monitor, True),
            self._ack,
        )

    def _ack(self, messages: list[Message]) -> None:
        with self.lock:
            self.acked.extend(m.mid for m in messages)

    def wait_acked(self, n: int, timeout_s: float = 15.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.acked) >= n:
                    return
            time.sleep(0.05)
        raise AssertionError(f"{len(self.acked)} of {n} messages acknowledged")

    def stored(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(table(Reading))).scalar_one())


def _disk_full_once(w: Writer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer's first batch fails as a full spool disk does (sqlite3's own error)."""
    real = w._store_batch
    failures = iter([sqlite3.OperationalError("database or disk is full")])

    def flaky(messages: list[Message]) -> None:
        exc = next(failures, None)
        if exc is not None:
            raise exc
        real(messages)

    monkeypatch.setattr(w, "_store_batch", flaky)


@pytest.fixture
def harness(sqlite_url: str, tmp_path: Path) -> Any:
    h = Harness(sqlite_url, tmp_path)
    yield h
    h.writer.stop(5)
    h.engine.dispose()


def test_a_non_sqlalchemy_error_keeps_the_batch_and_retries_it(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full spool disk raises sqlite3.OperationalError, not SQLAlchemy's: the batch must
    not be dropped from memory un-acknowledged (the broker would hold it forever)."""
    w = harness.writer
    _disk_full_once(w, monkeypatch)
    for mid in (1, 2, 3):
        harness.inbox.put(_message(mid))
    w.start()
    harness.wait_acked(3)
    assert sorted(harness.acked) == [1, 2, 3]
    assert harness.stored() == 3


@pytest.mark.parametrize(
    "error",
    [
        psycopg.errors.DeadlockDetected,
        psycopg.errors.SerializationFailure,
        psycopg.errors.QueryCanceled,
    ],
)
def test_deadlock_serialisation_failure_and_timeout_are_retried_not_spooled(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: type[Exception]
) -> None:
    h = Harness(pg_url, tmp_path)
    try:
        w = h.writer
        real = w._store
        failures = iter([error("injected"), error("injected")])

        def flaky(conn: Connection, messages: list[Message]) -> Any:
            exc = next(failures, None)
            if exc is not None:
                raise OperationalError("INSERT ...", {}, exc)
            return real(conn, messages)

        monkeypatch.setattr(w, "_store", flaky)
        h.inbox.put(_message(1))
        w.start()
        h.wait_acked(1)
        assert w.stats.spooled == 0 and w.spool_depth == 0
        assert h.stored() == 1
        assert metrics.DB_UP._value.get() == 1
    finally:
        h.writer.stop(5)
        h.engine.dispose()


def test_an_outage_is_still_spooled(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    w = harness.writer
    real = w._store
    down = {"on": True}

    def away(conn: Connection, messages: list[Message]) -> Any:
        if down["on"]:
            raise OperationalError("INSERT ...", {}, psycopg.errors.AdminShutdown("gone"))
        return real(conn, messages)

    monkeypatch.setattr(w, "_store", away)
    harness.inbox.put(_message(1))
    w.start()
    harness.wait_acked(1)
    assert w.stats.spooled == 1
    down["on"] = False
    deadline = time.monotonic() + 15
    while harness.stored() < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert harness.stored() == 1


def test_a_dead_letter_is_stamped_with_its_messages_receipt_not_the_retry(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad message in a batch that failed once and was retried (or replayed from the
    spool) keeps the time it arrived, not the time its batch finally committed."""
    from ingest.contract import telemetry_topic as topic
    from monitor.core.models import DeadLetter

    w = harness.writer
    _disk_full_once(w, monkeypatch)
    arrived = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
    harness.inbox.put(Message(topic("envmon", "dust-1"), b"{not json", 1, 1, arrived, 1))
    w.start()
    harness.wait_acked(1)
    with harness.engine.connect() as conn:
        stamps = conn.execute(select(table(DeadLetter).c.received_at)).scalars().all()
    assert stamps == [arrived]
