"""FleetPublisher against a real Mosquitto (draft for tests/integration/; spawns `mosquitto`)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from devices.fleet import demo_fleet
from devices.publisher import FleetPublisher, PublisherError
from ingest.contract import ReadingSet, TelemetryBatch, parse_topic

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[int]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    # max_queued_messages 0: the test subscriber must not lose messages while it falls behind.
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n"
        "persistence false\n"
    )
    proc = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(5)


class Collector:
    def __init__(self, port: int, prefix: str) -> None:
        self.prefix = prefix
        self.messages: list[tuple[str, bytes]] = []
        self.ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"collector-{prefix}")
        self.client.on_connect = lambda c, *_: c.subscribe(f"{prefix}/#", qos=1)
        self.client.on_subscribe = lambda *_: self.ready.set()
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, bytes(m.payload)))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.ready.wait(5)

    def wait_for(self, n: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.messages) < n and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_backfill_and_live_rounds_arrive_valid_and_counted(broker: int) -> None:
    fleet = demo_fleet(datetime.now(UTC))
    collector = Collector(broker, "t-backfill")
    publisher = FleetPublisher(
        fleet.simulators, host="127.0.0.1", port=broker, prefix="t-backfill",
        interval_s=0.2, backfill_s=3600, backfill_step_s=60, batch_size=25,
    )  # fmt: skip
    with publisher:
        publisher.backfill(datetime.now(UTC))
        publisher.run(threading.Event(), count=3)
    devices = len(fleet.simulators)
    assert publisher.published == devices * (3 + 3)  # 60 stamps in batches of 25, then 3 rounds
    assert publisher.reading_sets == devices * (60 + 3)
    collector.wait_for(publisher.published)
    collector.stop()
    assert len(collector.messages) == publisher.published
    sets = 0
    for topic, payload in collector.messages:
        parsed = parse_topic("t-backfill", topic)
        assert parsed is not None and parsed[1] == "telemetry"
        if payload.startswith(b'{"batch"'):
            sets += len(TelemetryBatch.model_validate_json(payload).batch)
        else:
            ReadingSet.model_validate_json(payload)
            sets += 1
    assert sets == publisher.reading_sets


def test_more_than_65535_publishes_all_arrive_with_a_bounded_window(broker: int) -> None:
    fleet = demo_fleet(datetime.now(UTC))
    collector = Collector(broker, "t-many")
    publisher = FleetPublisher(
        fleet.simulators, host="127.0.0.1", port=broker, prefix="t-many",
        backfill_s=9000 * 60, backfill_step_s=60, batch_size=1, max_inflight=500,
    )  # fmt: skip
    with publisher:
        publisher.backfill(datetime.now(UTC))
        assert len(publisher._outstanding) <= 500
    assert publisher.published == len(fleet.simulators) * 9000 > 65_535
    collector.wait_for(publisher.published, timeout=120)
    collector.stop()
    assert len(collector.messages) == publisher.published


def test_connect_to_a_closed_port_fails_clearly() -> None:
    publisher = FleetPublisher([], host="127.0.0.1", port=free_port(), timeout_s=2)
    with pytest.raises(PublisherError, match="cannot reach"):
        publisher.connect()


def test_a_refused_login_fails_clearly(tmp_path: Path) -> None:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    passwords = tmp_path / "passwd"
    passwords.write_text("")
    conf = tmp_path / "m.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwords}\n"
    )
    proc = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        publisher = FleetPublisher(
            [], host="127.0.0.1", port=port, username="u", password="p", timeout_s=5
        )
        with pytest.raises(PublisherError, match="refused"):
            publisher.connect()
    finally:
        proc.terminate()
        proc.wait(5)
