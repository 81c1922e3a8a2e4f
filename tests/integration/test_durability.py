"""Nothing published is lost, nothing is stored twice: across a SIGKILL of the ingestor,
a PostgreSQL outage and a Mosquitto restart, all under load, on services of the test's own."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from devices.publisher import FleetPublisher
from devices.simulators import DustMonitor, LeakMeter, SimulatedDevice, WaterQualityProbe
from ingest.contract import ReadingSet
from ingest.service import Ingestor
from monitor.core.db import make_engine, upgrade
from monitor.core.models import DeadLetter, Reading, table
from monitor.core.settings import Settings
from tests.conftest import register
from tests.integration.services import (
    IngestProcess,
    OwnPostgres,
    broker_traffic,
    own_broker,
    wait_for,
)

readings = table(Reading)
# Seconds the database stays down in the outage test; the full check is 120.
OUTAGE_S = float(os.environ.get("ENVMON_TEST_OUTAGE_S", "12"))


def fleet() -> list[SimulatedDevice]:
    return [
        DustMonitor("dust-1", seed=1),
        WaterQualityProbe("water-1", seed=2),
        LeakMeter("leak-1", seed=3),
    ]


def register_fleet(engine: Engine) -> None:
    register(
        engine,
        devices={"dust-1": "dust_monitor", "water-1": "water_quality", "leak-1": "leak_meter"},
    )


def stored(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(readings)).scalar_one())


def assert_exactly_once(engine: Engine, pub: FleetPublisher, sets_per_device: int) -> None:
    with engine.connect() as conn:
        per_device: dict[str, int] = dict(
            conn.execute(
                select(readings.c.device_id, func.count(func.distinct(readings.c.ts))).group_by(
                    readings.c.device_id
                )
            ).all()
        )
        dead = conn.execute(select(func.count()).select_from(table(DeadLetter))).scalar()
    # the primary key (device, metric, ts) rules out duplicates; equal counts rule out loss
    assert stored(engine) == pub.readings
    assert per_device == {d: sets_per_device for d in ("dust-1", "water-1", "leak-1")}
    assert dead == 0


def record_rounds(sim: SimulatedDevice) -> list[tuple[datetime, float]]:
    """Wrap `sim.sample` to note each reading set's event time and when it was made."""
    made: list[tuple[datetime, float]] = []
    sample = sim.sample

    def recording(ts: datetime) -> ReadingSet:
        made.append((ts, time.monotonic()))
        return sample(ts)

    sim.sample = recording  # type: ignore[method-assign]
    return made


def diagnosis(
    engine: Engine,
    ingestor: Ingestor,
    broker: object,
    device_id: str,
    rounds: list[tuple[datetime, float]],
    origin: float,
    origin_is: str,
) -> str:
    """Why not every reading is stored: the rounds of one device that are missing, when they
    were published (seconds relative to `origin`), the ingestor's counts now, and the distinct
    packet ids the broker logged from the publisher and to the ingestor (which side lost
    them)."""
    with engine.connect() as conn:
        have = set(
            conn.execute(select(readings.c.ts).where(readings.c.device_id == device_id)).scalars()
        )
    missing = [f"{at - origin:+.2f}s" for ts, at in rounds if ts.astimezone(UTC) not in have]
    traffic = broker_traffic(broker.log_path)  # type: ignore[attr-defined]
    return (
        f"every reading stored (stats {ingestor.stats}); rounds of {device_id} missing, "
        f"published at (relative to {origin_is}): {missing}; distinct packet ids in the broker "
        f"log: {traffic}"
    )


def publish_in_background(pub: FleetPublisher, now: datetime) -> threading.Thread:
    def run() -> None:
        pub.connect()
        pub.backfill(now)
        pub.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[object]:
    # every packet logged: when a count comes up short, the log says on which side
    b = own_broker(tmp_path, verbose_log=True)
    yield b
    b.stop()


def test_sigkill_mid_stream_then_restart_stores_every_reading_once(
    tmp_path: Path, pg_url: str, pg_engine: Engine, broker: object, prefix: str
) -> None:
    register_fleet(pg_engine)
    port = broker.port  # type: ignore[attr-defined]
    ingest = IngestProcess(
        {
            "ENVMON_DATABASE_URL": pg_url,
            "ENVMON_MQTT_URL": f"mqtt://127.0.0.1:{port}",
            "ENVMON_MQTT_TOPIC_PREFIX": prefix,
            "ENVMON_DATA_DIR": str(tmp_path / "ingest"),
            "ENVMON_BATCH_MAX_MESSAGES": "50",
        },
        tmp_path / "ingest.log",
    )
    ingest.start()
    sets = 4000
    pub = FleetPublisher(
        fleet(),
        host="127.0.0.1",
        port=port,
        prefix=prefix,
        backfill_s=sets,
        backfill_step_s=1,
        batch_size=4,
        max_inflight=500,
    )
    thread = publish_in_background(pub, datetime.now(UTC).replace(microsecond=0))
    wait_for(lambda: stored(pg_engine) > 10_000, 60, "a first part stored")
    ingest.kill()
    killed_at = stored(pg_engine)
    thread.join(60)
    assert not thread.is_alive() and pub.published == 3 * sets // 4
    assert killed_at < pub.readings, "the kill came too late to prove anything"
    ingest.start()
    wait_for(lambda: stored(pg_engine) >= pub.readings, 120, "every reading stored")
    time.sleep(1)  # anything redelivered after that is a duplicate and must stay one
    ingest.stop()
    assert_exactly_once(pg_engine, pub, sets)


def test_postgresql_outage_under_load_loses_nothing(
    tmp_path: Path, broker: object, prefix: str
) -> None:
    pg = OwnPostgres()
    pg.start()
    try:
        pg.create_database()
        upgrade(pg.url)
        engine = make_engine(pg.url)
        register_fleet(engine)
        port = broker.port  # type: ignore[attr-defined]
        settings = Settings(
            database_url=pg.url,
            mqtt_url=f"mqtt://127.0.0.1:{port}",
            mqtt_topic_prefix=prefix,
            mqtt_client_id=prefix,
            data_dir=tmp_path / "ingest",
            batch_max_messages=50,
        )
        ingestor = Ingestor(settings, engine)
        ingestor.start()
        sims = fleet()
        rounds = record_rounds(sims[0])
        pub = FleetPublisher(
            sims, host="127.0.0.1", port=port, prefix=prefix, interval_s=0.05, max_inflight=200
        )
        pub.connect()
        stop = threading.Event()
        live = threading.Thread(target=pub.run, args=(stop,), daemon=True)
        live.start()
        wait_for(lambda: ingestor.stats.stored > 500, 30, "readings flowing")
        pg.stop()
        outage_started = time.monotonic()
        wait_for(lambda: ingestor.writer.spool_depth > 0, 30, "the spool taking over")
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - outage_started)))
        pg.start()
        back_at = time.monotonic()
        time.sleep(2)
        stop.set()
        live.join(30)
        pub.close()
        sets = pub.reading_sets // len(sims)
        # generous: the backlog is evaluated against the default rules, on a busy CI machine
        wait_for(lambda: ingestor.writer.spool_depth == 0, 180, "the spool drained")
        wait_for(
            lambda: stored(engine) >= pub.readings,
            180,
            lambda: diagnosis(
                engine,
                ingestor,
                broker,
                sims[0].device_id,
                rounds,
                outage_started,
                f"the database's stop; back at {back_at - outage_started:+.2f}s",
            ),
        )
        ingestor.stop()
        assert ingestor.stats.spooled > 0
        assert_exactly_once(engine, pub, sets)
        engine.dispose()
    finally:
        pg.stop()
        pg.remove()


def test_broker_restart_under_load_loses_nothing(
    tmp_path: Path, pg_url: str, pg_engine: Engine, broker: object, prefix: str
) -> None:
    register_fleet(pg_engine)
    port = broker.port  # type: ignore[attr-defined]
    settings = Settings(
        database_url=pg_url,
        mqtt_url=f"mqtt://127.0.0.1:{port}",
        mqtt_topic_prefix=prefix,
        mqtt_client_id=prefix,
        data_dir=tmp_path / "ingest",
        batch_max_messages=50,
    )
    ingestor = Ingestor(settings, pg_engine)
    ingestor.start()
    sims = fleet()
    rounds = record_rounds(sims[0])
    pub = FleetPublisher(
        sims, host="127.0.0.1", port=port, prefix=prefix, interval_s=0.05, max_inflight=200
    )
    pub.connect()
    stop = threading.Event()
    live = threading.Thread(target=pub.run, args=(stop,), daemon=True)
    live.start()
    wait_for(lambda: ingestor.stats.stored > 500, 30, "readings flowing")
    stopped_at = time.monotonic()
    broker.stop()  # type: ignore[attr-defined]
    time.sleep(2)
    broker.start()  # type: ignore[attr-defined]
    started_at = time.monotonic()
    time.sleep(4)
    stop.set()
    live.join(30)
    pub.close()
    sets = pub.reading_sets // len(sims)

    wait_for(
        lambda: stored(pg_engine) >= pub.readings,
        180,
        lambda: diagnosis(
            pg_engine,
            ingestor,
            broker,
            sims[0].device_id,
            rounds,
            stopped_at,
            f"the broker's stop; restarted at {started_at - stopped_at:+.2f}s",
        ),
    )
    ingestor.stop()
    assert_exactly_once(pg_engine, pub, sets)
