"""Compliance reports for inspectors: dust verdicts per site and day, water pass rates per
point and day (see docs/compliance.md). JSON by default, CSV with `format=csv`."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from enum import StrEnum
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from alerts import compliance, dma
from alerts.compliance import DustDay, Verdict, WaterDay
from alerts.leakage import area_rate
from alerts.repository import day_figures
from monitor.api.deps import PrincipalDep, SessionDep, SettingsDep
from monitor.api.filters import District
from monitor.api.scope import district_clause
from monitor.auth import Principal
from monitor.core.catalogue import DeviceKind, SiteKind
from monitor.core.exceptions import InvalidInput, NotFound
from monitor.core.models import Device, DmaDay, Site, table
from monitor.core.settings import Settings

router = APIRouter(prefix="/reports", tags=["reports"])
sites = table(Site)
devices = table(Device)
dma_days = table(DmaDay)

MAX_DAYS = 92
CSV_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The report as JSON, or as CSV with `format=csv`",
        "content": {"text/csv": {"schema": {"type": "string"}}},
    }
}


class ReportFormat(StrEnum):
    json = "json"
    csv = "csv"


StartDay = Annotated[date, Query(description="First local day (YYYY-MM-DD), inclusive")]
EndDay = Annotated[
    date, Query(description=f"Last local day (YYYY-MM-DD), inclusive; at most {MAX_DAYS} days")
]
SiteParam = Annotated[str | None, Query(alias="site", description="Only this site")]
FormatParam = Annotated[
    ReportFormat, Query(alias="format", description="json, or csv (a download)")
]


class DustHourRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    start: datetime = Field(description="Local start of the hour")
    mean: float | None = Field(
        description="Mean of the site's monitors' valid hourly PM10 means, µg/m³; "
        "null when no monitor has a valid hour"
    )
    valid_monitors: int = Field(description="Monitors with a valid hour (>= 75% of samples)")
    samples: int = Field(description="N-flagged readings of all the site's monitors")
    valid: bool
    exceeding: bool = Field(description="Valid and above the threshold")


class DustDayRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    site_id: str
    site_name: str
    district: str
    day: date = Field(description="Local day")
    monitors: list[str] = Field(description="The site's dust monitors")
    valid_hours: int
    exceeding_hours: int
    allowed_exceeding_hours: int = Field(description="More than this in a day = non_compliant")
    threshold: float = Field(description="Hourly PM10 mean above this is exceeding, µg/m³")
    daily_mean: float | None = Field(
        description="Mean of the valid hourly means; null with fewer than 20 valid hours"
    )
    verdict: Verdict
    rule: str = Field(description="The rule the threshold and allowed count come from")
    basis: str = Field(description="The standards behind threshold, count and validity")
    hours: list[DustHourRead]


class DustReport(BaseModel):
    start: date
    end: date
    timezone: str
    method: str
    items: list[DustDayRead]


class WaterDayRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    device_id: str
    site_id: str
    site_kind: str
    district: str
    day: date = Field(description="Local day")
    metric: str
    unit: str
    samples: int = Field(description="Readings of any flag")
    valid_samples: int = Field(description="Readings flagged N")
    within_limits: int = Field(description="N readings within the alarm limits")
    share_within: float | None = Field(
        description="within_limits / valid_samples; null without valid samples"
    )
    lower_limit: float | None
    upper_limit: float | None
    rules: list[str] = Field(description="The rules the limits come from")
    basis: str


class WaterReport(BaseModel):
    start: date
    end: date
    timezone: str
    items: list[WaterDayRead]


def _check_days(start: date, end: date) -> None:
    if end < start:
        raise InvalidInput("end must be on or after start", field="query.end")
    if (end - start).days + 1 > MAX_DAYS:
        raise InvalidInput(
            f"a report may span {MAX_DAYS} days at most; ask for shorter ranges",
            field="query.end",
        )


def _visible_site(
    session: SessionDep, principal: Principal, site_id: str, kinds: Sequence[str]
) -> None:
    """404 when the site does not exist or is out of scope, 422 when it is the wrong kind."""
    kind = session.execute(
        select(sites.c.kind).where(
            sites.c.id == site_id, district_clause(principal, sites.c.district)
        )
    ).scalar_one_or_none()
    if kind is None:
        raise NotFound(f"site {site_id!r} does not exist", field="query.site")
    if kind not in kinds:
        raise InvalidInput(
            f"site {site_id!r} is a {kind}; this report covers {', '.join(kinds)}",
            field="query.site",
        )


def _csv(
    name: str, start: date, end: date, header: list[str], rows: Iterable[list[Any]]
) -> Response:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}_{start}_{end}.csv"'},
    )


DUST_COLUMNS = [
    "site_id",
    "site_name",
    "district",
    "day",
    "valid_hours",
    "exceeding_hours",
    "allowed_exceeding_hours",
    "threshold",
    "daily_mean",
    "verdict",
    "rule",
    "monitors",
]


def _dust_row(d: DustDay) -> list[Any]:
    by_hour: dict[int, float | None] = {h.start.hour: h.mean for h in d.hours}
    return [
        d.site_id,
        d.site_name,
        d.district,
        d.day.isoformat(),
        d.valid_hours,
        d.exceeding_hours,
        d.allowed_exceeding_hours,
        d.threshold,
        d.daily_mean,
        d.verdict.value,
        d.rule,
        " ".join(d.monitors),
        *(by_hour.get(h) for h in range(24)),
        d.basis,
    ]


WATER_COLUMNS = [
    "device_id",
    "site_id",
    "site_kind",
    "district",
    "day",
    "metric",
    "unit",
    "samples",
    "valid_samples",
    "within_limits",
    "share_within",
    "lower_limit",
    "upper_limit",
    "rules",
    "basis",
]


def _water_row(w: WaterDay) -> list[Any]:
    return [
        w.device_id,
        w.site_id,
        w.site_kind,
        w.district,
        w.day.isoformat(),
        w.metric,
        w.unit,
        w.samples,
        w.valid_samples,
        w.within_limits,
        w.share_within,
        w.lower_limit,
        w.upper_limit,
        " ".join(w.rules),
        w.basis,
    ]


def _tz(settings: Settings) -> ZoneInfo:
    return ZoneInfo(settings.timezone)


@router.get("/dust-compliance", response_model=DustReport, responses=CSV_RESPONSE)
def dust_compliance(
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    start: StartDay,
    end: EndDay,
    site_id: SiteParam = None,
    district: District = None,
    fmt: FormatParam = ReportFormat.json,
) -> DustReport | Response:
    """Dust compliance per construction site and local day: hourly PM10 means and verdict."""
    _check_days(start, end)
    if site_id is not None:
        _visible_site(session, principal, site_id, [SiteKind.construction_site])
    days = compliance.dust_daily(
        session.connection(),
        day_from=start,
        day_to=end,
        tz=_tz(settings),
        site_ids=None if site_id is None else [site_id],
        district=district,
        scope=district_clause(principal, sites.c.district),
    )
    if fmt == ReportFormat.csv:
        header = [*DUST_COLUMNS, *(f"h{h:02d}" for h in range(24)), "basis"]
        return _csv("dust-compliance", start, end, header, (_dust_row(d) for d in days))
    return DustReport(
        start=start,
        end=end,
        timezone=settings.timezone,
        method=compliance.SITE_MEAN_METHOD,
        items=[DustDayRead.model_validate(d) for d in days],
    )


@router.get("/water-compliance", response_model=WaterReport, responses=CSV_RESPONSE)
def water_compliance(
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    start: StartDay,
    end: EndDay,
    site_id: SiteParam = None,
    district: District = None,
    device_id: Annotated[str | None, Query(description="Only this water point")] = None,
    fmt: FormatParam = ReportFormat.json,
) -> WaterReport | Response:
    """Drinking-water compliance per point, local day and metric: share of samples within limits."""
    _check_days(start, end)
    kinds = [k.value for k in compliance.WATER_SITE_KINDS]
    if site_id is not None:
        _visible_site(session, principal, site_id, kinds)
    if device_id is not None:
        row = session.execute(
            select(devices.c.kind, sites.c.kind.label("site_kind"))
            .join(sites, sites.c.id == devices.c.site_id)
            .where(devices.c.id == device_id, district_clause(principal, sites.c.district))
        ).first()
        if row is None:
            raise NotFound(f"device {device_id!r} does not exist", field="query.device_id")
        if row.kind != DeviceKind.water_quality or row.site_kind not in kinds:
            raise InvalidInput(
                f"device {device_id!r} is not a water-quality probe at a water plant or "
                "network point",
                field="query.device_id",
            )
    points = compliance.water_daily(
        session.connection(),
        day_from=start,
        day_to=end,
        tz=_tz(settings),
        device_ids=None if device_id is None else [device_id],
        site_ids=None if site_id is None else [site_id],
        district=district,
        scope=district_clause(principal, sites.c.district),
    )
    if fmt == ReportFormat.csv:
        return _csv("water-compliance", start, end, WATER_COLUMNS, (_water_row(w) for w in points))
    return WaterReport(
        start=start,
        end=end,
        timezone=settings.timezone,
        items=[WaterDayRead.model_validate(w) for w in points],
    )


LEAKAGE_METHOD = (
    "Per local day (docs/leakage.md; standards.md §5.1, §5.3): 15-minute slot means of N-flagged "
    "flow; net inflow = inlets − outlets where every meter has the slot; MNF = least mean of 4 "
    "consecutive slots inside the night window; net night flow = max(0, MNF − night use); "
    "leakage = net night flow × NDF; a night window under 75% covered is invalid (nulls)."
)


class LeakageDayRead(BaseModel):
    site_id: str
    site_name: str
    district: str
    day: date = Field(description="Local day")
    inlet_m3: float | None = Field(description="Net volume into the DMA, m³")
    inlet_source: str | None = Field(description="totaliser, or slots (Σ slots × 0.25 h)")
    mnf_m3h: float | None = Field(description="Minimum night flow, m³/h")
    mnf_at: datetime | None = Field(description="Start of the MNF hour")
    night_use_m3h: float = Field(description="Legitimate night consumption (LNC), m³/h")
    net_night_flow_m3h: float | None = Field(description="max(0, MNF − LNC), m³/h")
    ndf_h: float | None = Field(description="Night-day factor, hours")
    leakage_m3: float | None
    leakage_pct: float | None = Field(description="100 × leakage_m3 / inlet_m3")
    coverage: float = Field(description="Share of the day's slots with a defined net inflow")
    night_coverage: float
    valid: bool


class LeakagePeriodRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    kind: str = Field(description="billing_period, rolling_12m (365 days to `end`), calendar_year")
    site_id: str | None = Field(
        description="The DMA; null: the whole supply area (rolling_12m and calendar_year rows "
        "over the DMAs with an R_BL: inputs summed, rates weighted by Q_s)"
    )
    period_start: date
    period_end: date
    days: int
    annual: bool = Field(description="A year or longer: CJJ 92's corrections apply")
    supply_m3: float = Field(description="Q_s")
    supply_days: int = Field(description="Days of the period with a stored inlet volume")
    consumption_days: int = Field(
        description="Days registered consumption covers; rates are null unless all are"
    )
    registered_m3: float = Field(description="Q_a: billed + unbilled authorised")
    residential_metered_m3: float | None
    mains_km: float | None
    outlet_pressure_mpa: float | None
    frost_depth_m: float | None
    inputs_source: str
    r_wl: float | None = Field(description="综合漏损率, %")
    r1: float | None
    r2: float | None = Field(description="Clamped to ±3")
    r2_unclamped: float | None
    r3: float | None
    r4: float | None
    r_bl: float | None = Field(description="漏损率 = R_WL − (R1+R2+R3+R4), %")
    grade: int | None = Field(description="1 at ≤ 10%, 2 at ≤ 12%, else null")


class LeakageReport(BaseModel):
    start: date
    end: date
    timezone: str
    method: str
    items: list[LeakageDayRead]
    periods: list[LeakagePeriodRead]
    area_r_bl: float | None = Field(
        description="Σ(R_BL · Q_s) / Σ Q_s over the DMAs' rolling 12 months with an R_BL, %"
    )


LEAKAGE_COLUMNS = list(LeakageDayRead.model_fields)


@router.get("/leakage", response_model=LeakageReport, responses=CSV_RESPONSE)
def leakage(
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    start: StartDay,
    end: EndDay,
    site_id: SiteParam = None,
    district: District = None,
    fmt: FormatParam = ReportFormat.json,
) -> LeakageReport | Response:
    """DMA leakage per local day (MNF, net night flow, leakage) and CJJ 92 rates per period."""
    _check_days(start, end)
    if site_id is not None:
        _visible_site(session, principal, site_id, [SiteKind.dma])
    site_q = select(sites).where(
        sites.c.kind == SiteKind.dma, district_clause(principal, sites.c.district)
    )
    if site_id is not None:
        site_q = site_q.where(sites.c.id == site_id)
    if district:
        site_q = site_q.where(sites.c.district == district)
    site_rows = session.execute(site_q.order_by(sites.c.id)).all()
    by_id = {r.id: r for r in site_rows}
    rows = session.execute(
        select(*day_figures())
        .where(
            dma_days.c.site_id.in_(list(by_id)),
            dma_days.c.day >= start,
            dma_days.c.day <= end,
        )
        .order_by(dma_days.c.site_id, dma_days.c.day)
    ).all()
    items = [
        LeakageDayRead.model_validate(
            {
                **r._mapping,
                "site_name": by_id[r.site_id].name,
                "district": by_id[r.site_id].district,
            }
        )
        for r in rows
    ]
    if fmt == ReportFormat.csv:
        return _csv(
            "leakage",
            start,
            end,
            LEAKAGE_COLUMNS,
            ([getattr(i, c) for c in LEAKAGE_COLUMNS] for i in items),
        )
    found = dma.periods(
        session.connection(),
        site_rows,
        start,
        end,
        outlet_pressure_mpa=settings.leakage_outlet_pressure_mpa,
        frost_depth_m=settings.leakage_frost_depth_m,
    )
    return LeakageReport(
        start=start,
        end=end,
        timezone=settings.timezone,
        method=LEAKAGE_METHOD,
        items=items,
        periods=[LeakagePeriodRead.model_validate(p) for p in found],
        area_r_bl=area_rate(
            [
                (p.r_bl, p.supply_m3)
                for p in found
                if p.kind == dma.PeriodKind.rolling_12m
                and p.site_id is not None
                and p.r_bl is not None
            ]
        ),
    )
