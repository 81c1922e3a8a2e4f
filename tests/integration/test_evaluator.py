"""The evaluator against the real databases: one open alert per rule and device, no flapping,
resolution after a quiet period, a new alert for a new violation, redeliveries not counted."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, insert, select, text, update

from alerts.evaluator import Touched, evaluate_batch
from alerts.schemas import RuleSpec
from ingest.mqtt import Message
from ingest.repository import insert_readings
from ingest.validate import Row
from ingest.writer import TIMER_LOCK, Writer
from monitor.core.db import make_engine
from monitor.core.models import Alert, AlertEvent, Device, Rule, table
from monitor.core.settings import Settings
from tests.conftest import register

T0 = datetime(2026, 11, 25, 0, 0, tzinfo=UTC)


@pytest.fixture(params=["postgresql", "sqlite"])
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    url = request.getfixturevalue("pg_url" if request.param == "postgresql" else "sqlite_url")
    eng = make_engine(url)
    register(eng, site_kind="dma", devices={"leak-1": "leak_meter"}, rules=False)
    with eng.begin() as conn:
        conn.execute(
            insert(table(Rule)).values(
                name="low-pressure",
                device_kind="leak_meter",
                metric="pressure",
                aggregate="raw",
                window_s=0,
                min_samples=1,
                warn_below=0.16,
                alarm_below=0.14,
                for_s=120,
                auto_resolve=True,
                quiet_s=600,
                basis="test",
                legal_limit=False,
                enabled=True,
                description="",
                created_at=T0,
                updated_at=T0,
            )
        )
    yield eng
    eng.dispose()


def feed(engine: Engine, values: list[float], start_min: int = 0) -> None:
    """One reading a minute from `start_min`, stored and evaluated as one batch."""
    rows = [
        Row("leak-1", "pressure", T0 + timedelta(minutes=start_min + i), v, "N", T0)
        for i, v in enumerate(values)
    ]
    with engine.begin() as conn:
        insert_readings(conn, rows)
        evaluate_batch(conn, [Touched("leak-1", "pressure", rows[0].ts)])


def alerts(engine: Engine) -> list[dict[str, object]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(table(Alert)).order_by("id"))]


def test_value_hovering_at_the_threshold_keeps_one_alert(engine: Engine) -> None:
    hover = [0.15, 0.17, 0.15, 0.15, 0.155, 0.165, 0.15, 0.15, 0.15, 0.17] * 3
    for i in range(0, len(hover), 5):  # in small batches, as a live stream arrives
        feed(engine, hover[i : i + 5], start_min=i)
    [alert] = alerts(engine)
    assert alert["status"] == "firing" and alert["severity"] == "warning"
    # pending from minute 2, fired at minute 4 (2 minutes into that run); every violating
    # minute of the run and after it is counted on the same alert: 3 + 17
    assert alert["fired_at"] == T0 + timedelta(minutes=4)
    assert alert["started_at"] == T0 + timedelta(minutes=2)
    assert alert["violations"] == 20


def test_alert_escalates_resolves_after_quiet_period_and_reopens(engine: Engine) -> None:
    feed(engine, [0.15] * 3 + [0.10] * 4)  # warning for 2 min, then alarm for 2 min
    [alert] = alerts(engine)
    assert alert["severity"] == "alarm" and alert["peak_value"] == pytest.approx(0.10)
    assert alert["started_at"] == T0 and alert["fired_at"] == T0 + timedelta(minutes=2)
    feed(engine, [0.30] * 9, start_min=7)  # clear for 8 minutes: not yet
    assert alerts(engine)[0]["status"] == "firing"
    feed(engine, [0.30] * 3, start_min=16)  # clear for 11 minutes: resolved
    assert alerts(engine)[0]["status"] == "resolved"
    feed(engine, [0.12] * 3, start_min=19)
    first, second = alerts(engine)
    assert second["status"] == "firing" and second["id"] != first["id"]
    with engine.connect() as conn:
        kinds = [
            e.kind
            for e in conn.execute(
                select(table(AlertEvent))
                .where(table(AlertEvent).c.alert_id == first["id"])
                .order_by("id")
            )
        ]
    assert kinds == ["pending", "opened", "escalated", "resolved"]


def test_redelivered_readings_are_not_counted_twice(engine: Engine) -> None:
    feed(engine, [0.10] * 5)
    before = alerts(engine)[0]["violations"]
    feed(engine, [0.10] * 5)  # the same readings again (a redelivery)
    assert alerts(engine)[0]["violations"] == before


def test_timer_rules_wait_for_the_backlog_and_run_on_one_ingestor_at_a_time(
    pg_url: str, pg_engine: Engine, tmp_path: Path
) -> None:
    """With several ingestors each would judge the whole fleet's silence every 30 s, and
    wait on the others' alert rows; an advisory lock lets one of them do it per tick."""
    register(pg_engine, site_kind="dma", devices={"leak-1": "leak_meter"}, rules=False)
    with pg_engine.begin() as conn:
        conn.execute(
            update(table(Device))
            .where(table(Device).c.id == "leak-1")
            .values(created_at=datetime.now(UTC) - timedelta(hours=1))
        )
        conn.execute(
            insert(table(Rule)).values(
                RuleSpec(
                    name="offline",
                    kind="no_data",
                    device_kind="leak_meter",
                    metric="*",
                    warn_above=5,
                    basis="test",
                ).model_dump()
                | {"pack": "test"}
            )
        )
    settings = Settings(database_url=pg_url, data_dir=tmp_path, batch_max_messages=2)
    inbox: queue.Queue[Message] = queue.Queue()
    writer = Writer(settings, pg_engine, inbox, lambda _d: None, lambda _m: None)
    # a backlog waiting (a batch or more): the devices' messages may be in it, not silent
    for mid in range(2):
        inbox.put(Message("t", b"{}", mid, 1, datetime.now(UTC), 1))
    writer._tick()
    with pg_engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(table(Alert))).scalar() == 0
    inbox.get()
    with pg_engine.connect() as other:
        other.execute(text("SELECT pg_advisory_lock(:k)"), {"k": TIMER_LOCK})
        writer._tick()  # another ingestor holds the timer: nothing judged here
        with pg_engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(table(Alert))).scalar() == 0
        other.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": TIMER_LOCK})
    writer._tick()
    with pg_engine.connect() as conn:
        assert conn.execute(select(table(Alert).c.severity)).scalars().all() == ["warning"]
