"""Alert lifecycle: the one writer of alert rows, their events and the outbox.

The evaluator and the inspectors' actions (API, web page) both change alerts through `save`,
which checks the version the caller read: a change made meanwhile by the other side is never
overwritten; the evaluator re-reads and recomputes, an action answers 409. Callers own the
transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update

from monitor.core.exceptions import Conflict, EnvmonError, NotFound
from monitor.core.models import (
    Alert,
    AlertEvent,
    AlertEventKind,
    AlertStatus,
    Device,
    Notification,
    NotificationStatus,
    table,
    utcnow,
)

alerts = table(Alert)
alert_events = table(AlertEvent)
devices = table(Device)
notifications = table(Notification)

SYSTEM_ACTOR = "system:evaluator"


class StaleAlert(EnvmonError):
    """The alert changed since the caller read it (another evaluator, or an inspector)."""

    status_code = 409
    title = "Conflict"


def save(conn: Connection, alert_id: int, version: int, changes: dict[str, Any]) -> int:
    """Apply `changes` to an alert read at `version`; returns the new version. Raises
    StaleAlert when someone else changed it first."""
    done = conn.execute(
        update(alerts)
        .where(alerts.c.id == alert_id, alerts.c.version == version)
        .values({**changes, "version": version + 1, "updated_at": utcnow()})
    )
    if done.rowcount != 1:
        raise StaleAlert(f"alert {alert_id} changed meanwhile (read at version {version})")
    return version + 1


# Changes that reach people outside envmon (webhooks); the rest stay in the alert's history.
NOTIFIED = frozenset(
    {
        AlertEventKind.opened,
        AlertEventKind.escalated,
        AlertEventKind.resolved,
        AlertEventKind.reopened,
        AlertEventKind.retracted,
    }
)


def record_event(
    conn: Connection,
    alert_id: int,
    kind: AlertEventKind,
    actor: str,
    *,
    note: str | None = None,
    severity: str | None = None,
    value: float | None = None,
    at: datetime | None = None,
    notify: bool = True,
) -> int:
    """Append to an alert's history; notifiable changes also go to the outbox, in the same
    transaction, so a crash can neither lose a notification nor send one for a change that
    was rolled back. `notify=False` records without paging (an episode found already over)."""
    at = at or utcnow()
    event_id = conn.execute(
        insert(alert_events)
        .values(
            alert_id=alert_id,
            kind=kind.value,
            actor=actor,
            note=note,
            severity=severity,
            value=value,
            at=at,
        )
        .returning(alert_events.c.id)
    ).scalar_one()
    if notify and kind in NOTIFIED:
        row = conn.execute(
            select(alerts.c.suppressed, alerts.c.site_id).where(alerts.c.id == alert_id)
        ).one()
        if not row.suppressed:
            conn.execute(
                insert(notifications).values(
                    alert_id=alert_id,
                    event_id=event_id,
                    site_id=row.site_id,
                    status=NotificationStatus.pending,
                    attempts=0,
                    next_attempt_at=at,
                    created_at=at,
                )
            )
    return int(event_id)


def _load(conn: Connection, alert_id: int) -> Any:
    row = conn.execute(
        select(
            alerts.c.status,
            alerts.c.severity,
            alerts.c.version,
            alerts.c.evaluated_until,
            alerts.c.last_violation_at,
        )
        .where(alerts.c.id == alert_id)
        .with_for_update()
    ).first()
    if row is None:
        raise NotFound(f"alert {alert_id} does not exist", field="alert_id")
    return row


def acknowledge(conn: Connection, alert_id: int, actor: str, note: str | None) -> None:
    """firing -> acknowledged: an inspector has seen it and owns it."""
    row = _load(conn, alert_id)
    if row.status != AlertStatus.firing:
        raise Conflict(f"alert {alert_id} is {row.status}; only a firing alert can be acknowledged")
    now = utcnow()
    save(conn, alert_id, row.version, {"status": AlertStatus.acknowledged, "acknowledged_at": now})
    record_event(conn, alert_id, AlertEventKind.acknowledged, actor, note=note, at=now)


def resolve(conn: Connection, alert_id: int, actor: str, note: str | None) -> None:
    """firing/acknowledged -> resolved. A later violation opens a new alert.

    An inspector's resolve is final: its `resolved_at` is the event time the alert had
    reached (its last evaluated reading), and the evaluator judges only what comes after."""
    row = _load(conn, alert_id)
    if row.status in (AlertStatus.resolved, AlertStatus.retracted):
        raise Conflict(f"alert {alert_id} is already {row.status}")
    if row.status == AlertStatus.pending:
        raise Conflict(f"alert {alert_id} is pending (not fired yet); there is nothing to resolve")
    save(
        conn,
        alert_id,
        row.version,
        {
            "status": AlertStatus.resolved,
            "resolved_at": max(row.evaluated_until, row.last_violation_at),
            "resolved_by": actor,
        },
    )
    record_event(conn, alert_id, AlertEventKind.resolved, actor, note=note)


def assign(conn: Connection, alert_id: int, actor: str, assignee: str | None, note: str) -> None:
    """Give an alert to a person (None: to nobody)."""
    row = _load(conn, alert_id)
    save(conn, alert_id, row.version, {"assignee": assignee})
    record_event(conn, alert_id, AlertEventKind.assigned, actor, note=note)
