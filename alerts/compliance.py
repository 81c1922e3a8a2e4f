"""Compliance reports: daily verdicts for dust sites and pass rates for drinking-water points.

Both read their limits from the `rules` table (the installed rule packs, as edited by the
admins), never from constants, and count only readings flagged N (HJ 212-2017 Table 8).

Dust (per construction site and local day):

- A monitor's hour is valid when its N-flagged readings number at least 75% of the expected
  `3600 / interval_s` (45 of 60 minute values): GB 3095-2012 Table 4 [U] with the HJ 212-2017
  75% rule [C]. Its hourly mean comes from `hourly_rollups` (N readings only).
- The site's hourly mean is the mean of its monitors' valid hourly means; the hour is valid
  when at least one monitor's hour is. An hour is exceeding when that mean is above the
  threshold.
- Threshold and allowed count: an enabled `daily_count` rule on PM10 that takes the site
  (`params.hour_above`, `alarm_above` = the most exceeding hours allowed), else the alarm tier
  of `dust-pm10-1h` with "more than 2 exceeding hours a day" (DB13/2934-2019 [S]).
- Verdict: `non_compliant` when the exceeding hours are more than allowed (missing hours can
  only add exceedances, so this holds on an incomplete day too); else `insufficient_data` with
  fewer than 20 valid hours (GB 3095-2012 Table 4 [U]); else `compliant`.

Drinking water (per water point, local day and limited metric): raw samples, N-flagged
samples, and the share of N samples within the alarm limits of the enabled `dw-*` threshold
rules that take the point (several rules on one metric combine: the strictest bound of each
side wins).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    case,
    func,
    or_,
    select,
    true,
)

from monitor.core.catalogue import METRICS, DeviceKind, SiteKind
from monitor.core.exceptions import Conflict
from monitor.core.models import Device, HourlyRollup, Reading, Rule, RuleKind, Site, table

sites_t = table(Site)
devices_t = table(Device)
readings_t = table(Reading)
rollups_t = table(HourlyRollup)
rules_t = table(Rule)

HOUR = timedelta(hours=1)
DUST_METRIC = "pm10"
DUST_HOURLY_RULE = "dust-pm10-1h"
DEFAULT_ALLOWED_HOURS = 2
MIN_VALID_HOURS = 20
WATER_SITE_KINDS = (SiteKind.water_plant, SiteKind.network_point)

SITE_MEAN_METHOD = (
    "site hourly mean = mean of its monitors' valid hourly means; a monitor's hour is valid "
    "with N-flagged readings >= 75% of 3600/interval_s (GB 3095-2012 Tab.4 [U]; "
    "HJ 212-2017 C.20-22 [C])"
)
DEFAULT_COUNT_BASIS = (
    "more than 2 exceeding hours in a local day = non-compliant: Hebei DB13/2934-2019 [S] "
    "(there applied to the site-minus-county difference; here to the hourly mean)"
)
VALIDITY_BASIS = "a day needs >= 20 valid hours: GB 3095-2012 Tab.4 [U]"


class Verdict(StrEnum):
    compliant = "compliant"
    non_compliant = "non_compliant"
    insufficient_data = "insufficient_data"


@dataclass(frozen=True, slots=True)
class DustHour:
    start: datetime  # local start of the hour
    mean: float | None  # site mean of the valid monitors' means; None when no monitor is valid
    valid_monitors: int
    samples: int  # N-flagged readings of all the site's monitors in the hour
    valid: bool
    exceeding: bool


@dataclass(frozen=True, slots=True)
class DustDay:
    site_id: str
    site_name: str
    district: str
    day: date
    monitors: list[str]
    valid_hours: int
    exceeding_hours: int
    allowed_exceeding_hours: int
    threshold: float
    daily_mean: float | None  # mean of the valid hourly means, with >= 20 valid hours
    verdict: Verdict
    rule: str
    basis: str
    hours: list[DustHour]


@dataclass(frozen=True, slots=True)
class WaterDay:
    device_id: str
    site_id: str
    site_kind: str
    district: str
    day: date
    metric: str
    unit: str
    samples: int
    valid_samples: int
    within_limits: int
    share_within: float | None  # within_limits / valid_samples; None without valid samples
    lower_limit: float | None
    upper_limit: float | None
    rules: list[str]
    basis: str


@dataclass(frozen=True, slots=True)
class _Judge:
    threshold: float
    allowed: int
    rule: str
    basis: str


@dataclass(frozen=True, slots=True)
class _Limits:
    lower: float | None
    upper: float | None
    rules: tuple[str, ...]
    basis: str


def days_between(day_from: date, day_to: date) -> Iterator[date]:
    """Each local day from `day_from` to `day_to`, both included."""
    day = day_from
    while day <= day_to:
        yield day
        day += timedelta(days=1)


def day_start(day: date, tz: ZoneInfo) -> datetime:
    """The UTC instant of local midnight starting `day`."""
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)


def _hours_of(day: date, tz: ZoneInfo) -> list[datetime]:
    """The UTC hour starts (rollup hours) whose local start falls on `day`."""
    lo, hi = day_start(day, tz), day_start(day + timedelta(days=1), tz)
    hour = lo.replace(minute=0, second=0, microsecond=0)
    if hour < lo:
        hour += HOUR
    out = []
    while hour < hi:
        out.append(hour)
        hour += HOUR
    return out


def _site_rows(
    conn: Connection,
    kinds: Sequence[str],
    site_ids: Collection[str] | None,
    district: str | None,
    scope: ColumnElement[bool],
) -> list[Any]:
    q = (
        select(sites_t.c.id, sites_t.c.name, sites_t.c.district, sites_t.c.kind)
        .where(sites_t.c.kind.in_(list(kinds)), scope)
        .order_by(sites_t.c.id)
    )
    if site_ids is not None:
        q = q.where(sites_t.c.id.in_(list(site_ids)))
    if district is not None:
        q = q.where(sites_t.c.district == district)
    return list(conn.execute(q).all())


def _takes(rule: Any, site: Any, device_ids: Collection[str]) -> bool:
    """Whether a rule's selectors take this site (and, if it names devices, one of these)."""
    return (
        (not rule.site_kinds or site.kind in rule.site_kinds)
        and (not rule.site_ids or site.id in rule.site_ids)
        and (not rule.site_districts or site.district in rule.site_districts)
        and (not rule.device_ids or any(d in rule.device_ids for d in device_ids))
    )


def _dust_judges(conn: Connection) -> tuple[list[Any], Any | None]:
    """The enabled PM10 daily_count rules, and the hourly rule `dust-pm10-1h` (or None)."""
    counts = [
        r
        for r in conn.execute(
            select(rules_t).where(
                rules_t.c.kind == RuleKind.daily_count,
                rules_t.c.device_kind == DeviceKind.dust_monitor,
                rules_t.c.metric == DUST_METRIC,
                rules_t.c.enabled.is_(True),
                rules_t.c.alarm_above.is_not(None),
            )
        )
        if (r.params or {}).get("hour_above") is not None
    ]
    hourly = conn.execute(
        select(rules_t).where(rules_t.c.name == DUST_HOURLY_RULE, rules_t.c.enabled.is_(True))
    ).first()
    return counts, hourly


def _judge_for(site: Any, monitors: list[str], counts: list[Any], hourly: Any | None) -> _Judge:
    taking = [r for r in counts if _takes(r, site, monitors)]
    if taking:
        # several apply: the strictest decides (fewest allowed hours, then lowest threshold)
        r = min(taking, key=lambda r: (r.alarm_above, float(r.params["hour_above"]), r.name))
        allowed = int(r.alarm_above)
        return _Judge(
            float(r.params["hour_above"]),
            allowed,
            str(r.name),
            f"{r.basis}; more than {allowed} exceeding hours in a local day = non-compliant",
        )
    if hourly is None or hourly.alarm_above is None:
        raise Conflict(
            f"no enabled rule {DUST_HOURLY_RULE!r} with an alarm tier (and no daily_count rule "
            f"for site {site.id!r}): there is no hourly PM10 threshold to judge against"
        )
    return _Judge(
        float(hourly.alarm_above),
        DEFAULT_ALLOWED_HOURS,
        DUST_HOURLY_RULE,
        f"{hourly.basis}; {DEFAULT_COUNT_BASIS}",
    )


def dust_daily(
    conn: Connection,
    *,
    day_from: date,
    day_to: date,
    tz: ZoneInfo,
    site_ids: Collection[str] | None = None,
    district: str | None = None,
    scope: ColumnElement[bool] | None = None,
) -> list[DustDay]:
    """Per construction site and local day from `day_from` to `day_to` (inclusive): the
    site's hourly PM10 means, valid and exceeding hours, and the verdict.

    `scope` is a where-clause on the sites table (the caller's district scope)."""
    sites = _site_rows(
        conn, [SiteKind.construction_site], site_ids, district, true() if scope is None else scope
    )
    if not sites:
        return []
    monitors: dict[str, dict[str, int]] = defaultdict(dict)  # site -> {device: interval_s}
    for row in conn.execute(
        select(devices_t.c.id, devices_t.c.site_id, devices_t.c.interval_s)
        .where(
            devices_t.c.site_id.in_([s.id for s in sites]),
            devices_t.c.kind == DeviceKind.dust_monitor,
        )
        .order_by(devices_t.c.id)
    ):
        monitors[row.site_id][row.id] = int(row.interval_s)
    interval = {d: i for per_site in monitors.values() for d, i in per_site.items()}

    lo, hi = day_start(day_from, tz), day_start(day_to + timedelta(days=1), tz)
    # (device, UTC hour start) -> (N count, mean)
    hourly: dict[tuple[str, datetime], tuple[int, float]] = {}
    if interval:
        for device_id, hour, count, total in conn.execute(
            select(
                rollups_t.c.device_id, rollups_t.c.hour, rollups_t.c.count, rollups_t.c.sum
            ).where(
                rollups_t.c.metric == DUST_METRIC,
                rollups_t.c.device_id.in_(list(interval)),
                rollups_t.c.hour >= lo,
                rollups_t.c.hour < hi,
            )
        ):
            if count > 0:
                hourly[(device_id, hour)] = (int(count), float(total) / count)

    counts, hourly_rule = _dust_judges(conn)
    out: list[DustDay] = []
    for site in sites:
        devs = monitors.get(site.id, {})
        judge = _judge_for(site, list(devs), counts, hourly_rule)
        for day in days_between(day_from, day_to):
            hours = [_site_hour(h, tz, devs, hourly, judge.threshold) for h in _hours_of(day, tz)]
            valid = [h for h in hours if h.valid]
            exceeding = sum(1 for h in hours if h.exceeding)
            if exceeding > judge.allowed:
                verdict = Verdict.non_compliant
            elif len(valid) < MIN_VALID_HOURS:
                verdict = Verdict.insufficient_data
            else:
                verdict = Verdict.compliant
            daily_mean = (
                sum(h.mean for h in valid if h.mean is not None) / len(valid)
                if len(valid) >= MIN_VALID_HOURS
                else None
            )
            out.append(
                DustDay(
                    site_id=site.id,
                    site_name=site.name,
                    district=site.district,
                    day=day,
                    monitors=list(devs),
                    valid_hours=len(valid),
                    exceeding_hours=exceeding,
                    allowed_exceeding_hours=judge.allowed,
                    threshold=judge.threshold,
                    daily_mean=daily_mean,
                    verdict=verdict,
                    rule=judge.rule,
                    basis=f"{judge.basis}; {VALIDITY_BASIS}",
                    hours=hours,
                )
            )
    return out


def hour_is_valid(count: int, interval_s: int) -> bool:
    """At least 75% of the expected 3600 / interval_s readings (45 of 60 minute values)."""
    return count >= 1 and 4 * count * max(1, interval_s) >= 3 * 3600


def _site_hour(
    hour: datetime,
    tz: ZoneInfo,
    devices: dict[str, int],
    hourly: dict[tuple[str, datetime], tuple[int, float]],
    threshold: float,
) -> DustHour:
    means: list[float] = []
    samples = 0
    for device_id, interval_s in devices.items():
        got = hourly.get((device_id, hour))
        if got is None:
            continue
        count, mean = got
        samples += count
        if hour_is_valid(count, interval_s):
            means.append(mean)
    site_mean = sum(means) / len(means) if means else None
    return DustHour(
        start=hour.astimezone(tz),
        mean=site_mean,
        valid_monitors=len(means),
        samples=samples,
        valid=site_mean is not None,
        exceeding=site_mean is not None and site_mean > threshold,
    )


def _water_limits(conn: Connection, points: list[Any]) -> dict[tuple[str, str], _Limits]:
    """(device, metric) -> the combined alarm limits of the dw-* rules taking the device."""
    rules = conn.execute(
        select(rules_t)
        .where(
            rules_t.c.kind == RuleKind.threshold,
            rules_t.c.device_kind == DeviceKind.water_quality,
            rules_t.c.enabled.is_(True),
            or_(rules_t.c.name.like("dw-%"), rules_t.c.pack == "drinking_water"),
            or_(rules_t.c.alarm_above.is_not(None), rules_t.c.alarm_below.is_not(None)),
        )
        .order_by(rules_t.c.name)
    ).all()
    out: dict[tuple[str, str], _Limits] = {}
    for point in points:
        taking: dict[str, list[Any]] = defaultdict(list)
        for r in rules:
            if r.metric in METRICS and _takes(r, point, [point.device_id]):
                taking[r.metric].append(r)
        for metric, rs in taking.items():
            uppers = [float(r.alarm_above) for r in rs if r.alarm_above is not None]
            lowers = [float(r.alarm_below) for r in rs if r.alarm_below is not None]
            out[(point.device_id, metric)] = _Limits(
                lower=max(lowers) if lowers else None,
                upper=min(uppers) if uppers else None,
                rules=tuple(r.name for r in rs),
                basis="; ".join(dict.fromkeys(r.basis for r in rs)),
            )
    return out


def water_daily(
    conn: Connection,
    *,
    day_from: date,
    day_to: date,
    tz: ZoneInfo,
    device_ids: Collection[str] | None = None,
    site_ids: Collection[str] | None = None,
    district: str | None = None,
    scope: ColumnElement[bool] | None = None,
) -> list[WaterDay]:
    """Per water point (a water-quality device at a water plant or network point), local day
    and metric with a limit: samples, N-flagged samples and the share of those within the
    alarm limits (raw readings, not means).

    `scope` is a where-clause on the sites table (the caller's district scope)."""
    sites = {
        s.id: s
        for s in _site_rows(
            conn, list(WATER_SITE_KINDS), site_ids, district, true() if scope is None else scope
        )
    }
    if not sites:
        return []
    q = (
        select(
            devices_t.c.id.label("device_id"),
            devices_t.c.site_id,
            sites_t.c.id,
            sites_t.c.kind,
            sites_t.c.district,
        )
        .join(sites_t, sites_t.c.id == devices_t.c.site_id)
        .where(
            devices_t.c.site_id.in_(list(sites)),
            devices_t.c.kind == DeviceKind.water_quality,
        )
        .order_by(devices_t.c.id)
    )
    if device_ids is not None:
        q = q.where(devices_t.c.id.in_(list(device_ids)))
    points = list(conn.execute(q).all())
    limits = _water_limits(conn, points)
    if not limits:
        return []

    # one condition per distinct (metric, bounds): the devices it holds for
    groups: dict[tuple[str, float | None, float | None], list[str]] = defaultdict(list)
    for (device_id, metric), lim in limits.items():
        groups[(metric, lim.lower, lim.upper)].append(device_id)
    conditions = []
    for (metric, lower, upper), devs in groups.items():
        parts = [readings_t.c.metric == metric, readings_t.c.device_id.in_(devs)]
        if lower is not None:
            parts.append(readings_t.c.value >= lower)
        if upper is not None:
            parts.append(readings_t.c.value <= upper)
        conditions.append(and_(*parts))
    is_n = readings_t.c.quality == "N"
    valid = func.sum(case((is_n, 1), else_=0))
    within = func.sum(case((and_(is_n, or_(*conditions)), 1), else_=0))
    metrics = sorted({m for _, m in limits})
    counted: dict[tuple[date, str, str], tuple[int, int, int]] = {}
    for day in days_between(day_from, day_to):
        for row in conn.execute(
            select(
                readings_t.c.device_id,
                readings_t.c.metric,
                func.count().label("samples"),
                valid.label("valid"),
                within.label("within"),
            )
            .where(
                readings_t.c.device_id.in_([p.device_id for p in points]),
                readings_t.c.metric.in_(metrics),
                readings_t.c.ts >= day_start(day, tz),
                readings_t.c.ts < day_start(day + timedelta(days=1), tz),
            )
            .group_by(readings_t.c.device_id, readings_t.c.metric)
        ):
            counted[(day, row.device_id, row.metric)] = (
                int(row.samples),
                int(row.valid or 0),
                int(row.within or 0),
            )

    out: list[WaterDay] = []
    for point in points:
        for day in days_between(day_from, day_to):
            for metric in metrics:
                found = limits.get((point.device_id, metric))
                if found is None:
                    continue
                samples, n, ok = counted.get((day, point.device_id, metric), (0, 0, 0))
                out.append(
                    WaterDay(
                        device_id=point.device_id,
                        site_id=point.site_id,
                        site_kind=point.kind,
                        district=point.district,
                        day=day,
                        metric=metric,
                        unit=METRICS[metric].unit,
                        samples=samples,
                        valid_samples=n,
                        within_limits=ok,
                        share_within=ok / n if n else None,
                        lower_limit=found.lower,
                        upper_limit=found.upper,
                        rules=list(found.rules),
                        basis=found.basis,
                    )
                )
    return out
