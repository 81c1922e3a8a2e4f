"""The API stage's database: 30 days of readings, their hourly rollups, and many alerts.

Readings go in with COPY, time step by time step as a live system writes them (so the rows of
one device are spread over the table as in production), with the readings indexes dropped
first and rebuilt after (their definitions are read from the catalogue, so a new index in a
migration is rebuilt too). Rollups are computed from the readings by the server; alerts and
their `opened` events are COPYed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from bench.fleet import Device
from bench.progress import Ticker, say
from bench.services import Database

RULES_BY_KIND = "SELECT id, device_kind, metric FROM rules ORDER BY id"


@dataclass
class Dataset:
    devices: list[tuple[str, list[str]]]  # (device_id, metrics) of the devices with history
    start: datetime
    end: datetime
    readings: int
    rollups: int
    alerts: int
    seconds: float


def pick_devices(fleet: Sequence[Device], target: int, steps: int) -> list[Device]:
    """The first devices of the fleet whose history (`steps` reading sets each) reaches target."""
    chosen: list[Device] = []
    total = 0
    at = datetime.now(UTC)
    for d in fleet:
        if total >= target:
            break
        chosen.append(d)
        total += len(d.sim.sample(at).values) * steps
    return chosen


def build(
    db: Database,
    fleet: Sequence[Device],
    *,
    readings: int,
    alerts: int,
    days: int,
    step_s: int,
    end: datetime | None = None,
) -> Dataset:
    """Readings up to `end` (now by default), never at or after it."""
    import time

    started = time.monotonic()
    end = (end or datetime.now(UTC)).replace(second=0, microsecond=0)
    end -= timedelta(minutes=end.minute % (step_s // 60 or 1))
    steps = days * 86400 // step_s
    start = end - timedelta(seconds=step_s * steps)
    devices = pick_devices(fleet, readings, steps)
    # per (device, metric): 16 plausible values around the simulator's, cycled over time
    rng = random.Random(5)
    series: list[tuple[str, list[str]]] = []
    metrics_of: list[tuple[str, list[str]]] = []
    for d in devices:
        values = d.sim.sample(start).values
        metrics_of.append((d.id, list(values)))
        for metric, v in values.items():
            spread = [repr(round(v * rng.uniform(0.9, 1.1), 3)) for _ in range(16)]
            series.append((f"{d.id}\t{metric}\t", spread))
    with db.connect() as conn:
        conn.execute("SET maintenance_work_mem = '512MB'")
        index_ddl = _drop_indexes(conn)
        ticker = Ticker(5.0)
        total = 0
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY readings (device_id, metric, ts, value, quality, received_at) FROM STDIN"
            ) as copy,
        ):
            for i in range(steps):
                ts = start + timedelta(seconds=step_s * i)
                stamp = ts.isoformat()
                arrived = (ts + timedelta(seconds=3)).isoformat()
                tail = f"\tN\t{arrived}\n"
                copy.write(
                    "".join(f"{prefix}{stamp}\t{spread[i % 16]}{tail}" for prefix, spread in series)
                )
                total += len(series)
                if ticker.due():
                    say(f"api dataset: {total:,} readings copied")
        say(f"api dataset: {total:,} readings copied; rebuilding the readings indexes")
        for ddl in index_ddl:
            conn.execute(ddl.encode())
        conn.execute(
            """
            INSERT INTO hourly_rollups (device_id, metric, hour, count, sum, min, max)
            SELECT device_id, metric,
                   date_trunc('hour', ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS hour,
                   count(*), sum(value), min(value), max(value)
            FROM readings WHERE quality = 'N'
            GROUP BY 1, 2, 3
            ORDER BY hour
            """
        )
        rollups = int(str(conn.execute("SELECT count(*) FROM hourly_rollups").fetchone()[0]))  # type: ignore[index]
        _alerts(conn, fleet, alerts, start, end)
        conn.execute("VACUUM ANALYZE")
    return Dataset(metrics_of, start, end, total, rollups, alerts, time.monotonic() - started)


def production_state(
    db: Database, fleet: Sequence[Device], ds: Dataset, *, open_share: float, at: datetime
) -> int:
    """What a running system also holds besides its history: each device's event-time
    watermark at its newest reading, and open alerts on `open_share` of the (rule, device)
    pairs, opened 1-10 days before `at` (each with its `opened` event). Returns the alerts."""
    from bench.fleet import KINDS

    with db.connect() as conn:
        conn.execute(
            "UPDATE devices d SET watermark_at = m.ts FROM "
            "(SELECT device_id, max(ts) AS ts FROM readings GROUP BY 1) m WHERE d.id = m.device_id"
        )
        rules: dict[str, list[int]] = {}
        for rule_id, kind, _metric in conn.execute(RULES_BY_KIND.encode()).fetchall():
            rules.setdefault(str(kind), []).append(int(str(rule_id)))
        pairs = [
            (rule_id, d.id, d.site_id)
            for d in fleet
            for rule_id in rules.get(KINDS[d.mix_kind][0].value, [])
        ]
        rng = random.Random(13)
        chosen = rng.sample(pairs, max(1, round(len(pairs) * open_share))) if pairs else []
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY alerts (rule_id, device_id, site_id, status, severity, started_at, "
                "fired_at, last_violation_at, evaluated_until, clear_since, last_value, "
                "peak_value, violations, message, acknowledged_at, resolved_at, created_at, "
                "updated_at) FROM STDIN"
            ) as copy,
        ):
            for i, (rule_id, device_id, site_id) in enumerate(chosen):
                fired = at - timedelta(seconds=rng.uniform(1, 10) * 86400)
                last = min(at, fired + timedelta(minutes=rng.randint(1, 600)))
                value = round(rng.uniform(0.5, 500), 2)
                copy.write_row(
                    (
                        rule_id,
                        device_id,
                        site_id,
                        "firing",
                        rng.choice(("warning", "alarm")),
                        fired - timedelta(minutes=5),
                        fired,
                        last,
                        last,
                        None,
                        value,
                        value * 1.2,
                        rng.randint(1, 40),
                        f"bench open alert {i}",
                        None,
                        None,
                        fired,
                        last,
                    )
                )
        conn.execute(
            "INSERT INTO alert_events (alert_id, at, kind, actor, severity, value) "
            "SELECT id, fired_at, 'opened', 'system', severity, last_value FROM alerts"
        )
        conn.execute("VACUUM ANALYZE alerts")
        conn.execute("VACUUM ANALYZE devices")
    return len(chosen)


def _drop_indexes(conn: psycopg.Connection[Any]) -> list[str]:
    """Drop the readings primary key and indexes; return the DDL that recreates them."""
    ddl: list[str] = []
    constraints = conn.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = 'readings'::regclass AND contype IN ('p', 'u')"
    ).fetchall()
    owned = {str(name) for name, _ in constraints}
    for name, definition in constraints:
        conn.execute(f'ALTER TABLE readings DROP CONSTRAINT "{name}"'.encode())
        ddl.append(f'ALTER TABLE readings ADD CONSTRAINT "{name}" {definition}')
    for name, definition in conn.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'readings'"
    ).fetchall():
        if str(name) in owned:
            continue
        conn.execute(f'DROP INDEX "{name}"'.encode())
        ddl.append(str(definition))
    return ddl


def _alerts(
    conn: psycopg.Connection[Any],
    fleet: Sequence[Device],
    count: int,
    start: datetime,
    end: datetime,
) -> None:
    """`count` alerts over the period, newest last; 1% still firing (distinct rule, device)."""
    from bench.fleet import KINDS

    rules: dict[str, list[int]] = {}
    for rule_id, kind, _metric in conn.execute(RULES_BY_KIND.encode()).fetchall():
        rules.setdefault(str(kind), []).append(int(str(rule_id)))
    rng = random.Random(9)
    span = (end - start).total_seconds()
    firing_from = count - max(1, count // 100)
    open_pairs: set[tuple[int, str]] = set()
    with (
        conn.cursor() as cur,
        cur.copy(
            "COPY alerts (rule_id, device_id, site_id, status, severity, started_at, fired_at, "
            "last_violation_at, evaluated_until, clear_since, last_value, peak_value, violations, "
            "message, acknowledged_at, resolved_at, created_at, updated_at) FROM STDIN"
        ) as copy,
    ):
        for i in range(count):
            device = fleet[rng.randrange(len(fleet))]
            candidates = rules.get(KINDS[device.mix_kind][0].value) or [
                r for rs in rules.values() for r in rs
            ]
            rule_id = rng.choice(candidates)
            fired = start + timedelta(seconds=span * i / count)
            firing = i >= firing_from and (rule_id, device.id) not in open_pairs
            if firing:
                open_pairs.add((rule_id, device.id))
            last = fired + timedelta(minutes=rng.randint(1, 90))
            resolved = None if firing else last + timedelta(minutes=10)
            value = round(rng.uniform(0.5, 500), 2)
            copy.write_row(
                (
                    rule_id,
                    device.id,
                    device.site_id,
                    "firing" if firing else "resolved",
                    rng.choice(("warning", "alarm")),
                    fired - timedelta(minutes=5),
                    fired,
                    last,
                    last,
                    None if firing else last,
                    value,
                    value * 1.2,
                    rng.randint(1, 40),
                    f"bench alert {i}",
                    None,
                    resolved,
                    fired,
                    resolved or last,
                )
            )
    conn.execute(
        "INSERT INTO alert_events (alert_id, at, kind, actor, severity, value) "
        "SELECT id, fired_at, 'opened', 'system', severity, last_value FROM alerts"
    )
