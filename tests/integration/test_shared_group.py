"""Shared-group members on the real Mosquitto: a member gone for good is retired without losing
the share the broker queued for it, and its session ends at once."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import paho.mqtt.client as mqtt
from click.testing import CliRunner
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import Engine, func, select

from ingest.contract import telemetry_topic
from ingest.service import Ingestor
from monitor.cli import main
from monitor.core.models import Reading, table
from monitor.core.settings import MqttEndpoint, Settings
from tests.conftest import register

T0 = datetime(2026, 11, 25, 0, 0, tzinfo=UTC)


def _session_present(broker: MqttEndpoint, client_id: str) -> bool:
    """Connect as `client_id` without clean start and say whether the broker had a session;
    the CONNECT carries no session expiry, so the session ends with this connection."""
    seen = threading.Event()
    present: list[bool] = []

    def on_connect(_c: object, _u: object, flags: mqtt.ConnectFlags, *_: object) -> None:
        present.append(flags.session_present)
        seen.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.on_connect = on_connect
    client.connect(broker.host, broker.port, clean_start=False)
    client.loop_start()
    assert seen.wait(10), "no CONNACK"
    client.disconnect()
    client.loop_stop()
    return present[0]


def _member(pg_url: str, mqtt_url: str, prefix: str, client_id: str, **more: Any) -> Settings:
    """The settings of one member of the test's own shared group."""
    return Settings(
        database_url=pg_url,
        mqtt_url=mqtt_url,
        mqtt_topic_prefix=prefix,
        mqtt_client_id=client_id,
        mqtt_shared_group=prefix,
        **more,
    )


def _publish(broker: MqttEndpoint, prefix: str, n: int) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    for i in range(n):
        ts = (T0 + timedelta(minutes=i)).isoformat()
        body = ('{"ts": "%s", "values": {"pm10": 70}}' % ts).encode()
        client.publish(telemetry_topic(prefix, "dust-1"), body, qos=1).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


def test_a_retired_member_leaves_nothing_queued_and_loses_nothing(
    pg_url: str, pg_engine: Engine, mqtt_url: str, prefix: str
) -> None:
    register(pg_engine, devices={"dust-1": "dust_monitor"})
    broker = MqttEndpoint(mqtt_url)
    member = f"{prefix}-a"
    gone = Ingestor(_member(pg_url, mqtt_url, prefix, member), pg_engine)
    gone.start()
    gone.stop()  # a member that never comes back: its session, and its share, stay queued
    _publish(broker, prefix, 20)

    result = CliRunner().invoke(
        main,
        ["ingest", "--retire", member],
        env={
            "ENVMON_DATABASE_URL": pg_url,
            "ENVMON_MQTT_URL": mqtt_url,
            "ENVMON_MQTT_TOPIC_PREFIX": prefix,
            "ENVMON_MQTT_SHARED_GROUP": prefix,
        },
    )
    assert result.exit_code == 0, result.output
    assert f"retired {member}" in result.output
    with pg_engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(table(Reading))).scalar() == 20
    assert not _session_present(broker, member)


def test_the_session_expiry_setting_reaches_the_broker(
    pg_url: str, pg_engine: Engine, mqtt_url: str, prefix: str
) -> None:
    """A member keeps its session for `mqtt_session_expiry_s` (checked at once, not by waiting
    for it to run out)."""
    member = f"{prefix}-b"
    settings = _member(pg_url, mqtt_url, prefix, member, mqtt_session_expiry_s=3600)
    ingestor = Ingestor(settings, pg_engine)
    ingestor.start()
    ingestor.stop()
    assert _session_present(MqttEndpoint(mqtt_url), member)  # and this ends it
