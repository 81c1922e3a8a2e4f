"""Publish simulated devices to an MQTT broker, QoS 1, with a bound on un-acknowledged messages."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from devices.simulators import SimulatedDevice
from ingest.contract import ReadingSet, TelemetryBatch, encode, telemetry_topic

log = logging.getLogger(__name__)

# paho-mqtt 2.2 overwrites queued messages once more than 65,535 are outstanding (message ids
# wrap), so a publisher must stay below that.
PAHO_MAX_OUTSTANDING = 65_535


class PublisherError(RuntimeError):
    """The broker refused us, did not answer, or stopped acknowledging."""


def _now() -> datetime:
    return (datetime.now(UTC) + timedelta(milliseconds=500)).replace(microsecond=0)


def _now_ms() -> datetime:
    # sub-second intervals (load tests) need sub-second timestamps, or rounds would collide
    # on the (device, metric, ts) key and be stored once
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class FleetPublisher:
    """Publishes a fleet's readings: a history backfill in batches, then live reading sets.

    `published` counts messages, `reading_sets` the reading sets in them and `readings` the
    metric values (the rows the ingestor will store).
    """

    def __init__(
        self,
        simulators: Sequence[SimulatedDevice],
        *,
        host: str,
        port: int,
        prefix: str = "envmon",
        username: str | None = None,
        password: str | None = None,
        interval_s: float = 10.0,
        backfill_s: float = 0.0,
        backfill_step_s: float = 60.0,
        batch_size: int = 60,
        max_inflight: int = 1000,
        client_id: str | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        if not 1 <= max_inflight < PAHO_MAX_OUTSTANDING:
            raise ValueError(f"max_inflight must be between 1 and {PAHO_MAX_OUTSTANDING - 1}")
        if interval_s <= 0 or backfill_step_s <= 0 or batch_size < 1 or backfill_s < 0:
            raise ValueError("interval_s, backfill_step_s, batch_size > 0 and backfill_s >= 0")
        self.simulators = list(simulators)
        self.host, self.port, self.prefix = host, port, prefix
        self.interval_s = interval_s
        self.backfill_s = backfill_s
        self.backfill_step_s = backfill_step_s
        self.batch_size = batch_size
        self.max_inflight = max_inflight
        self.timeout_s = timeout_s
        self.published = 0
        self.reading_sets = 0
        self.readings = 0
        self._outstanding: deque[mqtt.MQTTMessageInfo] = deque()
        self._connack = threading.Event()
        self._refused: ReasonCode | None = None
        self._closing = False
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"envmon-sim-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv311,
        )
        if username is not None:
            self._client.username_pw_set(username, password)
        # paho sends only 20 QoS 1 messages at a time by default; our own bound is the limit.
        self._client.max_inflight_messages_set(max_inflight)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect

    def connect(self) -> None:
        """Connect and wait for CONNACK; PublisherError on refusal, timeout or no route."""
        try:
            self._client.connect(self.host, self.port, keepalive=60)
        except OSError as exc:
            raise PublisherError(
                f"cannot reach MQTT broker {self.host}:{self.port}: {exc}"
            ) from exc
        self._client.loop_start()
        if not self._connack.wait(self.timeout_s) or self._refused is not None:
            self._client.loop_stop()
            self._client.disconnect()
            if self._refused is not None:
                raise PublisherError(f"MQTT broker refused the connection: {self._refused}")
            raise PublisherError(
                f"no CONNACK from MQTT broker {self.host}:{self.port} in {self.timeout_s:g} s"
            )
        log.info("connected to MQTT broker %s:%s", self.host, self.port)

    def backfill(self, now: datetime) -> None:
        """Publish each device's readings in [now - backfill_s, now), backfill_step_s apart."""
        if self.backfill_s <= 0:
            return
        step = timedelta(seconds=self.backfill_step_s)
        start = now - timedelta(seconds=self.backfill_s)
        stamps = [start + i * step for i in range(int(self.backfill_s // self.backfill_step_s))]
        before = self.published
        for sim in self.simulators:
            for i in range(0, len(stamps), self.batch_size):
                batch = [sim.sample(ts) for ts in stamps[i : i + self.batch_size]]
                self._publish(sim.device_id, TelemetryBatch(batch=batch), batch)
        log.info(
            "backfilled %d reading sets per device in %d messages",
            len(stamps),
            self.published - before,
        )

    def run(
        self,
        stop: threading.Event,
        *,
        duration_s: float | None = None,
        count: int | None = None,
    ) -> None:
        """Publish a reading set per device every interval_s until stop, duration_s or count."""
        started = time.monotonic()
        rounds = 0
        while not stop.is_set() and (count is None or rounds < count):
            if duration_s is not None and time.monotonic() - started >= duration_s:
                break
            ts = _now() if self.interval_s >= 1 else _now_ms()
            for sim in self.simulators:
                reading_set = sim.sample(ts)
                self._publish(sim.device_id, reading_set, [reading_set])
            rounds += 1
            log.debug("round %d published at %s", rounds, ts.isoformat())
            if count is not None and rounds >= count:
                break
            # Sleep to the next tick of a fixed schedule, so slow rounds do not drift.
            next_tick = started + rounds * self.interval_s
            if stop.wait(max(0.0, next_tick - time.monotonic())):
                break
        log.info("live run ended after %d rounds (%d messages in all)", rounds, self.published)

    def close(self) -> None:
        """Wait (up to timeout_s) for outstanding acknowledgements, then disconnect."""
        deadline = time.monotonic() + self.timeout_s
        while self._outstanding and time.monotonic() < deadline:
            self._outstanding[0].wait_for_publish(max(0.0, deadline - time.monotonic()))
            self._drop_acknowledged()
        if self._outstanding:
            log.warning("closing with %d messages not acknowledged", len(self._outstanding))
        self._closing = True
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _publish(
        self, device_id: str, message: ReadingSet | TelemetryBatch, sets: list[ReadingSet]
    ) -> None:
        self._make_room()
        info = self._client.publish(telemetry_topic(self.prefix, device_id), encode(message), qos=1)
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            # Published while disconnected: paho keeps the message queued and sends it after
            # reconnecting, but leaves rc at NO_CONN, so wait_for_publish would raise at once.
            info.rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        elif info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise PublisherError(f"publish to {device_id} failed: {mqtt.error_string(info.rc)}")
        self._outstanding.append(info)
        self.published += 1
        self.reading_sets += len(sets)
        self.readings += sum(len(s.values) for s in sets)

    def _make_room(self) -> None:
        self._drop_acknowledged()
        while len(self._outstanding) >= self.max_inflight:
            oldest = self._outstanding[0]
            oldest.wait_for_publish(self.timeout_s)
            if not oldest.is_published():
                raise PublisherError(
                    f"broker acknowledged nothing for {self.timeout_s:g} s "
                    f"({len(self._outstanding)} messages outstanding)"
                )
            self._drop_acknowledged()

    def _drop_acknowledged(self) -> None:
        while self._outstanding and self._outstanding[0].is_published():
            self._outstanding.popleft()

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self._refused = reason_code
        elif self._connack.is_set():
            log.info("reconnected to MQTT broker %s:%s", self.host, self.port)
        self._connack.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if not self._closing:
            log.warning("disconnected from MQTT broker (%s); paho will reconnect", reason_code)
