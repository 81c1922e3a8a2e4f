"""Retention: what envmon deletes, and when. Dead letters keep 4 KB payload excerpts and the
notification outbox keeps every delivery; neither is evidence to keep forever (alerts, their
events and the readings are: TimescaleDB's policy, or the operator, prunes readings)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, Select, Table, delete, func, select

from monitor.core.models import DeadLetter, Notification, NotificationStatus, table, utcnow
from monitor.core.settings import Settings

log = logging.getLogger(__name__)
dead_letters = table(DeadLetter)
notifications = table(Notification)
CHUNK = 5000  # rows per transaction: a long backlog never holds locks for long


@dataclass(slots=True)
class Pruned:
    dead_letters: int = 0
    notifications: int = 0


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
    return out


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
            if pruned.dead_letters or pruned.notifications:
                log.info(
                    "retention: deleted %d dead letters, %d notifications",
                    pruned.dead_letters,
                    pruned.notifications,
                )
