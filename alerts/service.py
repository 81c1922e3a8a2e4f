"""Alert lifecycle: open, escalate, update, acknowledge, resolve. Callers own the transaction."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, insert, select, update

from monitor.core.exceptions import Conflict, NotFound
from monitor.core.models import Alert, AlertEvent, AlertEventKind, AlertStatus, table, utcnow

alerts = table(Alert)
alert_events = table(AlertEvent)

SYSTEM_ACTOR = "system:evaluator"


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
) -> None:
    conn.execute(
        insert(alert_events).values(
            alert_id=alert_id,
            kind=kind.value,
            actor=actor,
            note=note,
            severity=severity,
            value=value,
            at=at or utcnow(),
        )
    )


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
