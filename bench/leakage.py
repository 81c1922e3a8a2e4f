"""The `leakage` stage (issue 12): the daily DMA figures of many DMAs over many days of
5-minute data on PostgreSQL, set-based (`alerts.dma.recompute_days_split`: `recompute_days`,
as the writer and `envmon` call it, in PARTS concurrent transactions), timed alone.

Each DMA has one inlet meter reporting flow and totaliser every 5 minutes: a diurnal demand,
the legitimate night use of its 800 connections (1.36 m³/h) and a background leak of 1 to 5
m³/h. The data are made in the database (generate_series), so the load is not what is timed,
and written interleaved by time, as the writer writes them.
The figures are checked against the truth before the time counts: every day valid, the
night flow within 2% of night use + leak."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from alerts.dma import recompute_days, recompute_days_split
from bench.progress import say
from bench.services import BenchError, Database
from monitor.core.db import make_engine

TZ = ZoneInfo("Asia/Shanghai")
GOAL_S = 10.0  # issue 12: 1,000 DMAs over 30 days under 10 s on this machine
CONNECTIONS = 800
NIGHT_USE = CONNECTIONS * 1.7 / 1000  # m³/h
REFERENCE_SHARE = 10  # the Python reference runs on 1 DMA in 10
PARTS = 2  # concurrent transactions: one statement runs on one core, and the machine has 2


def _leak(i: str) -> str:
    """The leak of DMA number `i` (SQL), 1 to 5 m³/h."""
    return f"(1 + ({i} %% 5))"  # (%% is % to psycopg)


def days_of(days: int) -> tuple[date, date]:
    """The first and last local day of the dataset: ending two days ago."""
    last = datetime.now(TZ).date() - timedelta(days=2)
    return last - timedelta(days=days - 1), last


def load(
    db: Database, *, dmas: int, first: date, last: date, step_s: int = 300
) -> tuple[int, float]:
    """Make the dataset of the local days `first` to `last` in the database: (readings,
    seconds)."""
    # an hour either side: the totaliser brackets each day's edges
    start = datetime.combine(first, clock(0), TZ).astimezone(UTC) - timedelta(hours=1)
    end = datetime.combine(last + timedelta(days=1), clock(0), TZ).astimezone(UTC)
    end += timedelta(hours=1)
    t0 = time.perf_counter()
    with db.connect() as conn:
        conn.execute("TRUNCATE readings, hourly_rollups, dma_days")
        conn.execute("DELETE FROM devices WHERE id LIKE 'lk-m-%'")
        conn.execute("DELETE FROM sites WHERE id LIKE 'lk-dma-%'")
        conn.execute(
            "INSERT INTO sites (id, name, district, kind, latitude, longitude, created_at, "
            "connections, mains_km) SELECT 'lk-dma-' || lpad(i::text, 5, '0'), 'bench DMA', "
            "'Bench', 'dma', 35.06, 118.35, now(), %s, 10 FROM generate_series(1, %s) i",
            (CONNECTIONS, dmas),
        )
        conn.execute(
            "INSERT INTO devices (id, site_id, kind, name, status, interval_s, dma_role, "
            "created_at) SELECT 'lk-m-' || lpad(i::text, 5, '0'), "
            "'lk-dma-' || lpad(i::text, 5, '0'), 'leak_meter', 'bench meter', 'active', %s, "
            "'inlet', now() FROM generate_series(1, %s) i",
            (step_s, dmas),
        )
        # demand: none from 01:00 to 05:00 local, a day curve of 30-50 m³/h else (UTC+8)
        hour = "((extract(epoch FROM t)::bigint / 60 + 480) %% 1440) / 60.0"
        demand = (
            f"CASE WHEN {hour} >= 1 AND {hour} < 5 THEN 0 "
            f"ELSE 30 + 20 * power(sin(pi() * ({hour} - 5) / 20), 2) END"
        )
        flow = f"({NIGHT_USE} + {_leak('i')} + {demand}) * (1 + (random() - 0.5) * 0.04)"
        # flow and the totaliser (the running sum of the flows, a 5-minute rectangle each),
        # written in the writer's order: every meter's readings interleaved by time, so a
        # meter's day lies on as many heap pages as it has readings, as in production
        conn.execute(
            "INSERT INTO readings (device_id, metric, ts, value, quality, received_at) "
            "WITH f AS MATERIALIZED ("
            f"  SELECT 'lk-m-' || lpad(i::text, 5, '0') AS device_id, t AS ts, {flow} AS v "
            "  FROM generate_series(1, %s) i, "
            "       generate_series(%s, %s, %s * interval '1 second') t) "
            "SELECT device_id, metric, ts, v, 'N', ts FROM ("
            "  SELECT device_id, 'flow' AS metric, ts, v FROM f UNION ALL "
            "  SELECT device_id, 'totaliser', ts, 1000 + sum(v * %s / 3600.0) OVER "
            "  (PARTITION BY device_id ORDER BY ts) - v * %s / 3600.0 FROM f) x "
            "ORDER BY ts, device_id, metric",
            (dmas, start, end, step_s, step_s, step_s),
        )
        conn.execute("VACUUM ANALYZE readings")
        # the load's gigabytes written out now, not by a checkpoint during the timed call
        try:
            conn.execute("CHECKPOINT")
        except psycopg.errors.InsufficientPrivilege:
            say("leakage: no CHECKPOINT allowed; the load may still be flushing while timed")
        readings = int(conn.execute("SELECT count(*) FROM readings").fetchone()[0])  # type: ignore[index]
    return readings, time.perf_counter() - t0


def run(db: Database, *, dmas: int, days: int, step_s: int = 300) -> dict[str, Any]:
    # once: the days loaded are the days asked, also when local midnight passes meanwhile
    first, last = days_of(days)
    readings, loaded_s = load(db, dmas=dmas, first=first, last=last, step_s=step_s)
    say(
        f"leakage dataset: {readings:,} readings of {dmas:,} DMAs over {days} days "
        f"in {loaded_s:.0f} s"
    )

    pairs = [
        (f"lk-dma-{i:05d}", first + timedelta(days=d))
        for i in range(1, dmas + 1)
        for d in range(days)
    ]
    engine = make_engine(db.url)
    try:
        t1 = time.perf_counter()
        written = recompute_days_split(engine, pairs, parts=PARTS, tz=TZ)
        seconds = time.perf_counter() - t1
        # the baseline in the same run: the Python reference path (SQLite's, and the one
        # PostgreSQL took before the statement) on the first tenth of the DMAs, rolled back
        sample = pairs[: max(1, dmas // REFERENCE_SHARE) * days]
        with engine.connect() as conn, conn.begin() as tx:
            t2 = time.perf_counter()
            recompute_days(conn, sample, tz=TZ, in_python=True)
            reference_s = time.perf_counter() - t2
            tx.rollback()
    finally:
        engine.dispose()
    with db.connect() as conn:
        valid, worst = conn.execute(
            "SELECT count(*) FILTER (WHERE valid), max(abs(mnf_m3h - (%s + (1 + "
            "(substr(site_id, 8)::int %% 5)))) / (%s + (1 + (substr(site_id, 8)::int %% 5)))) "
            "FROM dma_days WHERE site_id LIKE 'lk-dma-%%'",
            (NIGHT_USE, NIGHT_USE),
        ).fetchone()  # type: ignore[misc]
    if written != len(pairs) or valid != len(pairs) or worst is None or worst > 0.02:
        raise BenchError(
            f"leakage figures wrong: {written} of {len(pairs)} days written, {valid} valid, "
            f"worst MNF error {worst}"
        )
    speedup = (len(pairs) / seconds) / (len(sample) / reference_s)
    say(
        f"leakage: {len(pairs):,} DMA days in {seconds:.1f} s (goal {GOAL_S:.0f} s); the Python "
        f"reference: {len(sample):,} days in {reference_s:.1f} s (the statement: {speedup:.1f}x "
        "its days/s)"
    )
    return {
        "dmas": dmas,
        "days": days,
        "step_s": step_s,
        "readings": readings,
        "load_s": loaded_s,
        "dma_days": len(pairs),
        "parts": PARTS,
        "seconds": seconds,
        "dma_days_per_s": len(pairs) / seconds if seconds else None,
        "reference_dma_days": len(sample),
        "reference_s": reference_s,
        "speedup_vs_reference": speedup,
        "worst_mnf_error": float(worst),
        "goal_s": GOAL_S,
        "goal_full_size": dmas >= 1000 and days >= 30,
    }
