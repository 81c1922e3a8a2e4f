"""From a simulated sensor through the real Mosquitto and PostgreSQL to an inspector's alert."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import Engine, func, select

from devices.publisher import FleetPublisher
from devices.simulators import DustMonitor, Episode
from ingest.contract import telemetry_topic
from ingest.service import Ingestor
from monitor.api.app import create_app
from monitor.core.models import Reading, table
from monitor.core.settings import MqttEndpoint, Settings
from tests.conftest import bearer, make_key, register


def wait_until_idle(ingestor: Ingestor, messages: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ingestor.stats.messages >= messages and ingestor.writer.idle.is_set():
            return
        time.sleep(0.1)
    raise AssertionError(f"ingestor handled {ingestor.stats.messages} of {messages} messages")


@pytest.fixture
def running(pg_url: str, pg_engine: Engine, mqtt_url: str, prefix: str) -> Iterator[Ingestor]:
    register(pg_engine, devices={"dust-1": "dust_monitor"})
    settings = Settings(
        database_url=pg_url, mqtt_url=mqtt_url, mqtt_topic_prefix=prefix, mqtt_client_id=prefix
    )
    ingestor = Ingestor(settings, pg_engine)
    ingestor.start()
    yield ingestor
    ingestor.stop()


async def test_dust_episode_opens_alert_that_inspector_acknowledges_and_resolves(
    running: Ingestor, pg_url: str, pg_engine: Engine, mqtt_url: str, prefix: str
) -> None:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    # x7 puts the 15-minute mean over the 350 µg/m³ alarm tier at any hour: the simulator's
    # night-time PM10 is about 58-80 µg/m³ (x4 gave only a warning when run after 22:00 local)
    episode = Episode("dust", now - timedelta(minutes=100), now - timedelta(minutes=20), 7.0)
    sim = DustMonitor("dust-1", seed=1, episodes=[episode])
    broker = MqttEndpoint(mqtt_url)
    pub = FleetPublisher(
        [sim],
        host=broker.host,
        port=broker.port,
        prefix=prefix,
        backfill_s=3 * 3600,
        backfill_step_s=60,
        batch_size=30,
    )
    pub.connect()
    pub.backfill(now)
    # a malformed message from the same device, between good ones
    raw = mqtt.Client(CallbackAPIVersion.VERSION2)
    raw.connect(broker.host, broker.port)
    raw.loop_start()
    raw.publish(
        telemetry_topic(prefix, "dust-1"), b'{"ts": "now", "values": {"pm10": 1}}', qos=1
    ).wait_for_publish(5)
    raw.loop_stop()
    raw.disconnect()
    pub.close()
    wait_until_idle(running, pub.published + 1)

    with pg_engine.connect() as conn:
        stored = conn.execute(select(func.count()).select_from(table(Reading))).scalar_one()
    assert stored == pub.readings  # every good reading kept, nothing twice

    settings = Settings(database_url=pg_url)
    app = create_app(settings)
    wang = bearer(make_key(pg_engine, "wang", "inspector", "Lanshan"))
    li = bearer(make_key(pg_engine, "li", "inspector"))
    viewer = bearer(make_key(pg_engine, "zhao", "viewer", "Lanshan"))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test", headers=wang
        ) as api,
    ):
        dead = (await api.get("/v1/dead-letters", params={"device_id": "dust-1"})).json()
        assert [d["reason"] for d in dead["items"]] == ["bad_timestamp"]
        assert "ts" in dead["items"][0]["detail"]

        alerts = (await api.get("/v1/alerts", params={"device_id": "dust-1"})).json()["items"]
        by_rule = {a["rule_name"]: a for a in alerts}
        # the 15-minute trigger cleared by itself once the episode was over ...
        fast = by_rule["dust-pm10-15min"]
        assert fast["status"] == "resolved" and fast["severity"] == "alarm"
        assert episode.start <= datetime.fromisoformat(fast["fired_at"]) < episode.end
        # ... while the hourly mean is still above its alarm tier
        hourly = by_rule["dust-pm10-1h"]
        assert hourly["status"] == "firing" and hourly["severity"] == "alarm"
        assert "GB 3095-2012" in hourly["basis"]

        r = await api.post(
            f"/v1/alerts/{hourly['id']}/acknowledge",
            json={"note": "spraying ordered"},
            headers=viewer,
        )
        assert r.status_code == 403  # a viewer reads, does not act
        r = await api.post(
            f"/v1/alerts/{hourly['id']}/acknowledge", json={"note": "spraying ordered"}
        )
        assert r.status_code == 200 and r.json()["status"] == "acknowledged"
        again = await api.post(f"/v1/alerts/{hourly['id']}/acknowledge", json={})
        assert again.status_code == 409
        r = await api.post(
            f"/v1/alerts/{hourly['id']}/resolve",
            json={"note": "site inspected"},
            headers=li,
        )
        detail = r.json()
        assert detail["status"] == "resolved" and detail["resolved_at"]
        assert [(e["kind"], e["actor"]) for e in detail["events"]][-2:] == [
            ("acknowledged", "user:wang"),
            ("resolved", "user:li"),
        ]
        assert detail["events"][0]["kind"] == "opened"

        resolved = (await api.get("/v1/alerts", params={"status": "resolved"})).json()["items"]
        assert {a["id"] for a in resolved} >= {hourly["id"], fast["id"]}
        hourly_buckets = (
            await api.get(
                "/v1/readings", params={"device_id": "dust-1", "metric": "pm10", "bucket": "hour"}
            )
        ).json()["items"]
        assert 3 <= len(hourly_buckets) <= 4
        assert max(b["mean"] for b in hourly_buckets) > 250


def test_repeated_messages_store_nothing_new(
    running: Ingestor, pg_engine: Engine, mqtt_url: str, prefix: str
) -> None:
    broker = MqttEndpoint(mqtt_url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.connect(broker.host, broker.port)
    client.loop_start()
    body = b'{"ts": "2026-11-25T08:00:00+08:00", "values": {"pm10": 70, "pm25": 30}}'
    for _ in range(3):
        client.publish(telemetry_topic(prefix, "dust-1"), body, qos=1).wait_for_publish(5)
    client.loop_stop()
    client.disconnect()
    wait_until_idle(running, 3)
    with pg_engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(table(Reading))).scalar() == 2
    assert running.stats.stored == 2 and running.stats.duplicates == 4
