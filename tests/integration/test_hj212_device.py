"""What a logger tells about itself, kept on its device row by the write path: the tolerated
field deviations it sends, the RtdInterval it answers (1061), its equipment status (2021);
and a connection's idle limit that follows the device's interval."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select, update

from ingest.hj212.protocol import encode_frame
from ingest.service import Ingestor
from monitor.core.models import Device, table
from tests.integration.services import wait_for
from tests.integration.test_hj212 import TZ, Logger, dead, frame_2011, readings, start_gateway

devices = table(Device)


def row(engine: Engine, device_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(devices).where(devices.c.id == device_id)).one()


@pytest.fixture
def asking(pg_url: str, pg_engine: Engine, tmp_path: object) -> Iterator[Ingestor]:
    ing = start_gateway(pg_url, pg_engine, tmp_path, hj212_ask_rtd_interval=True)
    yield ing
    ing.stop()


@pytest.fixture
def gateway(pg_url: str, pg_engine: Engine, tmp_path: object) -> Iterator[Ingestor]:
    ing = start_gateway(pg_url, pg_engine, tmp_path)
    yield ing
    ing.stop()


def lower_crc(frame: bytes) -> bytes:
    return frame[:-6] + frame[-6:-2].lower() + b"\r\n"


def test_tolerated_deviations_are_recorded_on_the_device_once_and_kept(
    gateway: Ingestor, pg_engine: Engine
) -> None:
    at = datetime.now(TZ).replace(microsecond=0) - timedelta(minutes=3)
    logger = Logger(gateway)
    assert row(pg_engine, "dust-yc").hj212_deviations is None
    # a clean frame records nothing
    logger.send(frame_2011("ZX00001", at, "1", "a34002-Rtd=30"))
    assert len(logger.answers(1)) == 1
    assert row(pg_engine, "dust-yc").hj212_deviations is None
    # `LA-Rtd-Rtd` with a trailing `;`, and a lowercase CRC (only when it has letters)
    frame = next(
        f
        for s in range(60)
        if (
            f := frame_2011(
                "ZX00001", at + timedelta(minutes=1, seconds=s), "2", "LA-Rtd-Rtd=71.0;"
            )
        )[-6:-2]
        != f[-6:-2].lower()
    )
    logger.send(lower_crc(frame))
    assert len(logger.answers(1)) == 1  # answered once the facts are committed too
    assert row(pg_engine, "dust-yc").hj212_deviations == [
        "doubled_suffix",
        "lowercase_crc",
        "trailing_separator",
    ]
    assert readings(pg_engine, "dust-yc")["noise"] == (71.0, "N")
    # a 2005-style frame without Flag adds its deviation; the earlier ones stay
    logger.send(
        encode_frame(
            f"QN=3;ST=39;CN=2011;PW=123456;MN=ZX00001;"
            f"CP=&&DataTime={at + timedelta(minutes=2):%Y%m%d%H%M%S};a34002-Rtd=33&&"
        )
    )
    wait_for(
        lambda: "missing_flag" in (row(pg_engine, "dust-yc").hj212_deviations or []),
        10,
        "missing_flag recorded",
    )
    assert row(pg_engine, "dust-yc").hj212_deviations == [
        "doubled_suffix",
        "lowercase_crc",
        "missing_flag",
        "trailing_separator",
    ]
    # other devices are not touched
    assert row(pg_engine, "dust-php").hj212_deviations is None


def test_a_reported_rtd_interval_is_recorded_beside_interval_s(
    asking: Ingestor, pg_engine: Engine
) -> None:
    at = datetime.now(TZ).replace(microsecond=0) - timedelta(minutes=1)
    logger = Logger(asking)
    logger.send(frame_2011("ZX00001", at, "1", "a34002-Rtd=30"))
    got = logger.answers(2)
    assert sorted(p.cn or "" for p in got) == ["1061", "9014"]  # asked once per connection
    request = next(p for p in got if p.cn == "1061")
    assert request.fields["MN"] == "ZX00001" and request.fields["Flag"] == "5"
    assert request.cp == {}
    # the logger's answer: its interval
    logger.send(
        encode_frame("QN=2;ST=39;CN=1061;PW=123456;MN=ZX00001;Flag=5;CP=&&RtdInterval=600&&")
    )
    assert [(p.cn, p.qn) for p in logger.answers(1)] == [("9014", "2")]
    stored = row(pg_engine, "dust-yc")
    assert stored.hj212_rtd_interval_s == 600 and stored.interval_s == 60  # registration wins
    # not asked again on the same connection
    logger.send(frame_2011("ZX00001", at + timedelta(seconds=30), "3", "a34002-Rtd=31"))
    assert [p.cn for p in logger.answers(2, 2.0)] == ["9014"]
    # an unreadable interval is a dead letter with its reason, and answered
    logger.send(encode_frame("QN=4;ST=39;CN=1061;PW=123456;MN=ZX00001;Flag=5;CP=&&RtdInterval=x&&"))
    assert [p.qn for p in logger.answers(1)] == ["4"]
    ((reason, device_id, detail),) = dead(pg_engine)
    assert (reason, device_id) == ("hj212_bad_cp", "dust-yc") and "RtdInterval" in detail
    assert row(pg_engine, "dust-yc").hj212_rtd_interval_s == 600


def test_equipment_status_keeps_the_newest_by_data_time(
    gateway: Ingestor, pg_engine: Engine
) -> None:
    now = datetime.now(TZ).replace(microsecond=0)
    logger = Logger(gateway)

    def status(qn: str, at: datetime, cp: str) -> bytes:
        return encode_frame(
            f"QN={qn};ST=39;CN=2021;PW=123456;MN=ZX00001;Flag=5;"
            f"CP=&&DataTime={at:%Y%m%d%H%M%S};{cp}&&"
        )

    logger.send(status("1", now, "SB1-RS=1;SB1-RT=12.5;SB2-RS=4"))
    assert [p.qn for p in logger.answers(1)] == ["1"]
    stored = row(pg_engine, "dust-yc")
    assert stored.hj212_equipment == {"SB1": {"RS": 1, "RT": 12.5}, "SB2": {"RS": 4}}
    assert stored.hj212_equipment_at == now
    # an older status (a history upload) does not replace the newer one
    logger.send(status("2", now - timedelta(hours=1), "SB1-RS=0"))
    assert [p.qn for p in logger.answers(1)] == ["2"]
    assert row(pg_engine, "dust-yc").hj212_equipment_at == now
    # a state outside 0-5 is a dead letter, the stored status stays
    logger.send(status("3", now + timedelta(minutes=1), "SB1-RS=9"))
    assert [p.qn for p in logger.answers(1)] == ["3"]
    assert [(r, d) for r, d, _ in dead(pg_engine)] == [("hj212_bad_cp", "dust-yc")]
    assert row(pg_engine, "dust-yc").hj212_equipment == {
        "SB1": {"RS": 1, "RT": 12.5},
        "SB2": {"RS": 4},
    }


def test_a_logged_in_logger_outlives_an_idle_limit_shorter_than_its_interval(
    pg_url: str, pg_engine: Engine, tmp_path: object
) -> None:
    ing = start_gateway(pg_url, pg_engine, tmp_path, hj212_idle_s=1)
    try:
        with pg_engine.begin() as conn:  # a logger reporting every 10 minutes
            conn.execute(update(devices).where(devices.c.id == "dust-yc").values(interval_s=600))
        at = datetime.now(TZ).replace(microsecond=0) - timedelta(minutes=20)
        logger = Logger(ing)
        logger.send(frame_2011("ZX00001", at, "1", "a34002-Rtd=30"))
        assert len(logger.answers(1)) == 1
        stranger = Logger(ing)  # never logs in: the setting's 1 s applies
        stranger.sock.settimeout(15)
        assert stranger.sock.recv(10) == b""
        time.sleep(1.5)  # longer than the setting; far less than 3 of its intervals
        logger.send(frame_2011("ZX00001", at + timedelta(minutes=10), "2", "a34002-Rtd=31"))
        assert [p.qn for p in logger.answers(1)] == ["2"]
    finally:
        ing.stop()
