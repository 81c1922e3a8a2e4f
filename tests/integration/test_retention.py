"""Retention: old dead letters and delivered notifications are deleted; pending deliveries,
recent rows and everything when retention is 0 are kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import create_engine, func, insert, select

from ingest.repository import insert_readings
from ingest.validate import Row
from monitor.core.db import make_engine
from monitor.core.models import (
    Alert,
    AlertEvent,
    DeadLetter,
    Notification,
    Reading,
    Rule,
    table,
)
from monitor.core.settings import Settings
from monitor.retention import prune
from tests.conftest import register

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


@pytest.fixture(params=["sqlite_url", "pg_url"])
def any_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(request.param)
    return url


def _alert(conn: Any, rule_id: int, device: str, status: str, updated_at: datetime) -> int:
    return int(
        conn.execute(
            insert(table(Alert))
            .values(
                rule_id=rule_id,
                device_id=device,
                site_id="cs-1",  # register()'s site
                status=status,
                severity="warning",
                started_at=OLD,
                fired_at=OLD,
                last_violation_at=OLD,
                evaluated_until=OLD,
                last_value=1.0,
                peak_value=1.0,
                message="m",
                created_at=OLD,
                updated_at=updated_at,
            )
            .returning(table(Alert).c.id)
        ).scalar_one()
    )


def test_prune_deletes_old_readings_and_events_of_alerts_closed_long_ago_only(
    any_url: str,
) -> None:
    engine = make_engine(any_url)
    devices = {f"d{i}": "dust_monitor" for i in range(5)}
    register(engine, devices=devices)
    rows = [
        Row(d, "pm10", at + timedelta(minutes=m), 1.0, "N", at)
        for d in devices
        for at in (OLD, NEW)
        for m in range(3)
    ]
    with engine.begin() as conn:
        insert_readings(conn, rows)
        rule_ids = conn.execute(select(table(Rule).c.id)).scalars().all()
        ev = table(AlertEvent)
        cases = {
            "open": _alert(conn, rule_ids[0], "d0", "firing", OLD),
            "closed_old": _alert(conn, rule_ids[0], "d1", "resolved", OLD),
            "retracted_old": _alert(conn, rule_ids[0], "d2", "retracted", OLD),
            "closed_new": _alert(conn, rule_ids[0], "d3", "resolved", NEW),
            "closed_old_paging": _alert(conn, rule_ids[1], "d1", "resolved", OLD),
        }
        for name, alert_id in cases.items():
            for kind in ("opened", "resolved"):
                event_id = conn.execute(
                    insert(ev)
                    .values(alert_id=alert_id, at=OLD, kind=kind, actor="system:evaluator")
                    .returning(ev.c.id)
                ).scalar_one()
                if name == "closed_old_paging" and kind == "resolved":
                    conn.execute(
                        insert(table(Notification)).values(
                            alert_id=alert_id,
                            event_id=event_id,
                            site_id="cs-1",
                            status="pending",
                            attempts=0,
                            next_attempt_at=OLD,
                            created_at=OLD,
                        )
                    )
    try:
        kept = prune(engine, Settings(database_url=any_url), NOW)  # defaults: keep evidence
        assert (kept.readings, kept.alert_events) == (0, 0)
        pruned = prune(
            engine,
            Settings(
                database_url=any_url, retention_readings_days=30, retention_alert_events_days=30
            ),
            NOW,
        )
        assert pruned.readings == 15
        with engine.connect() as conn:
            left = conn.execute(select(table(Reading).c.ts)).scalars().all()
            events = conn.execute(select(ev.c.alert_id, ev.c.kind)).all()
            alerts_left = conn.execute(select(func.count()).select_from(table(Alert))).scalar()
        assert len(left) == 15 and min(left) >= NEW
        by_alert = {name: sorted(k for a, k in events if a == cases[name]) for name in cases}
        assert by_alert == {
            "open": ["opened", "resolved"],
            "closed_old": [],
            "retracted_old": [],
            "closed_new": ["opened", "resolved"],
            "closed_old_paging": ["resolved"],  # its page is still owed
        }
        assert pruned.alert_events == 5 and alerts_left == 5  # alerts themselves stay
    finally:
        engine.dispose()
