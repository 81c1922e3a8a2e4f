"""Retention: what envmon deletes, and when. Dead letters keep 4 KB payload excerpts and the
notification outbox keeps every delivery; neither is evidence to keep forever, so both go after
30 days by default. Readings and alert events are evidence: they are deleted only when the
operator sets a retention (readings on plain PostgreSQL and SQLite: TimescaleDB drops chunks
by its own policy; events only of alerts closed long ago, never those an open alert or a
pending notification needs). Alerts themselves and the hourly rollups are kept."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, Select, Table, bindparam, delete, exists, func, select, text

from monitor.core.db import has_timescaledb
from monitor.core.models import (
    Alert,
    AlertEvent,
    AlertStatus,
    DeadLetter,
    Notification,
    NotificationStatus,
    Reading,
    table,
    utcnow,
)
from monitor.core.settings import Settings

log = logging.getLogger(__name__)
dead_letters = table(DeadLetter)
notifications = table(Notification)
alerts = table(Alert)
events = table(AlertEvent)
readings = table(Reading)
CLOSED = (AlertStatus.resolved.value, AlertStatus.retracted.value)
CHUNK = 5000  # rows per transaction: a long backlog never holds locks for long


@dataclass(slots=True)
class Pruned:
    dead_letters: int = 0
    notifications: int = 0
    readings: int = 0
    alert_events: int = 0


def prune(engine: Engine, settings: Settings, now: datetime) -> Pruned:
    """Delete what the retention settings say is old, in short transactions."""
    out = Pruned()
    if settings.retention_dead_letters_days:
        cutoff = now - timedelta(days=settings.retention_dead_letters_days)
        out.dead_letters = _delete_chunks(
            engine,
            select(dead_letters.c.id).where(dead_letters.c.received_at < cutoff),
            dead_letters,
        )
    if settings.retention_notifications_days:
        cutoff = now - timedelta(days=settings.retention_notifications_days)
        done = (NotificationStatus.sent.value, NotificationStatus.failed.value)
        out.notifications = _delete_chunks(
            engine,
            select(notifications.c.id).where(
                notifications.c.status.in_(done),
                func.coalesce(notifications.c.sent_at, notifications.c.created_at) < cutoff,
            ),
            notifications,
        )
    if settings.retention_alert_events_days:
        cutoff = now - timedelta(days=settings.retention_alert_events_days)
        pending = exists().where(
            notifications.c.event_id == events.c.id,
            notifications.c.status == NotificationStatus.pending.value,
        )
        closed_long_ago = exists().where(
            alerts.c.id == events.c.alert_id,
            alerts.c.status.in_(CLOSED),
            alerts.c.updated_at < cutoff,
        )
        out.alert_events = _delete_chunks(
            engine, select(events.c.id).where(closed_long_ago, ~pending), events
        )
    if settings.retention_readings_days and not has_timescaledb(engine):
        cutoff = now - timedelta(days=settings.retention_readings_days)
        out.readings = _delete_readings(engine, cutoff)
    return out


def _delete_readings(engine: Engine, cutoff: datetime) -> int:
    """Readings before `cutoff`, CHUNK rows a transaction, found by the ts index. Readings
    have a composite key: rows are named by PostgreSQL's ctid or SQLite's rowid."""
    row = "ctid" if engine.dialect.name == "postgresql" else "rowid"
    stmt = text(
        f"DELETE FROM readings WHERE {row} IN "
        f"(SELECT {row} FROM readings WHERE ts < :cutoff LIMIT {CHUNK})"
    ).bindparams(bindparam("cutoff", type_=readings.c.ts.type))  # UTC, as the column stores it
    total = 0
    while True:
        with engine.begin() as conn:
            done = conn.execute(stmt, {"cutoff": cutoff}).rowcount
        total += done
        if done < CHUNK:
            return total


def _delete_chunks(engine: Engine, ids: Select[tuple[int]], tbl: Table) -> int:
    total = 0
    while True:
        with engine.begin() as conn:
            chunk = conn.execute(ids.limit(CHUNK)).scalars().all()
            if chunk:
                conn.execute(delete(tbl).where(tbl.c.id.in_(chunk)))
        total += len(chunk)
        if len(chunk) < CHUNK:
            return total


class Pruner:
    """Applies retention every `retention_interval_s` on its own thread."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self._settings = settings
        self._engine = engine
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="envmon-retention", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stopping.set()
        if self._thread.ident is not None:  # started (a process may stop before it starts)
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stopping.wait(self._settings.retention_interval_s):
            try:
                pruned = prune(self._engine, self._settings, utcnow())
            except Exception:
                log.exception(
                    "retention failed; trying again in %gs", self._settings.retention_interval_s
                )
                continue
            if any(
                (pruned.dead_letters, pruned.notifications, pruned.readings, pruned.alert_events)
            ):
                log.info(
                    "retention: deleted %d dead letters, %d notifications, %d readings, "
                    "%d alert events",
                    pruned.dead_letters,
                    pruned.notifications,
                    pruned.readings,
                    pruned.alert_events,
                )
