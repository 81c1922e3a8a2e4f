"""The MQTT intake's readiness: ready only on a subscription the broker granted; a refusal
is fatal, and the processes stop on a fatal intake error."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from ingest.mqtt import Message, MqttIntake, SubscriptionRefused
from monitor.cli import _stop_on_fatal
from monitor.core.settings import Settings


def test_a_refused_subscription_is_not_ready(
    mqtt_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox: queue.Queue[Message] = queue.Queue(10)
    intake = MqttIntake(
        Settings(mqtt_url=mqtt_url, mqtt_topic_prefix=prefix, mqtt_client_id=f"{prefix}-i"),
        inbox,
    )

    def refuse(topics: list[tuple[str, int]], *_: Any, **__: Any) -> tuple[int, int]:
        # what the broker's SUBACK says when its ACL forbids the topic
        reasons = [ReasonCode(PacketTypes.SUBACK, "Not authorized") for _ in topics]
        threading.Thread(target=intake._on_subscribe, args=(None, None, 1, reasons, None)).start()
        return 0, 1

    monkeypatch.setattr(intake._client, "subscribe", refuse)
    try:
        with pytest.raises(SubscriptionRefused):
            intake.start(timeout_s=10)
        assert isinstance(intake.fatal, SubscriptionRefused)
    finally:
        intake.close()


def test_a_fatal_intake_error_later_stops_the_process() -> None:
    class Intake:
        fatal: BaseException | None = None

    intake = Intake()
    stopped = threading.Event()
    ended = _stop_on_fatal(intake, stopped.set, every_s=0.05)  # type: ignore[arg-type]
    try:
        time.sleep(0.2)
        assert not stopped.is_set()
        intake.fatal = RuntimeError("MQTT broker refused the login: Bad user name or password")
        assert stopped.wait(2)
    finally:
        ended.set()
