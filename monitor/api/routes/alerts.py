from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy import Select, select

from alerts import service
from monitor.api.deps import InspectorDep, PrincipalDep, SessionDep, SettingsDep
from monitor.api.filters import District, End, Kind, SiteId, Start, check_range
from monitor.api.pagination import Cursor, Limit, Page, decode_cursor, encode_cursor
from monitor.api.schemas import AlertAction, AlertDetail, AlertEventRead, AlertRead
from monitor.api.scope import district_clause
from monitor.auth import Principal
from monitor.core.exceptions import NotFound
from monitor.core.models import Alert, AlertEvent, AlertStatus, Device, Rule, Severity, Site, table

router = APIRouter(prefix="/alerts", tags=["alerts"])
alerts = table(Alert)
events = table(AlertEvent)
rules = table(Rule)
devices = table(Device)
sites = table(Site)


def _select(principal: Principal) -> Select[Any]:
    return (
        select(
            alerts,
            rules.c.name.label("rule_name"),
            rules.c.metric,
            rules.c.basis,
            devices.c.site_id,
            devices.c.kind.label("device_kind"),
            sites.c.district,
        )
        .join(rules, rules.c.id == alerts.c.rule_id)
        .join(devices, devices.c.id == alerts.c.device_id)
        .join(sites, sites.c.id == devices.c.site_id)
        .where(district_clause(principal, sites.c.district))
    )


@router.get("", response_model=Page[AlertRead])
def list_alerts(
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    alert_status: Annotated[AlertStatus | None, Query(alias="status")] = None,
    severity: Severity | None = None,
    kind: Kind = None,
    site_id: SiteId = None,
    district: District = None,
    device_id: Annotated[str | None, Query(description="Only this device")] = None,
    rule_id: Annotated[int | None, Query(alias="rule", description="Only this rule")] = None,
    start: Start = None,
    end: End = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Page[AlertRead]:
    """Alerts, newest first; the time range applies to when they fired (event time)."""
    check_range(start, end, settings.api_max_range_days)
    q = _select(principal).order_by(alerts.c.id.desc()).limit(limit + 1)
    for column, value in (
        (alerts.c.status, alert_status),
        (alerts.c.severity, severity),
        (devices.c.kind, kind),
        (devices.c.site_id, site_id),
        (sites.c.district, district),
        (alerts.c.device_id, device_id),
        (alerts.c.rule_id, rule_id),
    ):
        if value is not None:
            q = q.where(column == value)
    if start:
        q = q.where(alerts.c.fired_at >= start)
    if end:
        q = q.where(alerts.c.fired_at < end)
    if cursor:
        q = q.where(alerts.c.id < int(decode_cursor(cursor, 1)[0]))
    rows = session.execute(q).all()
    items = [AlertRead.model_validate(r._mapping) for r in rows[:limit]]
    nxt = encode_cursor([items[-1].id]) if len(rows) > limit else None
    return Page(items=items, next_cursor=nxt)


@router.get("/{alert_id}", response_model=AlertDetail)
def get_alert(session: SessionDep, principal: PrincipalDep, alert_id: int) -> AlertDetail:
    """One alert with its history of events."""
    row = session.execute(_select(principal).where(alerts.c.id == alert_id)).first()
    if row is None:
        raise NotFound(f"alert {alert_id} does not exist", field="path.alert_id")
    history = session.execute(
        select(events).where(events.c.alert_id == alert_id).order_by(events.c.id)
    ).all()
    return AlertDetail(
        **row._mapping, events=[AlertEventRead.model_validate(e._mapping) for e in history]
    )


@router.post("/{alert_id}/acknowledge", response_model=AlertDetail)
def acknowledge_alert(
    session: SessionDep, inspector: InspectorDep, alert_id: int, body: AlertAction
) -> AlertDetail:
    """Acknowledge a firing alert: an inspector has taken it on (recorded as the caller)."""
    get_alert(session, inspector, alert_id)  # in scope, or 404
    service.acknowledge(session.connection(), alert_id, inspector.actor, body.note)
    return get_alert(session, inspector, alert_id)


@router.post("/{alert_id}/resolve", response_model=AlertDetail)
def resolve_alert(
    session: SessionDep, inspector: InspectorDep, alert_id: int, body: AlertAction
) -> AlertDetail:
    """Resolve an alert (recorded as the caller); a later violation opens a new one."""
    get_alert(session, inspector, alert_id)  # in scope, or 404
    service.resolve(session.connection(), alert_id, inspector.actor, body.note)
    return get_alert(session, inspector, alert_id)
