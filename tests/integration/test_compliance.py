"""Compliance reports on the real PostgreSQL: dust verdicts per site and day, water pass rates,
district scope, CSV beside JSON, and bad ranges named by field."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import Engine, insert, update

from alerts.compliance import dust_daily, water_daily
from ingest.repository import insert_readings
from ingest.validate import Row
from monitor.api.app import create_app
from monitor.api.routes import reports
from monitor.core.models import Device, Rule, RuleKind, table
from monitor.core.settings import Settings
from tests.conftest import bearer, make_key, register

pytestmark = pytest.mark.integration

TZ = ZoneInfo("Asia/Shanghai")
D1 = date(2026, 11, 10)
D2 = date(2026, 11, 11)
RECEIVED = datetime(2026, 11, 12, tzinfo=UTC)


def at(day: date, hour: int, minute: int = 0, second: int = 0) -> datetime:
    """A local (Asia/Shanghai) time as a UTC instant."""
    return datetime(day.year, day.month, day.day, hour, tzinfo=TZ).astimezone(UTC) + timedelta(
        minutes=minute, seconds=second
    )


def hour_of(
    device: str,
    day: date,
    hour: int,
    value: float,
    n: int = 60,
    *,
    step_s: int = 60,
    first: int = 0,
    offset_s: int = 0,
    quality: str = "N",
    metric: str = "pm10",
) -> list[Row]:
    """`n` readings of one value in a local hour, `step_s` apart from slot `first`."""
    start = at(day, hour)
    return [
        Row(
            device,
            metric,
            start + timedelta(seconds=(first + i) * step_s + offset_s),
            value,
            quality,
            RECEIVED,
        )
        for i in range(n)
    ]


def build(engine: Engine) -> None:
    """Four dust sites (three in Lanshan, one in Hedong) and three water points."""
    register(engine, site="cs-a", devices={"dA1": "dust_monitor", "dA2": "dust_monitor"})
    register(engine, site="cs-b", devices={"dB1": "dust_monitor"})
    register(engine, site="cs-c", devices={"dC1": "dust_monitor"})
    register(engine, site="cs-h", district="Hedong", devices={"dH1": "dust_monitor"})
    register(engine, site="np-1", site_kind="network_point", devices={"w-np": "water_quality"})
    register(engine, site="wp-1", site_kind="water_plant", devices={"w-wp": "water_quality"})
    register(engine, site="np-h", site_kind="network_point", district="Hedong",
             devices={"w-h": "water_quality"})  # fmt: skip
    register(engine, site="rs-1", site_kind="river_section", devices={"w-rs": "water_quality"})
    rows: list[Row] = []

    # Site A, two monitors, day 1: exactly 3 exceeding hours (08, 09, 14: mean 280 > 250)
    for h in range(24):
        a1, a2 = 100.0, 120.0
        if h in (8, 9, 14):
            a1, a2 = 260.0, 300.0
        if h == 10:  # one monitor above, the site mean (240) is not
            a1, a2 = 300.0, 180.0
        if h == 11:  # dA2 has only 30 samples: invalid, its 400 is not counted
            rows += hour_of("dA1", D1, h, 200.0) + hour_of("dA2", D1, h, 400.0, 30)
            continue
        if h == 5:  # dA1: 40 N + 20 D-flagged samples -> invalid; the site hour is dA2's
            rows += hour_of("dA1", D1, h, 100.0, 40)
            rows += hour_of("dA1", D1, h, 9000.0, 20, first=40, quality="D")
            rows += hour_of("dA2", D1, h, a2)
            continue
        rows += hour_of("dA1", D1, h, a1) + hour_of("dA2", D1, h, a2)
        if h == 3:  # D-flagged readings between the N ones: not counted
            rows += hour_of("dA1", D1, h, 5000.0, offset_s=30, quality="D")

    # Site B, day 1: 2 exceeding hours at the end of the day -> compliant; the hour after
    # midnight (UTC 16:00 of day 1) belongs to day 2
    for h in range(24):
        rows += hour_of("dB1", D1, h, 300.0 if h in (22, 23) else 90.0)
    rows += hour_of("dB1", D2, 0, 300.0)

    # Site C, one monitor every 120 s (30 expected an hour, 23 needed): 6-hour gap (06-11),
    # hours 12-13 with 20 samples (invalid, their 400 not counted), hour 20 with 23 (valid)
    for h in range(24):
        if 6 <= h <= 11:
            continue
        if h in (12, 13):
            rows += hour_of("dC1", D1, h, 400.0, 20, step_s=120)
        elif h == 20:
            rows += hour_of("dC1", D1, h, 300.0, 23, step_s=120)
        else:
            rows += hour_of("dC1", D1, h, 80.0, 30, step_s=120)
    # day 2: five valid hours only, three of them exceeding -> non_compliant all the same
    for h in range(5):
        rows += hour_of("dC1", D2, h, 300.0 if h < 3 else 80.0, 30, step_s=120)

    # Hedong: a clean day
    for h in range(24):
        rows += hour_of("dH1", D1, h, 100.0)

    # Network point, day 1: turbidity 80 x 0.5, 1 x 1.0 (at the limit: within), 9 x 1.5,
    # 10 D-flagged x 5.0; pH 40 x 7.2, 5 x 6.4, 5 x 8.6; no free chlorine at all
    turbidity = [0.5] * 80 + [1.0] + [1.5] * 9
    rows += [
        Row("w-np", "turbidity", at(D1, 8, i), v, "N", RECEIVED) for i, v in enumerate(turbidity)
    ]
    rows += hour_of("w-np", D1, 9, 5.0, 10, first=30, metric="turbidity", quality="D")
    ph = [7.2] * 40 + [6.4] * 5 + [8.6] * 5
    rows += [Row("w-np", "ph", at(D1, 10, i), v, "N", RECEIVED) for i, v in enumerate(ph)]
    rows.append(Row("w-np", "ph", at(D2, 0), 6.0, "N", RECEIVED))  # local midnight: day 2
    rows.append(Row("w-np", "ph", at(D1, 0) - timedelta(seconds=1), 6.0, "N", RECEIVED))
    # water plant: free chlorine against both outlet rules (0.3 <= v <= 2.0)
    chlorine = [0.2, 0.3, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 2.1]
    rows += [
        Row("w-wp", "free_chlorine", at(D1, 12, i), v, "N", RECEIVED)
        for i, v in enumerate(chlorine)
    ]
    rows += [Row("w-h", "ph", at(D1, 12, i), 9.5, "N", RECEIVED) for i in range(5)]
    rows += [Row("w-rs", "ph", at(D1, 12, i), 9.5, "N", RECEIVED) for i in range(5)]

    with engine.begin() as conn:
        conn.execute(
            update(table(Device)).where(table(Device).c.id == "dC1").values(interval_s=120)
        )
        insert_readings(conn, rows)


@pytest.fixture
def data(pg_engine: Engine) -> Engine:
    build(pg_engine)
    return pg_engine


def use_hourly_rule(engine: Engine) -> None:
    """Judge by `dust-pm10-1h` (alarm 250) and the default 2 hours: no daily_count rule."""
    rules = table(Rule)
    with engine.begin() as conn:
        conn.execute(
            update(rules).where(rules.c.kind == RuleKind.daily_count).values(enabled=False)
        )
        conn.execute(update(rules).where(rules.c.name == "dust-pm10-1h").values(alarm_above=250))


def test_dust_days_hours_and_verdicts(data: Engine) -> None:
    use_hourly_rule(data)
    with data.connect() as conn:
        days = dust_daily(conn, day_from=D1, day_to=D2, tz=TZ)
    got = {(d.site_id, d.day): d for d in days}
    assert sorted(got) == [(s, d) for s in ("cs-a", "cs-b", "cs-c", "cs-h") for d in (D1, D2)]

    a = got[("cs-a", D1)]
    assert (a.valid_hours, a.exceeding_hours, a.verdict) == (24, 3, "non_compliant")
    assert (a.threshold, a.allowed_exceeding_hours, a.rule) == (250.0, 2, "dust-pm10-1h")
    assert a.monitors == ["dA1", "dA2"]
    assert "DB13/2934-2019" in a.basis and "GB 3095-2012" in a.basis
    assert len(a.hours) == 24
    assert [h.start for h in a.hours][:2] == [
        datetime(2026, 11, 10, 0, tzinfo=TZ),
        datetime(2026, 11, 10, 1, tzinfo=TZ),
    ]
    means = [h.mean for h in a.hours]
    assert means[8] == means[9] == means[14] == 280.0
    assert [h.hour for h in (x.start for x in a.hours if x.exceeding)] == [8, 9, 14]
    assert means[10] == 240.0  # mean of the monitors, not the worst of them
    assert (means[11], a.hours[11].valid_monitors, a.hours[11].samples) == (200.0, 1, 90)
    assert (means[5], a.hours[5].valid_monitors, a.hours[5].samples) == (120.0, 1, 100)
    assert (means[3], a.hours[3].samples) == (110.0, 120)  # D readings not counted
    assert means.count(110.0) == 18
    assert a.daily_mean == pytest.approx((18 * 110 + 3 * 280 + 240 + 200 + 120) / 24)

    a2 = got[("cs-a", D2)]
    assert (a2.valid_hours, a2.exceeding_hours, a2.verdict, a2.daily_mean) == (
        0,
        0,
        "insufficient_data",
        None,
    )
    assert len(a2.hours) == 24 and not any(h.valid for h in a2.hours)

    b = got[("cs-b", D1)]
    assert (b.valid_hours, b.exceeding_hours, b.verdict) == (24, 2, "compliant")
    assert [h.start.hour for h in b.hours if h.exceeding] == [22, 23]
    b2 = got[("cs-b", D2)]
    assert (b2.valid_hours, b2.exceeding_hours, b2.verdict) == (1, 1, "insufficient_data")
    assert b2.hours[0].exceeding

    c = got[("cs-c", D1)]
    assert (c.valid_hours, c.exceeding_hours, c.verdict) == (16, 1, "insufficient_data")
    assert [h.start.hour for h in c.hours if not h.valid] == [6, 7, 8, 9, 10, 11, 12, 13]
    assert (c.hours[12].samples, c.hours[12].mean, c.hours[12].exceeding) == (20, None, False)
    assert (c.hours[20].samples, c.hours[20].mean, c.hours[20].exceeding) == (23, 300.0, True)
    assert c.daily_mean is None
    c2 = got[("cs-c", D2)]
    assert (c2.valid_hours, c2.exceeding_hours, c2.verdict) == (5, 3, "non_compliant")

    h = got[("cs-h", D1)]
    assert (h.valid_hours, h.exceeding_hours, h.verdict, h.daily_mean) == (
        24,
        0,
        "compliant",
        100.0,
    )

    with data.connect() as conn:
        only = dust_daily(conn, day_from=D1, day_to=D1, tz=TZ, district="Hedong")
    assert [(d.site_id, d.day) for d in only] == [("cs-h", D1)]


def test_daily_count_rules_are_preferred_the_strictest_deciding(data: Engine) -> None:
    # the shipped pack's count rule: hours above 150, more than 2 = non-compliant
    with data.connect() as conn:
        got = {d.site_id: d for d in dust_daily(conn, day_from=D1, day_to=D1, tz=TZ)}
    a, b = got["cs-a"], got["cs-b"]
    assert (a.rule, a.threshold, a.allowed_exceeding_hours) == (
        "dust-pm10-exceeding-hours",
        150.0,
        2,
    )
    # above 150: 08, 09, 14 (280), 10 (240), 11 (200)
    assert (a.exceeding_hours, a.verdict) == (5, "non_compliant")
    assert a.basis.startswith("count rule: no more than 2 exceedances per day")
    assert (b.exceeding_hours, b.verdict) == (2, "compliant")

    with data.begin() as conn:
        conn.execute(
            insert(table(Rule)).values(
                name="dust-pm10-daily-cs-a",
                kind=RuleKind.daily_count,
                device_kind="dust_monitor",
                metric="pm10",
                params={"hour_above": 200},
                alarm_above=1,
                site_ids=["cs-a"],
                basis="test basis",
            )
        )
        got = {d.site_id: d for d in dust_daily(conn, day_from=D1, day_to=D1, tz=TZ)}
    a = got["cs-a"]
    # fewer hours allowed than the pack's rule: this one decides; hour 11 (200) is not above
    assert (a.threshold, a.allowed_exceeding_hours, a.rule) == (200.0, 1, "dust-pm10-daily-cs-a")
    assert (a.exceeding_hours, a.verdict) == (4, "non_compliant")
    assert a.basis.startswith("test basis; more than 1 exceeding hours")
    assert got["cs-b"].rule == "dust-pm10-exceeding-hours"  # the new rule takes cs-a only


def test_water_shares_of_valid_samples_within_limits(data: Engine) -> None:
    with data.connect() as conn:
        rows = water_daily(conn, day_from=D1, day_to=D2, tz=TZ, district="Lanshan")
    got = {(w.device_id, w.day, w.metric): w for w in rows}
    assert sorted(got) == [
        (d, day, m)
        for d in ("w-np", "w-wp")
        for day in (D1, D2)
        for m in ("free_chlorine", "ph", "turbidity")
    ]
    t = got[("w-np", D1, "turbidity")]
    assert (t.samples, t.valid_samples, t.within_limits, t.share_within) == (100, 90, 81, 0.9)
    assert (t.lower_limit, t.upper_limit, t.rules) == (None, 1.0, ["dw-turbidity-network-15min"])
    assert t.unit == "NTU" and "GB 5749-2022" in t.basis
    p = got[("w-np", D1, "ph")]
    assert (p.samples, p.valid_samples, p.within_limits, p.share_within) == (50, 50, 40, 0.8)
    assert (p.lower_limit, p.upper_limit) == (6.5, 8.5)
    p2 = got[("w-np", D2, "ph")]
    assert (p2.samples, p2.within_limits, p2.share_within) == (1, 0, 0.0)
    cl = got[("w-np", D1, "free_chlorine")]
    assert (cl.samples, cl.share_within, cl.lower_limit, cl.upper_limit) == (0, None, 0.05, None)
    wp = got[("w-wp", D1, "free_chlorine")]
    assert (wp.samples, wp.valid_samples, wp.within_limits, wp.share_within) == (10, 10, 8, 0.8)
    assert (wp.lower_limit, wp.upper_limit) == (0.3, 2.0)
    assert wp.rules == ["dw-free-chlorine-outlet-high", "dw-free-chlorine-outlet-low"]

    with data.begin() as conn:
        rules = table(Rule)
        conn.execute(update(rules).where(rules.c.name == "dw-ph-15min").values(enabled=False))
        left = water_daily(conn, day_from=D1, day_to=D1, tz=TZ, device_ids=["w-np"])
    assert [w.metric for w in left] == ["free_chlorine", "turbidity"]


@pytest.fixture
async def app_keys(
    pg_url: str, data: Engine
) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str], dict[str, str]]]:
    app = create_app(Settings(database_url=pg_url))
    if not any(getattr(r, "path", "") == "/v1/reports/dust-compliance" for r in app.routes):
        app.include_router(reports.router, prefix="/v1")  # until app.py registers it
    admin = bearer(make_key(data))
    lanshan = bearer(make_key(data, "li", "viewer", "Lanshan"))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c,
    ):
        yield c, admin, lanshan


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def _num(v: str) -> float | None:
    return None if v == "" else float(v)


async def test_dust_api_scope_and_csv(
    app_keys: tuple[httpx.AsyncClient, dict[str, str], dict[str, str]],
) -> None:
    api, admin, lanshan = app_keys
    span = {"start": "2026-11-10", "end": "2026-11-11"}
    r = await api.get("/v1/reports/dust-compliance", params=span, headers=admin)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["timezone"], body["start"], body["end"]) == ("Asia/Shanghai", *span.values())
    assert {i["site_id"] for i in body["items"]} == {"cs-a", "cs-b", "cs-c", "cs-h"}

    r = await api.get("/v1/reports/dust-compliance", params=span, headers=lanshan)
    items: list[dict[str, Any]] = r.json()["items"]
    assert [(i["site_id"], i["day"], i["verdict"]) for i in items] == [
        ("cs-a", "2026-11-10", "non_compliant"),
        ("cs-a", "2026-11-11", "insufficient_data"),
        ("cs-b", "2026-11-10", "compliant"),
        ("cs-b", "2026-11-11", "insufficient_data"),
        ("cs-c", "2026-11-10", "insufficient_data"),
        ("cs-c", "2026-11-11", "non_compliant"),
    ]
    assert items[0]["hours"][8] == {
        "start": "2026-11-10T08:00:00+08:00",
        "mean": 280.0,
        "valid_monitors": 2,
        "samples": 120,
        "valid": True,
        "exceeding": True,
    }
    r = await api.get(
        "/v1/reports/dust-compliance", params={**span, "district": "Hedong"}, headers=lanshan
    )
    assert r.status_code == 200 and r.json()["items"] == []
    r = await api.get(
        "/v1/reports/dust-compliance", params={**span, "site": "cs-h"}, headers=lanshan
    )
    assert r.status_code == 404 and r.json()["errors"][0]["field"] == "query.site"
    r = await api.get("/v1/reports/dust-compliance", params={**span, "site": "cs-h"}, headers=admin)
    assert [i["verdict"] for i in r.json()["items"]] == ["compliant", "insufficient_data"]
    r = await api.get(
        "/v1/reports/dust-compliance", params={**span, "site": "np-1"}, headers=lanshan
    )
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "query.site"

    r = await api.get(
        "/v1/reports/dust-compliance", params={**span, "format": "csv"}, headers=lanshan
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"] == (
        'attachment; filename="dust-compliance_2026-11-10_2026-11-11.csv"'
    )
    rows = _rows(r.text)
    assert len(rows) == len(items)
    for row, item in zip(rows, items, strict=True):
        for key in (
            "site_id",
            "site_name",
            "district",
            "day",
            "verdict",
            "rule",
            "basis",
        ):
            assert row[key] == item[key]
        for key in ("valid_hours", "exceeding_hours", "allowed_exceeding_hours"):
            assert int(row[key]) == item[key]
        assert float(row["threshold"]) == item["threshold"]
        assert _num(row["daily_mean"]) == item["daily_mean"]
        assert row["monitors"].split() == item["monitors"]
        assert [_num(row[f"h{h:02d}"]) for h in range(24)] == [h["mean"] for h in item["hours"]]


async def test_water_api_scope_and_csv(
    app_keys: tuple[httpx.AsyncClient, dict[str, str], dict[str, str]],
) -> None:
    api, admin, lanshan = app_keys
    span = {"start": "2026-11-10", "end": "2026-11-10"}
    r = await api.get("/v1/reports/water-compliance", params=span, headers=admin)
    assert {i["device_id"] for i in r.json()["items"]} == {"w-np", "w-wp", "w-h"}
    r = await api.get("/v1/reports/water-compliance", params=span, headers=lanshan)
    items = r.json()["items"]
    assert [(i["device_id"], i["metric"], i["share_within"]) for i in items] == [
        ("w-np", "free_chlorine", None),
        ("w-np", "ph", 0.8),
        ("w-np", "turbidity", 0.9),
        ("w-wp", "free_chlorine", 0.8),
        ("w-wp", "ph", None),
        ("w-wp", "turbidity", None),
    ]
    r = await api.get(
        "/v1/reports/water-compliance", params={**span, "device_id": "w-h"}, headers=lanshan
    )
    assert r.status_code == 404 and r.json()["errors"][0]["field"] == "query.device_id"
    r = await api.get(
        "/v1/reports/water-compliance", params={**span, "device_id": "w-rs"}, headers=lanshan
    )
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "query.device_id"
    r = await api.get(
        "/v1/reports/water-compliance", params={**span, "site": "np-h"}, headers=lanshan
    )
    assert r.status_code == 404 and r.json()["errors"][0]["field"] == "query.site"
    r = await api.get(
        "/v1/reports/water-compliance",
        params={**span, "device_id": "w-np", "format": "csv"},
        headers=lanshan,
    )
    assert r.headers["content-disposition"].startswith("attachment;")
    rows = _rows(r.text)
    np_items = [i for i in items if i["device_id"] == "w-np"]
    assert len(rows) == len(np_items) == 3
    for row, item in zip(rows, np_items, strict=True):
        for key in ("device_id", "site_id", "site_kind", "district", "day", "metric", "unit"):
            assert row[key] == item[key]
        for key in ("samples", "valid_samples", "within_limits"):
            assert int(row[key]) == item[key]
        for key in ("share_within", "lower_limit", "upper_limit"):
            assert _num(row[key]) == item[key]
        assert row["rules"].split() == item["rules"]
        assert row["basis"] == item["basis"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"start": "2026-13-01", "end": "2026-11-11"}, "query.start"),
        ({"start": "2026-11-10", "end": "11/11/2026"}, "query.end"),
        ({"end": "2026-11-11"}, "query.start"),
        ({"start": "2026-11-10", "end": "2026-11-09"}, "query.end"),
        ({"start": "2026-01-01", "end": "2026-04-03"}, "query.end"),  # 93 days
        ({"start": "2026-11-10", "end": "2026-11-10", "format": "xls"}, "query.format"),
    ],
)
async def test_bad_ranges_are_422_naming_the_field(
    app_keys: tuple[httpx.AsyncClient, dict[str, str], dict[str, str]],
    params: dict[str, str],
    field: str,
) -> None:
    api, _, lanshan = app_keys
    for path in ("/v1/reports/dust-compliance", "/v1/reports/water-compliance"):
        r = await api.get(path, params=params, headers=lanshan)
        assert r.status_code == 422, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["errors"][0]["field"] == field


async def test_92_days_are_allowed_and_the_key_is_required(
    app_keys: tuple[httpx.AsyncClient, dict[str, str], dict[str, str]],
) -> None:
    api, _, lanshan = app_keys
    span = {"start": "2026-01-01", "end": "2026-04-02"}  # 92 days, both ends included
    r = await api.get("/v1/reports/dust-compliance", params=span, headers=lanshan)
    assert r.status_code == 200 and len(r.json()["items"]) == 3 * 92
    r = await api.get("/v1/reports/water-compliance", params=span)
    assert r.status_code == 401
