"""The DMA daily figures of the PostgreSQL statement (alerts/dma_pg.py) are the reference's.

A property on random meter data: inlets, outlets, AZP points and an acoustic meter on steps
of 1 to 30 minutes, with gaps (some across midnight, some longer than the hour a totaliser
may be bridged over), readings exactly at midnight, non-N readings, totaliser resets and
rollovers, zero and missing pressure, night windows and exponents of every kind, and a
daylight-saving day of 92 slots. The same days computed in Python (`in_python=True`, the
path SQLite takes, alerts/leakage.py) and by the statement give the same days and slots:
flags, sources and slot sets equal, figures equal to 1e-9 (the sums run in another order).

ENVMON_PROPERTY_EXAMPLES sets how many cases run (default 40)."""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from itertools import count
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, Engine, select, text

from alerts import dma_pg
from alerts.dma import recompute_days
from alerts.leakage import night_slots
from ingest.repository import insert_readings
from ingest.validate import Row
from monitor.core.db import make_engine
from monitor.core.models import DmaDay, table
from monitor.registry import DeviceCreate, SiteCreate, upsert_device, upsert_site

EXAMPLES = int(os.environ.get("ENVMON_PROPERTY_EXAMPLES", "40"))
ZONES = {
    # an ordinary day, and Europe's spring-forward day (23 hours, 92 slots)
    "Asia/Shanghai": date(2026, 11, 20),
    "Europe/Berlin": date(2026, 3, 29),
}
FIGURES = (
    "coverage",
    "night_coverage",
    "night_use_m3h",
    "inlet_m3",
    "mnf_m3h",
    "net_night_flow_m3h",
    "ndf_h",
    "leakage_m3",
    "leakage_pct",
    "net_mean_m3h",
)
_ids = count()


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    # one database for the examples (each on a site of its own): the function-scoped fixture
    # is made once per test, not per example, which is what is wanted here
    eng = make_engine(pg_url)
    yield eng
    eng.dispose()


@dataclass(frozen=True)
class Meter:
    role: str | None  # None: the inlet default
    step_s: int
    offset_s: int
    gaps: list[tuple[float, float]]  # hours from 2 h before the first day, start and length
    reset_at: float | None  # hours, as gaps
    register: float  # where the totaliser starts (near 10^k: it rolls over)
    totaliser: bool
    zero_pressure: bool


meters = st.builds(
    Meter,
    role=st.sampled_from([None, "inlet", "outlet", "azp", "acoustic"]),
    step_s=st.sampled_from([60, 300, 300, 300, 600, 900, 1800]),
    offset_s=st.sampled_from([0, 0, 30, 450]),
    gaps=st.lists(
        st.tuples(
            st.sampled_from([0.0, 1.0, 1.5, 2.0, 3.0, 4.25, 12.0, 25.5, 26.0]),
            st.sampled_from([0.25, 0.5, 1.0, 1.25, 2.0]),
        ),
        max_size=2,
    ),
    reset_at=st.none() | st.sampled_from([1.9, 2.0, 5.0, 14.0, 26.0]),
    register=st.sampled_from([1000.0, 9990.0, 999_999.0, 0.0]),
    totaliser=st.sampled_from([True, True, True, False]),
    zero_pressure=st.booleans(),
)


@dataclass(frozen=True)
class Case:
    zone: str
    meters: list[Meter]
    connections: int
    night: tuple[str, str]
    exponent: float
    special: float
    seed: int


cases = st.builds(
    Case,
    zone=st.sampled_from(sorted(ZONES)),
    meters=st.lists(meters, min_size=1, max_size=4),
    connections=st.integers(0, 3000),
    night=st.sampled_from([("02:00", "04:00"), ("01:10", "04:50"), ("00:00", "05:00")]),
    exponent=st.sampled_from([0.5, 1.0, 1.15, 2.5]),
    special=st.sampled_from([0.0, 0.8]),
    seed=st.integers(0, 2**32 - 1),
)


def readings(case: Case, site: str, first: date, tz: ZoneInfo) -> list[Row]:
    """Two local days of each meter's readings and 2 hours either side."""
    rng = random.Random(case.seed)
    t0 = datetime.combine(first, time(0), tzinfo=tz).astimezone(UTC) - timedelta(hours=2)
    t_end = datetime.combine(first + timedelta(days=2), time(0), tzinfo=tz).astimezone(UTC)
    hours = (t_end - t0).total_seconds() / 3600 + 2
    rows: list[Row] = []
    for n, m in enumerate(case.meters):
        device = f"{site}-m{n}"
        total = m.register
        base = rng.uniform(0.5, 40.0)
        t = t0 + timedelta(seconds=m.offset_s)
        while (t - t0).total_seconds() / 3600 < hours:
            h = (t - t0).total_seconds() / 3600
            flow = max(0.0, base * (1 + math.sin(h / 24 * 2 * math.pi)) + rng.gauss(0, 1))
            total += flow * m.step_s / 3600
            if m.reset_at is not None and m.reset_at <= h < m.reset_at + m.step_s / 3600:
                total = rng.uniform(0, 5)
            if m.register and total >= 10 ** math.ceil(math.log10(m.register + 1)):
                total -= 10 ** math.ceil(math.log10(m.register + 1))  # the register wraps
            if not any(a <= h < a + length for a, length in m.gaps):
                quality = "N" if rng.random() > 0.03 else "M"
                rows.append(Row(device, "flow", t, flow, quality, t))
                if m.totaliser:
                    rows.append(Row(device, "totaliser", t, total, quality, t))
                pressure = 0.0 if m.zero_pressure and h % 7 < 1 else rng.uniform(0.2, 0.45)
                rows.append(Row(device, "pressure", t, pressure, "N", t))
            t += timedelta(seconds=m.step_s)
    return rows


def computed(
    conn: Connection, site: str, *, in_python: bool, tz: ZoneInfo, days: list[date]
) -> Any:
    sp = conn.begin_nested()
    recompute_days(conn, [(site, d) for d in days], tz=tz, in_python=in_python)
    dd = table(DmaDay)
    stored = [
        dict(r._mapping)
        for r in conn.execute(select(dd).where(dd.c.site_id == site).order_by(dd.c.day))
    ]
    sp.rollback()
    # each day's slots from its arrays, one entry a slot: (day, slot number) and the values
    slots = [
        {"slot_at": (d["day"], i), "net_m3h": net, "azp_mpa": azp}
        for d in stored
        for i, net, azp in zip(d["slot_index"], d["slot_net_m3h"], d["slot_azp_mpa"], strict=True)
    ]
    return stored, slots


def same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return a == b


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(case=cases)
def test_the_statement_gives_the_reference_figures(engine: Engine, case: Case) -> None:
    site = f"dma-q{next(_ids)}"
    tz = ZoneInfo(case.zone)
    first = ZONES[case.zone] - timedelta(days=1)
    days = [first, first + timedelta(days=1), first + timedelta(days=5)]  # the last: no data
    with engine.begin() as conn:
        upsert_site(
            conn,
            SiteCreate(
                id=site,
                name=site,
                district="Lanshan",
                kind="dma",
                connections=case.connections,
                night_from=case.night[0],
                night_to=case.night[1],
                leakage_exponent=case.exponent,
                special_night_use_m3h=case.special,
            ),
        )
        for n, m in enumerate(case.meters):
            upsert_device(
                conn,
                DeviceCreate(
                    id=f"{site}-m{n}",
                    site_id=site,
                    kind="leak_meter",
                    interval_s=300,
                    dma_role=m.role,
                ),
            )
        insert_readings(conn, readings(case, site, first, tz))
    with engine.begin() as conn:
        ref_days, ref_slots = computed(conn, site, in_python=True, tz=tz, days=days)
        sql_days, sql_slots = computed(conn, site, in_python=False, tz=tz, days=days)
    note(f"reference {ref_days}\nstatement {sql_days}")
    assert len(ref_days) == len(sql_days) == 3
    for ref, got in zip(ref_days, sql_days, strict=True):
        for key in ("day", "valid", "inlet_source", "mnf_at"):
            assert ref[key] == got[key], key
        for key in FIGURES:
            assert same(ref[key], got[key]), (key, ref[key], got[key])
    assert [s["slot_at"] for s in ref_slots] == [s["slot_at"] for s in sql_slots]
    for ref, got in zip(ref_slots, sql_slots, strict=True):
        assert same(ref["net_m3h"], got["net_m3h"]) and same(ref["azp_mpa"], got["azp_mpa"])
    # what the cases cover (--hypothesis-show-statistics)
    for d in ref_days[:2]:
        event(f"day valid={d['valid']} source={d['inlet_source']}")
        if d["ndf_h"] is not None and d["ndf_h"] != 24.0:
            event("NDF from pressure")


def test_the_statement_reads_the_meters_from_the_dma_index_alone(pg_url: str) -> None:
    """Every readings scan of the statement (each day's flow and pressure slot means, each
    meter's totaliser) is an index-only scan of `ix_readings_dma` (migration 0018) that
    fetches no heap page: the index carries the values, and the queries name its metrics."""
    tz = ZoneInfo("Asia/Shanghai")
    day = date(2026, 11, 20)
    start = datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)
    meters = [("pm-in", "inlet"), ("pm-out", "outlet"), ("pm-azp", "azp")]
    eng = make_engine(pg_url)
    try:
        with eng.begin() as conn:
            upsert_site(
                conn,
                SiteCreate(
                    id="dma-plan", name="plan", district="Lanshan", kind="dma", connections=80
                ),
            )
            for dev, role in meters:
                upsert_device(
                    conn,
                    DeviceCreate(
                        id=dev, site_id="dma-plan", kind="leak_meter", interval_s=300, dma_role=role
                    ),
                )
            rows = []
            for k in range(-12, 3 * 288):  # the day and its neighbours, every 5 minutes
                ts = start + timedelta(minutes=5 * k)
                for dev, role in meters:
                    metrics = ["pressure"] if role == "azp" else ["flow", "totaliser"]
                    for metric in metrics:
                        value = 0.3 if metric == "pressure" else 10.0 + k * (metric == "totaliser")
                        rows.append(Row(dev, metric, ts, value, "N", ts))
            insert_readings(conn, rows)
        with eng.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(
                text("VACUUM ANALYZE readings")  # the visibility map set
            )
        with eng.connect() as conn:
            night = night_slots(time(2), time(4), 96)
            days = [
                dma_pg.AskedDay(
                    "dma-plan",
                    day + timedelta(days=d),
                    start + timedelta(days=d),
                    96,
                    night.start,
                    night.stop,
                    0.136,
                    1.0,
                )
                for d in range(2)
            ]
            params = dma_pg.parameters(
                days, [(dev, "dma-plan", role) for dev, role in meters], datetime.now(UTC)
            )
            with conn.begin() as tx:
                for key, setting in dma_pg.PLANNER.items():
                    conn.execute(text(f"SET LOCAL {key} = '{setting}'"))
                # any plan but an index scan is off: is the DMA index enough on its own?
                conn.execute(text("SET LOCAL enable_seqscan = off"))
                conn.execute(text("SET LOCAL enable_bitmapscan = off"))
                plan = "\n".join(
                    r[0] for r in conn.execute(text("EXPLAIN (ANALYZE) " + dma_pg._SQL), params)
                )
                tx.rollback()
    finally:
        eng.dispose()
    scans = [line.strip() for line in plan.splitlines() if " on readings" in line]
    assert len(scans) == 2, plan  # the per-day slot means, the totaliser
    assert all(s.startswith("->  Index Only Scan using ix_readings_dma") for s in scans), plan
    assert plan.count("Heap Fetches: 0") == 2, plan
