"""No-data alerts judge silence against data, not against a restart: while the broker still
holds what devices published during the ingestor's absence, nobody is silent; a device that
really is silent still alarms at the first judgement after intake has caught up."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import Engine, insert, select, update

from alerts.schemas import RuleSpec
from ingest.service import Ingestor
from monitor.core.models import Alert, Device, Rule, table
from monitor.core.settings import MqttEndpoint, Settings
from tests.conftest import register

BACKLOG = 150


def test_restart_with_a_backlog_raises_no_no_data_alert_but_a_silent_device_alarms(
    pg_url: str, pg_engine: Engine, mqtt_url: str, prefix: str, tmp_path: Path
) -> None:
    register(pg_engine, devices={"talker": "dust_monitor", "mute": "dust_monitor"}, rules=False)
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    with pg_engine.begin() as conn:
        # both last seen an hour ago, as after a long ingestor outage
        conn.execute(
            update(table(Device)).values(
                created_at=an_hour_ago, last_seen_at=an_hour_ago, interval_s=10
            )
        )
        conn.execute(
            insert(table(Rule)).values(
                RuleSpec(
                    name="offline",
                    kind="no_data",
                    device_kind="dust_monitor",
                    metric="*",
                    warn_above=5,
                    basis="test",
                ).model_dump()
            )
        )
    settings = Settings(
        database_url=pg_url,
        mqtt_url=mqtt_url,
        mqtt_topic_prefix=prefix,
        mqtt_client_id=prefix,
        data_dir=tmp_path,
        # few messages in flight and small batches: the queue never looks "behind", which is
        # what fooled the old check into judging silence in the middle of the backlog
        mqtt_receive_maximum=5,
        batch_max_messages=10,
    )
    first = Ingestor(settings, pg_engine)
    first.start()  # makes the persistent session the broker queues for
    first.stop()

    endpoint = MqttEndpoint(mqtt_url)
    device = mqtt.Client(CallbackAPIVersion.VERSION2)
    device.connect(endpoint.host, endpoint.port)
    device.loop_start()
    now = datetime.now(UTC)
    for i in range(BACKLOG):  # "talker" kept publishing while the ingestor was away
        ts = now - timedelta(seconds=BACKLOG - i)
        body = orjson.dumps({"ts": ts.isoformat(), "values": {"pm10": 40.0}})
        device.publish(f"{prefix}/v1/devices/talker/telemetry", body, qos=1).wait_for_publish(10)
    device.loop_stop()
    device.disconnect()

    ingestor = Ingestor(settings, pg_engine)
    writer: Any = ingestor.writer
    store = writer._store_batch

    def slow(messages: Any) -> None:  # a database busy with the backlog
        time.sleep(0.2)
        store(messages)

    writer._store_batch = slow
    ingestor.start()
    judged_while_behind = 0
    try:
        deadline = time.monotonic() + 60
        while not writer.caught_up():
            assert time.monotonic() < deadline, "intake never caught up"
            writer._tick()  # what the timer thread would do meanwhile
            judged_while_behind += 1
            time.sleep(0.1)
        assert ingestor.stats.messages >= BACKLOG  # the marker came after the whole backlog
        writer._tick()  # the first judgement after catching up
    finally:
        ingestor.stop()
    with pg_engine.connect() as conn:
        alerted = {r.device_id for r in conn.execute(select(table(Alert)))}
    assert judged_while_behind > 0
    # "talker" was never judged silent (not even for a moment), "mute" alarmed at once
    assert alerted == {"mute"}
