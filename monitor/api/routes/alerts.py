from __future__ import annotations

import asyncio
import csv
import io
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import AwareDatetime, BaseModel, Field
from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from alerts import service
from monitor.api.deps import InspectorDep, PrincipalDep, SessionDep, SettingsDep
from monitor.api.filters import (
    MAX_ID,
    District,
    End,
    IdPath,
    Kind,
    SiteId,
    Start,
    check_range,
)
from monitor.api.pagination import (
    Cursor,
    Limit,
    Page,
    decode_cursor,
    encode_cursor,
    page_json,
    plain_rows,
)
from monitor.api.schemas import AlertAction, AlertDetail, AlertEventRead, AlertRead
from monitor.api.scope import district_clause
from monitor.auth import Principal
from monitor.core.catalogue import DeviceKind
from monitor.core.exceptions import NotFound
from monitor.core.models import (
    Alert,
    AlertEvent,
    AlertEventKind,
    AlertStatus,
    Device,
    Reading,
    Rule,
    Severity,
    Site,
    table,
)
from monitor.core.settings import Settings

router = APIRouter(prefix="/alerts", tags=["alerts"])
alerts = table(Alert)
events = table(AlertEvent)
rules = table(Rule)
devices = table(Device)
sites = table(Site)
readings = table(Reading)

EXPORT_MAX = 100_000
READINGS_AROUND = timedelta(hours=1)


# a site alert (device_id null: a DMA's leakage rules) has its rule's device kind
DEVICE_KIND = func.coalesce(devices.c.kind, rules.c.device_kind)


def _select(principal: Principal) -> Select[Any]:
    return (
        select(
            alerts,
            rules.c.name.label("rule_name"),
            rules.c.metric,
            rules.c.basis,
            DEVICE_KIND.label("device_kind"),
            sites.c.district,
        )
        .join(rules, rules.c.id == alerts.c.rule_id)
        .outerjoin(devices, devices.c.id == alerts.c.device_id)
        .join(sites, sites.c.id == alerts.c.site_id)
        .where(district_clause(principal, sites.c.district))
    )


@dataclass
class AlertFilter:
    """The filters every alert listing takes: list, export, bulk acknowledge."""

    status: AlertStatus | None
    severity: Severity | None
    kind: DeviceKind | None
    site_id: str | None
    district: str | None
    device_id: str | None
    rule_id: int | None
    start: AwareDatetime | None
    end: AwareDatetime | None

    def apply(self, q: Select[Any], settings: Settings) -> Select[Any]:
        check_range(self.start, self.end, settings.api_max_range_days)
        for column, value in (
            (alerts.c.status, self.status),
            (alerts.c.severity, self.severity),
            (DEVICE_KIND, self.kind),
            (alerts.c.site_id, self.site_id),
            (sites.c.district, self.district),
            (alerts.c.device_id, self.device_id),
            (alerts.c.rule_id, self.rule_id),
        ):
            if value is not None:
                q = q.where(column == value)
        if self.start:
            q = q.where(alerts.c.fired_at >= self.start)
        if self.end:
            q = q.where(alerts.c.fired_at < self.end)
        return q


async def alert_filter(  # no I/O: on the event loop, not in the thread pool
    alert_status: Annotated[AlertStatus | None, Query(alias="status")] = None,
    severity: Severity | None = None,
    kind: Kind = None,
    site_id: SiteId = None,
    district: District = None,
    device_id: Annotated[str | None, Query(description="Only this device")] = None,
    rule_id: Annotated[
        int | None, Query(alias="rule", ge=1, le=MAX_ID, description="Only this rule")
    ] = None,
    start: Start = None,
    end: End = None,
) -> AlertFilter:
    return AlertFilter(
        alert_status, severity, kind, site_id, district, device_id, rule_id, start, end
    )


FilterDep = Annotated[AlertFilter, Depends(alert_filter)]


@router.get("", response_model=Page[AlertRead])
def list_alerts(
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    filters: FilterDep,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Page[AlertRead]:
    """Alerts, newest first; the time range applies to when they fired (event time)."""
    q = filters.apply(_select(principal), settings).order_by(alerts.c.id.desc()).limit(limit + 1)
    if cursor:
        q = q.where(alerts.c.id < int(decode_cursor(cursor, 1)[0]))
    rows = plain_rows(session, q)
    at = _field_positions(q)
    items = [dict(zip(ALERT_FIELDS, [r[i] for i in at], strict=True)) for r in rows[:limit]]
    nxt = encode_cursor([items[-1]["id"]]) if len(rows) > limit else None
    return page_json(items, nxt)  # type: ignore[return-value]


ALERT_FIELDS = list(AlertRead.model_fields)  # the list page and the CSV columns


def _field_positions(q: Select[Any]) -> list[int]:
    """Where each of ALERT_FIELDS is among the columns `_select` reads."""
    names = list(q.selected_columns.keys())
    return [names.index(f) for f in ALERT_FIELDS]


@router.get("/export.csv", response_class=StreamingResponse)
def export_alerts(
    session: SessionDep, settings: SettingsDep, principal: PrincipalDep, filters: FilterDep
) -> StreamingResponse:
    """The filtered alerts as CSV (at most 100,000 rows), newest first."""
    q = filters.apply(_select(principal), settings).order_by(alerts.c.id.desc()).limit(EXPORT_MAX)
    rows = [
        AlertRead.model_validate(r._mapping).model_dump(mode="json") for r in session.execute(q)
    ]

    def lines() -> Iterator[str]:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=ALERT_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
        yield buf.getvalue()

    return StreamingResponse(
        lines(),
        media_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="alerts.csv"'},
    )


class BulkResult(BaseModel):
    acknowledged: list[int]


@router.post("/acknowledge", response_model=BulkResult)
def acknowledge_by_filter(
    session: SessionDep,
    settings: SettingsDep,
    inspector: InspectorDep,
    filters: FilterDep,
    body: AlertAction,
) -> BulkResult:
    """Acknowledge every firing alert that matches the filters (in the caller's scope)."""
    filters.status = AlertStatus.firing
    q = filters.apply(_select(inspector), settings).order_by(alerts.c.id).limit(EXPORT_MAX)
    ids = [r.id for r in session.execute(q)]
    for alert_id in ids:
        service.acknowledge(session.connection(), alert_id, inspector.actor, body.note)
    return BulkResult(acknowledged=ids)


def _events(
    session: Session, principal: Principal, after: int, limit: int, holes: Sequence[int] = ()
) -> list[Any]:
    q = (
        select(
            events,
            alerts.c.device_id,
            alerts.c.status,
            alerts.c.severity.label("alert_severity"),
            rules.c.name.label("rule_name"),
            alerts.c.site_id,
            sites.c.district,
        )
        .join(alerts, alerts.c.id == events.c.alert_id)
        .join(rules, rules.c.id == alerts.c.rule_id)
        .join(sites, sites.c.id == alerts.c.site_id)
        .where(
            or_(events.c.id > after, events.c.id.in_(holes)) if holes else events.c.id > after,
            district_clause(principal, sites.c.district),
        )
        .order_by(events.c.id)
        .limit(limit)
    )
    return [dict(r._mapping) for r in session.execute(q)]


STREAM_BATCH = 500
HOLE_WAIT_S = 30.0  # a transaction holding an event id commits within this, or never
MAX_HOLES = 1000


class EventCursor:
    """Where a stream is in the event ids. Ids come from a sequence at insert, not at commit:
    id 11 can be visible before id 10 commits. An id skipped over is a hole, asked for again
    on each poll for HOLE_WAIT_S (then given up: rolled back, or outside the caller's scope),
    so an event committed out of id order is still sent, once."""

    def __init__(self, since: int) -> None:
        self.since = since
        self._holes: dict[int, float] = {}  # id -> when it was first missing

    def pending(self) -> list[int]:
        return list(self._holes)

    def take(self, rows: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
        """The rows not sent yet, in the order to send them; remembers the new holes."""
        out = []
        for row in sorted(rows, key=lambda r: int(r["id"])):
            event_id = int(row["id"])
            if event_id in self._holes:
                del self._holes[event_id]
            elif event_id > self.since:
                for missing in range(max(self.since + 1, event_id - MAX_HOLES), event_id):
                    self._holes[missing] = now
                self.since = event_id
            else:
                continue  # sent already
            out.append(row)
        self._holes = {k: t for k, t in self._holes.items() if now - t < HOLE_WAIT_S}
        while len(self._holes) > MAX_HOLES:
            del self._holes[min(self._holes)]
        return out


@router.get("/stream", response_class=StreamingResponse)
async def stream_alert_events(
    request: Request,
    principal: PrincipalDep,
    last_event_id: Annotated[int | None, Header(ge=0, le=MAX_ID)] = None,
    after: Annotated[
        int | None, Query(ge=0, le=MAX_ID, description="Resume after this event id")
    ] = None,
    follow: Annotated[bool, Query(description="Keep the stream open for new events")] = True,
) -> StreamingResponse:
    """Server-Sent Events: every alert event in the caller's scope as it happens (resumable
    with Last-Event-ID)."""
    factory = request.app.state.sessionmaker
    position = after if after is not None else last_event_id
    if position is None:

        def newest() -> int:
            with factory() as s:
                return int(s.execute(select(func.coalesce(func.max(events.c.id), 0))).scalar_one())

        position = await run_in_threadpool(newest)

    cursor = EventCursor(position)

    def fetch(since: int, holes: list[int]) -> list[Any]:
        with factory() as s:
            return _events(s, principal, since, STREAM_BATCH, holes)

    async def stream() -> AsyncIterator[bytes]:
        yield b": envmon alert events\n\n"
        while True:
            rows = await asyncio.to_thread(fetch, cursor.since, cursor.pending())
            batch = cursor.take(rows, time.monotonic())
            for e in batch:
                data = orjson.dumps(e, default=str)
                yield b"id: %d\nevent: %s\ndata: %s\n\n" % (e["id"], e["kind"].encode(), data)
            if not follow and len(rows) < STREAM_BATCH:
                return
            if not batch:
                if await request.is_disconnected():
                    return
                await asyncio.sleep(1.0)

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


@router.get("/{alert_id}", response_model=AlertDetail)
def get_alert(session: SessionDep, principal: PrincipalDep, alert_id: IdPath) -> AlertDetail:
    """One alert with its history of events and the readings around it."""
    row = session.execute(_select(principal).where(alerts.c.id == alert_id)).first()
    if row is None:
        raise NotFound(f"alert {alert_id} does not exist", field="path.alert_id")
    a = row._mapping
    history = session.execute(
        select(events).where(events.c.alert_id == alert_id).order_by(events.c.id)
    ).all()
    around: list[dict[str, Any]] = []
    if a["metric"] != "*" and a["device_id"] is not None:
        until = (a["resolved_at"] or a["last_violation_at"]) + READINGS_AROUND
        around = [
            dict(r._mapping)
            for r in session.execute(
                select(readings.c.ts, readings.c.value, readings.c.quality)
                .where(
                    readings.c.device_id == a["device_id"],
                    readings.c.metric == a["metric"],
                    readings.c.ts >= a["started_at"] - READINGS_AROUND,
                    readings.c.ts <= until,
                )
                .order_by(readings.c.ts)
                .limit(2000)
            )
        ]
    return AlertDetail(
        **a,
        events=[AlertEventRead.model_validate(e._mapping) for e in history],
        readings=around,
    )


@router.post("/{alert_id}/acknowledge", response_model=AlertDetail)
def acknowledge_alert(
    session: SessionDep, inspector: InspectorDep, alert_id: IdPath, body: AlertAction
) -> AlertDetail:
    """Acknowledge a firing alert: an inspector has taken it on (recorded as the caller)."""
    get_alert(session, inspector, alert_id)  # in scope, or 404
    service.acknowledge(session.connection(), alert_id, inspector.actor, body.note)
    return get_alert(session, inspector, alert_id)


@router.post("/{alert_id}/resolve", response_model=AlertDetail)
def resolve_alert(
    session: SessionDep, inspector: InspectorDep, alert_id: IdPath, body: AlertAction
) -> AlertDetail:
    """Resolve an alert (recorded as the caller); a later violation opens a new one."""
    get_alert(session, inspector, alert_id)  # in scope, or 404
    service.resolve(session.connection(), alert_id, inspector.actor, body.note)
    return get_alert(session, inspector, alert_id)


class CommentBody(BaseModel):
    note: str = Field(min_length=1, max_length=4000)


class AssignBody(BaseModel):
    assignee: str | None = Field(max_length=100, description="A user name; null unassigns")
    note: str | None = Field(None, max_length=4000)


@router.post("/{alert_id}/comment", response_model=AlertDetail)
def comment_alert(
    session: SessionDep, inspector: InspectorDep, alert_id: IdPath, body: CommentBody
) -> AlertDetail:
    """Add a note to an alert's history."""
    get_alert(session, inspector, alert_id)
    service.record_event(
        session.connection(), alert_id, AlertEventKind.comment, inspector.actor, note=body.note
    )
    return get_alert(session, inspector, alert_id)


@router.post("/{alert_id}/assign", response_model=AlertDetail)
def assign_alert(
    session: SessionDep, inspector: InspectorDep, alert_id: IdPath, body: AssignBody
) -> AlertDetail:
    """Assign an alert to a person (or unassign it)."""
    get_alert(session, inspector, alert_id)
    note = f"assigned to {body.assignee}" if body.assignee else "unassigned"
    service.assign(
        session.connection(),
        alert_id,
        inspector.actor,
        body.assignee,
        f"{note}: {body.note}" if body.note else note,
    )
    return get_alert(session, inspector, alert_id)
