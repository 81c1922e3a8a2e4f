"""Publish simulated devices to an MQTT broker, QoS 1, with a bound on un-acknowledged messages.

Without credentials the whole fleet shares one connection (fine on an anonymous broker or
with one shared account). With per-device credentials each device has its own connection,
logged in as its id, which is what a broker with envmon's ACL requires (docs/security.md).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from devices.simulators import SimulatedDevice
from ingest.contract import ReadingSet, TelemetryBatch, encode, status_topic, telemetry_topic

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


def next_stamp(last: datetime | None, now: datetime) -> datetime:
    """A round's event time: `now`, but always after the previous round's. A publisher that
    fell behind its schedule runs the missed rounds back to back, and two of them in one
    millisecond (or second) would carry the same time: the second reading set would be a
    duplicate of the first (unique on device, metric and time) and never stored."""
    if last is None or now > last:
        return now
    return last + (timedelta(seconds=1) if now.microsecond == 0 else timedelta(milliseconds=1))


class _Link:
    """One MQTT connection and the devices that publish through it.

    With a last will it speaks for exactly one device. `birth_topics` get `online` (QoS 1, not
    retained) after every successful connect, reconnects included.
    """

    def __init__(
        self,
        client_id: str,
        device_ids: list[str],
        *,
        username: str | None,
        password: str | None,
        max_inflight: int,
        will_topic: str | None,
        birth_topics: list[str],
    ) -> None:
        self.client_id = client_id
        self.device_ids = device_ids
        self.username = username
        self.birth_topics = birth_topics
        self.births: list[mqtt.MQTTMessageInfo] = []
        self.connack = threading.Event()
        self.refused: ReasonCode | None = None
        self.closing = False
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        if will_topic is not None:
            self.client.will_set(will_topic, "offline", qos=1, retain=False)
        # paho sends only 20 QoS 1 messages at a time by default; our own bound is the limit.
        self.client.max_inflight_messages_set(max_inflight)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect

    @property
    def name(self) -> str:
        return self.username or self.client_id

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self.refused = reason_code
        else:
            if self.connack.is_set():
                log.info("%s reconnected to the MQTT broker", self.name)
            # Births before the CONNACK is reported, so connect() can wait for them.
            self.births = [client.publish(t, "online", qos=1) for t in self.birth_topics]
        self.connack.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if not self.closing:
            log.warning(
                "%s disconnected from MQTT broker (%s); paho will reconnect", self.name, reason_code
            )


class FleetPublisher:
    """Publishes a fleet's readings: a history backfill in batches, then live reading sets.

    `published` counts telemetry messages, `reading_sets` the reading sets in them and
    `readings` the metric values (the rows the ingestor will store). `statuses` counts the
    `online`/`offline` messages sent with `announce_status`.

    `credentials` (device id -> password) gives every device its own connection, logged in
    as its id, so a broker that lets a device publish only under its own id accepts its
    messages; every simulated device needs an entry. Without it one connection carries the
    whole fleet, with `username`/`password` if given.

    `announce_status`: each connection publishes `online` on its devices' status topics after
    every connect, and `close()` publishes `offline` before disconnecting. A per-device
    connection also leaves a last will `offline` with the broker, sent if it vanishes. Will and
    birth are QoS 1 and not retained, as docs/mqtt.md asks of devices: the ingestor's
    persistent session already queues what it misses, and a retained status would be
    delivered again at each of its re-subscriptions, out of order with newer ones. The shared
    connection sets no will (a will has a single topic, and it speaks for many devices).

    At most `max_inflight` messages are un-acknowledged at once, over all connections.
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
        credentials: Mapping[str, str] | None = None,
        announce_status: bool = False,
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
        self.announce_status = announce_status
        self.published = 0
        self.reading_sets = 0
        self.readings = 0
        self.statuses = 0
        # Every connection's un-acknowledged messages, oldest first: the overall bound.
        self._outstanding: deque[mqtt.MQTTMessageInfo] = deque()
        base = client_id or f"envmon-sim-{uuid.uuid4().hex[:8]}"
        device_ids = [sim.device_id for sim in self.simulators]
        self._links: list[_Link] = []
        self._route: dict[str, _Link] = {}
        self._shared: _Link | None = None
        if credentials is None:
            self._shared = _Link(
                base,
                device_ids,
                username=username,
                password=password,
                max_inflight=max_inflight,
                will_topic=None,
                birth_topics=self._status_topics(device_ids),
            )
            self._links.append(self._shared)
            return
        if username is not None or password is not None:
            raise ValueError("give either username/password (one connection) or credentials")
        missing = [d for d in device_ids if d not in credentials]
        if missing:
            raise ValueError(f"no MQTT credentials for devices {missing}")
        for device_id in dict.fromkeys(device_ids):
            will = status_topic(prefix, device_id) if announce_status else None
            link = _Link(
                f"{base}-{device_id}",
                [device_id],
                username=device_id,
                password=credentials[device_id],
                max_inflight=max_inflight,
                will_topic=will,
                birth_topics=self._status_topics([device_id]),
            )
            self._links.append(link)
            self._route[device_id] = link

    def _status_topics(self, device_ids: list[str]) -> list[str]:
        return [status_topic(self.prefix, d) for d in device_ids] if self.announce_status else []

    def connect(self) -> None:
        """Connect every connection and wait for its CONNACK (and its `online` births);
        PublisherError on refusal, timeout or no route, with every connection closed."""
        started: list[_Link] = []
        try:
            for link in self._links:
                try:
                    link.client.connect(self.host, self.port, keepalive=60)
                except OSError as exc:
                    raise PublisherError(
                        f"cannot reach MQTT broker {self.host}:{self.port}: {exc}"
                    ) from exc
                link.client.loop_start()
                started.append(link)
            deadline = time.monotonic() + self.timeout_s
            for link in started:
                answered = link.connack.wait(max(0.0, deadline - time.monotonic()))
                if link.refused is not None:
                    raise PublisherError(
                        f"MQTT broker refused the connection of {link.name}: {link.refused}"
                    )
                if not answered:
                    raise PublisherError(
                        f"no CONNACK from MQTT broker {self.host}:{self.port} "
                        f"in {self.timeout_s:g} s"
                    )
            for link in started:
                for birth in link.births:
                    birth.wait_for_publish(max(0.0, deadline - time.monotonic()))
                self.statuses += len(link.births)
        except BaseException:
            for link in started:
                link.closing = True
                link.client.loop_stop()
                link.client.disconnect()
            raise
        log.info(
            "connected to MQTT broker %s:%s (%d connection%s)",
            self.host,
            self.port,
            len(self._links),
            "" if len(self._links) == 1 else "s",
        )

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
        last: datetime | None = None
        while not stop.is_set() and (count is None or rounds < count):
            if duration_s is not None and time.monotonic() - started >= duration_s:
                break
            ts = last = next_stamp(last, _now() if self.interval_s >= 1 else _now_ms())
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
        """With announce_status, publish `offline` for every device (a clean disconnect sends
        no will); wait (up to timeout_s) for outstanding acknowledgements; disconnect."""
        if self.announce_status:
            for link in self._links:
                if not link.connack.is_set() or link.refused is not None:
                    continue
                for device_id in link.device_ids:
                    self._make_room()
                    topic = status_topic(self.prefix, device_id)
                    self._track(device_id, link.client.publish(topic, "offline", qos=1))
                    self.statuses += 1
        deadline = time.monotonic() + self.timeout_s
        while self._outstanding and time.monotonic() < deadline:
            self._outstanding[0].wait_for_publish(max(0.0, deadline - time.monotonic()))
            self._drop_acknowledged()
        if self._outstanding:
            log.warning("closing with %d messages not acknowledged", len(self._outstanding))
        for link in self._links:
            link.closing = True
            link.client.disconnect()
            link.client.loop_stop()

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _link(self, device_id: str) -> _Link:
        link = self._route.get(device_id, self._shared)
        if link is None:
            raise PublisherError(f"no MQTT credentials for device {device_id!r}")
        return link

    def _publish(
        self, device_id: str, message: ReadingSet | TelemetryBatch, sets: list[ReadingSet]
    ) -> None:
        link = self._link(device_id)
        self._make_room()
        info = link.client.publish(telemetry_topic(self.prefix, device_id), encode(message), qos=1)
        self._track(device_id, info)
        self.published += 1
        self.reading_sets += len(sets)
        self.readings += sum(len(s.values) for s in sets)

    def _track(self, device_id: str, info: mqtt.MQTTMessageInfo) -> None:
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            # Published while disconnected: paho keeps the message queued and sends it after
            # reconnecting, but leaves rc at NO_CONN, so wait_for_publish would raise at once.
            info.rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        elif info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise PublisherError(f"publish to {device_id} failed: {mqtt.error_string(info.rc)}")
        self._outstanding.append(info)

    def _make_room(self) -> None:
        """Wait until fewer than max_inflight messages are un-acknowledged, over all
        connections (so also on each one, which keeps each paho client below its limit)."""
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
        # Connections acknowledge independently: an acknowledged message behind an older
        # un-acknowledged one still counts, which only makes the bound stricter.
        while self._outstanding and self._outstanding[0].is_published():
            self._outstanding.popleft()
