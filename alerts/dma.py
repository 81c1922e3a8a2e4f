"""DMA daily figures from stored readings into `dma_days`: the queries around alerts/leakage.py.

Set-based, for all the (site, day) pairs asked at once: on PostgreSQL one statement computes
and writes every figure (alerts/dma_pg.py); on SQLite (and with `in_python`, the reference)
one grouped query fetches every meter's 15-minute flow and pressure means, one the totalisers,
and alerts/leakage.py computes the days. Never commits; the caller's transaction (an ingest
batch, a CLI run) holds the write.

Slots are 15-minute UTC buckets (epoch / 900). Every time zone's offset is a whole number of
quarter hours, so they are the local day's slots too.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import BigInteger, Connection, Engine, Integer, and_, cast, func, or_, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.sql.elements import ColumnElement

from alerts import dma_pg
from alerts.dma_pg import AskedDay
from alerts.leakage import (
    MAX_TOTALISER_GAP_S,
    SLOT_S,
    TRAILING_S,
    Cjj92Inputs,
    Cjj92Rates,
    DmaParams,
    MeterDay,
    TotaliserPoint,
    TrailingMeans,
    area_rate,
    cjj92,
    day_figures,
    grade,
    net_inflow,
    night_slots,
    zone_pressure,
)
from monitor.core.catalogue import DeviceKind, DmaRole, QualityFlag, SiteKind
from monitor.core.db import lock_sites, one_of, pg_array
from monitor.core.models import (
    Consumption,
    Device,
    DeviceStatus,
    DmaDay,
    DmaPending,
    Reading,
    Site,
    table,
    utcnow,
)
from monitor.core.settings import get_settings

readings = table(Reading)
sites = table(Site)
devices = table(Device)
dma_days = table(DmaDay)
dma_pending = table(DmaPending)
consumption = table(Consumption)


def _slot(conn: Connection) -> ColumnElement[Any]:
    if conn.dialect.name == "postgresql":
        return cast(func.floor(func.extract("epoch", readings.c.ts) / SLOT_S), BigInteger)
    # SQLite stores naive UTC text; integer division floors the (positive) epoch
    return cast(func.strftime("%s", readings.c.ts), Integer) / SLOT_S


def _hhmm(value: str | None, default: time) -> time:
    if not value:
        return default
    hour, minute = value.split(":")
    return time(int(hour), int(minute))


def params_of(site: Any) -> DmaParams:
    """A site row's DMA parameters, the method's defaults where a column is null."""
    d = DmaParams(connections=0)
    return DmaParams(
        connections=site.connections or 0,
        mains_km=site.mains_km,
        night_from=_hhmm(site.night_from, d.night_from),
        night_to=_hhmm(site.night_to, d.night_to),
        night_use_l_per_conn_h=(
            d.night_use_l_per_conn_h
            if site.night_use_l_per_conn_h is None
            else site.night_use_l_per_conn_h
        ),
        special_night_use_m3h=site.special_night_use_m3h or 0.0,
        leakage_exponent=site.leakage_exponent or d.leakage_exponent,
    )


@dataclass(frozen=True, slots=True)
class _Span:
    start: datetime  # UTC instant of local midnight
    slots: int  # 96, or 92 / 100 on a daylight-saving day

    @property
    def first_slot(self) -> int:
        return int(self.start.timestamp()) // SLOT_S


def _span(day: date, tz: ZoneInfo) -> _Span:
    start = datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz).astimezone(UTC)
    return _Span(start, int((end - start).total_seconds()) // SLOT_S)


def _between(points: list[tuple[float, float]], lo: float, hi: float) -> list[tuple[float, float]]:
    """The (time, value) points with lo <= time < hi, of points sorted by time."""
    return points[bisect_left(points, (lo, -math.inf)) : bisect_left(points, (hi, -math.inf))]


def dma_meters(conn: Connection, site_ids: Iterable[str]) -> dict[str, list[tuple[str, DmaRole]]]:
    """Per DMA site, its active leak meters and their roles (inlet where none is set)."""
    meters: dict[str, list[tuple[str, DmaRole]]] = defaultdict(list)
    for r in conn.execute(
        select(devices.c.id, devices.c.site_id, devices.c.dma_role)
        .where(
            devices.c.site_id.in_(list(site_ids)),
            devices.c.kind == DeviceKind.leak_meter,
            devices.c.status == DeviceStatus.active,
        )
        .order_by(devices.c.id)
    ):
        meters[r.site_id].append((r.id, DmaRole(r.dma_role or DmaRole.inlet)))
    return meters


def trailing_means(
    conn: Connection, since: Mapping[str, datetime], history_days: int
) -> dict[str, TrailingMeans]:
    """Per DMA site, what its trailing 15-minute means are computed from (`TrailingMeans`):
    its meters' N-flagged flow (inlets, outlets) and pressure (AZP) readings from
    `since[site]` on, and those of the same times of day on each of the `history_days`
    days before (24 h apart, as the slots' same slot on an earlier day). Sites with the same
    start read together: one query for the day being judged, one for the windows before."""
    meters = dma_meters(conn, since)
    metric_of = {DmaRole.inlet: "flow", DmaRole.outlet: "flow", DmaRole.azp: "pressure"}
    wanted = {(d, metric_of[role]) for ms in meters.values() for d, role in ms if role in metric_of}
    window = timedelta(seconds=TRAILING_S)
    day = timedelta(days=1)
    points: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)

    def read(ids: list[str], ranges: list[tuple[datetime, datetime | None]]) -> None:
        q = select(readings.c.device_id, readings.c.metric, readings.c.ts, readings.c.value).where(
            one_of(conn, readings.c.device_id, ids),
            readings.c.metric.in_(["flow", "pressure"]),
            readings.c.quality == QualityFlag.normal,
            or_(
                *(
                    and_(readings.c.ts > lo, readings.c.ts <= hi)
                    if hi is not None
                    else readings.c.ts > lo
                    for lo, hi in ranges
                )
            ),
            # the span of the ranges as well: an OR of ranges is only a filter, so without it
            # each meter's whole history was scanned for the 15 windows
            readings.c.ts > min(lo for lo, _ in ranges),
        )
        ends = [hi for _, hi in ranges]
        if None not in ends:
            q = q.where(readings.c.ts <= max(hi for hi in ends if hi is not None))
        for dev, metric, ts, value in conn.execute(q):
            if (dev, metric) in wanted:
                points[(dev, metric)].append((ts.timestamp(), float(value)))

    groups: dict[datetime, list[str]] = defaultdict(list)
    for s, start in since.items():
        if meters.get(s):
            groups[start].append(s)
    for start, site_ids in groups.items():
        ids = [d for s in site_ids for d, _ in meters[s]]
        read(ids, [(start - window, None)])
        mine = set(ids)
        newest = max(
            (t for (d, _), pts in points.items() if d in mine for t, _ in pts), default=None
        )
        if newest is None or history_days < 1:
            continue
        until = datetime.fromtimestamp(newest, UTC)
        read(ids, [(start - k * day - window, until - k * day) for k in range(1, history_days + 1)])
    return {
        s: TrailingMeans(
            [(role, points.get((d, metric_of[role]), [])) for d, role in ms if role in metric_of]
        )
        for s, ms in meters.items()
    }


def recompute_days(
    conn: Connection,
    site_day_pairs: Iterable[tuple[str, date]],
    *,
    tz: ZoneInfo | None = None,
    in_python: bool = False,
) -> int:
    """Compute and store the figures of each (DMA site, local day); returns the days written.

    Pairs naming a site that is not a DMA are ignored. A day without any data is still
    written (invalid, coverage 0), so a report shows it as missing rather than skipping it.
    On PostgreSQL the figures are computed by one statement (alerts/dma_pg.py); on SQLite,
    or with `in_python`, from the slot means and totalisers fetched into Python
    (alerts/leakage.py, the reference the property test holds the statement to).
    """
    tz = tz or ZoneInfo(get_settings().timezone)
    pairs = sorted(set(site_day_pairs))
    if not pairs:
        return 0
    site_ids = sorted({s for s, _ in pairs})
    site_rows = {
        r.id: r
        for r in conn.execute(
            select(sites).where(sites.c.id.in_(site_ids), sites.c.kind == SiteKind.dma)
        )
    }
    pairs = [(s, d) for s, d in pairs if s in site_rows]
    if not pairs:
        return 0
    lock_sites(conn, site_rows)  # one recomputation of a DMA's days at a time
    meters = dma_meters(conn, site_rows)
    spans = {d: _span(d, tz) for _, d in pairs}
    if conn.dialect.name == "postgresql" and not in_python:
        params = {s: params_of(site_rows[s]) for s in {s for s, _ in pairs}}
        asked = []
        for s, d in pairs:
            p, sp = params[s], spans[d]
            night = night_slots(p.night_from, p.night_to, sp.slots)
            asked.append(
                AskedDay(
                    s,
                    d,
                    sp.start,
                    sp.slots,
                    night.start,
                    night.stop,
                    p.night_use_m3h,
                    p.leakage_exponent,
                )
            )
        dma_pg.recompute(
            conn,
            asked,
            [(dev, s, str(role)) for s, ms in meters.items() for dev, role in ms],
            utcnow(),
        )
        return len(pairs)
    return _recompute_in_python(conn, pairs, site_rows, meters, spans)


def recompute_days_split(
    engine: Engine,
    site_day_pairs: Iterable[tuple[str, date]],
    *,
    parts: int = 2,
    tz: ZoneInfo | None = None,
) -> int:
    """`recompute_days` for many days as `parts` concurrent transactions, each on a
    connection of its own: the sites cut into contiguous groups of about as many days each
    (a site's days all in one part, so no two parts wait on one site's lock). PostgreSQL runs
    one statement on one core; two parts use two. Returns the days written.

    The transaction boundary, so it commits: each part commits alone. A part that fails
    leaves its days as they were and the other parts' days written; the first error is
    raised once every part has ended. A rerun recomputes every day again from the readings
    (days and slots are replaced whole), so it puts all days right; nothing has to be
    undone first."""
    pairs = sorted(set(site_day_pairs))
    groups = _cut(pairs, parts)
    if len(groups) <= 1:
        with engine.begin() as conn:
            return recompute_days(conn, pairs, tz=tz)

    def part(group: list[tuple[str, date]]) -> int:
        with engine.begin() as conn:
            return recompute_days(conn, group, tz=tz)

    with ThreadPoolExecutor(max_workers=len(groups), thread_name_prefix="dma-days") as pool:
        futures = [pool.submit(part, g) for g in groups]
        wait(futures)
    errors = [e for f in futures if (e := f.exception()) is not None]
    if errors:
        raise errors[0]
    return sum(f.result() for f in futures)


def _cut(pairs: list[tuple[str, date]], parts: int) -> list[list[tuple[str, date]]]:
    """Sorted (site, day) pairs cut at site boundaries into at most `parts` runs of about
    equal length."""
    groups: list[list[tuple[str, date]]] = [[]]
    share = len(pairs) / max(1, parts)
    for i, (site, day) in enumerate(pairs):
        if (
            groups[-1]
            and site != groups[-1][-1][0]
            and len(groups) < parts
            and i >= share * len(groups)
        ):
            groups.append([])
        groups[-1].append((site, day))
    return [g for g in groups if g]


def _recompute_in_python(
    conn: Connection,
    pairs: list[tuple[str, date]],
    site_rows: dict[str, Any],
    meters: dict[str, list[tuple[str, DmaRole]]],
    spans: dict[date, _Span],
) -> int:
    device_ids = [d for ms in meters.values() for d, _ in ms]
    # one range per site: the span of its asked days
    ranges: dict[str, tuple[datetime, datetime]] = {}
    for s, d in pairs:
        sp = spans[d]
        end = sp.start + timedelta(seconds=sp.slots * SLOT_S)
        lo, hi = ranges.get(s, (sp.start, end))
        ranges[s] = (min(lo, sp.start), max(hi, end))

    # the meters of the sites with the same range in one condition (`= ANY` on PostgreSQL):
    # an index range per meter, where an OR per site was planned on PostgreSQL as a scan of
    # the whole DMA index with the devices as a filter (docs/benchmarks.md, "index-only reads")
    by_range: dict[tuple[datetime, datetime], list[str]] = defaultdict(list)
    for s, span in ranges.items():
        by_range[span].extend(d for d, _ in meters[s])

    def in_ranges(pad: timedelta) -> ColumnElement[bool]:
        return or_(
            *(
                and_(
                    one_of(conn, readings.c.device_id, ids),
                    readings.c.ts >= lo - pad,
                    readings.c.ts < hi + pad,
                )
                for (lo, hi), ids in by_range.items()
                if ids
            )
        )

    slot_means: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    totals: dict[str, list[tuple[float, float]]] = defaultdict(list)
    if device_ids:
        slot = _slot(conn).label("slot")
        q = (
            select(readings.c.device_id, readings.c.metric, slot, func.avg(readings.c.value))
            .where(
                in_ranges(timedelta(0)),
                readings.c.metric.in_(["flow", "pressure"]),
                readings.c.quality == QualityFlag.normal,
            )
            .group_by(readings.c.device_id, readings.c.metric, slot)
        )
        for dev, metric, n, mean in conn.execute(q):
            slot_means[(dev, metric)][int(n)] = float(mean)
        pad = timedelta(seconds=MAX_TOTALISER_GAP_S)
        tq = (
            select(readings.c.device_id, readings.c.ts, readings.c.value)
            .where(
                in_ranges(pad),
                readings.c.metric == "totaliser",
                readings.c.quality == QualityFlag.normal,
            )
            .order_by(readings.c.device_id, readings.c.ts)
        )
        for dev, ts, value in conn.execute(tq):
            totals[dev].append((ts.timestamp(), float(value)))

    now = utcnow()
    rows: list[dict[str, Any]] = []
    for s, d in pairs:
        sp = spans[d]
        first, t0 = sp.first_slot, sp.start.timestamp()
        # the day's totaliser readings, and those up to the gap limit either side
        t_lo, t_hi = t0 - MAX_TOTALISER_GAP_S, t0 + sp.slots * SLOT_S + MAX_TOTALISER_GAP_S
        day_meters = []
        for dev, role in meters[s]:
            flow = slot_means.get((dev, "flow"), {})
            pressure = slot_means.get((dev, "pressure"), {})
            day_meters.append(
                MeterDay(
                    dev,
                    role,
                    {i: flow[first + i] for i in range(sp.slots) if first + i in flow},
                    {i: pressure[first + i] for i in range(sp.slots) if first + i in pressure},
                    tuple(
                        TotaliserPoint(t - t0, v)
                        for t, v in _between(totals.get(dev, []), t_lo, t_hi)
                    ),
                )
            )
        fig = day_figures(day_meters, params_of(site_rows[s]), sp.slots)
        pressure = zone_pressure(day_meters, sp.slots)
        net = sorted(net_inflow(day_meters, sp.slots).items())
        rows.append(
            {
                "site_id": s,
                "day": d,
                "valid": fig.valid,
                "coverage": fig.coverage,
                "night_coverage": fig.night_coverage,
                "night_use_m3h": fig.night_use_m3h,
                "inlet_m3": fig.inlet_m3,
                "inlet_source": fig.inlet_source,
                "mnf_m3h": fig.mnf_m3h,
                "mnf_at": (
                    None
                    if fig.mnf_slot is None
                    else sp.start + timedelta(seconds=fig.mnf_slot * SLOT_S)
                ),
                "net_night_flow_m3h": fig.net_night_flow_m3h,
                "ndf_h": fig.ndf_h,
                "leakage_m3": fig.leakage_m3,
                "leakage_pct": fig.leakage_pct,
                "computed_at": now,
                # the day's defined slots, in slot order, whatever its validity
                "slot_index": [n for n, _ in net],
                "slot_net_m3h": [v for _, v in net],
                "slot_azp_mpa": [pressure.get(n) for n, _ in net],
                "net_mean_m3h": math.fsum(v for _, v in net) / len(net) if net else None,
            }
        )
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    stmt = insert(dma_days)
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["site_id", "day"],
            set_={c: stmt.excluded[c] for c in rows[0] if c not in ("site_id", "day")},
        ),
        rows,
    )
    return len(rows)


class PeriodKind(StrEnum):
    billing_period = "billing_period"  # one registered consumption period as billed
    rolling_12m = "rolling_12m"  # the 365 days ending on the report's last day
    calendar_year = "calendar_year"


@dataclass(frozen=True, slots=True)
class Period:
    """One DMA's CJJ 92 inputs and rates (percent) over a billing period or a window."""

    kind: PeriodKind
    site_id: str | None  # None: the whole supply area (`area_period`)
    period_start: date
    period_end: date
    days: int
    annual: bool  # a year or longer: the corrections apply
    supply_m3: float  # Q_s: Σ inlet_m3 of the period's stored days
    supply_days: int  # days of the period with an inlet volume
    consumption_days: int  # days of the period that registered consumption covers
    registered_m3: float  # Q_a: billed + unbilled (pro rata by days for a window)
    residential_metered_m3: float | None
    mains_km: float | None
    outlet_pressure_mpa: float | None
    frost_depth_m: float | None
    inputs_source: str
    r_wl: float | None
    r1: float | None
    r2: float | None
    r2_unclamped: float | None
    r3: float | None
    r4: float | None
    r_bl: float | None
    grade: int | None


INPUTS_SOURCE = (
    "Q_s: the sum of the period's daily inlet volumes (dma_days); Q_a, residential volume: "
    "registered consumption (pro rata by days where a billing period crosses a window's edge); "
    "mains_km: the DMA site; outlet pressure, frost depth: settings "
    "ENVMON_LEAKAGE_OUTLET_PRESSURE_MPA, ENVMON_LEAKAGE_FROST_DEPTH_M"
)


AREA_SOURCE = (
    "the whole supply area: Q_s, Q_a, the residential volume and mains_km summed over the DMAs "
    "whose R_BL exists for the window; each rate the Q_s-weighted mean of theirs "
    "(R_BL = Σ(R_BL,i · Q_s,i) / Σ Q_s,i, standards.md §5.1), R_WL so (ΣQ_s − ΣQ_a) / ΣQ_s"
)


def area_period(members: list[Period]) -> Period | None:
    """The whole supply area's row of one window from its DMAs' rows (same kind and dates):
    over those with an R_BL, the sums of the inputs and the Q_s-weighted rates."""
    rows = [p for p in members if p.r_bl is not None and p.supply_m3 > 0]
    if not rows:
        return None
    first = rows[0]
    q_s = math.fsum(p.supply_m3 for p in rows)

    def weighted(value: Callable[[Period], float | None]) -> float | None:
        values = [(value(p), p.supply_m3) for p in rows]
        if any(v is None for v, _ in values):
            return None
        return area_rate([(v, q) for v, q in values if v is not None])

    r_bl = weighted(lambda p: p.r_bl)
    resid = [p.residential_metered_m3 for p in rows if p.residential_metered_m3 is not None]
    return Period(
        kind=first.kind,
        site_id=None,
        period_start=first.period_start,
        period_end=first.period_end,
        days=first.days,
        annual=first.annual,
        supply_m3=q_s,
        supply_days=sum(p.supply_days for p in rows),
        consumption_days=sum(p.consumption_days for p in rows),
        registered_m3=math.fsum(p.registered_m3 for p in rows),
        residential_metered_m3=math.fsum(resid) if resid else None,
        mains_km=math.fsum(p.mains_km for p in rows if p.mains_km is not None),
        outlet_pressure_mpa=first.outlet_pressure_mpa,
        frost_depth_m=first.frost_depth_m,
        inputs_source=AREA_SOURCE,
        r_wl=weighted(lambda p: p.r_wl),
        r1=weighted(lambda p: p.r1),
        r2=weighted(lambda p: p.r2),
        r2_unclamped=weighted(lambda p: p.r2_unclamped),
        r3=weighted(lambda p: p.r3),
        r4=weighted(lambda p: p.r4),
        r_bl=r_bl,
        grade=grade(r_bl) if r_bl is not None else None,
    )


@dataclass(frozen=True, slots=True)
class _Area:
    outlet_pressure_mpa: float | None
    frost_depth_m: float | None


def _supply(conn: Connection, site_id: str, start: date, end: date) -> tuple[float, int]:
    supply, n = conn.execute(
        select(func.coalesce(func.sum(dma_days.c.inlet_m3), 0.0), func.count()).where(
            dma_days.c.site_id == site_id,
            dma_days.c.day >= start,
            dma_days.c.day <= end,
            dma_days.c.inlet_m3.is_not(None),
        )
    ).one()
    return float(supply), int(n)


def _row(
    conn: Connection,
    kind: PeriodKind,
    site: Any,
    start: date,
    end: date,
    registered: float,
    residential: float | None,
    covered: int,
    area: _Area,
) -> Period:
    supply, n = _supply(conn, site.id, start, end)
    days = (end - start).days + 1
    annual = days >= 365
    # without consumption for every day of the window, Q_a and so every rate would be wrong
    rates = (
        cjj92(
            Cjj92Inputs(
                supply_m3=supply,
                registered_m3=registered,
                annual=annual,
                residential_metered_m3=residential,
                mains_km=site.mains_km,
                outlet_pressure_mpa=area.outlet_pressure_mpa,
                frost_depth_m=area.frost_depth_m,
            )
        )
        if covered == days
        else Cjj92Rates(r_wl=None)
    )
    return Period(
        kind=kind,
        site_id=site.id,
        period_start=start,
        period_end=end,
        days=days,
        annual=annual,
        supply_m3=supply,
        supply_days=n,
        consumption_days=covered,
        registered_m3=registered,
        residential_metered_m3=residential,
        mains_km=site.mains_km,
        outlet_pressure_mpa=area.outlet_pressure_mpa,
        frost_depth_m=area.frost_depth_m,
        inputs_source=INPUTS_SOURCE,
        r_wl=rates.r_wl,
        r1=rates.r1,
        r2=rates.r2,
        r2_unclamped=rates.r2_unclamped,
        r3=rates.r3,
        r4=rates.r4,
        r_bl=rates.r_bl,
        grade=rates.grade,
    )


def _registered(bills: Iterable[Any], start: date, end: date) -> tuple[float, float | None, int]:
    """(Q_a, residential metered volume, days covered) of [start, end] from billing periods,
    pro rata by days where a period crosses an edge."""
    registered, covered = 0.0, 0
    residential: float | None = None
    for c in bills:
        overlap = (min(end, c.period_end) - max(start, c.period_start)).days + 1
        if overlap <= 0:
            continue
        share = overlap / ((c.period_end - c.period_start).days + 1)
        covered += overlap
        registered += (c.billed_m3 + c.unbilled_m3) * share
        if c.residential_metered_m3 is not None:
            residential = (residential or 0.0) + c.residential_metered_m3 * share
    return registered, residential, covered


def _bills(conn: Connection, ids: list[str], lo: date, hi: date) -> dict[str, list[Any]]:
    """The billing periods of these DMAs overlapping [lo, hi], per site, oldest first."""
    bills: dict[str, list[Any]] = defaultdict(list)
    for c in conn.execute(
        select(consumption)
        .where(
            one_of(conn, consumption.c.site_id, ids),
            consumption.c.period_start <= hi,
            consumption.c.period_end >= lo,
        )
        .order_by(consumption.c.site_id, consumption.c.period_start)
    ):
        bills[c.site_id].append(c)
    return bills


def rolling_rates(
    conn: Connection,
    sites: Mapping[str, Any],
    days: Mapping[str, Iterable[date]],
    *,
    outlet_pressure_mpa: float | None,
    frost_depth_m: float | None,
) -> dict[str, dict[date, Cjj92Rates]]:
    """The CJJ 92 rates of DMAs over the 365 days ending on each of `days[site]` (the
    leakage rate rule's series): the rolling_12m row of `periods` for each day, from one query
    for the daily volumes and one for the consumption, whatever the number of DMAs. A day
    whose year registered consumption does not cover whole has no rates (r_wl None)."""
    wanted = {s: sorted(set(d)) for s, d in days.items()}
    wanted = {s: d for s, d in wanted.items() if d}
    if not wanted:
        return {}
    lo = min(d[0] for d in wanted.values()) - timedelta(days=364)
    hi = max(d[-1] for d in wanted.values())
    ids = sorted(wanted)
    inlet: dict[str, dict[date, float]] = defaultdict(dict)
    for s, d, v in conn.execute(
        select(dma_days.c.site_id, dma_days.c.day, dma_days.c.inlet_m3).where(
            one_of(conn, dma_days.c.site_id, ids),
            dma_days.c.day >= lo,
            dma_days.c.day <= hi,
            dma_days.c.inlet_m3.is_not(None),
        )
    ):
        inlet[s][d] = float(v)
    bills = _bills(conn, ids, lo, hi)
    out: dict[str, dict[date, Cjj92Rates]] = {}
    for s, ends in wanted.items():
        site, mine = sites[s], inlet.get(s, {})
        rates: dict[date, Cjj92Rates] = {}
        for end in ends:
            start = end - timedelta(days=364)
            registered, residential, covered = _registered(bills.get(s, ()), start, end)
            if covered < 365:
                rates[end] = Cjj92Rates(r_wl=None)
                continue
            supply = math.fsum(v for d, v in mine.items() if start <= d <= end)
            rates[end] = cjj92(
                Cjj92Inputs(
                    supply_m3=supply,
                    registered_m3=registered,
                    annual=True,
                    residential_metered_m3=residential,
                    mains_km=site.mains_km,
                    outlet_pressure_mpa=outlet_pressure_mpa,
                    frost_depth_m=frost_depth_m,
                )
            )
        out[s] = rates
    return out


def periods(
    conn: Connection,
    site_rows: Iterable[Any],
    day_from: date,
    day_to: date,
    *,
    outlet_pressure_mpa: float | None,
    frost_depth_m: float | None,
) -> list[Period]:
    """CJJ 92 rows of these DMAs: each billing period overlapping [day_from, day_to], the
    rolling 12 months ending on day_to, and each calendar year the range touches; then, for
    each of those windows, the whole supply area's row (`area_period`, site_id None)."""
    area = _Area(outlet_pressure_mpa, frost_depth_m)
    by_id = {r.id: r for r in site_rows}
    if not by_id:
        return []
    windows = [(PeriodKind.rolling_12m, day_to - timedelta(days=364), day_to)] + [
        (PeriodKind.calendar_year, date(y, 1, 1), date(y, 12, 31))
        for y in range(day_from.year, day_to.year + 1)
    ]
    lo = min(day_from, *(w[1] for w in windows))
    hi = max(day_to, *(w[2] for w in windows))
    bills = _bills(conn, list(by_id), lo, hi)
    out: list[Period] = []
    for site_id, site in by_id.items():
        for c in bills[site_id]:
            if c.period_start <= day_to and c.period_end >= day_from:
                days = (c.period_end - c.period_start).days + 1
                out.append(
                    _row(
                        conn,
                        PeriodKind.billing_period,
                        site,
                        c.period_start,
                        c.period_end,
                        c.billed_m3 + c.unbilled_m3,
                        c.residential_metered_m3,
                        days,
                        area,
                    )
                )
        for kind, start, end in windows:
            registered, residential, covered = _registered(bills[site_id], start, end)
            if covered:
                out.append(
                    _row(conn, kind, site, start, end, registered, residential, covered, area)
                )
    # the whole supply area's row of each window, after its DMAs' rows
    for kind, start, _ in windows:
        whole = area_period([p for p in out if p.kind == kind and p.period_start == start])
        if whole is not None:
            out.append(whole)
    return out


@dataclass(frozen=True, slots=True)
class Changes:
    """What a batch of meter readings changes: the (DMA site, local day) pairs whose figures
    to recompute (`recompute_days`), and each DMA's earliest reading time in the batch, as
    given (the writer gives the start of the reading's hour): from there on the rules that
    read readings, the burst rule's trailing means, can judge differently."""

    days: set[tuple[str, date]]
    since: dict[str, datetime]

    def earliest_days(self) -> dict[str, date]:
        """Each DMA's earliest changed day: what `evaluate_sites` takes."""
        out: dict[str, date] = {}
        for site, day in self.days:
            out[site] = min(day, out.get(site, day))
        return out

    def __or__(self, other: Changes) -> Changes:
        since = dict(self.since)
        for site, t in other.since.items():
            since[site] = min(t, since.get(site, t))
        return Changes(self.days | other.days, since)


def changes(
    conn: Connection,
    device_times: Iterable[tuple[str, datetime]],
    *,
    tz: ZoneInfo | None = None,
) -> Changes:
    """What a batch of readings (device, time) changes in the DMAs (`Changes`). A reading
    within an hour of local midnight also touches the neighbouring day, whose totaliser it
    brackets."""
    tz = tz or ZoneInfo(get_settings().timezone)
    by_device: dict[str, set[date]] = defaultdict(set)
    first: dict[str, datetime] = {}
    pad = timedelta(seconds=MAX_TOTALISER_GAP_S)
    for device_id, ts in device_times:
        for t in (ts - pad, ts, ts + pad):
            by_device[device_id].add(t.astimezone(tz).date())
        first[device_id] = min(ts, first.get(device_id, ts))
    if not by_device:
        return Changes(set(), {})
    rows = conn.execute(
        select(devices.c.id, devices.c.site_id)
        .join(sites, sites.c.id == devices.c.site_id)
        .where(
            devices.c.id.in_(list(by_device)),
            devices.c.kind == DeviceKind.leak_meter,
            sites.c.kind == SiteKind.dma,
        )
    )
    site_of = {device_id: site_id for device_id, site_id in rows}
    since: dict[str, datetime] = {}
    for device_id, ts in first.items():
        if (site := site_of.get(device_id)) is not None:
            since[site] = min(ts, since.get(site, ts))
    days = {(site_of[d], day) for d, ds in by_device.items() if d in site_of for day in ds}
    return Changes(days, since)


def mark_pending(conn: Connection, changed: Changes) -> None:
    """Owe these DMA days their recomputation (`dma_pending`), in the caller's transaction:
    the marks become visible with the readings that made them."""
    if not changed.days:
        return
    rows = [(s, d, changed.since[s]) for s, d in sorted(changed.days)]
    if conn.dialect.name == "postgresql":
        conn.execute(
            _PG_MARK,
            {
                "s": pg_array([r[0] for r in rows]),
                "d": pg_array([r[1].isoformat() for r in rows]),
                "t": pg_array([r[2] for r in rows]),
            },
        )
    else:
        conn.execute(
            dma_pending.insert(), [{"site_id": s, "day": d, "since": t} for s, d, t in rows]
        )


def claim_pending(conn: Connection) -> Changes:
    """Take every owed DMA day (`mark_pending`, any ingestor's) and delete its marks in the
    caller's transaction: the recomputation that follows commits with the deletion, or rolls
    back with it and leaves the marks. Marks another transaction is taking are skipped (it
    recomputes them); marks not yet committed are not seen (their readings neither)."""
    if conn.dialect.name == "postgresql":
        got = conn.execute(_PG_CLAIM).all()
    else:
        got = conn.execute(
            dma_pending.delete().returning(
                dma_pending.c.site_id, dma_pending.c.day, dma_pending.c.since
            )
        ).all()
    days: set[tuple[str, date]] = set()
    since: dict[str, datetime] = {}
    for site, day, t in got:
        days.add((site, day))
        since[site] = min(t, since.get(site, t))
    return Changes(days, since)


_PG_MARK = text(
    "INSERT INTO dma_pending (site_id, day, since) SELECT * FROM unnest("
    "CAST(:s AS text[]), CAST(:d AS date[]), CAST(:t AS timestamptz[]))"
)
_PG_CLAIM = text(
    "DELETE FROM dma_pending WHERE id IN "
    "(SELECT id FROM dma_pending FOR UPDATE SKIP LOCKED) RETURNING site_id, day, since"
)
