"""Sites and devices: registration from the API, the CLI and fleet files. Never commits."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import Connection, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from ingest.contract import DEVICE_ID_PATTERN
from monitor.broker_auth import check_username, hash_password, new_password
from monitor.core.catalogue import DeviceKind, DmaRole, SiteKind
from monitor.core.exceptions import Conflict, InvalidInput, NotFound
from monitor.core.models import Device, DeviceStatus, Site, table

sites_t = table(Site)
devices_t = table(Device)


class HJ212Unit(StrEnum):
    ug_m3 = "ug/m3"
    ng_m3 = "ng/m3"


class HJ212RulesFrom(StrEnum):
    """Which of a logger's HJ 212 series its rules see (docs/hj212.md, Period data)."""

    rtd = "rtd"  # real-time (2011), the default
    minute = "minute"  # the minute data's means (2051), for a logger that sends no 2011
    hour = "hour"  # the hourly means (2061)


HHMM = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"


class DmaFields(BaseModel):
    """A DMA's parameters (sites of kind dma; standards.md §5.3). Null: the method's default."""

    # le: the INTEGER column's range on PostgreSQL (a larger count was a 500)
    connections: int | None = Field(None, ge=0, le=2**31 - 1, description="Service connections")
    mains_km: float | None = Field(None, ge=0, description="Length of mains DN75 and above, km")
    night_from: str | None = Field(
        None, pattern=HHMM, description="Night window start, local HH:MM (default 02:00)"
    )
    night_to: str | None = Field(
        None, pattern=HHMM, description="Night window end, local HH:MM (default 04:00)"
    )
    night_use_l_per_conn_h: float | None = Field(
        None, ge=0, description="Legitimate night use per connection, L/h (default 1.7)"
    )
    special_night_use_m3h: float | None = Field(
        None, ge=0, description="Night use of the individually metered special users, m³/h"
    )
    leakage_exponent: float | None = Field(
        None, gt=0, le=3, description="N1 of the night-day factor (default 1.0)"
    )

    @model_validator(mode="after")
    def _night_window_in_order(self) -> DmaFields:
        if self.night_from and self.night_to and self.night_to <= self.night_from:
            raise ValueError("night_to must be after night_from, within one day")
        return self


class SiteCreate(DmaFields):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=DEVICE_ID_PATTERN, description="Stable identifier, e.g. cs-lanshan-01")
    name: str = Field(min_length=1, max_length=200)
    district: str = Field(min_length=1, max_length=100)
    kind: SiteKind
    latitude: float | None = Field(None, ge=-90, le=90)
    longitude: float | None = Field(None, ge=-180, le=180)


class DeviceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=DEVICE_ID_PATTERN, description="The device's MQTT identity")
    site_id: str
    kind: DeviceKind
    name: str | None = Field(None, max_length=200)
    status: DeviceStatus = DeviceStatus.active
    interval_s: int = Field(
        60,
        ge=1,
        le=86_400,
        description="Seconds between the device's readings (HJ 212 RtdInterval): what hourly "
        "validity, no-data and online/offline are measured against",
    )
    dma_role: DmaRole | None = Field(
        None, description="A leak meter's role in its DMA (null: inlet)"
    )
    hj212_mn: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="The HJ 212 data logger's MN, if the device speaks HJ 212 over TCP",
    )
    hj212_password: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="The logger's PW (six characters in the standard); stored hashed only",
    )
    hj212_unit: HJ212Unit | None = Field(
        None,
        description="Unit of the logger's particulate values: ug/m3 (the default) or ng/m3 "
        "(the standard's table unit, scaled to µg/m³ on intake)",
    )
    hj212_rules_from: HJ212RulesFrom | None = Field(
        None,
        description="Which of the logger's HJ 212 series the rules see: rtd (the default, its "
        "2011 real-time values), minute or hour (its 2051/2061 means, for a logger that sends "
        "only period data; its 2011 values are then stored as <metric>.rtd)",
    )


def _upsert(
    conn: Connection,
    table: Any,
    model: BaseModel,
    *,
    exclude: frozenset[str] = frozenset(),
    extra: dict[str, Any] | None = None,
) -> None:
    """Insert a record, or update the stored one with the keys the caller gave: a re-import
    that leaves a key out leaves its stored value alone (defaults apply to new rows only).
    `exclude` keys are not columns; `extra` columns count as given."""
    values = model.model_dump(mode="json", exclude=set(exclude)) | (extra or {})
    given = model.model_dump(mode="json", exclude_unset=True, exclude=set(exclude)) | (extra or {})
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    stmt = insert(table).values(values)
    updates = {k: v for k, v in given.items() if k != "id"}
    if updates:
        conn.execute(stmt.on_conflict_do_update(index_elements=["id"], set_=updates))
    else:
        conn.execute(stmt.on_conflict_do_nothing(index_elements=["id"]))


def upsert_site(conn: Connection, site: SiteCreate) -> None:
    _upsert(conn, sites_t, site)


def upsert_device(conn: Connection, device: DeviceCreate) -> str | None:
    """Register or update a device. A device without broker credentials gets them: the new
    MQTT password is returned (to be shown once); None when it had credentials already."""
    site = conn.execute(select(sites_t.c.id).where(sites_t.c.id == device.site_id)).first()
    if site is None:
        raise InvalidInput(f"site {device.site_id!r} does not exist", field="site_id")
    try:
        check_username(device.id)
    except ValueError as exc:
        raise InvalidInput(f"id: {exc}", field="id") from exc
    if device.hj212_mn is not None:
        _check_mn_free(conn, device.hj212_mn, device.id)
    # the HJ 212 PW is stored hashed, as the MQTT one; a re-import without it keeps the hash
    extra = (
        {"hj212_password_hash": hash_password(device.hj212_password)}
        if device.hj212_password is not None
        else None
    )
    try:
        with conn.begin_nested():
            _upsert(conn, devices_t, device, exclude=frozenset({"hj212_password"}), extra=extra)
    except IntegrityError as exc:
        # another registration took the MN between the check and the write
        if device.hj212_mn is not None and "hj212_mn" in str(exc.orig):
            raise _mn_taken(device.hj212_mn) from exc
        raise
    has = conn.execute(
        select(devices_t.c.mqtt_password_hash).where(devices_t.c.id == device.id)
    ).scalar_one()
    return None if has else issue_credentials(conn, device.id)


def _mn_taken(mn: str, owner: str | None = None) -> Conflict:
    whose = f" by device {owner!r}" if owner else ""
    return Conflict(f"hj212_mn {mn!r} is already registered{whose}", field="body.hj212_mn")


def _check_mn_free(conn: Connection, mn: str, device_id: str) -> None:
    """An MN names one logger: a second device with it would log in as the first."""
    owner = conn.execute(
        select(devices_t.c.id).where(devices_t.c.hj212_mn == mn, devices_t.c.id != device_id)
    ).scalar()
    if owner is not None:
        raise _mn_taken(mn, owner)


def issue_credentials(conn: Connection, device_id: str) -> str:
    """A new MQTT password for a device (replacing any old one); only its hash is stored.
    The broker learns it when its password file is regenerated and reloaded."""
    password = new_password()
    done = conn.execute(
        update(devices_t)
        .where(devices_t.c.id == device_id)
        .values(mqtt_password_hash=hash_password(password))
    )
    if done.rowcount == 0:
        raise NotFound(f"device {device_id!r} does not exist", field="device_id")
    return password


def import_fleet(
    conn: Connection, doc: dict[str, list[dict[str, Any]]]
) -> tuple[int, int, dict[str, str]]:
    """Register (or update) every site and device of a fleet document; returns the counts
    and the MQTT passwords issued to devices that had none."""
    sites = [SiteCreate.model_validate(s) for s in doc["sites"]]
    # a device's `simulator` table configures `envmon simulate` only (devices/fleet.py)
    devices = [
        DeviceCreate.model_validate({k: v for k, v in d.items() if k != "simulator"})
        for d in doc["devices"]
    ]
    for s in sites:
        upsert_site(conn, s)
    issued: dict[str, str] = {}
    for d in devices:
        password = upsert_device(conn, d)
        if password:
            issued[d.id] = password
    return len(sites), len(devices), issued
