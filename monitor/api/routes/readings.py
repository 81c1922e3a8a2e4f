from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy import bindparam, select, tuple_

from monitor.api.deps import PrincipalDep, SessionDep, SettingsDep
from monitor.api.filters import District, End, Kind, SiteId, Start, check_range
from monitor.api.pagination import (
    Cursor,
    Limit,
    Page,
    decode_cursor,
    encode_cursor,
    page_json,
    plain_rows,
)
from monitor.api.schemas import BucketRead, ReadingRead
from monitor.api.scope import devices_in_scope
from monitor.core.catalogue import SERIES
from monitor.core.exceptions import InvalidInput
from monitor.core.models import Device, HourlyRollup, Reading, Site, table

router = APIRouter(prefix="/readings", tags=["readings"])
readings = table(Reading)
rollups = table(HourlyRollup)
devices = table(Device)
sites = table(Site)


class Bucket(StrEnum):
    raw = "raw"
    hour = "hour"


@router.get("", response_model=Page[ReadingRead] | Page[BucketRead])
def list_readings(
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    device_id: Annotated[str | None, Query(description="Only this device")] = None,
    metric: Annotated[str | None, Query(description="Only this metric")] = None,
    site_id: SiteId = None,
    district: District = None,
    kind: Kind = None,
    start: Start = None,
    end: End = None,
    bucket: Annotated[
        Bucket, Query(description="raw readings, or hourly mean/min/max of N-flagged readings")
    ] = Bucket.raw,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Page[ReadingRead] | Page[BucketRead]:
    """Readings, newest event time first; raw or bucketed by hour."""
    check_range(start, end, settings.api_max_range_days)
    if metric is not None and metric not in SERIES:
        raise InvalidInput(f"unknown metric {metric!r}", field="query.metric")
    table = readings if bucket == Bucket.raw else rollups
    time_col = table.c.ts if bucket == Bucket.raw else table.c.hour
    key = (time_col, table.c.device_id, table.c.metric)
    columns = table.c if bucket == Bucket.raw else BUCKET_COLUMNS
    q = select(*columns).order_by(*(k.desc() for k in key)).limit(limit + 1)
    if principal.district is not None:
        q = q.where(table.c.device_id.in_(devices_in_scope(principal)))
    if device_id:
        q = q.where(table.c.device_id == device_id)
    if metric:
        q = q.where(table.c.metric == metric)
    if site_id or district or kind:
        q = q.join(devices, devices.c.id == table.c.device_id)
        if site_id:
            q = q.where(devices.c.site_id == site_id)
        if kind:
            q = q.where(devices.c.kind == kind)
        if district:
            q = q.join(sites, sites.c.id == devices.c.site_id).where(sites.c.district == district)
    if start:
        q = q.where(time_col >= start)
    if end:
        q = q.where(time_col < end)
    if cursor:
        ts, dev, met = decode_cursor(cursor, 3)
        try:
            after = datetime.fromisoformat(ts)
        except (TypeError, ValueError) as exc:
            raise InvalidInput("cursor is not one this API issued", field="query.cursor") from exc
        q = q.where(tuple_(*key) < tuple_(bindparam(None, after, type_=time_col.type), dev, met))
    if bucket == Bucket.hour:
        hours = plain_rows(session, q)
        page_h, nxt = hours[:limit], None
        if len(hours) > limit:
            device, metric_, hour = page_h[-1][:3]
            nxt = encode_cursor([hour.isoformat(), device, metric_])
        return page_json([_bucket(*r) for r in page_h], nxt)  # type: ignore[return-value]
    rows = [r._mapping for r in session.execute(q).all()]
    page = rows[:limit]
    nxt = None
    if len(rows) > limit:
        last = page[-1]
        nxt = encode_cursor([last["ts"].isoformat(), last["device_id"], last["metric"]])
    return Page[ReadingRead](
        items=[ReadingRead(**r, unit=SERIES[r["metric"]].unit) for r in page],
        next_cursor=nxt,
    )


# in the order _bucket takes them
BUCKET_COLUMNS = [
    rollups.c[name] for name in ("device_id", "metric", "hour", "count", "sum", "min", "max")
]


def _bucket(
    device_id: str, metric: str, hour: datetime, count: int, sum_: float, min_: float, max_: float
) -> dict[str, Any]:
    """A `BucketRead`, as the dict page_json writes."""
    return {
        "device_id": device_id,
        "metric": metric,
        "hour": hour,
        "unit": SERIES[metric].unit,
        "mean": sum_ / count,
        "min": min_,
        "max": max_,
        "count": count,
    }
