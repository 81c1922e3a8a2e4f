"""The writer: drains the intake queue into batches, stores each batch in one transaction,
evaluates the alert rules on it in the same transaction, then acknowledges its messages."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from alerts.evaluator import Touched, evaluate_batch
from ingest.mqtt import Message
from ingest.repository import insert_dead_letters, insert_readings, touch_devices
from ingest.validate import DeadLetterRecord, Limits, Parsed, Reason, Row, parse_message
from monitor.core.settings import Settings

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Stats:
    messages: int = 0
    stored: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    batches: int = 0
    alerts_opened: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class Batch:
    messages: list[Message] = field(default_factory=list)
    parsed: list[Parsed] = field(default_factory=list)
    readings: int = 0


class Writer:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        inbox: queue.Queue[Message],
        lookup: Callable[[str], object],
        ack: Callable[[list[Message]], None],
    ) -> None:
        self._engine = engine
        self._inbox = inbox
        self._lookup = lookup
        self._ack = ack
        self._max_size = settings.batch_max_size
        self._max_age = settings.batch_max_age_ms / 1000
        self._limits = Limits(
            settings.mqtt_topic_prefix,
            settings.max_payload_bytes,
            settings.max_batch_items,
            timedelta(seconds=settings.future_tolerance_s),
        )
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="envmon-writer", daemon=True)
        self.stats = Stats()
        self.idle = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Write what is queued, acknowledge it, and stop."""
        self._stopping.set()
        self._thread.join(timeout_s)

    def _collect(self) -> Batch:
        batch = Batch()
        deadline: float | None = None
        while batch.readings < self._max_size:
            timeout = 0.2 if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                msg = self._inbox.get(timeout=timeout)
            except queue.Empty:
                if deadline is not None or self._stopping.is_set():
                    break
                self.idle.set()
                continue
            self.idle.clear()
            if deadline is None:
                deadline = time.monotonic() + self._max_age
            parsed = parse_message(
                msg.topic,
                msg.payload,
                lookup=self._lookup,
                limits=self._limits,
                received_at=msg.received_at,
            )
            batch.messages.append(msg)
            batch.parsed.append(parsed)
            batch.readings += len(parsed.rows) + len(parsed.dead)
        return batch

    def _run(self) -> None:
        while True:
            batch = self._collect()
            if not batch.messages:
                if self._stopping.is_set():
                    return
                continue
            self._store_with_retry(batch)
            self._ack(batch.messages)

    def _store_with_retry(self, batch: Batch) -> None:
        delay = 0.5
        while True:
            try:
                with self._engine.begin() as conn:
                    self._store(conn, batch.parsed)
                return
            except OperationalError as exc:
                # The database is away: keep the messages un-acknowledged and try again; the
                # intake queue fills and back-pressure holds the rest at the broker.
                log.warning("database unavailable (%s); retrying in %.1fs", exc.orig, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
            except DBAPIError:
                log.exception(
                    "batch of %d messages failed; storing them one by one", len(batch.messages)
                )
                self._store_one_by_one(batch)
                return

    def _store_one_by_one(self, batch: Batch) -> None:
        for msg, parsed in zip(batch.messages, batch.parsed, strict=True):
            try:
                with self._engine.begin() as conn:
                    self._store(conn, [parsed])
            except OperationalError:
                raise
            except DBAPIError as exc:
                log.exception("message on %s could not be stored", msg.topic)
                record = DeadLetterRecord(
                    msg.topic,
                    parsed.device_id,
                    Reason.bad_payload,
                    f"storing failed: {type(exc.orig).__name__}: {exc.orig}",
                    msg.payload[:4096].decode("utf-8", errors="replace"),
                )
                with self._engine.begin() as conn:
                    insert_dead_letters(conn, [record], msg.received_at)

    def _store(self, conn: Connection, parsed: list[Parsed]) -> None:
        rows: list[Row] = [r for p in parsed for r in p.rows]
        dead = [d for p in parsed for d in p.dead]
        now = datetime.now(UTC)
        inserted = insert_readings(conn, rows)
        insert_dead_letters(conn, dead, now)
        touch_devices(conn, (p.device_id for p in parsed if p.rows and p.device_id), now)
        opened = 0
        if inserted:
            earliest: dict[tuple[str, str], datetime] = {}
            for r in rows:
                key = (r.device_id, r.metric)
                if key not in earliest or r.ts < earliest[key]:
                    earliest[key] = r.ts
            outcome = evaluate_batch(conn, (Touched(d, m, t) for (d, m), t in earliest.items()))
            opened = outcome.opened
        s = self.stats
        s.messages += len(parsed)
        s.stored += inserted
        s.duplicates += len(rows) - inserted
        s.dead_letters += len(dead)
        s.batches += 1
        s.alerts_opened += opened
        for d in dead:
            s.by_reason[d.reason] = s.by_reason.get(d.reason, 0) + 1
        log.debug(
            "batch: %d messages, %d new readings, %d duplicates, %d dead letters",
            len(parsed),
            inserted,
            len(rows) - inserted,
            len(dead),
        )
