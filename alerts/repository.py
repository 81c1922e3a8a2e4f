"""The alert engine's reads: devices, the alerts of (rule, device) pairs, raw readings,
hourly rollups and maintenance windows. Batched: one query per metric (or per rule) serves
every device of a batch. Writes of alert state are `alerts.service`'s alone."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from datetime import date, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Connection, Row, and_, func, or_, select

from monitor.core.catalogue import SiteKind
from monitor.core.db import one_of
from monitor.core.models import (
    CLOSED,
    Alert,
    AlertStatus,
    Device,
    DmaDay,
    HourlyRollup,
    MaintenanceWindow,
    Reading,
    Site,
    table,
)

alerts_t = table(Alert)
readings_t = table(Reading)
rollups_t = table(HourlyRollup)
devices_t = table(Device)
sites_t = table(Site)
maintenance_t = table(MaintenanceWindow)
dma_days_t = table(DmaDay)

HOUR = timedelta(hours=1)
K = TypeVar("K")

# raw readings by (metric, every quality flag?) and device, in time order
Fetched = dict[tuple[str, bool], dict[str, list[Any]]]


def devices(conn: Connection, ids: Iterable[str] | None = None) -> dict[str, Any]:
    """Devices with what rules select them by (kind, site, district) and judge them by
    (interval, last seen, watermark); all of them when `ids` is None."""
    q = select(
        devices_t.c.id,
        devices_t.c.kind,
        devices_t.c.site_id,
        devices_t.c.status,
        devices_t.c.interval_s,
        devices_t.c.last_seen_at,
        devices_t.c.watermark_at,
        devices_t.c.created_at,
        sites_t.c.kind.label("site_kind"),
        sites_t.c.district,
    ).join(sites_t, sites_t.c.id == devices_t.c.site_id)
    if ids is not None:
        q = q.where(one_of(conn, devices_t.c.id, set(ids)))
    return {row.id: row for row in conn.execute(q).all()}  # (all: one fetch, not a row at a time)


def open_alert(
    conn: Connection, rule_id: int, site_id: str, device_id: str | None
) -> Row[Any] | None:
    """The rule's open alert about a device, or (device_id None) about the site itself."""
    subject = (
        alerts_t.c.device_id == device_id
        if device_id is not None
        else and_(alerts_t.c.site_id == site_id, alerts_t.c.device_id.is_(None))
    )
    return conn.execute(
        select(alerts_t).where(
            alerts_t.c.rule_id == rule_id, subject, alerts_t.c.status.not_in(CLOSED)
        )
    ).first()


def pair_alerts(
    conn: Connection,
    rule_ids: Collection[int],
    device_ids: Collection[str],
    since: datetime,
    *,
    site_ids: Collection[str] | None = None,
) -> dict[tuple[int, str], list[Row[Any]]]:
    """Per (rule, device), or with `site_ids` per (rule, site) for the alerts whose subject
    is a site: the alerts still open or resolved at or after `since`, retracted ones left
    out, oldest first."""
    subject = (
        one_of(conn, alerts_t.c.device_id, device_ids)
        if site_ids is None
        else and_(one_of(conn, alerts_t.c.site_id, site_ids), alerts_t.c.device_id.is_(None))
    )
    by_pair: dict[tuple[int, str], list[Row[Any]]] = defaultdict(list)
    for row in conn.execute(
        select(alerts_t)
        .where(
            one_of(conn, alerts_t.c.rule_id, rule_ids),
            subject,
            alerts_t.c.status != AlertStatus.retracted,
            or_(alerts_t.c.resolved_at.is_(None), alerts_t.c.resolved_at >= since),
        )
        .order_by(alerts_t.c.started_at, alerts_t.c.id)
    ):
        by_pair[(row.rule_id, row.device_id or row.site_id)].append(row)
    return by_pair


def earliest_by(
    wanted: Iterable[tuple[K | None, Mapping[str, datetime]]],
) -> dict[K, dict[str, datetime]]:
    """Starts grouped by key (None left out): per key and device, the earliest start any of
    them needs, so that one query serves them all."""
    need: dict[K, dict[str, datetime]] = defaultdict(dict)
    for key, begin in wanted:
        if key is None:
            continue
        for d, lo in begin.items():
            need[key][d] = min(lo, need[key].get(d, lo))
    return need


# Devices whose starts lie within this of each other are read by one query from the earliest
# of them: a device whose series reaches back days (an old open alert) gets a query of its own
# instead of stretching everyone's.
GROUP_SLACK = timedelta(hours=2)


def start_groups(begin: Mapping[str, datetime]) -> list[dict[str, datetime]]:
    """The devices of `begin` in groups of starts at most GROUP_SLACK apart, oldest first."""
    groups: list[dict[str, datetime]] = []
    first: datetime | None = None
    for d, ts in sorted(begin.items(), key=lambda kv: kv[1]):
        if first is None or ts - first > GROUP_SLACK:
            groups.append({})
            first = ts
        groups[-1][d] = ts
    return groups


def extremes(
    conn: Connection, need: Mapping[str, Mapping[str, datetime]]
) -> dict[str, dict[str, tuple[float, float]]]:
    """Per metric, per device: (min, max) of its N-flagged readings from its start. One
    aggregate query per metric (and group of starts): a row per device comes back, not its
    readings."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for metric, wanted in need.items():
        out[metric] = {}
        for begin in start_groups(wanted):
            out[metric].update(_extremes(conn, metric, begin))
    return out


def _extremes(
    conn: Connection, metric: str, begin: Mapping[str, datetime]
) -> dict[str, tuple[float, float]]:
    rows = conn.execute(
        select(readings_t.c.device_id, func.min(readings_t.c.value), func.max(readings_t.c.value))
        .where(
            one_of(conn, readings_t.c.device_id, begin),
            readings_t.c.metric == metric,
            readings_t.c.ts >= min(begin.values()),
            readings_t.c.quality == "N",
        )
        .group_by(readings_t.c.device_id)
    )
    return {d: (lo, hi) for d, lo, hi in rows}


def flagged(
    conn: Connection, metric: str, flags: Collection[str], begin: Mapping[str, datetime]
) -> set[str]:
    """The devices with a reading of `metric` ("*": any) carrying one of `flags` since
    their start."""
    out: set[str] = set()
    for group in start_groups(begin):
        q = (
            select(readings_t.c.device_id)
            .where(
                one_of(conn, readings_t.c.device_id, group),
                readings_t.c.ts >= min(group.values()),
                readings_t.c.quality.in_(list(flags)),
            )
            .distinct()
        )
        if metric != "*":
            q = q.where(readings_t.c.metric == metric)
        out.update(conn.execute(q).scalars())
    return out


def fetch_readings(
    conn: Connection, need: Mapping[tuple[str, bool], Mapping[str, datetime]]
) -> Fetched:
    """One query per (metric, every flag?) and group of starts, for every rule that reads raw
    readings of it, from the earliest start any of them needs, per device, in time order.
    Without every flag, only N-flagged (valid) readings."""
    out: Fetched = {}
    for (metric, all_flags), wanted in need.items():
        by_device: dict[str, list[Any]] = defaultdict(list)
        for begin in start_groups(wanted):
            q = select(
                readings_t.c.device_id,
                readings_t.c.metric,
                readings_t.c.ts,
                readings_t.c.value,
                readings_t.c.quality,
            ).where(
                one_of(conn, readings_t.c.device_id, begin),
                readings_t.c.ts >= min(begin.values()),
            )
            if metric != "*":
                q = q.where(readings_t.c.metric == metric)
            if not all_flags:
                q = q.where(readings_t.c.quality == "N")
            for row in conn.execute(q.order_by(readings_t.c.device_id, readings_t.c.ts)):
                by_device[row.device_id].append(row)
        out[(metric, all_flags)] = by_device
    return out


def hourly_counted(
    conn: Connection, metric: str, device_ids: list[str], lo: datetime
) -> dict[str, list[tuple[datetime, float, int, float]]]:
    """Hourly (end of the hour, mean, count, sum) of N-flagged readings from the rollups, per
    device, for the hours starting at or after `lo`, in time order."""
    out: dict[str, list[tuple[datetime, float, int, float]]] = defaultdict(list)
    for row in conn.execute(
        select(rollups_t)
        .where(
            rollups_t.c.metric == metric,
            one_of(conn, rollups_t.c.device_id, device_ids),
            rollups_t.c.hour >= lo,
        )
        .order_by(rollups_t.c.device_id, rollups_t.c.hour)
    ):
        count = int(row._mapping["count"])  # (`row.count` is also tuple.count to mypy)
        out[row.device_id].append((row.hour + HOUR, row.sum / count, count, row.sum))
    return out


def complete_until(
    conn: Connection,
    metric: str,
    hourly: Mapping[str, list[tuple[datetime, float, int, float]]],
    devices: Mapping[str, Row[Any]],
    latest: Mapping[str, datetime | None],
    lo: datetime,
    wanted: Iterable[str],
) -> dict[str, datetime]:
    """Per device of `wanted`, up to when its hours are over by its data: an hour before the
    newest hour it has data in is over, and so is an hour its newest reading (plus one
    reporting interval) reaches the end of. The newest reading comes from the batch where
    known."""
    ids = [d for d in wanted if d in devices]
    unknown = [d for d in ids if latest.get(d) is None]
    newest: dict[str, datetime] = {d: ts for d in ids if (ts := latest.get(d)) is not None}
    if unknown:
        newest.update(
            conn.execute(
                select(readings_t.c.device_id, func.max(readings_t.c.ts))
                .where(
                    one_of(conn, readings_t.c.device_id, unknown),
                    readings_t.c.metric == metric,
                    readings_t.c.ts >= lo,
                )
                .group_by(readings_t.c.device_id)
            ).all()
        )
    out: dict[str, datetime] = {}
    for d in ids:
        by_reading = newest.get(d, lo) + timedelta(seconds=int(devices[d].interval_s))
        rows = hourly.get(d)
        by_hours = rows[-1][0] - HOUR if rows else lo
        out[d] = max(by_reading, by_hours)
    return out


def newest_reading(conn: Connection, device_id: str) -> datetime:
    """The event time of the device's newest reading (it has one: it was just stored)."""
    newest: datetime = conn.execute(
        select(func.max(readings_t.c.ts)).where(readings_t.c.device_id == device_id)
    ).scalar_one()
    return newest


def in_maintenance(
    conn: Connection, site_id: str, device_id: str | None, at: datetime
) -> str | None:
    """The reason of a maintenance window of the site (or the device) holding `at`."""
    whose = maintenance_t.c.site_id == site_id
    if device_id is not None:
        whose = or_(whose, maintenance_t.c.device_id == device_id)
    row = conn.execute(
        select(maintenance_t.c.reason)
        .where(whose, maintenance_t.c.starts_at <= at, maintenance_t.c.ends_at > at)
        .limit(1)
    ).first()
    return None if row is None else str(row.reason)


def dma_days(conn: Connection, site_ids: list[str], since: date) -> dict[str, list[Any]]:
    """Per DMA site, its daily figures from the local day `since` on, oldest first (without
    the day's slot arrays: `dma_day_means` reads what the rules take of them)."""
    out: dict[str, list[Any]] = defaultdict(list)
    q = select(*day_figures()).where(
        one_of(conn, dma_days_t.c.site_id, site_ids), dma_days_t.c.day >= since
    )
    for row in conn.execute(q.order_by(dma_days_t.c.site_id, dma_days_t.c.day)):
        out[row.site_id].append(row)
    return out


_SLOT_ARRAYS = ("slot_index", "slot_net_m3h", "slot_azp_mpa")


def day_figures() -> list[Any]:
    """The columns of `dma_days` but the slot arrays (about 1.5 KB a day that the rules and
    the leakage report do not read)."""
    return [c for c in dma_days_t.c if c.name not in _SLOT_ARRAYS]


def dma_day_means(
    conn: Connection, site_ids: list[str], since: date
) -> dict[str, dict[date, float]]:
    """Per DMA site, each local day's mean net inflow over its defined slots
    (`dma_days.net_mean_m3h`) from the day `since` on; days without a defined slot are left
    out."""
    out: dict[str, dict[date, float]] = defaultdict(dict)
    q = select(dma_days_t.c.site_id, dma_days_t.c.day, dma_days_t.c.net_mean_m3h).where(
        one_of(conn, dma_days_t.c.site_id, site_ids),
        dma_days_t.c.day >= since,
        dma_days_t.c.net_mean_m3h.is_not(None),
    )
    for site_id, day, mean in conn.execute(q):
        out[site_id][day] = float(mean)
    return out


def dma_sites(conn: Connection, site_ids: Collection[str]) -> dict[str, Any]:
    """The DMA sites among these ids, with their parameters and district."""
    return {
        row.id: row
        for row in conn.execute(
            select(sites_t).where(
                one_of(conn, sites_t.c.id, site_ids), sites_t.c.kind == SiteKind.dma
            )
        )
    }
