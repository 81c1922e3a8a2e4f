"""The demo's DMA history: a year of the leak meters' simulated readings and of registered
consumption, so that `envmon up --simulate` shows daily leakage figures, the CJJ 92 rates and
the DMA rules at once (a DMA rule needs 7 days of history; a leakage rate a year).

The readings are the simulators' own, every 15 minutes (flow and totaliser: what the daily
figures read), up to where the publisher's live backfill takes over; they go through the same
write path functions as ingested ones (insert, DMA days, site rules). The consumption is what
the customers drew (the simulator's noiseless volume without its leak), 97% billed and 3%
unbilled, 80% of it residential metered-to-household, per calendar month."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine, func, select

from alerts.dma import recompute_days
from alerts.evaluator import evaluate_sites
from devices.simulators import LeakMeter, SimulatedDevice
from ingest.repository import bump_eval_versions, insert_readings
from ingest.validate import Row
from monitor.consumption import ConsumptionCreate, create
from monitor.core.catalogue import SiteKind
from monitor.core.db import lock_devices
from monitor.core.models import Consumption, table
from monitor.core.settings import Settings

log = logging.getLogger(__name__)

OLD_STEP = timedelta(minutes=15)  # enough for each 15-minute slot to have a value
RECENT_STEP = timedelta(minutes=5)  # a leak meter's usual interval: what the burst rule judges
# the burst rule's 14 days of baseline and the days it judges: all at the live interval, as a
# slot's mean of three readings on a ramp is not a single reading at its start
RECENT = timedelta(days=16)
DAYS = 366  # a whole 365-day window ending yesterday, and today
CHUNK_DAYS = 10  # one transaction each: the live writer and the page wait little (SQLite)
BILLED = 0.97
RESIDENTIAL = 0.8


def seed_dma_history(
    engine: Engine,
    sites: Sequence[dict[str, Any]],
    devices: Sequence[dict[str, Any]],
    simulators: Sequence[SimulatedDevice],
    until: datetime,
    settings: Settings,
    *,
    today: date | None = None,
) -> int:
    """Store the DMAs' history up to `until`; returns the readings stored. Idempotent: readings
    are stored once, and a DMA with registered consumption gets none added. The DMA rules judge
    yesterday and today (each reads the history it needs).

    `today` (default: the local date now) names the days, not `until`: the live fleet's first
    upload covers the hours after `until`, which may be past local midnight, and yesterday's
    consumption must still be registered."""
    tz = ZoneInfo(settings.timezone)
    today = today or datetime.now(tz).date()
    dmas = {str(s["id"]) for s in sites if s["kind"] == SiteKind.dma}
    site_of = {str(d["id"]): str(d["site_id"]) for d in devices}
    meters = [
        s for s in simulators if isinstance(s, LeakMeter) and site_of.get(s.device_id) in dmas
    ]
    if not meters:
        return 0
    first = datetime.combine(today - timedelta(days=DAYS - 1), time(0), tz)
    days = [first.date() + timedelta(days=i) for i in range(DAYS)]
    recent = until - RECENT
    stored = 0
    for c in range(0, DAYS, CHUNK_DAYS):
        lo = datetime.combine(days[c], time(0), tz).astimezone(UTC)
        hi = min(until, lo + timedelta(days=CHUNK_DAYS))
        stamps = _stamps(lo, min(hi, recent), OLD_STEP) + _stamps(max(lo, recent), hi, RECENT_STEP)
        rows: list[Row] = []
        for meter in meters:
            for ts, flow, total in meter.history(stamps):
                rows += [
                    Row(meter.device_id, "flow", ts, flow, "N", ts),
                    Row(meter.device_id, "totaliser", ts, total, "N", ts),
                ]
        chunk = days[c : c + CHUNK_DAYS]
        with engine.begin() as conn:
            # the live writer may be storing the same meters' readings meanwhile
            lock_devices(conn, [m.device_id for m in meters])
            stored += insert_readings(conn, rows)
            bump_eval_versions(conn, [m.device_id for m in meters])
            sites_of_meters = sorted({site_of[m.device_id] for m in meters})
            recompute_days(conn, [(s, d) for s in sites_of_meters for d in chunk], tz=tz)
    with engine.begin() as conn:
        for site in sorted({site_of[m.device_id] for m in meters}):
            mine = [m for m in meters if site_of[m.device_id] == site]
            _register_consumption(conn, site, mine, days, tz)
        evaluate_sites(
            conn,
            {site_of[m.device_id]: days[-2] for m in meters},
            tz,
            outlet_pressure_mpa=settings.leakage_outlet_pressure_mpa,
            frost_depth_m=settings.leakage_frost_depth_m,
        )
    log.info("demo DMA history: %d readings of %d meters over %d days", stored, len(meters), DAYS)
    return stored


def _stamps(lo: datetime, hi: datetime, step: timedelta) -> list[datetime]:
    """lo, lo + step, ... before hi, on multiples of step."""
    first = datetime.fromtimestamp(
        -(-lo.timestamp() // step.total_seconds()) * step.total_seconds(), UTC
    )
    return [
        first + i * step
        for i in range(max(0, int((hi - first) / step) + 1))
        if first + i * step < hi
    ]


def _register_consumption(
    conn: Connection, site: str, meters: list[LeakMeter], days: list[date], tz: ZoneInfo
) -> None:
    """Monthly billing periods over the year ending yesterday, unless the DMA has some."""
    c = table(Consumption)
    if conn.execute(select(func.count()).select_from(c).where(c.c.site_id == site)).scalar_one():
        return
    yesterday = days[-2]
    start = yesterday - timedelta(days=364)
    while start <= yesterday:
        nxt = (start.replace(day=1) + timedelta(days=32)).replace(day=1)
        end = min(nxt - timedelta(days=1), yesterday)
        drawn = sum(_customers(m, start, end, tz) for m in meters)
        create(
            conn,
            "demo",
            site,
            ConsumptionCreate(
                period_start=start,
                period_end=end,
                billed_m3=round(drawn * BILLED, 1),
                unbilled_m3=round(drawn * (1 - BILLED), 1),
                residential_metered_m3=round(drawn * BILLED * RESIDENTIAL, 1),
            ),
        )
        start = end + timedelta(days=1)


def _customers(meter: LeakMeter, first: date, last: date, tz: ZoneInfo) -> float:
    """What the meter's customers drew over the local days [first, last], m³."""
    start = datetime.combine(first, time(0), tz).astimezone(UTC)
    end = datetime.combine(last + timedelta(days=1), time(0), tz).astimezone(UTC)
    return meter.drawn_m3(start, end)
