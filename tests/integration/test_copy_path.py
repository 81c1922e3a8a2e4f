"""The write path's two PostgreSQL statements store the same thing: COPY (binary) through the
staging table, and the INSERT ... SELECT unnest(...) kept for servers that cannot COPY."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Engine, text

from ingest.repository import insert_readings
from ingest.validate import Row
from monitor.core.db import make_engine
from tests.conftest import register

T0 = datetime(2026, 11, 25, 7, 40, tzinfo=UTC)
DEVICES = ("dust-1", "dust-2", "leak-1")


def _rows(seed: int, n: int) -> list[Row]:
    """Readings spread over three hours and three devices, with repeats of one key inside the
    batch (a device resending a buffered set), flagged values, and offsets other than UTC."""
    rng = random.Random(seed)
    east8 = timezone(timedelta(hours=8))
    out: list[Row] = []
    for _ in range(n):
        ts = T0 + timedelta(seconds=10 * rng.randrange(0, 1080))
        if rng.random() < 0.3:
            ts = ts.astimezone(east8)
        out.append(
            Row(
                rng.choice(DEVICES),
                rng.choice(("pm10", "pm25", "pressure")),
                ts,
                round(rng.uniform(-5, 500), 3),
                rng.choice(("N", "N", "N", "D", "M")),
                ts + timedelta(seconds=rng.uniform(0, 5)),
            )
        )
    out.extend(rng.sample(out, n // 10))  # the same keys again, in the same batch
    return out


def _contents(engine: Engine) -> tuple[list[Any], list[Any]]:
    with engine.connect() as conn:
        readings = conn.execute(
            text(
                "SELECT device_id, metric, ts, value, quality, received_at FROM readings "
                "ORDER BY 1, 2, 3"
            )
        ).all()
        rollups = conn.execute(
            text(
                "SELECT device_id, metric, hour, count, round(sum::numeric, 6), min, max "
                "FROM hourly_rollups ORDER BY 1, 2, 3"
            )
        ).all()
    return [tuple(r) for r in readings], [tuple(r) for r in rollups]


@pytest.fixture
def engine(pg_url: str) -> Any:
    engine = make_engine(pg_url)
    register(engine, devices={"dust-1": "dust_monitor", "dust-2": "dust_monitor"}, rules=False)
    register(engine, site="dma-1", site_kind="dma", devices={"leak-1": "leak_meter"}, rules=False)
    yield engine
    engine.dispose()


def _empty(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE readings, hourly_rollups"))


def test_copy_and_unnest_store_the_same_readings_rollups_and_counts(engine: Engine) -> None:
    first, second = _rows(1, 400), _rows(2, 400)
    # the second batch overlaps the first: a redelivery stores nothing new and counts nothing
    second += first[:150]
    counts: dict[bool, list[int]] = {True: [], False: []}
    contents = {}
    for copy in (True, False):
        _empty(engine)
        for batch in (first, second, first):
            with engine.begin() as conn:
                counts[copy].append(insert_readings(conn, batch, copy=copy))
        contents[copy] = _contents(engine)
    assert counts[True] == counts[False]
    assert counts[True][2] == 0  # the whole first batch again: nothing new
    assert counts[True][0] == len({(r.device_id, r.metric, r.ts) for r in first})
    assert contents[True] == contents[False]
    assert len(contents[True][1]) > 10  # several hours x devices x metrics were rolled up


def test_staging_is_empty_at_the_next_transaction_even_after_a_rollback(engine: Engine) -> None:
    rows = _rows(3, 50)
    with engine.connect() as conn:  # one connection throughout: the stage is its own
        with pytest.raises(RuntimeError), conn.begin():
            insert_readings(conn, rows, copy=True)
            raise RuntimeError("the batch failed after its insert")
        with conn.begin():
            new = insert_readings(conn, rows[:10], copy=True)
            staged = conn.execute(text("SELECT count(*) FROM readings_stage")).scalar_one()
        assert staged == 10  # not the 60 rows of the rolled-back transaction
        with conn.begin():
            assert conn.execute(text("SELECT count(*) FROM readings_stage")).scalar_one() == 0
            assert conn.execute(text("SELECT count(*) FROM readings")).scalar_one() == new
    assert new == len({(r.device_id, r.metric, r.ts) for r in rows[:10]})


def test_staging_twice_in_one_transaction_counts_each_reading_once(engine: Engine) -> None:
    a, b = _rows(4, 60), _rows(5, 60)
    with engine.begin() as conn:
        n_a = insert_readings(conn, a, copy=True)
        n_b = insert_readings(conn, b, copy=True)
    keys_a = {(r.device_id, r.metric, r.ts) for r in a}
    keys_b = {(r.device_id, r.metric, r.ts) for r in b}
    assert n_a == len(keys_a) and n_b == len(keys_b - keys_a)
    readings, rollups = _contents(engine)
    assert len(readings) == len(keys_a | keys_b)
    assert sum(r[3] for r in rollups) == sum(1 for r in readings if r[4] == "N")
