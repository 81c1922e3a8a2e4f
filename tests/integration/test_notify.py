"""The notification outbox against the real databases and a real HTTP receiver: every alert
change reaches the webhook once (after the receiver's documented dedupe), signed and grouped
per site, across failed requests, a dispatcher killed between the POST and its commit, a
rolled-back alert change and two dispatchers racing on PostgreSQL."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple

import pydantic
import pytest
from sqlalchemy import Engine, func, insert, select

from alerts.evaluator import Touched, evaluate_batch
from alerts.notify import Dispatcher
from ingest.repository import insert_readings
from ingest.validate import Row
from monitor.core.db import make_engine
from monitor.core.models import Notification, Rule, table, utcnow
from monitor.core.settings import Settings
from tests.conftest import register

T0 = datetime(2026, 11, 25, 0, 0, tzinfo=UTC)
SECRET = "test-webhook-secret"
notifications = table(Notification)

# --- a receiver that does what docs/notifications.md asks of one --------------------------


@dataclass
class Delivery:
    key: str  # Idempotency-Key
    body: dict[str, Any]
    answer: int | str

    @property
    def ids(self) -> list[int]:
        return [n["id"] for n in self.body["notifications"]]


@dataclass
class Receiver:
    """Verifies the signature and the timestamp over the raw body, records every delivery,
    and keeps each notification once, by id. `script` answers the next requests in turn
    (an HTTP status, or "slow": take the request, then answer 200 too late)."""

    url: str = ""
    script: list[int | str] = field(default_factory=list)
    delay_s: float = 0.0
    deliveries: list[Delivery] = field(default_factory=list)
    kept: dict[int, dict[str, Any]] = field(default_factory=dict)
    rejected: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, raw: bytes, headers: dict[str, str]) -> tuple[int, float]:
        expected = "sha256=" + hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()
        body = json.loads(raw)
        fresh = abs(time.time() - int(headers["x-envmon-timestamp"])) <= 300
        if (
            not hmac.compare_digest(headers.get("x-envmon-signature", ""), expected)
            or not fresh
            or str(body["timestamp"]) != headers["x-envmon-timestamp"]
            or headers["content-type"] != "application/json"
        ):
            with self.lock:
                self.rejected += 1
            return 401, 0.0
        with self.lock:
            answer = self.script.pop(0) if self.script else 200
            self.deliveries.append(Delivery(headers["idempotency-key"], body, answer))
            if answer in (200, "slow"):  # processed: keep what is new, drop repeats
                for n in body["notifications"]:
                    self.kept.setdefault(n["id"], n)
        if answer == "slow":
            return 200, 1.0
        return int(answer), self.delay_s

    def all_ids(self) -> list[int]:
        with self.lock:
            return [i for d in self.deliveries for i in d.ids]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers["Content-Length"]))
            status, wait_s = rec.handle(raw, {k.lower(): v for k, v in self.headers.items()})
            time.sleep(wait_s)
            with contextlib.suppress(OSError):  # the sender gave up waiting ("slow")
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    rec.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/envmon"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield rec
    server.shutdown()
    server.server_close()


# --- alerts through the real evaluator ---------------------------------------------------


class Db(NamedTuple):
    url: str
    engine: Engine


# site -> devices (leak meters); both sites in district Lanshan
SITES = {"dma-1": ["leak-1", "leak-2"], "dma-2": ["leak-3"]}


def add_sites(engine: Engine, sites: dict[str, list[str]]) -> None:
    for site, devices in sites.items():
        register(
            engine,
            site=site,
            site_kind="dma",
            devices=dict.fromkeys(devices, "leak_meter"),
            rules=False,
        )


@pytest.fixture(params=["postgresql", "sqlite"])
def db(request: pytest.FixtureRequest) -> Iterator[Db]:
    url = request.getfixturevalue("pg_url" if request.param == "postgresql" else "sqlite_url")
    yield from _db(url)


@pytest.fixture
def pg(pg_url: str) -> Iterator[Db]:
    yield from _db(pg_url)


def _db(url: str) -> Iterator[Db]:
    engine = make_engine(url)
    add_sites(engine, SITES)
    with engine.begin() as conn:
        conn.execute(
            insert(table(Rule)).values(
                name="low-pressure",
                device_kind="leak_meter",
                metric="pressure",
                aggregate="raw",
                window_s=0,
                min_samples=1,
                warn_below=0.16,
                alarm_below=0.14,
                for_s=0,
                auto_resolve=True,
                quiet_s=600,
                basis="CJJ 92-2016 (test)",
                legal_limit=False,
                enabled=True,
                description="",
                created_at=T0,
                updated_at=T0,
            )
        )
    yield Db(url, engine)
    engine.dispose()


def readings(device: str, values: list[float], start_min: int = 0) -> list[Row]:
    return [
        Row(device, "pressure", T0 + timedelta(minutes=start_min + i), v, "N", T0)
        for i, v in enumerate(values)
    ]


def feed(engine: Engine, device: str, values: list[float], start_min: int = 0) -> None:
    """One reading a minute, stored and evaluated as one ingest batch (one transaction)."""
    rows = readings(device, values, start_min)
    with engine.begin() as conn:
        insert_readings(conn, rows)
        evaluate_batch(conn, [Touched(device, "pressure", rows[0].ts)])


def outbox(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [
            dict(r._mapping)
            for r in conn.execute(select(notifications).order_by(notifications.c.id))
        ]


def settings(db: Db, receiver: Receiver, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": db.url,
        "webhook_url": receiver.url,
        "webhook_secret": SECRET,
        "notify_group_s": 0,
        "notify_backoff_s": 1.0,
        "notify_timeout_s": 2.0,
        **overrides,
    }
    return Settings(**values)


# --- (a) delivered, signed, grouped --------------------------------------------------------


def test_each_notification_is_delivered_signed_in_one_message_per_site_and_interval(
    db: Db, receiver: Receiver
) -> None:
    feed(db.engine, "leak-1", [0.15, 0.10])  # opened (warning), escalated (alarm)
    feed(db.engine, "leak-2", [0.12], start_min=1)  # opened, another batch, same site
    feed(db.engine, "leak-3", [0.15], start_min=1)  # opened, the other site
    rows = outbox(db.engine)
    assert [(r["site_id"], r["status"]) for r in rows] == [("dma-1", "pending")] * 3 + [
        ("dma-2", "pending")
    ]
    dispatcher = Dispatcher(settings(db, receiver, notify_group_s=60), db.engine)
    now = utcnow()
    assert dispatcher.run_once(now) == 0  # the oldest is not a minute old yet
    assert receiver.deliveries == []

    assert dispatcher.run_once(now + timedelta(seconds=61)) == 4
    assert receiver.rejected == 0  # every signature and timestamp verified
    by_site = {d.body["site_id"]: d for d in receiver.deliveries}
    assert len(receiver.deliveries) == 2 and set(by_site) == {"dma-1", "dma-2"}
    assert by_site["dma-1"].ids == [r["id"] for r in rows[:3]]
    assert by_site["dma-2"].ids == [rows[3]["id"]]
    for d in receiver.deliveries:
        assert d.key == d.body["delivery_id"]
    first, escalated, other = by_site["dma-1"].body["notifications"]
    assert first["kind"] == "opened" and first["severity"] == "warning"
    assert escalated["kind"] == "escalated" and escalated["severity"] == "alarm"
    assert escalated["value"] == pytest.approx(0.10)
    assert other["device_id"] == "leak-2" and other["alert_id"] != first["alert_id"]
    assert {k: first[k] for k in ("rule", "metric", "basis", "site_id", "district")} == {
        "rule": "low-pressure",
        "metric": "pressure",
        "basis": "CJJ 92-2016 (test)",
        "site_id": "dma-1",
        "district": "Lanshan",
    }
    assert "pressure" in first["message"] and datetime.fromisoformat(first["at"]).tzinfo
    after = outbox(db.engine)
    assert {r["status"] for r in after} == {"sent"}
    assert all(r["sent_at"] is not None and r["attempts"] == 1 for r in after)

    # nothing left: a later pass sends nothing
    assert dispatcher.run_once(now + timedelta(hours=1)) == 0
    assert len(receiver.deliveries) == 2


def test_dispatcher_thread_sends_and_stops(db: Db, receiver: Receiver) -> None:
    dispatcher = Dispatcher(settings(db, receiver), db.engine, poll_s=0.05)
    dispatcher.start()
    try:
        feed(db.engine, "leak-3", [0.12])
        deadline = time.monotonic() + 10
        while not receiver.kept and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        dispatcher.stop()
    assert len(receiver.kept) == 1
    assert [r["status"] for r in outbox(db.engine)] == ["sent"]


def test_without_a_webhook_url_notifications_stay_in_the_outbox(db: Db) -> None:
    feed(db.engine, "leak-3", [0.12])
    dispatcher = Dispatcher(Settings(database_url=db.url), db.engine)
    dispatcher.start()  # no thread
    assert dispatcher.run_once(utcnow() + timedelta(hours=1)) == 0
    dispatcher.stop()
    assert [r["status"] for r in outbox(db.engine)] == ["pending"]


def test_a_webhook_url_without_a_secret_is_refused() -> None:
    with pytest.raises(pydantic.ValidationError, match="ENVMON_WEBHOOK_SECRET must be set"):
        Settings(webhook_url="https://hooks.example.org/envmon")
    with pytest.raises(pydantic.ValidationError, match="http:// or https://"):
        Settings(webhook_url="ftp://hooks.example.org", webhook_secret=SECRET)


# --- (b) retries with backoff, then failed ---------------------------------------------------


def test_failed_requests_are_retried_with_backoff_and_delivered_once(
    db: Db, receiver: Receiver
) -> None:
    feed(db.engine, "leak-3", [0.12])
    receiver.script = [500, "slow"]  # an error, then a timeout (the receiver took it anyway)
    dispatcher = Dispatcher(settings(db, receiver, notify_timeout_s=0.3), db.engine)
    t1 = utcnow()
    assert dispatcher.run_once(t1) == 0
    [row] = outbox(db.engine)
    assert row["status"] == "pending" and row["attempts"] == 1
    assert row["last_error"].startswith("HTTP 500")
    # backoff 1 s * 2**0, with jitter in [50%, 100%]
    assert t1 + timedelta(seconds=0.5) <= row["next_attempt_at"] <= t1 + timedelta(seconds=1)

    assert dispatcher.run_once(t1 + timedelta(seconds=0.4)) == 0  # not due yet
    assert len(receiver.deliveries) == 1

    t2 = row["next_attempt_at"]
    assert dispatcher.run_once(t2) == 0
    [row] = outbox(db.engine)
    assert row["attempts"] == 2 and "timed out" in row["last_error"]
    assert t2 + timedelta(seconds=1) <= row["next_attempt_at"] <= t2 + timedelta(seconds=2)

    assert dispatcher.run_once(row["next_attempt_at"]) == 1
    [row] = outbox(db.engine)
    assert row["status"] == "sent" and row["attempts"] == 3 and row["last_error"] is None
    # three requests of the same delivery; the receiver kept the notification once
    assert [d.answer for d in receiver.deliveries] == [500, "slow", 200]
    assert len({d.key for d in receiver.deliveries}) == 1
    assert list(receiver.kept) == [row["id"]]


def test_after_the_last_attempt_a_notification_is_failed_and_logged(
    db: Db, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    feed(db.engine, "leak-3", [0.12])
    receiver.script = [503] * 10
    dispatcher = Dispatcher(settings(db, receiver, notify_max_attempts=3), db.engine)
    now = utcnow()
    with caplog.at_level(logging.WARNING, logger="alerts.notify"):
        for _ in range(3):
            assert dispatcher.run_once(now) == 0
            now = outbox(db.engine)[0]["next_attempt_at"]
    [row] = outbox(db.engine)
    assert row["status"] == "failed" and row["attempts"] == 3
    assert row["last_error"].startswith("HTTP 503")
    records = [r for r in caplog.records if r.name == "alerts.notify"]
    assert [r.levelname for r in records] == ["WARNING", "WARNING", "ERROR"]
    assert "gave up" in records[-1].getMessage()
    assert dispatcher.run_once(now + timedelta(days=1)) == 0
    assert len(receiver.deliveries) == 3


# --- (c) a crash between the alert's commit and the send -------------------------------------

CRASHING_DISPATCHER = """
import os, signal, sys
from alerts.notify import Dispatcher, http_post
from monitor.core.db import make_engine
from monitor.core.settings import Settings

def crash(url, body, headers, timeout_s):
    if sys.argv[1] == "after_post":
        http_post(url, body, headers, timeout_s)  # the receiver has it, answered 200
    os.kill(os.getpid(), signal.SIGKILL)  # before the commit that marks it sent

settings = Settings()
Dispatcher(settings, make_engine(settings.sqlalchemy_url), transport=crash).run_once()
"""


@pytest.mark.parametrize("point", ["after_post", "before_post"])
def test_a_dispatcher_killed_around_the_post_neither_loses_nor_duplicates(
    db: Db, receiver: Receiver, point: str, tmp_path: Path
) -> None:
    feed(db.engine, "leak-1", [0.15, 0.10])
    feed(db.engine, "leak-3", [0.12])
    env = {
        **os.environ,
        "ENVMON_DATABASE_URL": db.url,
        "ENVMON_WEBHOOK_URL": receiver.url,
        "ENVMON_WEBHOOK_SECRET": SECRET,
        "ENVMON_NOTIFY_GROUP_S": "0",
    }
    crashed = subprocess.run(
        [sys.executable, "-c", CRASHING_DISPATCHER, point],
        env=env,
        cwd=tmp_path,  # no .env of the developer's
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert len(receiver.deliveries) == (1 if point == "after_post" else 0)
    assert {r["status"] for r in outbox(db.engine)} == {"pending"}  # nothing lost

    dispatcher = Dispatcher(settings(db, receiver), db.engine)
    deadline = time.monotonic() + 15
    while any(r["status"] == "pending" for r in outbox(db.engine)):
        assert time.monotonic() < deadline, "the killed dispatcher's claim was not released"
        dispatcher.run_once()
        time.sleep(0.05)

    ids = [r["id"] for r in outbox(db.engine)]
    assert {r["status"] for r in outbox(db.engine)} == {"sent"}
    assert sorted(receiver.kept) == ids  # each notification kept exactly once, none lost
    assert len(receiver.deliveries) == (3 if point == "after_post" else 2)
    if point == "after_post":
        # the interrupted delivery came again, the same delivery with the same notifications
        before, *after = receiver.deliveries
        [again] = [d for d in after if d.key == before.key]
        assert again.ids == before.ids
        assert Counter(receiver.all_ids())[before.ids[0]] == 2
    else:
        assert sorted(receiver.all_ids()) == ids


# --- (d) a rolled-back alert change ----------------------------------------------------------


def test_a_rolled_back_alert_change_is_never_notified(db: Db, receiver: Receiver) -> None:
    rows = readings("leak-1", [0.10])
    with db.engine.connect() as conn:
        tx = conn.begin()
        insert_readings(conn, rows)
        assert evaluate_batch(conn, [Touched("leak-1", "pressure", rows[0].ts)]).opened == 1
        assert conn.execute(select(func.count()).select_from(notifications)).scalar() == 1
        tx.rollback()
    dispatcher = Dispatcher(settings(db, receiver), db.engine)
    assert dispatcher.run_once(utcnow() + timedelta(hours=1)) == 0
    assert outbox(db.engine) == [] and receiver.deliveries == []

    feed(db.engine, "leak-3", [0.12])  # a committed one goes out, alone
    assert dispatcher.run_once() == 1
    assert [d.body["site_id"] for d in receiver.deliveries] == ["dma-2"]


# --- (e) two dispatchers at once on PostgreSQL ----------------------------------------------


def test_two_dispatchers_at_once_never_send_a_notification_twice(
    pg: Db, receiver: Receiver
) -> None:
    sites = {f"zone-{s:02d}": [f"zone-{s:02d}-m{d}" for d in range(4)] for s in range(12)}
    add_sites(pg.engine, sites)
    batch = [r for devices in sites.values() for d in devices for r in readings(d, [0.15, 0.10])]
    with pg.engine.begin() as conn:
        insert_readings(conn, batch)
        evaluate_batch(conn, [Touched(r.device_id, "pressure", r.ts) for r in batch])
    expected = [r["id"] for r in outbox(pg.engine)]
    assert len(expected) == 12 * 4 * 2  # opened + escalated per meter

    receiver.delay_s = 0.05  # so that the two are mid-POST at the same time
    start = threading.Barrier(2)
    sent: dict[str, int] = {}
    errors: list[BaseException] = []

    def run(name: str) -> None:
        engine = make_engine(pg.url)
        dispatcher = Dispatcher(settings(pg, receiver), engine)
        try:
            start.wait()
            total = 0
            for _ in range(5):
                total += dispatcher.run_once()
            sent[name] = total
        except BaseException as exc:
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    counts = Counter(receiver.all_ids())
    assert sorted(counts) == expected and set(counts.values()) == {1}  # each once, none lost
    assert sum(sent.values()) == len(expected) and min(sent.values()) > 0  # both worked
    assert len(receiver.deliveries) == 12  # a site is never split between the two
    assert {r["status"] for r in outbox(pg.engine)} == {"sent"}
    assert receiver.rejected == 0
