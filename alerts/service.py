"""Alert lifecycle: open, escalate, update, acknowledge, resolve. Callers own the transaction."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, insert, select, update

from monitor.core.exceptions import Conflict, NotFound
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


# Changes that reach people outside envmon (webhooks); the rest stay in the alert's history.
NOTIFIED = frozenset({AlertEventKind.opened, AlertEventKind.escalated, AlertEventKind.resolved})


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
) -> int:
    """Append to an alert's history; notifiable changes also go to the outbox, in the same
    transaction, so a crash can neither lose a notification nor send one for a change that
    was rolled back."""
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
    if kind in NOTIFIED:
        row = conn.execute(
            select(alerts.c.suppressed, devices.c.site_id)
            .join(devices, devices.c.id == alerts.c.device_id)
            .where(alerts.c.id == alert_id)
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


def _load(conn: Connection, alert_id: int) -> tuple[str, str]:
    row = conn.execute(
        select(alerts.c.status, alerts.c.severity).where(alerts.c.id == alert_id).with_for_update()
    ).first()
    if row is None:
        raise NotFound(f"alert {alert_id} does not exist", field="alert_id")
    return row.status, row.severity


def acknowledge(conn: Connection, alert_id: int, actor: str, note: str | None) -> None:
    """firing -> acknowledged: an inspector has seen it and owns it."""
    status, _ = _load(conn, alert_id)
    if status != AlertStatus.firing:
        raise Conflict(f"alert {alert_id} is {status}; only a firing alert can be acknowledged")
    now = utcnow()
    conn.execute(
        update(alerts)
        .where(alerts.c.id == alert_id)
        .values(status=AlertStatus.acknowledged, acknowledged_at=now, updated_at=now)
    )
    record_event(conn, alert_id, AlertEventKind.acknowledged, actor, note=note, at=now)


def resolve(conn: Connection, alert_id: int, actor: str, note: str | None) -> None:
    """firing/acknowledged -> resolved. A later violation opens a new alert."""
    status, _ = _load(conn, alert_id)
    if status == AlertStatus.resolved:
        raise Conflict(f"alert {alert_id} is already resolved")
    now = utcnow()
    conn.execute(
        update(alerts)
        .where(alerts.c.id == alert_id)
        .values(status=AlertStatus.resolved, resolved_at=now, updated_at=now)
    )
    record_event(conn, alert_id, AlertEventKind.resolved, actor, note=note, at=now)
