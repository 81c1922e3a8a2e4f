"""A DMA's leakage rules, whose subject is the site: bursts on 30 simulated days.

Issue 12's acceptance, as a property: on 30 days of a synthetic DMA (a diurnal demand,
legitimate night use, a background leak, measurement noise), bursts injected on 3 random days
are all found, a daytime burst of at least 10% of the mean flow by the burst rule within 15
minutes of its start (it starts anywhere inside a 15-minute slot, to the second: the rule's
trailing 15-minute mean is wholly in the burst at the third 5-minute reading after it
starts), a small night burst by the night-flow rules within the night, and no DMA rule
alerts on any of the other 27 days. The days arrive in order, in 6-hour batches, each
batch's DMA days recomputed and the site rules evaluated as the writer does.

The rules need 7 days of history (`min_days`, `min_nights`), so bursts fall on days 8 to 30.
ENVMON_PROPERTY_EXAMPLES sets how many cases run per backend (default 3)."""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, select

from alerts.dma import changes, recompute_days
from alerts.evaluator import evaluate_sites
from alerts.packs import install_default_rules
from ingest.repository import insert_readings
from ingest.validate import Row
from monitor.core.db import make_engine
from monitor.core.models import Alert, AlertEvent, DmaDay, Reading, Rule, table
from monitor.registry import DeviceCreate, SiteCreate, upsert_device, upsert_site

TZ = ZoneInfo("Asia/Shanghai")
FIRST = date(2026, 9, 1)
DAYS = 30
STEP = timedelta(minutes=5)
CONNECTIONS = 800  # × 1.7 L/h = 1.36 m³/h legitimate night use
LEAK = 3.0  # background leakage, m³/h: 3.75 L/conn/h, under the 6 L/conn/h warning
SITE = "dma-p"
EXAMPLES = int(os.environ.get("ENVMON_PROPERTY_EXAMPLES", "3"))
DMA_RULES = ("dma-burst", "dma-night-flow-rise", "dma-net-night-flow")


@pytest.fixture(params=["postgresql", "sqlite"])
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    url = request.getfixturevalue("pg_url" if request.param == "postgresql" else "sqlite_url")
    eng = make_engine(url)
    with eng.begin() as conn:
        install_default_rules(conn)
        upsert_site(
            conn,
            SiteCreate(id=SITE, name=SITE, district="Lanshan", kind="dma", connections=CONNECTIONS),
        )
        upsert_device(
            conn,
            DeviceCreate(id="dma-p-in", site_id=SITE, kind="leak_meter", interval_s=300),
        )
    yield eng
    eng.dispose()


def demand(local: datetime) -> float:
    """Customer demand beyond the night use (m³/h): none from 01:00 to 05:00, a day curve
    (30 to 50 m³/h) else."""
    h = local.hour + local.minute / 60
    if 1 <= h < 5:
        return 0.0
    return 30.0 + 20.0 * math.sin(math.pi * (h - 5) / 20) ** 2


@dataclass(frozen=True)
class Burst:
    day: int  # 0-based day of the 30
    start: datetime  # local
    hours: float
    m3h: float

    @property
    def daytime(self) -> bool:
        return self.start.hour >= 6

    def flow_at(self, local: datetime) -> float:
        end = self.start + timedelta(hours=self.hours)
        return self.m3h if self.start <= local < end else 0.0


@st.composite
def bursts(draw: st.DrawFn) -> list[Burst]:
    days = draw(st.lists(st.integers(7, DAYS - 1), min_size=3, max_size=3, unique=True))
    out = []
    for d in sorted(days):
        day = FIRST + timedelta(days=d)
        if draw(st.booleans()):
            # daytime: 12% to 42% of the mean flow (about 37.7 m³/h), 2 to 4 hours, starting
            # at a random second of a random 15-minute slot (its offset in the slot matters)
            slot = draw(st.integers(9 * 4, 16 * 4))
            offset = draw(st.integers(0, 899))
            midnight = datetime.combine(day, time(0), tzinfo=TZ)
            start = midnight + timedelta(seconds=slot * 900 + offset)
            out.append(Burst(d, start, draw(st.floats(2, 4)), draw(st.floats(4.5, 16))))
        else:
            # at night: a small one (2.5 to 4 m³/h, under 10% of the mean flow), until 05:30
            minute = draw(st.integers(30, 90))
            start = datetime.combine(day, time(minute // 60, minute % 60), tzinfo=TZ)
            hours = (datetime.combine(day, time(5, 30), tzinfo=TZ) - start).total_seconds() / 3600
            out.append(Burst(d, start, hours, draw(st.floats(2.5, 4))))
    return out


def readings(day: int, injected: list[Burst], seed: int) -> list[Row]:
    """A day of 5-minute inlet flow and totaliser readings, noise ±2%."""
    rng = random.Random(seed * 1000 + day)
    start = datetime.combine(FIRST + timedelta(days=day), time(0), tzinfo=TZ)
    rows = []
    total = 1000.0 + day * 1500.0  # roughly what the days before added
    for i in range(24 * 12):
        local = start + i * STEP
        q = (1.36 + LEAK + demand(local)) * (1 + rng.uniform(-0.02, 0.02))
        q += sum(b.flow_at(local) for b in injected)
        t = local.astimezone(UTC)
        rows.append(Row("dma-p-in", "flow", t, q, "N", t))
        rows.append(Row("dma-p-in", "totaliser", t, total, "N", t))
        total += q * STEP.total_seconds() / 3600
    return rows


def deliver(engine: Engine, batch: list[Row]) -> None:
    """Store a batch, recompute its DMA days and judge the site rules, as the writer does."""
    with engine.begin() as conn:
        insert_readings(conn, batch)
        changed = changes(conn, {(r.device_id, r.ts) for r in batch}, tz=TZ)
        recompute_days(conn, changed.days, tz=TZ)
        evaluate_sites(conn, changed.earliest_days(), TZ, readings_since=changed.since)


def _empty(engine: Engine) -> None:
    with engine.begin() as conn:
        for model in (AlertEvent, Alert, DmaDay, Reading):
            conn.execute(delete(table(model)))


def test_bursts_on_30_days_are_found_and_nothing_else(engine: Engine) -> None:
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(bursts(), st.integers(0, 2**16))
    def check(injected: list[Burst], seed: int) -> None:
        note(f"bursts: {injected}")
        _empty(engine)
        for day in range(DAYS):
            rows = readings(day, [b for b in injected if b.day == day], seed)
            for part in range(4):  # four 6-hour batches a day, in order
                batch = rows[part * len(rows) // 4 : (part + 1) * len(rows) // 4]
                deliver(engine, batch)
        found = [a for a in _site_alerts(engine) if a.name in DMA_RULES]
        note(f"alerts: {found}")
        assert all(a.device_id is None for a in found), "a DMA rule's subject is the site"
        burst_days = {FIRST + timedelta(days=b.day) for b in injected}
        for a in found:
            assert a.started_at.astimezone(TZ).date() in burst_days, f"a false alarm: {a}"
        for b in injected:
            # found: an alert firing by the deadline and not over before the burst began
            # (bursts on consecutive nights can be one episode of a night rule)
            if b.daytime:
                deadline = b.start + timedelta(minutes=15)
                candidates = [a for a in found if a.name == "dma-burst"]
            else:
                deadline = datetime.combine(b.start.date(), time(4, 15), tzinfo=TZ)
                candidates = list(found)
            hits = [
                a
                for a in candidates
                if a.fired_at.astimezone(TZ) <= deadline
                and (a.resolved_at is None or a.resolved_at.astimezone(TZ) >= b.start)
            ]
            assert hits, f"burst {b} not found by {deadline}"

    check()


# The order property: the history before the judged days is stored once per backend, in order;
# each example delivers the two judged days (bursts at random) hour by hour in order, then again
# cut into chunks in any order with redeliveries, and the site rules' alerts must be the same.
HISTORY_DAYS = 9  # days 0-8: the burst rule's 7 days of history and two spare
JUDGED = (HISTORY_DAYS, HISTORY_DAYS + 1)
ORDER_EXAMPLES = int(os.environ.get("ENVMON_PROPERTY_EXAMPLES", "6"))


@st.composite
def judged_bursts(draw: st.DrawFn) -> list[Burst]:
    out = []
    for d in draw(st.lists(st.sampled_from(JUDGED), max_size=2)):
        day = FIRST + timedelta(days=d)
        if draw(st.booleans()):  # daytime, from 10% of the mean flow, starting anywhere
            start = datetime.combine(day, time(0), tzinfo=TZ) + timedelta(
                seconds=draw(st.integers(6 * 3600, 22 * 3600))
            )
            out.append(Burst(d, start, draw(st.floats(0.3, 6)), draw(st.floats(3.5, 16))))
        else:  # at night, small
            start = datetime.combine(day, time(0), tzinfo=TZ) + timedelta(
                minutes=draw(st.integers(30, 200))
            )
            out.append(Burst(d, start, draw(st.floats(0.5, 5)), draw(st.floats(2.5, 6))))
    return out


def _site_alerts(engine: Engine) -> list[Any]:
    alerts, rules = table(Alert), table(Rule)
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                rules.c.name,
                alerts.c.site_id,
                alerts.c.device_id,
                alerts.c.severity,
                alerts.c.started_at,
                alerts.c.fired_at,
                alerts.c.resolved_at,
                alerts.c.status,
                alerts.c.violations,
                alerts.c.peak_value,
            )
            .join(rules, rules.c.id == alerts.c.rule_id)
            .where(alerts.c.status != "retracted")
            .order_by(rules.c.name, alerts.c.started_at)
        ).all()
    return list(rows)


def _compared(engine: Engine) -> list[tuple[object, ...]]:
    return [
        tuple(round(v, 6) if isinstance(v, float) else v for v in r) for r in _site_alerts(engine)
    ]


def _forget_judged_days(engine: Engine) -> None:
    """Back to the stored history: the judged days' readings, figures and every alert gone."""
    first = datetime.combine(FIRST + timedelta(days=JUDGED[0]), time(0), tzinfo=TZ)
    readings_t, days = table(Reading), table(DmaDay)
    with engine.begin() as conn:
        conn.execute(delete(table(AlertEvent)))
        conn.execute(delete(table(Alert)))
        conn.execute(delete(readings_t).where(readings_t.c.ts >= first.astimezone(UTC)))
        conn.execute(delete(days).where(days.c.day >= first.date()))


def test_site_alerts_are_the_same_in_any_delivery_order(engine: Engine) -> None:
    """The site rules (burst, night flow rise, net night flow) judge a DMA the same whatever
    order its readings arrive in: late chunks rebuild from their own earliest reading (the
    burst rule) or their day (the daily rules), redeliveries change nothing."""
    _empty(engine)
    for day in range(HISTORY_DAYS):
        rows = readings(day, [], seed=1)
        for part in range(4):
            deliver(engine, rows[part * len(rows) // 4 : (part + 1) * len(rows) // 4])
    assert not _site_alerts(engine), "the history alone must raise nothing"
    seen: set[str] = set()

    @settings(
        max_examples=ORDER_EXAMPLES,
        derandomize=True,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(judged_bursts(), st.data())
    def check(injected: list[Burst], data: st.DataObject) -> None:
        note(f"bursts: {injected}")
        rows = [r for d in JUDGED for r in readings(d, [b for b in injected if b.day == d], 1)]
        _forget_judged_days(engine)
        for hour in range(0, len(rows), 24):  # in order, an hour (12 readings of 2) a batch
            deliver(engine, rows[hour : hour + 24])
        expected = _compared(engine)
        seen.update(a[0] for a in expected)  # type: ignore[misc]

        cuts = sorted(data.draw(st.sets(st.integers(1, len(rows) - 1), max_size=6), "cuts"))
        chunks = [rows[a:b] for a, b in zip([0, *cuts], [*cuts, len(rows)], strict=True)]
        order = data.draw(st.permutations(chunks), "order")
        again = data.draw(st.lists(st.sampled_from(chunks), max_size=2), "again")
        _forget_judged_days(engine)
        for chunk in [*order, *again]:
            deliver(engine, chunk)
        assert _compared(engine) == expected

    check()
    assert "dma-burst" in seen, "no example raised a burst alert: the property was not exercised"
