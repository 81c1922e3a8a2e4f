"""The ingestor process: MQTT intake -> bounded queue -> writer (store, evaluate, acknowledge)."""

from __future__ import annotations

import logging
import queue

from sqlalchemy import Engine

from ingest.mqtt import Message, MqttIntake
from ingest.registry import DeviceRegistry
from ingest.writer import Stats, Writer
from monitor.core.settings import Settings
from monitor.retention import Pruner

log = logging.getLogger(__name__)


class Ingestor:
    def __init__(self, settings: Settings, engine: Engine) -> None:
        inbox: queue.Queue[Message] = queue.Queue(maxsize=settings.queue_max_messages)
        self.inbox = inbox
        self.intake = MqttIntake(settings, inbox)
        self.registry = DeviceRegistry(engine)
        self.writer = Writer(
            settings,
            engine,
            inbox,
            self.registry,
            self.intake.ack,
            generation=lambda: self.intake.generation,
        )
        self.pruner = Pruner(settings, engine)

    @property
    def stats(self) -> Stats:
        return self.writer.stats

    def start(self) -> None:
        self.writer.start()
        self.intake.start()
        self.pruner.start()
        log.info("ingestor running")

    def stop(self) -> None:
        """Stop intake, flush the last batch, acknowledge it, disconnect."""
        self.pruner.stop()
        self.intake.stop_intake()
        self.writer.stop()
        self.intake.close()
        log.info("ingestor stopped: %s", self.stats)
