"""The MQTT side of the ingestor: a paho-mqtt client on its own thread.

It subscribes with QoS 1 on a persistent session and acknowledges nothing by itself
(`manual_ack`): the writer acknowledges a message only after its readings are committed, so a
crash leaves every un-stored message with the broker, which sends it again.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from ingest.contract import STATUS, TELEMETRY, marker_topic, topic_root
from monitor.core.settings import Settings

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 7 * 24 * 3600  # the benchmark's own sessions; ingestors: the setting
MARKER_WAIT_S = 1.0  # with nothing held for us, the catch-up marker goes after this


@dataclass(slots=True)
class Message:
    topic: str
    payload: bytes
    mid: int
    qos: int
    received_at: datetime
    generation: int  # which connection delivered it; -1 for messages replayed from the spool
    # called by the writer once the message is durable (committed or spooled): the HJ 212
    # gateway's answer to the logger; MQTT messages are acknowledged by `MqttIntake.ack`
    reply: Callable[[], None] | None = None


class LoginRefused(RuntimeError):
    """The broker refused our credentials: retrying will not help."""


class SubscriptionRefused(RuntimeError):
    """The broker refused our subscription (e.g. its ACL): no message would ever arrive."""


class MqttIntake:
    def __init__(self, settings: Settings, inbox: queue.Queue[Message]) -> None:
        self._settings = settings
        self._inbox = inbox
        self._endpoint = settings.mqtt
        self._accepting = threading.Event()
        self._connected = threading.Event()
        self._generation = 0
        # Held while acknowledging and while a disconnect retires the generation, so that an
        # acknowledgement is either queued on the connection that delivered the message (and
        # dropped with it) or not sent at all: never sent on the next connection.
        self._ack_lock = threading.Lock()
        self._sessions = 0
        self._marker_due: int | None = None  # the connection whose marker is not sent yet
        self._marker_timer: threading.Timer | None = None
        self.fatal: BaseException | None = None
        root = topic_root(settings.mqtt_topic_prefix)
        share = f"$share/{settings.mqtt_shared_group}/" if settings.mqtt_shared_group else ""
        self.topics = [f"{share}{root}/+/{TELEMETRY}", f"{share}{root}/+/{STATUS}"]
        self.marker = marker_topic(settings.mqtt_topic_prefix, settings.mqtt_client_id)
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.mqtt_client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        if self._endpoint.username:
            client.username_pw_set(self._endpoint.username, self._endpoint.password)
        if self._endpoint.tls:
            ca = settings.mqtt_ca_file
            client.tls_set(ca_certs=str(ca) if ca else None)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        self._client = client

    def start(self, timeout_s: float = 15.0) -> None:
        """Connect (retrying until `timeout_s`) and start the network thread."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        # Keep our session (subscription and queued messages) while we are away.
        props.SessionExpiryInterval = self._settings.mqtt_session_expiry_s
        # Without this the broker caps un-acknowledged deliveries at its default (20 on
        # Mosquitto), and since we acknowledge after commit, batches could never grow past it.
        props.ReceiveMaximum = self._settings.mqtt_receive_maximum
        self._accepting.set()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._client.connect(
                    self._endpoint.host,
                    self._endpoint.port,
                    keepalive=30,
                    clean_start=False,
                    properties=props,
                )
                break
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise ConnectionError(
                        f"cannot reach the MQTT broker at {self._endpoint.host}:"
                        f"{self._endpoint.port}: {exc}"
                    ) from exc
                time.sleep(0.5)
        self._client.loop_start()
        if not self._connected.wait(timeout_s):
            self._client.loop_stop()
            raise ConnectionError(
                f"no answer from the MQTT broker at {self._endpoint.host}:{self._endpoint.port}"
            )
        if self.fatal is not None:
            raise self.fatal

    def _on_connect(
        self, client: mqtt.Client, _u: Any, flags: mqtt.ConnectFlags, reason: ReasonCode, _p: Any
    ) -> None:
        if reason.is_failure:
            log.error("mqtt connection refused: %s", reason)
            if reason.value in (0x86, 0x87, 0x8C):  # bad credentials / not authorised / bad auth
                self.fatal = LoginRefused(f"MQTT broker refused the login: {reason}")
                client.disconnect()
            self._connected.set()
            return
        with self._ack_lock:
            self._generation += 1
        self._sessions += 1
        if self._sessions > 1 and not flags.session_present:
            # The broker forgot our session (no persistence, expired, or a new broker):
            # whatever was published while we were away and not yet queued for us is gone.
            log.error(
                "mqtt broker did not keep our session %r: messages published while we were "
                "disconnected were not queued for us (check the broker's persistence and "
                "session expiry)",
                self._settings.mqtt_client_id,
            )
        log.info(
            "mqtt connected to %s (session present: %s), subscribing to %s",
            self._endpoint,
            flags.session_present,
            self.topics,
        )
        # ready (start() returns) once the broker has confirmed the subscription: a message
        # published before that would not be routed to a new session
        client.subscribe([(t, 1) for t in [*self.topics, self.marker]])

    def _on_subscribe(
        self, _c: mqtt.Client, _u: Any, _mid: int, reasons: list[ReasonCode], _p: Any
    ) -> None:
        refused = [r for r in reasons if r.is_failure]
        if refused:
            # Not ready, and not a state to idle in (it looks healthy and receives nothing):
            # fatal, like a refused login; start() raises it, the CLI exits on it later.
            detail = ", ".join(str(r) for r in refused)
            log.error("mqtt subscription to %s refused: %s", self.topics, detail)
            self.fatal = SubscriptionRefused(f"MQTT broker refused the subscription: {detail}")
        else:
            # The catch-up marker must queue behind whatever the broker holds for this session.
            # Mosquitto 2.0 puts a new message straight in flight while it has room, and right
            # after a reconnect it can have room before the held messages flow (seen: the
            # marker came 5th of 150). So it is sent once the first held message has arrived
            # (the rest are then queued ahead of it), or after a second with none.
            with self._ack_lock:
                self._marker_due = self._generation
                timer = threading.Timer(MARKER_WAIT_S, self._send_marker, [self._generation])
            timer.daemon = True
            self._marker_timer = timer
            timer.start()
        self._connected.set()

    def _send_marker(self, generation: int) -> None:
        with self._ack_lock:
            if self._marker_due != generation or generation != self._generation:
                return
            self._marker_due = None
        self._client.publish(self.marker, str(generation).encode(), qos=1)

    def _on_disconnect(
        self, _c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any
    ) -> None:
        # paho calls this before it reconnects: retire the generation now, so an ack racing
        # the reconnect cannot reach the new connection with a packet id of the old one.
        with self._ack_lock:
            self._generation += 1
        if reason.is_failure:
            log.warning("mqtt disconnected (%s); reconnecting", reason)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        item = Message(
            msg.topic, bytes(msg.payload), msg.mid, msg.qos, datetime.now(UTC), self._generation
        )
        if self._marker_due is not None:
            self._send_marker(item.generation)
        # Blocking here is the back-pressure: paho stops reading the socket, the broker keeps
        # the backlog. Nothing is dropped; while stopping, it is left un-acknowledged so the
        # broker delivers it again to the next session.
        while self._accepting.is_set():
            try:
                self._inbox.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    @property
    def generation(self) -> int:
        """The current connection's number (changes at every connect and disconnect)."""
        with self._ack_lock:
            return self._generation

    def ack(self, messages: list[Message]) -> None:
        with self._ack_lock:
            current = self._generation
            for m in messages:
                # A message from an earlier connection has been (or will be) delivered again
                # with a packet id the broker may since have reused: acknowledging the old id
                # could acknowledge a different message. The redelivery is stored as a
                # duplicate.
                if m.qos > 0 and m.generation == current:
                    self._client.ack(m.mid, m.qos)

    def stop_intake(self) -> None:
        self._accepting.clear()

    def unsubscribe(self, timeout_s: float = 15.0) -> None:
        """Leave the telemetry and status subscriptions (a retiring member: the broker routes
        new messages to the other members of its shared group from the UNSUBACK on)."""
        done = threading.Event()
        self._client.on_unsubscribe = lambda *_: done.set()
        self._client.unsubscribe(self.topics)
        if not done.wait(timeout_s):
            raise ConnectionError("the MQTT broker did not confirm the unsubscribe")

    def close(self, *, end_session: bool = False) -> None:
        """Disconnect; `end_session` asks the broker to drop our session and queue now (MQTT 5
        allows a DISCONNECT to lower the session expiry to 0)."""
        self._accepting.clear()
        if self._marker_timer is not None:
            self._marker_timer.cancel()
        props = None
        if end_session:
            props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 0
        self._client.disconnect(properties=props)
        self._client.loop_stop()
