"""The ingestor process: MQTT intake (and the HJ 212 gateway) -> bounded queue -> writer
(store, evaluate, acknowledge)."""

from __future__ import annotations

import errno
import gc
import logging
import queue

from sqlalchemy import Engine

from ingest.hj212.server import Gateway, reply_after_commit
from ingest.mqtt import Message, MqttIntake
from ingest.registry import DeviceRegistry
from ingest.writer import Stats, Writer
from monitor.core.settings import Settings
from monitor.retention import Pruner

log = logging.getLogger(__name__)
DEFAULT_HJ212_PORT = 8212
GC_YOUNG_THRESHOLD = 100_000  # CPython's default is 700


def tune_gc() -> None:
    """For a process whose work is the write path. Each batch allocates some 100k objects
    that live until its commit, seconds later: with CPython's default thresholds they are
    promoted to the oldest generation and set off full collections over the whole heap (in a
    quick bench drain: 20 of 0.3-0.5 s each, 3,000 collections in all, about 5 of the
    ingestor's 11.6 CPU seconds). What start-up made is frozen out of the collector's view, and
    the young generation is collected every 100k allocations (then: 13 collections, 1.6 s)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 100)


class Ingestor:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        mqtt: bool = True,
        hj212: bool = False,
        required: bool = False,
    ) -> None:
        """`required`: the gateway is this process's purpose (`envmon hj212`), so a busy
        default port is an error rather than a warning."""
        inbox: queue.Queue[Message] = queue.Queue(maxsize=settings.queue_max_messages)
        self.inbox = inbox
        self.intake = MqttIntake(settings, inbox)  # connects only in start()
        self._mqtt = mqtt
        self.gateway = Gateway(settings, engine, inbox) if hj212 and settings.hj212_port else None
        self.registry = DeviceRegistry(engine)
        self.writer = Writer(
            settings,
            engine,
            inbox,
            self.registry,
            self._ack,
            generation=(lambda: self.intake.generation) if mqtt else None,
        )
        self.pruner = Pruner(settings, engine)
        self._hj212_port = settings.hj212_port
        self._hj212_required = required

    def _ack(self, messages: list[Message]) -> None:
        # one writer, two transports: MQTT messages go back to the broker, HJ 212 frames get
        # their 9014 answer; both only after the batch is durable
        if self._mqtt:
            self.intake.ack(messages)
        reply_after_commit(messages)

    @property
    def stats(self) -> Stats:
        return self.writer.stats

    def start(self) -> None:
        self.writer.start()
        if self._mqtt:
            self.intake.start()
        self.pruner.start()
        if self.gateway is not None:
            self._start_gateway(self.gateway)
        log.info("ingestor running")

    def _start_gateway(self, gateway: Gateway) -> None:
        try:
            gateway.start()
        except OSError as exc:
            # Two demos side by side: the second one runs without the gateway rather than not
            # at all. A port chosen explicitly must work, though.
            if (
                exc.errno == errno.EADDRINUSE
                and self._hj212_port == DEFAULT_HJ212_PORT
                and not self._hj212_required
            ):
                log.warning(
                    "HJ 212 port %d is in use; running without the HJ 212 gateway "
                    "(set ENVMON_HJ212_PORT to another port, or 0)",
                    self._hj212_port,
                )
                self.gateway = None
                return
            raise

    def stop(self, *, end_session: bool = False) -> None:
        """Stop intake, flush the last batch, acknowledge it, disconnect (and with
        `end_session`, have the broker drop this client's session)."""
        self.pruner.stop()
        self.intake.stop_intake()
        if self.gateway is not None:
            self.gateway.stop()
        self.writer.stop()
        if self._mqtt:
            self.intake.close(end_session=end_session)
        log.info("ingestor stopped: %s", self.stats)


def retire(settings: Settings, engine: Engine, client_id: str, timeout_s: float = 600.0) -> Stats:
    """End the broker session of an ingestor gone for good, without losing its share.

    Connects as `client_id` resuming its session, stores what the broker queued for it
    (until the catch-up marker, which queues behind it, is committed), leaves the shared
    subscription so that new traffic goes to the other members, stores what was already in
    flight, and disconnects with session expiry 0: the broker drops the session at once
    instead of holding a queue for nobody for `mqtt_session_expiry_s`.
    """
    import time

    ingestor = Ingestor(settings.model_copy(update={"mqtt_client_id": client_id}), engine)
    ingestor.start()
    try:
        deadline = time.monotonic() + timeout_s
        while not ingestor.writer.caught_up():
            if ingestor.intake.fatal is not None:
                raise ingestor.intake.fatal
            if time.monotonic() > deadline:
                raise TimeoutError(f"{client_id}: the queued messages were not all stored")
            time.sleep(0.2)
        ingestor.intake.unsubscribe()
        # what the broker had put in flight before the UNSUBACK reaches the inbox within
        # the marker's wait; the writer stores and acknowledges it while stopping
        time.sleep(1.0)
    except BaseException:
        ingestor.stop()  # keep the session: nothing is lost, retire again later
        raise
    ingestor.stop(end_session=True)
    return ingestor.stats
