"""The HJ 212 gateway: an asyncio TCP server that data loggers connect to and keep open.

Each frame becomes the MQTT contract's reading set (`ingest.hj212.convert`) in a `Message` on
the writer's queue, so it is validated, stored, evaluated and spooled by the one write path.
The 9014 answer rides on the message's `reply`: the writer calls it only after the batch is
committed (or fsync'd to the spool), so a logger is never told "received" for data that a
crash could still lose; without the answer it retries, and the retry stores nothing twice
(readings are keyed by device, metric and DataTime, never by QN).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import Engine

from ingest import metrics
from ingest.contract import telemetry_topic
from ingest.hj212.convert import (
    DATA_CNS,
    Device,
    Facts,
    convert,
    dumps,
    encode_dead,
    encode_facts,
    equipment,
    rtd_interval,
)
from ingest.hj212.identity import Identities, Refused
from ingest.hj212.protocol import (
    RAW_EXCERPT,
    VERSION_FLAG,
    Frame,
    FrameError,
    Framer,
    Malformed,
    Packet,
    Rejected,
    encode_frame,
    parse_segment,
)
from ingest.mqtt import Message
from ingest.validate import DeadLetterRecord, Reason
from ingest.writer import HJ212_DEAD_TOPIC, HJ212_FACTS_TOPIC
from monitor.core.gcpace import malloc_trim
from monitor.core.settings import Settings

log = logging.getLogger(__name__)

# The writer's queue carries these beside telemetry: a list of dead letters, stored by the
# same write path (and spooled with everything else while the database is away).
DEAD_TOPIC = HJ212_DEAD_TOPIC
FACTS_TOPIC = HJ212_FACTS_TOPIC
IDLE_INTERVALS = 3  # a logged-in logger may be silent this many of its intervals
SWEEP_S = 1.0  # how often silent connections are looked for
READ_CHUNK = 4096
MAX_REJECTS = 20  # unreadable items on one connection before it is closed
# Connections whose first frame is being identified at once. A login costs a PBKDF2 under
# one lock, so logins are one at a time anyway; a connection waiting for its turn holds only
# its read, not a parsed frame (10,000 loggers reconnecting at once, after a restart or a
# carrier outage, would otherwise each hold one while they queue).
LOGIN_CONCURRENCY = 4
# After a burst (this many frames since the last trim, then a second without any), freed
# heap is handed back to the system (glibc's malloc_trim); freed memory otherwise stays in
# the process at the burst's high-water mark
TRIM_AFTER_FRAMES = 1000
CLOCK_TOLERANCE_S = 60.0  # a logger's clock further off than this is set (1012)
_REASONS = {
    FrameError.bad_crc: Reason.hj212_bad_crc,
    FrameError.bad_length: Reason.hj212_bad_length,
    FrameError.oversize: Reason.hj212_oversize,
    FrameError.garbage: Reason.hj212_garbage,
}


def answer_9014(packet: Packet) -> bytes:
    """The data answer (§1.7): the device's QN, ST=91, CN=9014, Flag of the device's version
    with no ack bit (Flag=4 for 2017, 8 for 2025), CP=&&&&."""
    return _answer(packet, "9014", "")


def answer_9013(packet: Packet) -> bytes:
    """The notice answer, to a time-calibration request (1013) or a 2025 heartbeat (9015)."""
    return _answer(packet, "9013", "")


def _answer(packet: Packet, cn: str, cp: str) -> bytes:
    parts = []
    if packet.qn is not None:
        parts.append(f"QN={packet.qn}")
    parts += ["ST=91", f"CN={cn}"]
    if packet.pw is not None:
        parts.append(f"PW={packet.pw}")
    parts += [f"MN={packet.mn}", f"Flag={VERSION_FLAG[packet.version]}", f"CP=&&{cp}&&"]
    return encode_frame(";".join(parts))


def idle_limit_s(idle_s: float, device: Device | None) -> float:
    """How long a connection may be silent: the setting, and for a logged-in logger at least
    IDLE_INTERVALS of its interval (the registered one or the RtdInterval it reported,
    whichever is longer), so a logger reporting every 10 minutes is not cut after 10."""
    if device is None:
        return idle_s
    interval = max(device.interval_s, device.rtd_interval_s or 0)
    return max(idle_s, IDLE_INTERVALS * float(interval))


def ask_rtd_interval_1061(packet: Packet, now: datetime) -> bytes:
    """The platform's "get the real-time data interval" (1061), asking for an answer."""
    st = packet.fields.get("ST", "91")
    return encode_frame(
        f"QN={now:%Y%m%d%H%M%S}{now.microsecond // 1000:03d};ST={st};CN=1061;"
        f"PW={packet.pw or ''};MN={packet.mn};Flag={VERSION_FLAG[packet.version] | 1};CP=&&&&"
    )


def qn_skew_s(qn: str | None, now: datetime) -> float | None:
    """Seconds the logger's clock is ahead of `now`, read from its QN (its local time to the
    ms, §1.3); None when the QN is not a time."""
    if qn is None or len(qn) < 14 or not qn[:14].isdigit():
        return None
    try:
        at = datetime.strptime(qn[:14], "%Y%m%d%H%M%S").replace(tzinfo=now.tzinfo)
    except ValueError:
        return None
    return (at - now).total_seconds()


def set_time_1012(packet: Packet, now: datetime) -> bytes:
    """The platform's "set time" (1012) with its local time, asking for an answer."""
    st = packet.fields.get("ST", "91")
    return encode_frame(
        f"QN={now:%Y%m%d%H%M%S}{now.microsecond // 1000:03d};ST={st};CN=1012;"
        f"PW={packet.pw or ''};MN={packet.mn};Flag={VERSION_FLAG[packet.version] | 1};"
        f"CP=&&SystemTime={now:%Y%m%d%H%M%S}&&"
    )


@dataclass(slots=True)
class Counters:
    connections: int = 0
    frames: int = 0
    answers: int = 0
    rejected: dict[str, int] = field(default_factory=dict)


class Connection(asyncio.Protocol):
    """One logger's connection: its framer, the MN it is bound to, its transport.

    A protocol rather than a stream reader, writer and handler task: an idle connection is
    this object, its framer and asyncio's transport, and nothing else (no task, no coroutine
    frames, no read buffer); a task exists only while a read is being handled. 10,000 idle
    loggers are the normal state of this server."""

    __slots__ = (
        "asked_interval",
        "closed",
        "counted",
        "device",
        "framer",
        "gateway",
        "idle_s",
        "last_read",
        "mn",
        "peer",
        "rejects",
        "task",
        "transport",
    )

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.framer = Framer()
        self.mn: str | None = None
        self.device: Device | None = None  # shared with every connection of the device
        self.rejects = 0
        self.closed = False
        self.idle_s = gateway._idle_s  # the setting, then the device's limit once logged in
        self.last_read = 0.0  # loop time of the last read, or of its end (the sweep compares)
        self.asked_interval = False
        self.task: asyncio.Task[None] | None = None  # the read being handled, if any
        self.counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else str(peer)
        self.last_read = asyncio.get_running_loop().time()
        self.gateway._opened(self)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        # one read at a time: until it is handled (its frames queued for the writer, which
        # may wait for room), the kernel holds what follows (back-pressure through TCP)
        assert self.transport is not None
        self.transport.pause_reading()
        self.task = asyncio.get_running_loop().create_task(self.gateway._read(self, data))

    def eof_received(self) -> bool:
        return False  # the transport closes; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.gateway._lost(self)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def write(self, data: bytes) -> bool:
        """Send, unless the logger left (it resends, and the resend stores nothing twice)."""
        if self.closed or self.transport is None or self.transport.is_closing():
            return False
        self.transport.write(data)
        return True


class Gateway:
    """The TCP server on its own thread and event loop; `start` returns once it listens."""

    def __init__(self, settings: Settings, engine: Engine, inbox: queue.Queue[Message]) -> None:
        self._host = settings.hj212_host
        self._port = settings.hj212_port
        self._idle_s = settings.hj212_idle_s
        self._ask_interval = settings.hj212_ask_rtd_interval
        # deviations already sent to the writer per device (bounded by the devices known)
        self._reported: dict[str, frozenset[str]] = {}
        self._per_address = settings.hj212_max_connections_per_address
        self._by_address: dict[str, int] = {}
        self._prefix = settings.mqtt_topic_prefix
        self._tz = ZoneInfo(settings.timezone)
        self._inbox = inbox
        self.identities = Identities(engine)
        self.counters = Counters()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._conns: set[Connection] = set()
        self._stopping: asyncio.Event | None = None
        self._logins = asyncio.Semaphore(LOGIN_CONCURRENCY)
        self.port: int | None = None

    # --- process wiring -------------------------------------------------------------------

    def start(self, timeout_s: float = 10.0) -> None:
        """Listen on ENVMON_HJ212_HOST:PORT; raises OSError when the port cannot be bound."""
        self._thread = threading.Thread(target=self._run, name="envmon-hj212", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError("the HJ 212 gateway did not start")
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to start(), never swallowed
            self._error = exc
            self._ready.set()
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        self._logins = asyncio.Semaphore(LOGIN_CONCURRENCY)  # of this loop (a restart: a new one)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: Connection(self), self._host, self._port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("HJ 212 gateway listening on %s:%d", self._host, self.port)
        self._ready.set()
        sweeper = asyncio.create_task(self._sweep(), name="envmon-hj212-idle-sweep")
        async with self._server:
            await self._stopping.wait()
            sweeper.cancel()
            self._server.close()
            for conn in list(self._conns):
                conn.close()
            # the connections' handlers end here, not with the loop (no task left pending):
            # on the EOF of their closed connections first; only what is still running then
            # (a frame waiting for room in the writer's queue) is cancelled, since asyncio
            # logs a cancelled stream handler as an error
            handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            if handlers:
                _, running = await asyncio.wait(handlers, timeout=2.0)
                for task in running:
                    task.cancel()
                await asyncio.gather(*running, return_exceptions=True)
            await self._server.wait_closed()

    async def _sweep(self) -> None:
        """Close connections silent past their idle limit. One task for all of them, rather
        than a timeout on every read: an idle connection then costs no timer and no task
        beyond its handler (10,000 idle loggers are the normal state of this server)."""
        loop = asyncio.get_running_loop()
        every = min(SWEEP_S, self._idle_s / 2)
        trimmed_at = seen = self.counters.frames
        while True:
            await asyncio.sleep(every)
            now = loop.time()
            frames = self.counters.frames
            if frames == seen and frames - trimmed_at >= TRIM_AFTER_FRAMES and _trim:
                trimmed_at = frames
                await asyncio.to_thread(_trim, 0)
            seen = frames
            for conn in list(self._conns):
                if not conn.closed and now - conn.last_read > conn.idle_s:
                    log.info(
                        "HJ 212 connection from %s idle for %.0fs; closing", conn.peer, conn.idle_s
                    )
                    conn.close()

    def status(self) -> dict[str, object]:
        """For the health check, from any thread: listening, port, open connections."""
        server = self._server
        return {
            "listening": server is not None
            and server.is_serving()
            and self._thread is not None
            and self._thread.is_alive(),
            "port": self.port,
            "connections": self.counters.connections,
        }

    def stop(self) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            self._thread.join(10)

    # --- one connection ---------------------------------------------------------------------

    def _opened(self, conn: Connection) -> None:
        held = self._by_address.get(conn.peer, 0)
        if self._per_address and held >= self._per_address:
            log.warning("HJ 212: %s already holds %d connections; refused", conn.peer, held)
            conn.close()
            return
        conn.counted = True
        self._by_address[conn.peer] = held + 1
        self._conns.add(conn)
        self.counters.connections += 1
        metrics.HJ212_CONNECTIONS.inc()

    def _lost(self, conn: Connection) -> None:
        if not conn.counted:
            return
        conn.counted = False
        self._conns.discard(conn)
        left = self._by_address.pop(conn.peer, 1) - 1
        if left:
            self._by_address[conn.peer] = left
        self.counters.connections -= 1
        metrics.HJ212_CONNECTIONS.dec()

    async def _read(self, conn: Connection, data: bytes) -> None:
        """Handle one read of a connection, READ_CHUNK bytes at a time (what one frame
        buffer may take in before it is cut back), then read on."""
        try:
            if conn.mn is None:
                async with self._logins:  # not logged in yet: one of a few at a time
                    await self._chunks(conn, data)
            else:
                await self._chunks(conn, data)
        except Exception:
            # a bug in handling one logger must not stop the server for the others
            log.exception("HJ 212 connection from %s failed", conn.peer)
            conn.close()
            return
        finally:
            conn.task = None
            # an idle connection waits holding nothing of its last read or frame
            del data
        conn.last_read = asyncio.get_running_loop().time()
        if conn.transport is not None and not conn.closed:
            conn.transport.resume_reading()

    async def _chunks(self, conn: Connection, data: bytes) -> None:
        for at in range(0, len(data), READ_CHUNK):
            await self._feed(conn, data[at : at + READ_CHUNK])
            if conn.rejects >= MAX_REJECTS:
                log.warning("HJ 212 connection from %s keeps sending garbage; closing", conn.peer)
                conn.close()
            if conn.closed:
                return

    async def _feed(self, conn: Connection, data: bytes) -> None:
        for item in conn.framer.feed(data):
            if isinstance(item, Rejected):
                conn.rejects += 1
                await self._reject(conn, _REASONS[item.reason], item.detail, item.raw)
            else:
                await self._frame(conn, item)

    async def _reject(
        self,
        conn: Connection,
        reason: Reason,
        detail: str,
        raw: bytes,
        device_id: str | None = None,
    ) -> None:
        self.counters.rejected[reason] = self.counters.rejected.get(reason, 0) + 1
        record = DeadLetterRecord(f"hj212://{conn.peer}", device_id, reason, detail, _text(raw))
        await self._put(Message(DEAD_TOPIC, encode_dead([record]), 0, 0, _now(), 0))

    async def _frame(self, conn: Connection, frame: Frame) -> None:
        self.counters.frames += 1
        metrics.HJ212_FRAMES.inc()
        packet = parse_segment(frame.segment)
        if isinstance(packet, Malformed):
            conn.rejects += 1
            await self._reject(conn, Reason.hj212_bad_cp, packet.detail, frame.raw)
            return
        if not packet.mn:
            conn.rejects += 1
            await self._reject(conn, Reason.hj212_bad_cp, "no MN in the frame", frame.raw)
            return
        device = await self._identify(conn, packet, frame)
        if device is None:
            return
        deviations = [*frame.deviations, *packet.deviations]
        cn = packet.cn or ""
        if cn in DATA_CNS:
            await self._data(conn, packet, device, frame, deviations)
        elif cn == "1061":
            # the logger's answer to our 1061: its RtdInterval, kept beside interval_s
            await self._report(conn, packet, device, frame, deviations, self._interval_facts)
        elif cn == "2021":
            # equipment status (SBxxx-RS/-RT): the newest kept on the device
            await self._report(conn, packet, device, frame, deviations, self._equipment_facts)
        elif cn == "1013":
            # a time-calibration request: noticed (9013), then the platform's time (1012)
            # when the logger's clock, as its QN shows it, is off
            if packet.needs_answer:
                self._send(conn, answer_9013(packet))
            skew = qn_skew_s(packet.qn, datetime.now(self._tz))
            if skew is None or abs(skew) > CLOCK_TOLERANCE_S:
                self._send(conn, set_time_1012(packet, datetime.now(self._tz)))
        elif cn == "9015":
            # the 2025 heartbeat: keeps the connection alive; answered when asked
            if packet.needs_answer:
                self._send(conn, answer_9013(packet))
        else:
            log.info("HJ 212 %s sent CN=%s; recorded, not acted on", packet.mn, cn[:8])
        if cn not in DATA_CNS and cn not in ("1061", "2021"):
            await self._put_facts(self._new_facts(device, deviations))
        if self._ask_interval and not conn.asked_interval:
            conn.asked_interval = True
            self._send(conn, ask_rtd_interval_1061(packet, datetime.now(self._tz)))

    def _new_facts(self, device: Device, deviations: list[str]) -> Facts | None:
        """The deviations not yet reported for this device, as facts for its row; each one is
        sent to the writer once per process (the writer adds them to those stored)."""
        if not deviations:
            return None  # the common case: no set kept for a device that never deviates
        seen = self._reported.get(device.device_id, frozenset())
        new = sorted(set(deviations) - seen)
        if not new:
            return None
        log.info("HJ 212 %s deviates from the standard (tolerated): %s", device.device_id, new)
        self._reported[device.device_id] = seen | set(new)
        return Facts(device.device_id, deviations=new)

    async def _put_facts(self, facts: Facts | None) -> None:
        if facts is not None:
            await self._put(Message(FACTS_TOPIC, encode_facts(facts), 0, 0, _now(), 0))

    def _interval_facts(self, packet: Packet, device: Device, facts: Facts) -> str | None:
        value = rtd_interval(packet)
        if isinstance(value, str):
            return value
        facts.rtd_interval_s = value
        return None

    def _equipment_facts(self, packet: Packet, device: Device, facts: Facts) -> str | None:
        status = equipment(packet, self._tz)
        if isinstance(status, str):
            return status
        facts.equipment, facts.equipment_at = status
        return None

    async def _report(
        self,
        conn: Connection,
        packet: Packet,
        device: Device,
        frame: Frame,
        deviations: list[str],
        read: Callable[[Packet, Device, Facts], str | None],
    ) -> None:
        """A frame that tells about the logger itself (1061, 2021): its facts, or a dead
        letter with the reason, stored before the frame is answered (when it asks)."""
        facts = self._new_facts(device, deviations) or Facts(device.device_id)
        problem = read(packet, device, facts)
        if problem is None:
            message = Message(FACTS_TOPIC, encode_facts(facts), 0, 0, _now(), 0)
        else:
            if facts.deviations:
                await self._put_facts(Facts(device.device_id, deviations=facts.deviations))
            record = DeadLetterRecord(
                telemetry_topic(self._prefix, device.device_id),
                device.device_id,
                Reason.hj212_bad_cp,
                f"CN={packet.cn}: {problem}",
                _text(frame.raw),
            )
            message = Message(DEAD_TOPIC, encode_dead([record]), 0, 0, _now(), 0)
        if packet.needs_answer:
            message.reply = self._replier(conn, answer_9014(packet))
        await self._put(message)

    async def _identify(self, conn: Connection, packet: Packet, frame: Frame) -> Device | None:
        mn = packet.mn or ""
        if conn.mn is not None and conn.mn != mn:
            # the first frame binds the connection to its MN: another MN on it is refused
            await self._reject(
                conn,
                Reason.hj212_unknown_mn,
                f"connection is bound to MN {conn.mn!r}; a frame for {mn[:64]!r} is refused",
                frame.raw,
                conn.device.device_id if conn.device else None,
            )
            return None
        result = self.identities.check_cached(mn, packet.pw, conn.peer)
        if result is None:  # the database or PBKDF2: not on the loop
            result = await asyncio.to_thread(self.identities.check, mn, packet.pw, conn.peer)
        if isinstance(result, Refused):
            # no answer either way: the logger cannot tell an unknown MN from a wrong PW
            conn.rejects += 1
            await self._reject(conn, result.reason, result.detail, frame.raw)
            return None
        conn.mn, conn.device = mn, result
        conn.idle_s = idle_limit_s(self._idle_s, result)
        return result

    async def _data(
        self, conn: Connection, packet: Packet, device: Device, frame: Frame, deviations: list[str]
    ) -> None:
        topic = telemetry_topic(self._prefix, device.device_id)
        converted = convert(packet, device, topic, _text(frame.raw), self._tz)
        messages: list[Message] = []
        now = _now()
        facts = self._new_facts(device, [*deviations, *converted.deviations])
        if facts is not None:
            messages.append(Message(FACTS_TOPIC, encode_facts(facts), 0, 0, now, 0))
        if converted.reading_set is not None:
            doc: dict[str, object] = converted.reading_set
            if converted.for_rules is not None:
                # one message, one validation: the period series and, for the rules, the
                # means as the plain metrics at the period's end
                doc = {"batch": [converted.reading_set, converted.for_rules]}
            messages.append(Message(topic, dumps(doc), 0, 0, now, 0))
        if converted.dead:
            for d in converted.dead:
                self.counters.rejected[d.reason] = self.counters.rejected.get(d.reason, 0) + 1
            messages.append(Message(DEAD_TOPIC, encode_dead(converted.dead), 0, 0, now, 0))
        if packet.needs_answer:
            answer = answer_9014(packet)
            if messages:
                # the writer stores a frame's messages in order: answering on the last one
                # answers once all of them are durable
                messages[-1].reply = self._replier(conn, answer)
            else:
                self._send(conn, answer)
        for m in messages:
            await self._put(m)

    def _replier(self, conn: Connection, answer: bytes) -> Callable[[], None]:
        loop = self._loop
        assert loop is not None

        def reply() -> None:  # called on the writer's thread
            if not loop.is_closed():
                loop.call_soon_threadsafe(self._send, conn, answer)

        return reply

    def _send(self, conn: Connection, data: bytes) -> None:
        if conn.write(data):
            self.counters.answers += 1
            metrics.HJ212_ANSWERS.inc()

    async def _put(self, message: Message) -> None:
        # The writer's queue is bounded: while it is full, this connection stops reading
        # (back-pressure through TCP), nothing is dropped.
        while True:
            try:
                self._inbox.put_nowait(message)
                return
            except queue.Full:
                await asyncio.sleep(0.05)


_trim = malloc_trim()


def _now() -> datetime:
    return datetime.now(UTC)


_PW = re.compile(r"(PW=)[^;&]*")


def _text(raw: bytes) -> str:
    """The frame as kept in a dead letter: truncated, and with its PW masked (a wrong PW is
    often a near miss of the right one, and dead letters are readable over the API)."""
    return _PW.sub(r"\1***", raw[:RAW_EXCERPT].decode("utf-8", errors="replace"))


def reply_after_commit(messages: list[Message]) -> None:
    """The writer's acknowledgement for gateway messages: send each frame's answer."""
    for m in messages:
        if m.reply is not None:
            m.reply()
