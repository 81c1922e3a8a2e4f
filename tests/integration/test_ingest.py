"""The ingest contract through the real broker and PostgreSQL: hostile input, event time,
device status, metrics."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import Engine, select

from ingest.contract import ReadingSet, TelemetryBatch, encode, status_topic, telemetry_topic
from ingest.service import Ingestor
from monitor.api.app import create_app
from monitor.core.models import DeadLetter, HourlyRollup, Reading, table
from monitor.core.settings import MqttEndpoint, Settings
from tests.conftest import bearer, make_key, register
from tests.integration.services import wait_for

NOW = datetime.now(UTC).replace(microsecond=0)
TS = (NOW - timedelta(minutes=5)).isoformat()


class Publisher:
    def __init__(self, url: str) -> None:
        ep = MqttEndpoint(url)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.client.connect(ep.host, ep.port)
        self.client.loop_start()
        self.count = 0

    def send(self, topic: str, payload: bytes | str) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)
        self.count += 1

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def ingestor(
    pg_url: str, pg_engine: Engine, mqtt_url: str, prefix: str, tmp_path: object
) -> Iterator[Ingestor]:
    register(pg_engine, devices={"dust-1": "dust_monitor", "dust-2": "dust_monitor"}, rules=False)
    settings = Settings(
        database_url=pg_url,
        mqtt_url=mqtt_url,
        mqtt_topic_prefix=prefix,
        mqtt_client_id=prefix,
        data_dir=tmp_path,
        max_payload_bytes=4096,
        max_batch_items=50,
    )
    ing = Ingestor(settings, pg_engine)
    ing.start()
    yield ing
    ing.stop()


@pytest.fixture
def pub(mqtt_url: str) -> Iterator[Publisher]:
    p = Publisher(mqtt_url)
    yield p
    p.close()


def wait_handled(ing: Ingestor, n: int) -> None:
    wait_for(
        lambda: ing.stats.messages >= n and ing.writer.idle.is_set(), 30, f"{n} messages handled"
    )


# (payload, expected dead-letter reasons, metrics stored beside them)
CORPUS: list[tuple[str, list[str], set[str]]] = [
    ("{not json", ["bad_json"], set()),
    ('{"ts": "%s", "values": {"pm10": NaN}}' % TS, ["bad_json"], set()),
    ('{"ts": "%s", "values": {"pm10": Infinity}}' % TS, ["bad_json"], set()),
    ('{"ts": "%s", "values": {"pm10": 1e999}}' % TS, ["bad_json"], set()),
    ('{"ts": "%s", "values": {"pm10": 10, "pm10": 900}}' % TS, ["duplicate_key"], set()),
    ('{"ts": "%s", "values": {"pm10": "82", "pm25": 30}}' % TS, ["bad_value"], {"pm25"}),
    ('{"ts": "%s", "values": {"pm10": true, "tsp": 120}}' % TS, ["bad_value"], {"tsp"}),
    ('{"ts": "%s", "values": {"radon": 3, "noise": 61}}' % TS, ["unknown_metric"], {"noise"}),
    (
        '{"ts": "%s", "values": {"turbidity": 3, "humidity": 61}}' % TS,
        ["wrong_metric_for_kind"],
        {"humidity"},
    ),
    (
        '{"ts": "%s", "values": {"pm10": -4, "wind_speed": 3.2}}' % TS,
        ["out_of_range"],
        {"wind_speed"},
    ),
    (
        '{"ts": "%s", "values": {"pm10": 0.08, "pm25": 35}, "units": {"pm10": "mg/m3", '
        '"pm25": "ug/m3"}}' % TS,
        ["unit_mismatch"],
        {"pm25"},
    ),
    (
        '{"ts": "%s", "values": {"pm10": 70}}' % (NOW + timedelta(hours=1)).isoformat(),
        ["future_timestamp"],
        set(),
    ),
    ('{"ts": "2026-11-25 08:00", "values": {"pm10": 70}}', ["bad_timestamp"], set()),
    (
        '{"batch": [{"ts": "%s", "values": {"pm10": 70}}, {"ts": 1, "values": {}}, 7]}' % TS,
        ["bad_payload", "bad_payload"],
        {"pm10"},
    ),
    (
        '{"batch": [%s]}' % ",".join(['{"ts": "%s", "values": {"pm10": 1}}' % TS] * 51),
        ["batch_too_long"],
        set(),
    ),
    (
        '{"ts": "%s", "values": {"pm10": 1}, "pad": "%s"}' % (TS, "x" * 5000),
        ["payload_too_large"],
        set(),
    ),
    ("[]", ["bad_payload"], set()),
]


def test_hostile_corpus_lands_in_dead_letters_and_good_parts_are_kept(
    ingestor: Ingestor, pub: Publisher, pg_engine: Engine, prefix: str
) -> None:
    for i, (payload, _, _) in enumerate(CORPUS):
        # one device per case keeps each case's readings apart by event time
        ts_shift = payload.replace(TS, (NOW - timedelta(minutes=10, seconds=i)).isoformat())
        pub.send(telemetry_topic(prefix, "dust-1"), ts_shift)
    pub.send(telemetry_topic(prefix, "ghost-9"), '{"ts": "%s", "values": {"pm10": 1}}' % TS)
    wait_handled(ingestor, pub.count)
    with pg_engine.connect() as conn:
        dead = conn.execute(select(table(DeadLetter)).order_by("id")).all()
        rows = conn.execute(select(table(Reading))).all()
    expected_reasons = [r for _, reasons, _ in CORPUS for r in reasons] + ["unknown_device"]
    assert sorted(d.reason for d in dead) == sorted(expected_reasons)
    assert all(d.detail and d.topic.startswith(prefix) for d in dead)
    assert sorted(r.metric for r in rows) == sorted(m for _, _, ms in CORPUS for m in ms)


def test_out_of_order_day_gives_the_same_rollups_as_in_order(
    ingestor: Ingestor, pub: Publisher, pg_engine: Engine, prefix: str
) -> None:
    day = (NOW - timedelta(days=2)).replace(hour=0, minute=0, second=0)
    rng = random.Random(5)
    sets = [
        ReadingSet(
            ts=day + timedelta(minutes=5 * i),
            values={"pm10": round(rng.uniform(40, 300), 1)},
            flags={"pm10": "D"} if i % 17 == 0 else {},
        )
        for i in range(288)
    ]
    shuffled = sets[:]
    rng.shuffle(shuffled)
    for device, order in (("dust-1", sets), ("dust-2", shuffled)):
        for i in range(0, len(order), 12):
            pub.send(
                telemetry_topic(prefix, device), encode(TelemetryBatch(batch=order[i : i + 12]))
            )
    # a late repeat of part of the day changes nothing
    pub.send(telemetry_topic(prefix, "dust-2"), encode(TelemetryBatch(batch=shuffled[:20])))
    wait_handled(ingestor, pub.count)
    rollups = table(HourlyRollup)
    with pg_engine.connect() as conn:

        def hours(device: str) -> list[tuple[object, ...]]:
            q = (
                select(rollups.c.hour, rollups.c.count, rollups.c.sum, rollups.c.min, rollups.c.max)
                .where(rollups.c.device_id == device)
                .order_by(rollups.c.hour)
            )
            return [tuple(r) for r in conn.execute(q)]

        in_order, out_of_order = hours("dust-1"), hours("dust-2")
    assert len(in_order) == 24
    assert [h[:2] for h in in_order] == [h[:2] for h in out_of_order]
    for a, b in zip(in_order, out_of_order, strict=True):
        assert a[2] == pytest.approx(b[2]) and a[3:] == b[3:]
    # only N-flagged readings count: 17 of the 288 are flagged D
    assert sum(int(h[1]) for h in in_order) == 288 - len(range(0, 288, 17))  # type: ignore[call-overload]


async def test_latest_is_by_event_time_and_status_and_skew_show_in_the_api(
    ingestor: Ingestor, pub: Publisher, pg_url: str, pg_engine: Engine, prefix: str
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)  # not NOW: the module may be old by now
    newer = now - timedelta(seconds=30)
    older = now - timedelta(hours=3)
    pub.send(telemetry_topic(prefix, "dust-1"), encode(ReadingSet(ts=newer, values={"pm10": 55.0})))
    pub.send(
        telemetry_topic(prefix, "dust-1"),  # a late upload of old data arrives last
        encode(ReadingSet(ts=older, values={"pm10": 999.0})),
    )
    pub.send(status_topic(prefix, "dust-2"), '{"status": "offline"}')
    pub.send(status_topic(prefix, "dust-1"), "sleepy")
    wait_handled(ingestor, pub.count)

    app = create_app(Settings(database_url=pg_url))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://test",
            headers=bearer(make_key(pg_engine)),
        ) as api,
    ):
        latest = (await api.get("/v1/devices/dust-1/latest")).json()["readings"]
        assert [(r["metric"], r["value"]) for r in latest] == [("pm10", 55.0)]
        d1 = (await api.get("/v1/devices/dust-1")).json()
        assert d1["online"] is True
        # skew of its last message: arrival minus newest event time in it (3 h late upload)
        assert 3 * 3600 - 60 < d1["clock_skew_s"] < 3 * 3600 + 120
        d2 = (await api.get("/v1/devices/dust-2")).json()
        assert d2["connection"] == "offline" and d2["online"] is False
        dead = (await api.get("/v1/dead-letters", params={"reason": "bad_status"})).json()
        assert len(dead["items"]) == 1
        text = (await api.get("/metrics")).text
        assert "envmon_readings_stored_total" in text
        assert 'envmon_dead_letters_total{reason="bad_status"}' in text
