"""The HJ 212 gateway's promise under failure: a 9014 answer means the frame's readings are
durable. Killed between receipt and commit, the gateway has sent no answer and stored
nothing, and the logger's retry stores the readings once; with the database away, answers
come from the fsync'd spool and nothing is lost when it returns."""

from __future__ import annotations

import socket
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, func, select, text

from ingest.service import Ingestor
from monitor.core.db import make_engine, upgrade
from monitor.core.models import DeadLetter, Reading, table
from monitor.core.settings import Settings
from tests.conftest import free_port
from tests.integration.services import IngestProcess, OwnPostgres, wait_for
from tests.integration.test_hj212 import (
    TZ,
    YC_DUST,
    Logger,
    dead,
    frame_2011,
    reading_count,
    register_loggers,
)

readings = table(Reading)


def retry_of(frame: bytes, qn: str) -> bytes:
    """The logger's resend of `frame`: the same data with a new QN (§1.11)."""
    from ingest.hj212.protocol import encode_frame

    segment = frame[6:-6].decode()
    old_qn = segment.split(";", 1)[0]
    assert old_qn.startswith("QN=")
    return encode_frame(f"QN={qn};" + segment.split(";", 1)[1])


def blocked_backends(engine: Engine) -> list[int]:
    """PostgreSQL backends of this database waiting for a lock (the writer, held up)."""
    with engine.connect() as conn:
        return list(
            conn.execute(
                text(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"
                )
            ).scalars()
        )


def backends_alive(engine: Engine, pids: list[int]) -> bool:
    with engine.connect() as conn:
        return bool(
            conn.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(:pids)"),
                {"pids": pids},
            ).scalar_one()
        )


def test_sigkill_between_receipt_and_commit_sends_no_answer_and_the_retry_stores_once(
    tmp_path: Path, pg_url: str, pg_engine: Engine
) -> None:
    register_loggers(pg_engine)
    port = free_port()
    gateway = IngestProcess(
        {
            "ENVMON_DATABASE_URL": pg_url,
            "ENVMON_HJ212_PORT": str(port),
            "ENVMON_DATA_DIR": str(tmp_path / "hj212"),
        },
        tmp_path / "hj212.log",
        command="hj212",
    )
    gateway.start()
    try:
        # Hold the writer between receipt and commit: its INSERT waits for this lock.
        with pg_engine.connect() as blocker:
            blocker.execute(text("LOCK TABLE readings IN ACCESS EXCLUSIVE MODE"))
            logger = Logger(port)
            logger.send(YC_DUST)
            wait_for(lambda: blocked_backends(pg_engine), 20, "the writer waiting on the lock")
            held = blocked_backends(pg_engine)
            gateway.kill()
            # The kill closed the connection: everything the gateway sent is here, and it is
            # no answer (answers() stops at the end of the stream).
            assert logger.answers(1, 5.0) == []
            blocker.rollback()
        # The killed process's transaction never committed: once its backend is gone,
        # nothing of the frame is in the database.
        wait_for(
            lambda: not backends_alive(pg_engine, held), 20, "the killed writer's backend gone"
        )
        assert reading_count(pg_engine, "dust-yc") == 0
        gateway.start()
        # The logger, unanswered, reconnects and resends with a new QN; then once more, as a
        # logger whose answer was lost would: stored once.
        again = Logger(port)
        for qn in ("20191018104957418", "20191018105002418"):
            again.send(retry_of(YC_DUST, qn))
            assert [a.qn for a in again.answers(1)] == [qn]
        assert reading_count(pg_engine, "dust-yc") == 8
        assert dead(pg_engine) == []
    finally:
        gateway.stop()


def test_database_outage_answers_from_the_spool_and_loses_nothing(tmp_path: Path) -> None:
    pg = OwnPostgres()
    pg.start()
    try:
        pg.create_database()
        upgrade(pg.url)
        engine = make_engine(pg.url)
        register_loggers(engine)
        settings = Settings(
            database_url=pg.url, data_dir=tmp_path / "gw", hj212_port=free_port(), hj212_idle_s=60
        )
        ing = Ingestor(settings, engine, mqtt=False, hj212=True)
        ing.start()
        try:
            start = datetime.now(TZ).replace(second=0, microsecond=0) - timedelta(hours=1)
            dust = Logger(ing)
            dust.send(frame_2011("ZX00001", start, "0", "a34002-Rtd=40,a34002-Flag=N"))
            assert [a.qn for a in dust.answers(1)] == ["0"]  # the identities are cached now
            pg.stop()
            # Frames during the outage: answered once fsync'd to the spool, in order.
            for i in range(1, 11):
                at = start + timedelta(minutes=i)
                dust.send(frame_2011("ZX00001", at, str(i), f"a34002-Rtd={40 + i}"))
            assert [a.qn for a in dust.answers(10)] == [str(i) for i in range(1, 11)]
            # an unknown code among good values: its dead letter is spooled with the readings
            dust.send(
                frame_2011("ZX00001", start + timedelta(minutes=11), "11", "a34002-Rtd=9,H01-Rtd=1")
            )
            assert [a.qn for a in dust.answers(1)] == ["11"]
            # a logger that connects during the outage is identified from the cache
            water = Logger(ing)
            water.send(frame_2011("A110000_0001", start, "w1", "w01001-Rtd=7.2", flag=9))
            assert [a.qn for a in water.answers(1)] == ["w1"]
            assert ing.writer.spool_depth >= 12  # the answers came from the spool
            assert ing.stats.spooled >= 12
            pg.start()
            wait_for(lambda: ing.writer.spool_depth == 0, 120, "the spool drained")
            assert reading_count(engine, "dust-yc") == 12
            assert reading_count(engine, "water-a11") == 1
            with engine.connect() as conn:
                values = dict(
                    conn.execute(
                        select(readings.c.ts, readings.c.value).where(
                            readings.c.device_id == "dust-yc"
                        )
                    ).all()
                )
                n_dead = conn.execute(
                    select(func.count()).select_from(table(DeadLetter))
                ).scalar_one()
            assert sorted(values.values()) == sorted([40.0, *(40.0 + i for i in range(1, 11)), 9.0])
            assert n_dead == 1
            assert [r for r, *_ in dead(engine)] == ["hj212_unknown_code"]
        finally:
            ing.stop()
            engine.dispose()
    finally:
        pg.stop()
        pg.remove()


def test_gateway_process_refuses_to_start_on_a_busy_port(tmp_path: Path, pg_url: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        gateway = IngestProcess(
            {
                "ENVMON_DATABASE_URL": pg_url,
                "ENVMON_HJ212_PORT": str(port),
                "ENVMON_DATA_DIR": str(tmp_path / "hj212"),
            },
            tmp_path / "hj212.log",
            command="hj212",
        )
        try:
            gateway.start()
        except AssertionError as exc:
            assert "Address already in use" in str(exc) or "in use" in str(exc)
        else:
            gateway.stop()
            raise AssertionError("envmon hj212 started on a busy port")
