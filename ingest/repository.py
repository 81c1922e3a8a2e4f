"""Bulk statements of the write path. One statement per batch; callers own the transaction."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy import (
    Connection,
    Float,
    String,
    bindparam,
    case,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from ingest.hj212.convert import Facts
from ingest.validate import DeadLetterRecord, Row
from monitor.core.db import one_of, pg_array
from monitor.core.models import DeadLetter, Device, HourlyRollup, Reading, table

readings = table(Reading)
rollups = table(HourlyRollup)
dead_letters = table(DeadLetter)
devices = table(Device)

# Readings and their hourly rollups in one round trip: the CTE returns only the rows that
# were new, so a redelivered message neither duplicates a reading nor counts twice in a rollup.
# `{source}` is where the batch's rows come from: the unnest of six arrays (one statement,
# works on any server) or the staging table a COPY has just filled.
_PG_INSERT_TEMPLATE = """
    WITH ins AS (
        INSERT INTO readings (device_id, metric, ts, value, quality, received_at)
        {source}
        ON CONFLICT DO NOTHING
        RETURNING device_id, metric, ts, value, quality
    ), roll AS (
        INSERT INTO hourly_rollups AS r (device_id, metric, hour, count, sum, min, max)
        SELECT device_id, metric, date_trunc('hour', ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
               count(*), sum(value), min(value), max(value)
        FROM ins WHERE quality = 'N'
        GROUP BY 1, 2, 3
        ORDER BY 1, 2, 3  -- rows locked in one order by every ingestor: no deadlock
        ON CONFLICT (device_id, metric, hour) DO UPDATE SET
            count = r.count + EXCLUDED.count,
            sum = r.sum + EXCLUDED.sum,
            min = LEAST(r.min, EXCLUDED.min),
            max = GREATEST(r.max, EXCLUDED.max)
    )
    SELECT count(*) FROM ins
"""
_PG_INSERT = text(
    _PG_INSERT_TEMPLATE.format(
        source="SELECT * FROM unnest(CAST(:d AS text[]), CAST(:m AS text[]), "
        "CAST(:t AS timestamptz[]), CAST(:v AS float8[]), CAST(:q AS text[]), "
        "CAST(:r AS timestamptz[]))"
    )
)

# The COPY path. A temporary table is the connection's own (no migration, no clash between
# ingestors) and ON COMMIT DELETE ROWS empties it at every commit or rollback, in place: each
# transaction starts from an empty stage. Rows staged twice in one transaction are harmless:
# the second time they conflict with themselves and count as nothing new.
_STAGE_COLUMNS = "device_id, metric, ts, value, quality, received_at"
_STAGE_DDL = (
    "CREATE TEMP TABLE IF NOT EXISTS readings_stage (device_id text, metric text, "
    "ts timestamptz, value float8, quality text, received_at timestamptz) ON COMMIT DELETE ROWS"
)
_STAGE_COPY = f"COPY readings_stage ({_STAGE_COLUMNS}) FROM STDIN (FORMAT BINARY)"
_STAGE_TYPES = ("text", "text", "timestamptz", "float8", "text", "timestamptz")
_PG_INSERT_STAGED = text(
    _PG_INSERT_TEMPLATE.format(source=f"SELECT {_STAGE_COLUMNS} FROM readings_stage")
)


def insert_readings(conn: Connection, rows: Sequence[Row], *, copy: bool = False) -> int:
    """Store new readings and fold them into hourly rollups; return how many were new.

    On PostgreSQL, `copy` sends the rows by COPY (binary) to a staging table and moves them
    with one INSERT ... SELECT; without it, one INSERT ... SELECT unnest(...) carries them
    (for servers that cannot COPY: PGlite's TimescaleDB crashes on COPY FROM STDIN)."""
    if not rows:
        return 0
    if conn.dialect.name == "postgresql":
        if copy:
            return _insert_copy(conn, rows)
        d, m, t, v, q, r = (pg_array(col) for col in zip(*rows, strict=True))
        result = conn.execute(_PG_INSERT, {"d": d, "m": m, "t": t, "v": v, "q": q, "r": r})
        return int(result.scalar_one())
    return _insert_sqlite(conn, rows)


def _insert_copy(conn: Connection, rows: Sequence[Row]) -> int:
    # the driver's own connection, inside the transaction SQLAlchemy began on it
    raw: psycopg.Connection[Any] = conn.connection.driver_connection  # type: ignore[assignment]
    with raw.cursor() as cur:
        cur.execute(_STAGE_DDL)
        with cur.copy(_STAGE_COPY) as copy:
            copy.set_types(_STAGE_TYPES)
            for row in rows:
                copy.write_row(row)
    return int(conn.execute(_PG_INSERT_STAGED).scalar_one())


def _insert_sqlite(conn: Connection, rows: Sequence[Row]) -> int:
    stmt = (
        sqlite_insert(readings)
        .on_conflict_do_nothing()
        .returning(
            readings.c.device_id,
            readings.c.metric,
            readings.c.ts,
            readings.c.value,
            readings.c.quality,
        )
    )
    params = [r._asdict() for r in rows]
    new = conn.execute(stmt, params).all()
    fold_rollups(conn, ((n.device_id, n.metric, n.ts, n.value, n.quality) for n in new))
    return len(new)


def fold_rollups(
    conn: Connection, new_rows: Iterable[tuple[str, str, datetime, float, str]]
) -> None:
    """Add newly stored readings (quality N only) to their hourly rollups (SQLite path)."""
    acc: dict[tuple[str, str, datetime], list[float]] = defaultdict(lambda: [0, 0.0, 0.0, 0.0])
    for device_id, metric, ts, value, quality in new_rows:
        if quality != "N":
            continue
        hour = ts.replace(minute=0, second=0, microsecond=0)
        a = acc[(device_id, metric, hour)]
        if a[0] == 0:
            a[2] = a[3] = value
        a[0] += 1
        a[1] += value
        a[2] = min(a[2], value)
        a[3] = max(a[3], value)
    if not acc:
        return
    stmt = sqlite_insert(rollups)
    stmt = stmt.on_conflict_do_update(
        index_elements=[rollups.c.device_id, rollups.c.metric, rollups.c.hour],
        set_={
            "count": rollups.c.count + stmt.excluded.count,
            "sum": rollups.c.sum + stmt.excluded.sum,
            "min": func.min(rollups.c.min, stmt.excluded.min),
            "max": func.max(rollups.c.max, stmt.excluded.max),
        },
    )
    conn.execute(
        stmt,
        [
            {
                "device_id": k[0],
                "metric": k[1],
                "hour": k[2],
                "count": int(a[0]),
                "sum": a[1],
                "min": a[2],
                "max": a[3],
            }
            for k, a in acc.items()
        ],
    )


def insert_dead_letters(
    conn: Connection,
    records: Sequence[DeadLetterRecord],
    received_at: datetime | Sequence[datetime],
) -> None:
    """Keep dead letters, each stamped with when its message was received (one time for all,
    or one per record); one already kept (the same message delivered again) is skipped, so
    it keeps the time of the receipt first stored."""
    if not records:
        return
    times = [received_at] * len(records) if isinstance(received_at, datetime) else received_at
    rows: dict[str, dict[str, object]] = {}
    for r, at in zip(records, times, strict=True):
        rows.setdefault(
            dead_letter_digest(r),
            {
                "received_at": at,
                "topic": r.topic,
                "device_id": r.device_id,
                "reason": r.reason.value,
                "detail": r.detail,
                "payload": r.payload,
                "digest": dead_letter_digest(r),
            },
        )
    stmt = (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(dead_letters)
    conn.execute(stmt.on_conflict_do_nothing(index_elements=["digest"]), list(rows.values()))


def dead_letter_digest(r: DeadLetterRecord) -> str:
    parts = (r.topic, r.device_id or "", r.reason.value, r.detail, r.payload)
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


# Per device, in one statement: last seen, clock skew and connection state and, for the
# devices the batch stored readings of, the watermark and the evaluation version. One new row
# version per device a batch, not two. The devices are locked in id order first, as every
# ingestor does, so two batches never deadlock. A message older than what is stored (a
# redelivery, a batch that lost a race) moves nothing back: not last_seen_at, and not the
# skew or status it carries (GREATEST ignores NULL); a device with no new reading (ts NULL)
# keeps its watermark and version.
_PG_TOUCH = text(
    """
    WITH u AS (
        SELECT * FROM unnest(CAST(:ids AS text[]), CAST(:at AS timestamptz[]),
                             CAST(:skew AS float8[]), CAST(:conn AS text[]),
                             CAST(:ts AS timestamptz[]))
            AS u(id, at, skew, conn, ts)
    ), locked AS (
        SELECT d.id FROM devices d JOIN u ON u.id = d.id ORDER BY d.id FOR UPDATE OF d
    )
    UPDATE devices AS d SET
        last_seen_at = GREATEST(d.last_seen_at, u.at),
        clock_skew_s = CASE WHEN d.last_seen_at > u.at THEN d.clock_skew_s
                            ELSE COALESCE(u.skew, d.clock_skew_s) END,
        connection = CASE WHEN d.last_seen_at > u.at THEN d.connection
                          ELSE COALESCE(u.conn, d.connection) END,
        watermark_at = GREATEST(d.watermark_at, u.ts),
        eval_version = d.eval_version + CASE WHEN u.ts IS NULL THEN 0 ELSE 1 END
    FROM u, locked
    WHERE d.id = u.id AND locked.id = u.id
    """
)


def touch_devices(
    conn: Connection,
    seen: Mapping[str, tuple[datetime, float | None, str | None]],
    newest: Mapping[str, datetime] | None = None,
) -> None:
    """Per device: last seen (arrival), clock skew (arrival - newest event time) and the
    connection state from its status topic, where the batch says anything about them; and
    for the devices in `newest` (the batch stored readings of them) what `advance_watermarks`
    does, in the same statement on PostgreSQL."""
    newest = newest or {}
    if not seen and not newest:
        return
    if conn.dialect.name == "postgresql":
        ids = sorted(seen.keys() | newest.keys())
        none: tuple[None, None, None] = (None, None, None)
        told = [seen.get(d, none) for d in ids]
        conn.execute(
            _PG_TOUCH,
            {
                "ids": pg_array(ids),
                "at": pg_array([at for at, _, _ in told]),
                "skew": pg_array([skew for _, skew, _ in told]),
                "conn": pg_array([status for _, _, status in told]),
                "ts": pg_array([newest.get(d) for d in ids]),
            },
        )
        return
    if seen:
        _touch_sqlite(conn, seen)
    advance_watermarks(conn, newest)


def _touch_sqlite(
    conn: Connection, seen: Mapping[str, tuple[datetime, float | None, str | None]]
) -> None:
    params = [
        {"b_id": d, "b_at": at, "b_skew": skew, "b_conn": status}
        for d, (at, skew, status) in sorted(seen.items())
    ]
    at = bindparam("b_at", type_=devices.c.last_seen_at.type)
    newer = or_(devices.c.last_seen_at.is_(None), devices.c.last_seen_at <= at)
    conn.execute(
        update(devices)
        .where(devices.c.id == bindparam("b_id"))
        .values(
            last_seen_at=case((newer, at), else_=devices.c.last_seen_at),
            clock_skew_s=case(
                (newer, func.coalesce(bindparam("b_skew", type_=Float), devices.c.clock_skew_s)),
                else_=devices.c.clock_skew_s,
            ),
            connection=case(
                (newer, func.coalesce(bindparam("b_conn", type_=String), devices.c.connection)),
                else_=devices.c.connection,
            ),
        ),
        params,
    )


def watermarks(
    conn: Connection, device_ids: Iterable[str]
) -> tuple[dict[str, datetime | None], dict[str, int]]:
    """Each device's event-time watermark (the newest event time stored for it) and its
    evaluation version (moved by every batch that stores its readings)."""
    ids = sorted(set(device_ids))
    if not ids:
        return {}, {}
    rows = conn.execute(
        select(devices.c.id, devices.c.watermark_at, devices.c.eval_version).where(
            one_of(conn, devices.c.id, ids)
        )
    ).all()
    return {d: at for d, at, _ in rows}, {d: int(v) for d, _, v in rows}


# One statement for the batch's devices (executemany cost ~8% of the writer thread with a
# few thousand devices a batch). The writer has this done by touch_devices' statement.
_PG_ADVANCE = text(
    """
    UPDATE devices AS d SET watermark_at = GREATEST(d.watermark_at, u.ts),
                            eval_version = d.eval_version + 1
    FROM unnest(CAST(:ids AS text[]), CAST(:ts AS timestamptz[])) AS u(id, ts)
    WHERE d.id = u.id
    """
)


def advance_watermarks(conn: Connection, newest: Mapping[str, datetime]) -> None:
    """After a batch stored readings of these devices: move each one's watermark forward to
    the batch's newest event time, and its evaluation version on (so that other ingestors'
    cached rule state for it is known to be out of date)."""
    if not newest:
        return
    if conn.dialect.name == "postgresql":
        ordered = sorted(newest.items())
        conn.execute(
            _PG_ADVANCE,
            {"ids": pg_array([d for d, _ in ordered]), "ts": pg_array([t for _, t in ordered])},
        )
        return
    at = bindparam("b_ts", type_=devices.c.watermark_at.type)
    newer = or_(devices.c.watermark_at.is_(None), devices.c.watermark_at < at)
    conn.execute(
        update(devices)
        .where(devices.c.id == bindparam("b_id"))
        .values(
            watermark_at=case((newer, at), else_=devices.c.watermark_at),
            eval_version=devices.c.eval_version + 1,
        ),
        [{"b_id": d, "b_ts": ts} for d, ts in sorted(newest.items())],
    )


def bump_eval_versions(conn: Connection, device_ids: Iterable[str]) -> None:
    """For readings stored outside the writer (the demo's history): move the devices'
    evaluation versions, so that no ingestor folds new readings into a state that lacks
    these. Call it with the devices locked (`monitor.core.db.lock_devices`)."""
    ids = sorted(set(device_ids))
    if ids:
        conn.execute(
            update(devices)
            .where(one_of(conn, devices.c.id, ids))
            .values(eval_version=devices.c.eval_version + 1)
        )


def record_hj212_facts(conn: Connection, facts: Sequence[Facts]) -> None:
    """Keep what HJ 212 loggers reported about themselves on their device rows: deviations
    are added to those seen before (never removed: a deviation seen once is a property of
    the logger's firmware), the RtdInterval is the newest answer, the equipment status the
    one with the newest DataTime (a history upload does not replace a newer status)."""
    for f in facts:
        row = conn.execute(
            select(
                devices.c.hj212_deviations,
                devices.c.hj212_rtd_interval_s,
                devices.c.hj212_equipment_at,
            )
            .where(devices.c.id == f.device_id)
            .with_for_update()
        ).first()
        if row is None:
            continue  # deleted meanwhile: nothing to keep it on
        values: dict[str, object] = {}
        known = list(row.hj212_deviations or [])
        merged = sorted(set(known) | set(f.deviations))
        if merged != sorted(known):
            values["hj212_deviations"] = merged
        if f.rtd_interval_s is not None and f.rtd_interval_s != row.hj212_rtd_interval_s:
            values["hj212_rtd_interval_s"] = f.rtd_interval_s
        if f.equipment is not None and f.equipment_at is not None:
            at = row.hj212_equipment_at
            if at is None or f.equipment_at >= at:
                values["hj212_equipment"] = f.equipment
                values["hj212_equipment_at"] = f.equipment_at
        if values:
            conn.execute(update(devices).where(devices.c.id == f.device_id).values(values))
