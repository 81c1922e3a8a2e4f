"""MQTT helpers of the benchmark: persistent sessions made ahead, and a fast QoS 1 publisher."""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.services import BenchError
from ingest.contract import STATUS, TELEMETRY, topic_root
from ingest.mqtt import SESSION_EXPIRY_S

# paho-mqtt 2.2 corrupts its queue past 65,535 outstanding QoS 1 messages (message ids wrap,
# shared/reference/measurements.md), and its cost per publish grows with the number in flight:
# measured here, 22.8k msg/s with 100 in flight, 13.3k with 1,000, 3.1k with 10,000.
MAX_INFLIGHT = 100


def ingest_topics(prefix: str, shared_group: str | None = None) -> list[str]:
    """The subscriptions `envmon ingest` makes (ingest/mqtt.py), optionally shared."""
    share = f"$share/{shared_group}/" if shared_group else ""
    root = topic_root(prefix)
    return [f"{share}{root}/+/{TELEMETRY}", f"{share}{root}/+/{STATUS}"]


def connect_properties(receive_maximum: int) -> Properties:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = SESSION_EXPIRY_S
    props.ReceiveMaximum = receive_maximum
    return props


def prepare_session(host: str, port: int, client_id: str, topics: list[str]) -> None:
    """Create a persistent session subscribed to `topics` under `client_id`, then leave.

    The broker queues everything published from now on for that client, so a consumer that
    connects later with the same id (clean_start False) finds its subscription in place even
    if it is paused before its own SUBSCRIBE reaches the broker."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    subscribed = threading.Event()
    client.on_subscribe = lambda *_: subscribed.set()
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    client.connect(host, port, clean_start=True, properties=connect_properties(65535))
    client.loop_start()
    try:
        if not connected.wait(10):
            raise BenchError(f"no CONNACK from the benchmark broker for {client_id}")
        client.subscribe([(t, 1) for t in topics])
        if not subscribed.wait(10):
            raise BenchError(f"no SUBACK for {client_id}")
    finally:
        client.disconnect()
        client.loop_stop()


class Publisher:
    """QoS 1 publisher with a bound on un-acknowledged messages (MQTT 3.1.1, as devices)."""

    def __init__(self, host: str, port: int, *, max_inflight: int = MAX_INFLIGHT) -> None:
        self.max_inflight = max_inflight
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"bench-pub-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv311,
        )
        self._client.max_inflight_messages_set(max_inflight)
        self._connected = threading.Event()
        self._client.on_connect = lambda *_: self._connected.set()
        self._outstanding: deque[mqtt.MQTTMessageInfo] = deque()
        self._client.connect(host, port, keepalive=60)
        self._client.loop_start()
        if not self._connected.wait(10):
            self.close()
            raise BenchError(f"no CONNACK from the broker at {host}:{port}")

    def publish(self, topic: str, payload: bytes) -> mqtt.MQTTMessageInfo:
        self._make_room()
        info = self._client.publish(topic, payload, qos=1)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise BenchError(f"publish failed: {mqtt.error_string(info.rc)}")
        self._outstanding.append(info)
        return info

    def publish_all(
        self,
        messages: Sequence[tuple[str, bytes]],
        progress: Callable[[int], None] | None = None,
    ) -> float:
        """Publish in order and wait for every PUBACK; returns the seconds it took."""
        started = time.monotonic()
        for i, (topic, payload) in enumerate(messages):
            self.publish(topic, payload)
            if progress is not None and i % 5000 == 0:
                progress(i)
        self.flush()
        return time.monotonic() - started

    def flush(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self._outstanding:
            self._outstanding[0].wait_for_publish(max(0.1, deadline - time.monotonic()))
            if not self._outstanding[0].is_published():
                raise BenchError(f"{len(self._outstanding)} publishes not acknowledged")
            self._outstanding.popleft()

    def _make_room(self) -> None:
        while self._outstanding and self._outstanding[0].is_published():
            self._outstanding.popleft()
        while len(self._outstanding) >= self.max_inflight:
            self._outstanding[0].wait_for_publish(30)
            if not self._outstanding[0].is_published():
                raise BenchError("the broker acknowledged nothing for 30 s")
            self._outstanding.popleft()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
