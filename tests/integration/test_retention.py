"""Retention: old dead letters and delivered notifications are deleted; pending deliveries,
recent rows and everything when retention is 0 are kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import create_engine, insert, select

from monitor.core.db import make_engine
from monitor.core.models import DeadLetter, Notification, table
from monitor.core.settings import Settings
from monitor.retention import prune

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
OLD = NOW - timedelta(days=31)
NEW = NOW - timedelta(days=1)


def _seed(url: str) -> None:
    # a plain engine: SQLite without foreign keys, so the outbox rows need no alerts
    raw = create_engine(url)
    with raw.begin() as conn:
        conn.execute(
            insert(table(DeadLetter)),
            [
                {
                    "received_at": at,
                    "topic": "t",
                    "device_id": None,
                    "reason": "bad_json",
                    "detail": name,
                    "payload": "{",
                    "digest": name,
                }
                for name, at in (("old", OLD), ("new", NEW))
            ],
        )
        conn.execute(
            insert(table(Notification)),
            [
                {
                    "alert_id": 1,
                    "event_id": i,
                    "site_id": "cs-1",
                    "status": status,
                    "attempts": 1,
                    "next_attempt_at": at,
                    "sent_at": sent,
                    "created_at": at,
                }
                for i, (status, at, sent) in enumerate(
                    [
                        ("sent", OLD, OLD),
                        ("failed", OLD, None),
                        ("pending", OLD, None),
                        ("sent", NEW, NEW),
                    ],
                    start=1,
                )
            ],
        )
    raw.dispose()


def test_prune_deletes_old_dead_letters_and_delivered_notifications_only(
    sqlite_url: str,
) -> None:
    _seed(sqlite_url)
    engine = make_engine(sqlite_url)
    try:
        kept_all = prune(
            engine,
            Settings(
                database_url=sqlite_url,
                retention_dead_letters_days=0,
                retention_notifications_days=0,
            ),
            NOW,
        )
        assert (kept_all.dead_letters, kept_all.notifications) == (0, 0)

        pruned = prune(engine, Settings(database_url=sqlite_url), NOW)  # the defaults: 30 days
        assert (pruned.dead_letters, pruned.notifications) == (1, 2)
        with engine.connect() as conn:
            letters = conn.execute(select(table(DeadLetter).c.detail)).scalars().all()
            outbox = conn.execute(
                select(table(Notification).c.status, table(Notification).c.created_at)
            ).all()
        assert letters == ["new"]
        assert sorted(s for s, _ in outbox) == ["pending", "sent"]
    finally:
        engine.dispose()
