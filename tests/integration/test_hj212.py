"""The HJ 212 gateway end to end: real TCP server, real writer, real PostgreSQL.

Field frames come from public code, found with the search tool. Each is cited by repository,
path and the commit that holds it; where the index could not resolve the file to a repository,
by what identifies the file (package, class, method), the index's file id (`read_file` with that
id shows it) and what was tried. Each was checked byte for byte against its source (2026-12-02):
it is the source's string literal with `\r\n` appended where the literal lacks it (all but the
two water frames, whose literals carry it), nothing else changed, CRC included (each CRC was
checked: Appendix A gives the printed one, except BAD_CRC's). docs/hj212.md lists the same
frames (tests/unit/test_hj212_docs.py keeps the two in step).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select

from ingest.hj212.protocol import Frame, Framer, Packet, crc_text, encode_frame, parse_segment
from ingest.service import Ingestor
from monitor.core.db import make_engine
from monitor.core.models import DeadLetter, Reading, table
from monitor.core.settings import Settings
from monitor.registry import DeviceCreate, SiteCreate, upsert_device, upsert_site
from tests.conftest import free_port
from tests.integration.services import wait_for

TZ = ZoneInfo("Asia/Shanghai")

# HJ 212-2017 Appendix A worked example (standards.md §1.2): CRC 1C80
WORKED = encode_frame(
    "QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;Flag=5;"
    "CP=&&RtdInterval=30&&"
)
# Source: github.com/Lancer-Ming/factory, app/Http/Controllers/HomeController.php,
# HomeController::gateway(), at commit d5445edc340231b744debbd1fdd0f95d36850b34 (2018-08-31,
# the version index id 6808325978 holds). The literal is there from 069ec2cc (2018-08-22) and
# gone at f947dc00 (2018-09-04). A Laravel dust platform: ST=39, Flag=4 (no answer asked),
# every dust code of §1.9.
PHP_DUST = (
    b"##0239QN=20180821142509000;ST=39;CN=2011;PW=123456;MN=690000D5800028F889221AC0;Flag=4;"
    b"CP=&&DataTime=20180821142509;a34004-Rtd=0.0;a34002-Rtd=0.0;a34001-Rtd=0.0;LA-Rtd=0.0;"
    b"a01001-Rtd=0.0;a01002-Rtd=0.0;a01006-Rtd=0.0;a01007-Rtd=0.0;a01008-Rtd=0&&E541\r\n"
)
# Source: not resolved to a repository. A Java "212国标解析器", class
# iot.plugin.NationalStandard212, main() (author Liu Siyuan, 2018; index id 16097490640, a
# later version id 16512781219); the index names no repository or path for either. Tried
# (2026-12-02): find_string on its MN, on `package iot.plugin;`, on the packages it imports
# (app.iot.process.*) and on the author's HJ 212 sender tool (com.iss.iotdatamonitor.*): file
# ids only; find_files on src/main/java/iot/plugin/NationalStandard212.java,
# src/iot/plugin/NationalStandard212.java, src/main/java/app/iot/process/plugins/AbsProcessing.java,
# src/app/iot/process/plugins/AbsProcessing.java and the sender's IOTSenderMainFrame.java under
# src/ and src/main/java/: none; find_repos on iot-process, iot_process, iotprocess, iot-plugin,
# iotdatamonitor, iot-data-monitor: none of its code; the code search on its class and package
# names: other files. No public 2005 frame of mapped dust codes was found to replace it (the
# flagless ones of chenqi92/alltobs-hj212's README and tonyxia2016/HJ212Receiver's rx.log carry
# no code the gateway maps). No Flag, i.e. 2005 style, no answer asked.
JAVA_2005 = (
    b"##0249QN=20180507000558;ST=39;CN=2011;PW=123456;MN=010000A00000000000A00654;"
    b"CP=&&DataTime=20180507000558;a01001-Rtd=26.0,a01001-Flag=N;a01002-Rtd=30.4,"
    b"a01002-Flag=N;a34001-Rtd=0.0,a34001-Flag=N;a34002-Rtd=24.0,a34002-Flag=N;"
    b"a34004-Rtd=23.0,a34004-Flag=N&&D801\r\n"
)
# Source: not resolved to a repository. A Java dust TCP parser, class
# com.ep.yc.yctcpanalysis.test.T1, main() (author WQY, 2019-10-18; index id 4827346603); the
# index names no repository or path for it. Tried (2026-12-02): find_string on its MN (this file
# only) and on its package (ten files of the same Spring Cloud service: YcTcpAnalysisApplication,
# Feign clients of "ep-yc-tcp-client" and "ep-yc-tcp-gateway-company"; file ids only);
# find_files on com/ep/yc/yctcpanalysis/test/T1.java under src/main/java/ and src/test/java/ and
# on YcTcpAnalysisApplication.java under src/main/java/ of the root, yc-tcp-analysis/,
# yctcpanalysis/, yc-tcpanalysis/ and ep-yc-tcp-analysis/: none; find_repos on yctcp, ep-yc,
# tcp-analysis, tcpanalysis: none of its code; the code search on its package and class names:
# other files. Kept, as it is: the docs' real-time example, the retry and durability tests'
# frame. ST=22 dust, Flag=5.
YC_DUST = (
    b"##0317QN=20191018104952418;ST=22;CN=2011;PW=123456;MN=ZX00001;Flag=5;"
    b"CP=&&DataTime=20191018104900;a34002-Rtd=30,a34002-Flag=N;a34004-Rtd=25,a34004-Flag=N;"
    b"a01001-Rtd=13.5,a01001-Flag=N;a01002-Rtd=43.8,a01002-Flag=N;a01008-Rtd=30,"
    b"a01008-Flag=N;a01007-Rtd=3.5,a01007-Flag=N;a34001-Rtd=132,a34001-Flag=N;"
    b"LA-Rtd=66.8,LA-Flag=N&&AF01\r\n"
)
# Source: github.com/664618924qq-ops/Farm-Management-Platform, backend/tests/test_hj212.py,
# REALTIME_SAMPLE and HOURLY_SAMPLE beside test_parse_realtime_hj212_message, at commit
# 4302b1fc37d9d9de982e74358ee48520506a8c12 (index id 67129704497); the real-time frame again as
# RAW_PACKET in backend/tests/test_protocol_upload.py at bed24a0e968ccbd46801298c30c11c89f5a2d9c0
# (id 67575497151). A FastAPI aquaculture platform (module app.services.hj212); its samples are
# its own test data, not said to be captured from a device. 2025 (Flag=9), real-time and
# hourly; w01017 and w01019 are not mapped codes.
WATER_2025_RTD = (
    b"##0247QN=20260706103512345;ST=21;CN=2011;PW=123456;MN=A110000_0001;Flag=9;"
    b"CP=&&DataTime=20260706103000;w01010-Rtd=28.6,w01010-Flag=N;w01014-Rtd=7.8,"
    b"w01014-Flag=N;w01001-Rtd=6.5,w01001-Flag=N;w01017-Rtd=15.2,w01017-Flag=N;"
    b"w01019-Rtd=1.023,w01019-Flag=N&&1540\r\n"
)
WATER_2025_HOUR = (
    b"##0247QN=20260706103512345;ST=21;CN=2061;PW=123456;MN=A110000_0001;Flag=9;"
    b"CP=&&DataTime=20260706100000;w01010-Avg=28.4,w01010-Flag=N;w01014-Avg=7.7,"
    b"w01014-Flag=N;w01001-Avg=6.6,w01001-Flag=N;w01017-Avg=15.0,w01017-Flag=N;"
    b"w01019-Avg=1.022,w01019-Flag=N&&5280\r\n"
)
# Source: github.com/PangyiGo/lampblack-admin,
# lampblack-system/src/main/java/com/osen/cloud/system/socket/utils/DataSegmentParseUtil.java,
# main() beside parseDataTOMap (author PangYi, 2019-09-06), at commit
# 99c640d92cf581c2a52beaff3676e1d7de97f1d8 (2019-09-07, the one version with this main(); index
# id 11528012558). ST=43 with a vendor code H01 among standard ones.
H01_DUST = (
    b"##0325QN=20190816173300001;ST=43;CN=2011;PW=123456;MN=2019051703100020;Flag=5;"
    b"CP=&&DataTime=20190816173300;a34004-Rtd=26.0,a34004-Flag=N;a34002-Rtd=27.0,"
    b"a34002-Flag=N;LA-Rtd=0.0,LA-Flag=N;a01007-Rtd=0.0,a01007-Flag=N;a01008-Rtd=0.0,"
    b"a01008-Flag=N;a01001-Rtd=26.0,a01001-Flag=N;H01-Rtd=52.7,H01-Flag=N;a01006-Rtd=50.0,"
    b"a01006-Flag=N&&4980\r\n"
)
# Source: github.com/sayakawayiyo/kawayi, src/test/java/com/madolche/kawayi/TestSample.java,
# testSocket(), at commit 263d0fdfe1eb5ec827387c021a442c6d47b50367 (2019-09-23, on branch deve;
# master's version has no testSocket(); index id 6912331125). `LA-Rtd-Rtd`, and a CRC (48C0)
# that the Appendix A algorithm does not give (BC81): a hand-edited sample, §1.11.
BAD_CRC = (
    b"##0187QN=20190923154847375;ST=39;CN=2011;PW=123456;MN=190720099;Flag=5;"
    b"CP=&&DataTime=20190923154847;a34004-Rtd=12000,a34004-Flag=D;a34002-Rtd=16000,"
    b"a34002-Flag=D;LA-Rtd-Rtd=71.0,LA-Rtd-Flag=N&&48C0\r\n"
)
# Source: github.com/libem/HJ212-Moniter,
# src/test/java/cn/zqgx/moniter/center/hj212/format/hbt212/core/T212MapperTest.java, readData(),
# at commit b6b307676d7759d5a18ba6d985caa3fe45a7a20a (index id 17653582718). ST=22 (air),
# Flag=5, each code's Flag before its Rtd, PM10 and PM2.5 beside codes the catalogue has no
# metric for (position l01001/l01002, SO2, NO2, CO, O3).
AIR_GAS = (
    b"##0344QN=20220928142812336;ST=22;CN=2011;PW=123456;MN=JSRCTD000YD107;Flag=5;"
    b"CP=&&DataTime=20220928142812;l01001-Flag=N,l01001-Rtd=119.90287;l01002-Flag=N,"
    b"l01002-Rtd=32.48505;a34002-Rtd=5,a34002-Flag=N;a34004-Rtd=4,a34004-Flag=N;"
    b"a21026-Rtd=22.25,a21026-Flag=N;a21004-Rtd=22.7,a21004-Flag=N;a21005-Rtd=0.36,"
    b"a21005-Flag=N;a05024-Rtd=8.82,a05024-Flag=N&&9241\r\n"
)

DEVICES = {
    # device id: (kind, MN)
    "dust-zqgx": ("dust_monitor", "JSRCTD000YD107"),
    "dust-php": ("dust_monitor", "690000D5800028F889221AC0"),
    "dust-java": ("dust_monitor", "010000A00000000000A00654"),
    "dust-yc": ("dust_monitor", "ZX00001"),
    "dust-h01": ("dust_monitor", "2019051703100020"),
    "dust-worked": ("dust_monitor", "010000A8900016F000169DC0"),
    "dust-190720099": ("dust_monitor", "190720099"),
    "water-a11": ("water_quality", "A110000_0001"),
}
PASSWORDS = {"010000A8900016F000169DC0": "100000"}


def register_loggers(engine: Engine) -> None:
    """Site cs-1 and the devices of DEVICES with their MN and PW."""
    with engine.begin() as conn:
        upsert_site(
            conn, SiteCreate(id="cs-1", name="cs-1", district="Lanshan", kind="construction_site")
        )
        for device_id, (kind, mn) in DEVICES.items():
            upsert_device(
                conn,
                DeviceCreate.model_validate(
                    {
                        "id": device_id,
                        "site_id": "cs-1",
                        "kind": kind,
                        "hj212_mn": mn,
                        "hj212_password": PASSWORDS.get(mn, "123456"),
                    }
                ),
            )


def start_gateway(url: str, engine: Engine, tmp_path: object, **overrides: object) -> Ingestor:
    register_loggers(engine)
    settings = Settings.model_validate(
        {
            "database_url": url,
            "data_dir": tmp_path,
            "hj212_port": free_port(),
            "hj212_idle_s": 30,
            **overrides,
        }
    )
    ing = Ingestor(settings, engine, mqtt=False, hj212=True)
    ing.start()
    return ing


@pytest.fixture
def gateway(pg_url: str, pg_engine: Engine, tmp_path: object) -> Iterator[Ingestor]:
    ing = start_gateway(pg_url, pg_engine, tmp_path)
    yield ing
    ing.stop()


class Logger:
    """A data logger's side of one TCP connection."""

    def __init__(self, ing: Ingestor | int) -> None:
        """On the gateway of an Ingestor of this process, or on a port (another process)."""
        if isinstance(ing, Ingestor):
            assert ing.gateway is not None and ing.gateway.port
            port = ing.gateway.port
        else:
            port = ing
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.framer = Framer()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def answers(self, n: int, timeout_s: float = 10.0) -> list[Packet]:
        got: list[Packet] = []
        deadline = time.monotonic() + timeout_s
        while len(got) < n and time.monotonic() < deadline:
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                break
            if not data:
                break
            for item in self.framer.feed(data):
                assert isinstance(item, Frame), item
                packet = parse_segment(item.segment)
                assert isinstance(packet, Packet)
                got.append(packet)
        return got

    def silent(self, wait_s: float = 1.5) -> bool:
        return self.answers(1, wait_s) == []

    def close(self) -> None:
        self.sock.close()


def readings(engine: Engine, device_id: str) -> dict[str, tuple[float, str]]:
    r = table(Reading)
    with engine.connect() as conn:
        rows = conn.execute(
            select(r.c.metric, r.c.value, r.c.quality).where(r.c.device_id == device_id)
        ).all()
    return {row.metric: (row.value, row.quality) for row in rows}


def reading_count(engine: Engine, device_id: str) -> int:
    r = table(Reading)
    with engine.connect() as conn:
        return len(conn.execute(select(r.c.ts).where(r.c.device_id == device_id)).all())


def dead(engine: Engine) -> list[tuple[str, str | None, str]]:
    d = table(DeadLetter)
    with engine.connect() as conn:
        rows = conn.execute(select(d.c.reason, d.c.device_id, d.c.detail).order_by(d.c.id))
        return [(row.reason, row.device_id, row.detail) for row in rows]


def frame_2011(
    mn: str, at: datetime, qn: str, values: str, flag: int = 5, pw: str = "123456"
) -> bytes:
    return encode_frame(
        f"QN={qn};ST=39;CN=2011;PW={pw};MN={mn};Flag={flag};"
        f"CP=&&DataTime={at:%Y%m%d%H%M%S};{values}&&"
    )


def test_field_frames_are_stored_and_answered_only_when_asked(
    gateway: Ingestor, pg_engine: Engine
) -> None:
    for frame in (PHP_DUST, JAVA_2005, YC_DUST, WATER_2025_RTD, H01_DUST):
        # every one of them carries its CRC as published
        seg = frame[6:-6]
        assert crc_text(seg) == frame[-6:-2].decode()
    asked = Logger(gateway)
    asked.send(YC_DUST)
    (answer,) = asked.answers(1)
    # 9014: the device's QN, ST=91, Flag=4 (2017, no ack asked), CP=&&&&
    assert answer.fields == {
        "QN": "20191018104952418",
        "ST": "91",
        "CN": "9014",
        "PW": "123456",
        "MN": "ZX00001",
        "Flag": "4",
    }
    assert answer.cp == {}
    # answered only after commit: the readings are there when the answer is
    stored = readings(pg_engine, "dust-yc")
    assert stored["pm10"] == (30.0, "N") and stored["noise"] == (66.8, "N")
    assert set(stored) == {
        "pm10", "pm25", "air_temperature", "humidity", "wind_direction", "wind_speed", "tsp",
        "noise",
    }  # fmt: skip
    water = Logger(gateway)
    water.send(WATER_2025_RTD)
    (answer,) = water.answers(1)
    assert answer.fields["Flag"] == "8" and answer.fields["CN"] == "9014"  # 2025, no ack bit
    assert set(readings(pg_engine, "water-a11")) == {"water_temperature", "conductivity", "ph"}
    unasked = Logger(gateway)
    unasked.send(PHP_DUST)  # Flag=4: stored, not answered
    assert unasked.silent()
    wait_for(lambda: len(readings(pg_engine, "dust-php")) == 8, 10, "the PHP frame stored")
    # the same validation as MQTT: 0 kPa of air pressure is no reading, the rest is stored
    wait_for(lambda: dead(pg_engine), 10, "a dead letter")
    assert [(r, d) for r, d, _ in dead(pg_engine)] == [
        ("hj212_unknown_code", "water-a11"),  # w01017
        ("hj212_unknown_code", "water-a11"),  # w01019
        ("out_of_range", "dust-php"),
    ]


def test_a_2005_frame_without_flag_is_stored_unanswered(
    gateway: Ingestor, pg_engine: Engine
) -> None:
    logger = Logger(gateway)
    logger.send(JAVA_2005)
    assert logger.silent()
    wait_for(lambda: len(readings(pg_engine, "dust-java")) == 5, 10, "the 2005 frame stored")
    assert readings(pg_engine, "dust-java")["pm10"] == (24.0, "N")


def test_the_worked_example_logs_in_and_binds_the_connection(
    gateway: Ingestor, pg_engine: Engine
) -> None:
    logger = Logger(gateway)
    logger.send(WORKED)  # CN=1062: recorded, not a data frame
    now = datetime.now(TZ).replace(microsecond=0)
    logger.send(frame_2011("010000A8900016F000169DC0", now, "1", "a34002-Rtd=41.5", pw="100000"))
    assert [a.cn for a in logger.answers(1)] == ["9014"]
    # another MN on a connection bound to the first is refused
    logger.send(frame_2011("ZX00001", now, "2", "a34002-Rtd=41.5"))
    assert logger.silent()
    assert readings(pg_engine, "dust-worked") == {"pm10": (41.5, "N")}
    wait_for(lambda: [r for r, *_ in dead(pg_engine)] == ["hj212_unknown_mn"], 10, dead(pg_engine))


def test_one_byte_at_a_time_and_three_frames_in_one_write(
    gateway: Ingestor, pg_engine: Engine
) -> None:
    logger = Logger(gateway)
    start = datetime.now(TZ).replace(microsecond=0) - timedelta(minutes=10)
    first = frame_2011("ZX00001", start, "10", "a34002-Rtd=50,a34002-Flag=N")
    for b in first:
        logger.send(bytes([b]))
    assert len(logger.answers(1)) == 1
    three = b"".join(
        frame_2011("ZX00001", start + timedelta(minutes=i), str(20 + i), f"a34002-Rtd={60 + i}")
        for i in range(1, 4)
    )
    logger.send(three)
    assert [a.qn for a in logger.answers(3)] == ["21", "22", "23"]
    assert reading_count(pg_engine, "dust-yc") == 4


def test_bad_crc_is_not_answered_and_becomes_a_dead_letter(
    gateway: Ingestor, pg_engine: Engine
) -> None:
    logger = Logger(gateway)
    logger.send(BAD_CRC)
    assert logger.silent()
    wait_for(lambda: dead(pg_engine), 10, "a dead letter")
    ((reason, device_id, detail),) = dead(pg_engine)
    assert reason == "hj212_bad_crc" and device_id is None and "BC81" in detail
    assert reading_count(pg_engine, "dust-190720099") == 0


def test_wrong_pw_and_unknown_mn_get_the_same_silence(gateway: Ingestor, pg_engine: Engine) -> None:
    now = datetime.now(TZ).replace(microsecond=0)
    wrong = Logger(gateway)
    wrong.send(frame_2011("ZX00001", now, "1", "a34002-Rtd=41.5", pw="654321"))
    unknown = Logger(gateway)
    unknown.send(frame_2011("NOSUCHMN", now, "1", "a34002-Rtd=41.5"))
    assert wrong.silent() and unknown.silent(0.2)
    wait_for(lambda: len(dead(pg_engine)) == 2, 10, "two dead letters")
    assert sorted(r for r, *_ in dead(pg_engine)) == ["hj212_unknown_mn", "hj212_wrong_password"]
    d = table(DeadLetter)
    with pg_engine.connect() as conn:
        payloads = conn.execute(select(d.c.payload)).scalars().all()
    assert all("PW=***;" in p and "654321" not in p for p in payloads)  # PW masked
    assert reading_count(pg_engine, "dust-yc") == 0


def test_repeated_wrong_passwords_are_locked_out(gateway: Ingestor, pg_engine: Engine) -> None:
    now = datetime.now(TZ).replace(microsecond=0)
    logger = Logger(gateway)
    for i in range(5):
        logger.send(frame_2011("ZX00001", now, str(i), "a34002-Rtd=1", pw="000000"))
    wait_for(lambda: len(dead(pg_engine)) == 5, 10, "five dead letters")
    # now even the right PW from this address is refused for a while
    logger.send(frame_2011("ZX00001", now, "9", "a34002-Rtd=1"))
    assert logger.silent()
    wait_for(lambda: "locked out" in dead(pg_engine)[-1][2], 10, "a lockout dead letter")


def test_unknown_code_among_good_ones_costs_only_that_reading(
    gateway: Ingestor, pg_engine: Engine
) -> None:
    logger = Logger(gateway)
    logger.send(H01_DUST)
    assert len(logger.answers(1)) == 1  # answered: the frame is fully accounted for
    stored = readings(pg_engine, "dust-h01")
    assert "pm25" in stored and stored["air_pressure"] == (50.0, "N")
    assert [(r, d) for r, d, _ in dead(pg_engine)] == [("hj212_unknown_code", "dust-h01")]


def test_a_frame_with_gas_codes_stores_its_dust_and_explains_the_rest(
    gateway: Ingestor, pg_engine: Engine
) -> None:
    assert crc_text(AIR_GAS[6:-6]) == "9241"  # as published
    logger = Logger(gateway)
    logger.send(AIR_GAS)
    (answer,) = logger.answers(1)
    assert answer.qn == "20220928142812336"
    assert readings(pg_engine, "dust-zqgx") == {"pm10": (5.0, "N"), "pm25": (4.0, "N")}
    wait_for(lambda: dead(pg_engine), 10, "the unmapped codes' dead letter")
    assert {(r, d) for r, d, _ in dead(pg_engine)} == {("hj212_unknown_code", "dust-zqgx")}
    detail = " ".join(d for _, _, d in dead(pg_engine))
    for code in ("l01001", "l01002", "a21026", "a21004", "a21005", "a05024"):
        assert code in detail


def test_a_logger_retry_with_a_new_qn_is_stored_once(gateway: Ingestor, pg_engine: Engine) -> None:
    at = datetime.now(TZ).replace(microsecond=0)
    logger = Logger(gateway)
    for qn in ("20261201080000001", "20261201080010001", "20261201080020001"):
        logger.send(frame_2011("ZX00001", at, qn, "a34002-Rtd=77.7,a34002-Flag=N"))
        assert [a.qn for a in logger.answers(1)] == [qn]
    assert reading_count(pg_engine, "dust-yc") == 1


def test_period_data_is_its_own_series(gateway: Ingestor, pg_engine: Engine) -> None:
    logger = Logger(gateway)
    logger.send(WATER_2025_HOUR)
    assert len(logger.answers(1)) == 1
    # same metric and instant as a real-time reading would have: no collision
    at = datetime(2026, 7, 6, 10, 0, tzinfo=TZ)
    rt = encode_frame(
        f"QN=1;ST=21;CN=2011;PW=123456;MN=A110000_0001;Flag=9;"
        f"CP=&&DataTime={at:%Y%m%d%H%M%S};w01001-Rtd=7.1&&"
    )
    logger.send(rt)
    assert len(logger.answers(1)) == 1
    stored = readings(pg_engine, "water-a11")
    assert stored["ph.avg_hour"] == (6.6, "N") and stored["ph"] == (7.1, "N")
    assert stored["water_temperature.avg_hour"] == (28.4, "N")


def test_garbage_closes_that_connection_and_others_are_served(
    gateway: Ingestor, pg_engine: Engine
) -> None:
    bad = Logger(gateway)
    good = Logger(gateway)
    bad.send(b"\x00\xffnot hj212 at all##" * 10 + b"##12ab" * 30)
    good.send(YC_DUST)
    assert len(good.answers(1)) == 1
    assert bad.answers(1, 3.0) == []  # closed, no answer


def test_on_sqlite_a_field_frame_and_its_retry_are_stored_once(
    sqlite_url: str, tmp_path: object
) -> None:
    engine = make_engine(sqlite_url)
    ing = start_gateway(sqlite_url, engine, tmp_path)
    try:
        logger = Logger(ing)
        logger.send(YC_DUST)
        # the logger's retry: same DataTime, new QN
        logger.send(YC_DUST.replace(b"QN=20191018104952418", b"QN=20191018104957418")[:-6])
        seg = YC_DUST.replace(b"QN=20191018104952418", b"QN=20191018104957418")[6:-6]
        logger.send(crc_text(seg).encode() + b"\r\n")
        assert [a.qn for a in logger.answers(2)] == ["20191018104952418", "20191018104957418"]
        assert reading_count(engine, "dust-yc") == 8
    finally:
        ing.stop()
        engine.dispose()


def test_no_answer_before_the_readings_are_durable(
    pg_url: str, pg_engine: Engine, tmp_path: object
) -> None:
    ing = start_gateway(pg_url, pg_engine, tmp_path)
    ing.stop()
    # a gateway whose writer has not started: frames wait in its queue, not yet durable
    settings = Settings(database_url=pg_url, data_dir=tmp_path, hj212_port=free_port())
    held = Ingestor(settings, pg_engine, mqtt=False, hj212=True)
    assert held.gateway is not None
    held._start_gateway(held.gateway)
    try:
        logger = Logger(held)
        logger.send(YC_DUST)
        assert logger.silent(2.0)
        assert reading_count(pg_engine, "dust-yc") == 0
        held.writer.start()  # now it commits, and only then answers
        assert [a.cn for a in logger.answers(1)] == ["9014"]
        assert reading_count(pg_engine, "dust-yc") == 8
    finally:
        held.stop()


def test_the_logger_simulator_uploads_its_backlog_once_answered(
    pg_url: str, pg_engine: Engine, tmp_path: object
) -> None:
    from devices.hj212_logger import HJ212Logger
    from devices.simulators import DustMonitor

    ing = start_gateway(pg_url, pg_engine, tmp_path)
    assert ing.gateway is not None and ing.gateway.port
    try:
        sim = HJ212Logger(
            DustMonitor("dust-yc"),
            mn="ZX00001",
            password="123456",
            host="127.0.0.1",
            port=ing.gateway.port,
            timeout_s=1.0,
            retries=1,
        )
        now = datetime.now(TZ).replace(second=0, microsecond=0)
        # two samples from an outage (never answered), then the platform is back
        sim.pending.extend([now - timedelta(minutes=2), now - timedelta(minutes=1)])
        assert sim.upload(now)
        assert not sim.pending
        assert reading_count(pg_engine, "dust-yc") == 3 * 8
        sim.close()
    finally:
        ing.stop()


def test_fleet_file_keys_register_the_identity_and_a_reimport_without_them_keeps_it(
    sqlite_url: str, tmp_path: object
) -> None:
    from pathlib import Path

    from devices.fleet import load_fleet_file
    from monitor.broker_auth import verify_password
    from monitor.core.models import Device
    from monitor.registry import import_fleet

    site = (
        'id = "cs-1"\nname = "cs"\ndistrict = "Lanshan"\nkind = "construction_site"\n'
        "latitude = 35.1\nlongitude = 118.3\n"
    )
    device = 'id = "dust-9"\nsite_id = "cs-1"\nkind = "dust_monitor"\nname = "d"\n'
    first = Path(str(tmp_path)) / "first.toml"
    first.write_text(
        f'[[sites]]\n{site}[[devices]]\n{device}hj212_mn = "MN0009"\nhj212_password = "654321"\n'
        'hj212_unit = "ng/m3"\nhj212_rules_from = "hour"\n'
    )
    again = Path(str(tmp_path)) / "again.toml"
    again.write_text(f"[[sites]]\n{site}[[devices]]\n{device}")
    engine = make_engine(sqlite_url)
    d = table(Device)
    try:
        for path in (first, again):
            with engine.begin() as conn:
                import_fleet(conn, load_fleet_file(path))
            with engine.connect() as conn:
                row = conn.execute(select(d).where(d.c.id == "dust-9")).one()
            assert row.hj212_mn == "MN0009" and row.hj212_unit == "ng/m3"
            assert row.hj212_rules_from == "hour"
            assert verify_password("654321", row.hj212_password_hash)
    finally:
        engine.dispose()


def test_time_calibration_is_answered_and_a_wrong_clock_is_set(gateway: Ingestor) -> None:
    now = datetime.now(TZ)
    logger = Logger(gateway)
    # the logger's clock (its QN) is right: only the notice answer
    logger.send(
        encode_frame(f"QN={now:%Y%m%d%H%M%S}000;ST=39;CN=1013;PW=123456;MN=ZX00001;Flag=5;CP=&&&&")
    )
    assert [a.cn for a in logger.answers(1)] == ["9013"]
    assert logger.silent(1.0)
    # an hour behind: 9013, then 1012 with the platform's local time
    late = now - timedelta(hours=1)
    logger.send(
        encode_frame(f"QN={late:%Y%m%d%H%M%S}000;ST=39;CN=1013;PW=123456;MN=ZX00001;Flag=5;CP=&&&&")
    )
    notice, set_time = logger.answers(2)
    assert (notice.cn, set_time.cn) == ("9013", "1012")
    system = datetime.strptime(set_time.cp["SystemTime"], "%Y%m%d%H%M%S").replace(tzinfo=TZ)
    assert abs((system - datetime.now(TZ)).total_seconds()) < 10
    # a 2025 heartbeat is answered too
    logger.send(encode_frame("QN=1;ST=39;CN=9015;PW=123456;MN=ZX00001;Flag=9;CP=&&&&"))
    (beat,) = logger.answers(1)
    assert beat.cn == "9013" and beat.fields["Flag"] == "8"


def test_connections_per_address_can_be_limited(
    pg_url: str, pg_engine: Engine, tmp_path: object
) -> None:
    ing = start_gateway(pg_url, pg_engine, tmp_path, hj212_max_connections_per_address=1)
    try:
        first, second = Logger(ing), Logger(ing)
        assert second.sock.recv(10) == b""  # closed at once
        first.send(YC_DUST)
        assert len(first.answers(1)) == 1
    finally:
        ing.stop()


_FRAGMENTS = st.one_of(
    st.binary(max_size=120),
    st.just(YC_DUST),
    st.just(BAD_CRC),
    st.builds(lambda b: encode_frame(b.decode("latin-1")), st.binary(max_size=120)),
    st.builds(
        lambda cp: encode_frame(
            f"QN=1;ST=39;CN=2011;PW=123456;MN=ZX00001;Flag=5;CP=&&DataTime=20261201080000;{cp}&&"
        ),
        st.text(alphabet="a0123456789-=;,.RtdFlagNAvg", max_size=60),
    ),
)


@hsettings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(chunks=st.lists(_FRAGMENTS, min_size=1, max_size=6))
def test_fuzz_any_bytes_never_break_the_handler_and_others_are_served(
    gateway: Ingestor, caplog: pytest.LogCaptureFixture, chunks: list[bytes]
) -> None:
    caplog.set_level(logging.ERROR, logger="ingest.hj212.server")
    fuzz = Logger(gateway)
    for chunk in chunks:
        try:
            fuzz.send(chunk)
        except OSError:
            break  # the server closed a garbage connection: allowed
    fuzz.close()
    good = Logger(gateway)
    now = datetime.now(TZ).replace(microsecond=0)
    good.send(frame_2011("ZX00001", now, "7", "a34002-Rtd=12.5"))
    assert [a.qn for a in good.answers(1)] == ["7"]
    good.close()
    assert not [r for r in caplog.records if r.name == "ingest.hj212.server"]


def test_split_packets_are_each_answered_and_stored_one_by_one(
    gateway: Ingestor, pg_engine: Engine
) -> None:
    at = datetime.now(TZ).replace(second=0, microsecond=0) - timedelta(minutes=5)
    head = "QN=20261201080000001;ST=39;CN=2011;PW=123456;MN=ZX00001;Flag=7"
    cp = f"CP=&&DataTime={at:%Y%m%d%H%M%S};"
    logger = Logger(gateway)
    # Flag=7: split and ack (the standard's own example); the second packet puts PNO before
    # PNUM and zero-pads them, as some loggers do (§1.11)
    logger.send(encode_frame(f"{head};PNUM=2;PNO=1;{cp}a34002-Rtd=31,a34002-Flag=N&&"))
    logger.send(encode_frame(f"{head};PNO=02;PNUM=02;{cp}a34004-Rtd=21,a34004-Flag=N&&"))
    answers = logger.answers(2)
    assert [(a.cn, a.qn) for a in answers] == [("9014", "20261201080000001")] * 2
    assert readings(pg_engine, "dust-yc") == {"pm10": (31.0, "N"), "pm25": (21.0, "N")}
    assert dead(pg_engine) == []


def test_a_history_upload_after_an_outage_is_answered_in_order_and_stored_whole(
    gateway: Ingestor, pg_engine: Engine
) -> None:
    """What a logger sends when its link comes back: the hours it kept, minute by minute,
    then the minute and hourly aggregates, written back to back."""
    start = datetime.now(TZ).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    frames = [
        frame_2011("ZX00001", start + timedelta(minutes=i), f"h{i}", f"a34002-Rtd={30 + i % 7}")
        for i in range(120)
    ]
    for i in range(0, 120, 10):  # 2051 minute data every 10 minutes (§1.7)
        frames.append(
            encode_frame(
                f"QN=m{i};ST=39;CN=2051;PW=123456;MN=ZX00001;Flag=5;CP=&&DataTime="
                f"{start + timedelta(minutes=i):%Y%m%d%H%M%S};a34002-Avg=33,a34002-Min=30,"
                "a34002-Max=36,a34002-Flag=N&&"
            )
        )
    for h in range(2):  # 2061 hourly data
        frames.append(
            encode_frame(
                f"QN=H{h};ST=39;CN=2061;PW=123456;MN=ZX00001;Flag=5;CP=&&DataTime="
                f"{start + timedelta(hours=h):%Y%m%d%H%M%S};a34002-Avg=33.0,a34002-Flag=N&&"
            )
        )
    logger = Logger(gateway)
    logger.send(b"".join(frames))
    qns = [a.qn for a in logger.answers(len(frames), 30.0)]
    assert qns == [
        *(f"h{i}" for i in range(120)),
        *(f"m{i}" for i in range(0, 120, 10)),
        "H0",
        "H1",
    ]
    r = table(Reading)
    with pg_engine.connect() as conn:
        counts: dict[str, int] = dict(
            conn.execute(
                select(r.c.metric, func.count())
                .where(r.c.device_id == "dust-yc")
                .group_by(r.c.metric)
            ).all()
        )
    assert counts == {
        "pm10": 120,
        "pm10.avg_minute": 12,
        "pm10.min_minute": 12,
        "pm10.max_minute": 12,
        "pm10.avg_hour": 2,
    }
    assert dead(pg_engine) == []
