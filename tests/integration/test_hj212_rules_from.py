"""A logger that sends only period data gets its values evaluated (`hj212_rules_from`), over
the real TCP server, writer, rules and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from sqlalchemy import Engine, select, update

from alerts.packs import install_default_rules
from ingest.hj212.protocol import encode_frame
from ingest.service import Ingestor
from monitor.core.models import Alert, Device, Reading, Rule, table
from tests.integration.test_hj212 import TZ, Logger, frame_2011, start_gateway

MN = "ZX00001"  # dust-yc in tests.integration.test_hj212.DEVICES
DEVICE = "dust-yc"


def frame_2051(at: datetime, qn: str, pm10: float) -> bytes:
    return encode_frame(
        f"QN={qn};ST=39;CN=2051;PW=123456;MN={MN};Flag=5;"
        f"CP=&&DataTime={at:%Y%m%d%H%M%S};a34002-Avg={pm10},a34002-Min={pm10 - 5},"
        f"a34002-Max={pm10 + 5},a34002-Flag=N&&"
    )


def gateway_with(pg_url: str, engine: Engine, tmp_path: object, rules_from: str | None) -> Ingestor:
    with engine.begin() as conn:
        install_default_rules(conn)
    ing = start_gateway(pg_url, engine, tmp_path)  # registers the loggers
    with engine.begin() as conn:
        conn.execute(
            update(table(Device))
            .where(table(Device).c.id == DEVICE)
            .values(hj212_rules_from=rules_from, interval_s=60)
        )
    return ing


@pytest.fixture
def minute_gateway(pg_url: str, pg_engine: Engine, tmp_path: object) -> Iterator[Ingestor]:
    ing = gateway_with(pg_url, pg_engine, tmp_path, "minute")
    yield ing
    ing.stop()


@pytest.fixture
def rtd_gateway(pg_url: str, pg_engine: Engine, tmp_path: object) -> Iterator[Ingestor]:
    ing = gateway_with(pg_url, pg_engine, tmp_path, None)
    yield ing
    ing.stop()


def stored(engine: Engine) -> list[tuple[str, datetime, float]]:
    r = table(Reading)
    with engine.connect() as conn:
        rows = conn.execute(
            select(r.c.metric, r.c.ts, r.c.value).where(r.c.device_id == DEVICE).order_by(r.c.ts)
        ).all()
    return [(row.metric, row.ts, row.value) for row in rows]


def alert_rules(engine: Engine) -> set[str]:
    a, rule = table(Alert), table(Rule)
    with engine.connect() as conn:
        rows = conn.execute(
            select(rule.c.name).join(a, a.c.rule_id == rule.c.id).where(a.c.device_id == DEVICE)
        ).all()
    return {row.name for row in rows}


MINUTES = 14  # the 15-minute rule judges a window its readings span 75% of


def send_minutes(ing: Ingestor, pm10: float, minutes: int = MINUTES) -> datetime:
    """`minutes` 2051 frames, one a minute ending a minute ago; the first DataTime."""
    start = datetime.now(TZ).replace(second=0, microsecond=0) - timedelta(minutes=minutes + 1)
    logger = Logger(ing)
    for i in range(minutes):
        logger.send(frame_2051(start + timedelta(minutes=i), f"2051{i:03d}", pm10))
        assert len(logger.answers(1)) == 1
    logger.close()
    return start


def test_a_period_only_logger_raises_the_default_rules_alert(
    minute_gateway: Ingestor, pg_engine: Engine
) -> None:
    start = send_minutes(minute_gateway, 400.0)
    rows = stored(pg_engine)
    plain = [(ts, v) for m, ts, v in rows if m == "pm10"]
    means = [(ts, v) for m, ts, v in rows if m == "pm10.avg_minute"]
    # the period series at the period's start, as before; the mean as pm10 at its end
    assert [ts for ts, _ in means] == [start + timedelta(minutes=i) for i in range(MINUTES)]
    assert plain == [(start + timedelta(minutes=i + 1), 400.0) for i in range(MINUTES)]
    assert "dust-pm10-15min" in alert_rules(pg_engine)
    # a real-time frame of that device is its own series, never under pm10
    logger = Logger(minute_gateway)
    logger.send(frame_2011(MN, start + timedelta(minutes=1), "2011001", "a34002-Rtd=55.0"))
    assert len(logger.answers(1)) == 1
    rtd = [(m, ts, v) for m, ts, v in stored(pg_engine) if v == 55.0]
    assert rtd == [("pm10.rtd", start + timedelta(minutes=1), 55.0)]


def test_by_default_period_data_is_not_what_the_rules_see(
    rtd_gateway: Ingestor, pg_engine: Engine
) -> None:
    send_minutes(rtd_gateway, 400.0)
    assert {m for m, _, _ in stored(pg_engine)} == {
        "pm10.avg_minute",
        "pm10.min_minute",
        "pm10.max_minute",
    }
    assert alert_rules(pg_engine) == set()
    logger = Logger(rtd_gateway)
    at = datetime.now(TZ).replace(microsecond=0) - timedelta(seconds=5)
    logger.send(frame_2011(MN, at, "2011001", "a34002-Rtd=55.0"))
    assert len(logger.answers(1)) == 1
    assert ("pm10", at, 55.0) in stored(pg_engine)
