from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request, status
from sqlalchemy import Select, select, update

from monitor import audit
from monitor.api.deps import AdminDep, PrincipalDep, SessionDep, SettingsDep
from monitor.api.filters import District, Kind, SiteId
from monitor.api.pagination import Cursor, Limit, Page, decode_cursor, encode_cursor
from monitor.api.schemas import (
    DeviceCreated,
    DeviceCredentials,
    DeviceRead,
    DeviceUpdate,
    LatestRead,
    ReadingRead,
)
from monitor.api.scope import district_clause
from monitor.auth import Principal
from monitor.core.catalogue import DeviceKind, metrics_for
from monitor.core.exceptions import InvalidInput, NotFound
from monitor.core.models import Device, DeviceStatus, Reading, Site, table
from monitor.registry import DeviceCreate, issue_credentials, upsert_device

router = APIRouter(prefix="/devices", tags=["devices"])
devices = table(Device)
sites = table(Site)
readings = table(Reading)


def _select(principal: Principal) -> Select[Any]:
    return (
        select(devices, sites.c.district)
        .join(sites, sites.c.id == devices.c.site_id)
        .where(district_clause(principal, sites.c.district))
    )


def offline_after(device_interval_s: int, floor_s: int) -> timedelta:
    """How long a device may be unseen before it is offline: six of its own reporting
    intervals (standards.md §6, device_offline alarm: max(600, 6*RtdInterval)), never less
    than the global setting, so an hourly logger is not always offline."""
    return timedelta(seconds=max(floor_s, OFFLINE_INTERVALS * device_interval_s))


OFFLINE_INTERVALS = 6


def _read(row: Any, floor_s: int) -> DeviceRead:
    m = dict(row._mapping)
    seen = m["last_seen_at"]
    m["online"] = (
        seen is not None
        and datetime.now(UTC) - seen <= offline_after(int(m["interval_s"]), floor_s)
        and m["connection"] != "offline"
    )
    return DeviceRead.model_validate(m)


@router.get("", response_model=Page[DeviceRead])
def list_devices(
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    site_id: SiteId = None,
    district: District = None,
    kind: Kind = None,
    device_status: DeviceStatus | None = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Page[DeviceRead]:
    """Devices with their last-seen time and online state."""
    q = _select(principal).order_by(devices.c.id).limit(limit + 1)
    if site_id:
        q = q.where(devices.c.site_id == site_id)
    if district:
        q = q.where(sites.c.district == district)
    if kind:
        q = q.where(devices.c.kind == kind)
    if device_status:
        q = q.where(devices.c.status == device_status)
    if cursor:
        q = q.where(devices.c.id > decode_cursor(cursor, 1)[0])
    rows = session.execute(q).all()
    items = [_read(r, settings.offline_after_s) for r in rows[:limit]]
    nxt = encode_cursor([items[-1].id]) if len(rows) > limit else None
    return Page(items=items, next_cursor=nxt)


@router.post("", response_model=DeviceCreated, status_code=status.HTTP_201_CREATED)
def create_device(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    admin: AdminDep,
    body: DeviceCreate,
) -> DeviceCreated:
    """Register a device (its id is its MQTT identity), or update the one with this id
    (admin). A new device gets MQTT credentials, shown in this response only."""
    password = upsert_device(session.connection(), body)
    audit.record(
        session.connection(),
        admin.actor,
        "device.upsert",
        f"device:{body.id}",
        {**body.model_dump(mode="json"), "credentials_issued": password is not None},
    )
    _broker_changed(request, session)
    device = get_device(session, settings, admin, body.id)
    return DeviceCreated(**device.model_dump(), mqtt_password=password)


@router.post("/{device_id}/credentials", response_model=DeviceCredentials)
def rotate_credentials(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    admin: AdminDep,
    device_id: str,
) -> DeviceCredentials:
    """Issue a new MQTT password for a device; the old one stops working once the broker's
    files are regenerated and reloaded (at once with the embedded broker) (admin)."""
    get_device(session, settings, admin, device_id)
    password = issue_credentials(session.connection(), device_id)
    audit.record(session.connection(), admin.actor, "device.credentials", f"device:{device_id}")
    _broker_changed(request, session)
    return DeviceCredentials(device_id=device_id, mqtt_username=device_id, mqtt_password=password)


def _broker_changed(request: Request, session: Any) -> None:
    """Let the embedded broker (in `envmon up`) pick up changed accounts, after commit."""
    hook = getattr(request.app.state, "on_devices_changed", None)
    if hook is not None:
        session.info.setdefault("after_commit", []).append(hook)


@router.get("/{device_id}", response_model=DeviceRead)
def get_device(
    session: SessionDep, settings: SettingsDep, principal: PrincipalDep, device_id: str
) -> DeviceRead:
    """One device."""
    row = session.execute(_select(principal).where(devices.c.id == device_id)).first()
    if row is None:
        raise NotFound(f"device {device_id!r} does not exist", field="path.device_id")
    return _read(row, settings.offline_after_s)


@router.patch("/{device_id}", response_model=DeviceRead)
def update_device(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    admin: AdminDep,
    device_id: str,
    body: DeviceUpdate,
) -> DeviceRead:
    """Rename a device, set its reporting interval, or retire it (admin; a retired device's
    messages become dead letters)."""
    get_device(session, settings, admin, device_id)
    values = body.model_dump(exclude_unset=True)
    for name, wanted in (
        ("interval_s", "a number of seconds (1 to 86400)"),
        ("status", "active or retired"),
    ):
        # the columns are NOT NULL: a null here was a 500 (schemathesis)
        if name in values and values[name] is None:
            raise InvalidInput(f"{name}: {wanted}, not null", field=name)
    if values:
        session.execute(update(devices).where(devices.c.id == device_id).values(values))
        audit.record(
            session.connection(), admin.actor, "device.update", f"device:{device_id}", values
        )
        if "status" in values:
            _broker_changed(request, session)
    return get_device(session, settings, admin, device_id)


@router.get("/{device_id}/latest", response_model=LatestRead)
def latest_readings(
    session: SessionDep, settings: SettingsDep, principal: PrincipalDep, device_id: str
) -> LatestRead:
    """The newest reading of each metric by event time: a late upload of old data never
    replaces a newer value."""
    device = get_device(session, settings, principal, device_id)
    out = []
    for metric in metrics_for(DeviceKind(device.kind)):
        row = session.execute(
            select(readings)
            .where(readings.c.device_id == device_id, readings.c.metric == metric.name)
            .order_by(readings.c.ts.desc())
            .limit(1)
        ).first()
        if row is not None:
            out.append(ReadingRead(**row._mapping, unit=metric.unit))
    return LatestRead(device_id=device_id, readings=out)
