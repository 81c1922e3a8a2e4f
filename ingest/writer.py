"""The writer: drains the intake queue into batches, stores each batch in one transaction,
evaluates the alert rules on it in the same transaction, then acknowledges its messages.

Two threads, one committer: the collector takes batch N+1 from the queue and validates it
while the committer stores, evaluates and commits batch N (Python parses while PostgreSQL
works). Batches are handed over one at a time, in the order they were received, so the
acknowledgements still go out after commit and in receive order.

When the database is unreachable, batches go to the durable local spool instead (and are
acknowledged once fsync'd); while the spool holds anything, new batches queue behind it so
that the database receives everything in arrival order when it returns.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError, OperationalError

from alerts.dma import Changes, changes, claim_pending, mark_pending, recompute_days
from alerts.evaluator import (
    Folded,
    Outcome,
    Planned,
    Touched,
    evaluate_batch,
    evaluate_sites,
    evaluate_timers,
    fold_cached,
    plan_batch,
    shadow_mismatches,
)
from alerts.incremental import Cache, Fresh
from alerts.service import StaleAlert
from ingest import metrics
from ingest.contract import marker_topic
from ingest.hj212.convert import Facts, decode_dead, decode_facts
from ingest.mqtt import Message
from ingest.repository import (
    insert_dead_letters,
    insert_readings,
    record_hj212_facts,
    touch_devices,
    watermarks,
)
from ingest.spool import Spool, SpoolFull
from ingest.validate import (
    DeadLetterRecord,
    DeviceInfo,
    Limits,
    Parsed,
    Reason,
    Row,
    parse_message,
)
from monitor.core.db import WRITING, lock_devices
from monitor.core.gcpace import IDLE_S, GcPacer
from monitor.core.settings import Settings

log = logging.getLogger(__name__)
TIMER_S = 30.0  # how often time-driven rules (no data) are evaluated
# With several ingestors, one of them runs the timer rules at a time (an advisory lock).
TIMER_LOCK = 0x656E766D  # "envm"
DMA_METRICS = frozenset({"flow", "pressure", "totaliser"})  # what a DMA's daily figures read
STALE_RETRIES = 3  # evaluations of a batch whose alerts an inspector changed meanwhile

# PostgreSQL answers these with the server up: deadlock_detected, serialization_failure,
# query_canceled (statement_timeout). psycopg raises them as OperationalError, which here
# otherwise means "the database is away": retry the transaction instead of spooling.
RETRY_SQLSTATES = frozenset({"40P01", "40001", "57014"})
RETRY_ATTEMPTS = 5


def _retryable(exc: OperationalError) -> bool:
    return getattr(exc.orig, "sqlstate", None) in RETRY_SQLSTATES


HJ212_DEAD_TOPIC = "hj212/dead-letters"  # ingest.hj212.server.DEAD_TOPIC
# what a logger reports about itself (deviations, RtdInterval, equipment status), for its
# device row; ingest.hj212.server.FACTS_TOPIC
HJ212_FACTS_TOPIC = "hj212/device-facts"


@dataclass(slots=True)
class Stats:
    messages: int = 0
    stored: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    batches: int = 0
    alerts_opened: int = 0
    spooled: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class Summary:
    messages: int
    inserted: int
    duplicates: int
    dead: list[DeadLetterRecord]
    opened: int
    seen: dict[str, tuple[datetime, float | None, str | None]]
    markers: list[int] = field(default_factory=list)


@dataclass(slots=True)
class Prepared:
    """A batch before any database work (`Writer._prepare`)."""

    messages: list[Message]  # without the markers and HJ 212 facts
    markers: list[Message]
    facts: list[Message]
    rows: list[Row]
    dead: list[DeadLetterRecord]
    dead_at: list[datetime]
    seen: dict[str, tuple[datetime, float | None, str | None]]
    fresh: Fresh | None


@dataclass(slots=True)
class Batch:
    messages: list[Message] = field(default_factory=list)
    size_bytes: int = 0


class Writer:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        inbox: queue.Queue[Message],
        lookup: Callable[[str], DeviceInfo | None],
        ack: Callable[[list[Message]], None],
        generation: Callable[[], int] | None = None,
    ) -> None:
        """`generation`: the intake's current connection number; with it, silence is judged
        only once the marker published on that connection has been through here."""
        # every transaction of the writer writes: on SQLite it takes the write lock at once
        self._engine = engine.execution_options(**WRITING)
        self._generation = generation
        self._marker = marker_topic(settings.mqtt_topic_prefix, settings.mqtt_client_id)
        self._caught_up_at: int | None = None
        self._behind_logged: int | None = None
        self._inbox = inbox
        self._lookup = lookup
        self._ack = ack
        self._max_messages = settings.batch_max_messages
        self._max_bytes = settings.batch_max_bytes
        self._max_age = settings.batch_max_age_ms / 1000
        self._limits = Limits(
            settings.mqtt_topic_prefix,
            settings.max_payload_bytes,
            settings.max_batch_items,
            timedelta(seconds=settings.future_tolerance_s),
        )
        self._spool = Spool(settings.spool_path, settings.spool_max_messages)
        metrics.SPOOL_DEPTH.set(self._spool.depth)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="envmon-writer", daemon=True)
        self._collector = threading.Thread(
            target=self._collect_ahead, name="envmon-collector", daemon=True
        )
        # at most one collected, validated batch waits for the committer
        self._ready: queue.Queue[Batch] = queue.Queue(maxsize=1)
        self._collected = threading.Event()  # the collector has stopped: nothing more comes
        # validation done ahead by the collector, by message (the message is kept with its
        # result, so its id cannot be reused while the entry lives)
        self._validated: dict[int, tuple[Message, Parsed]] = {}
        # and the batch prepared ahead (`_prepare`), by its list of messages
        self._ahead: dict[int, tuple[list[Message], Prepared]] = {}
        # Timer rules judge the whole fleet: on their own thread and transaction, so a
        # fleet-wide "no data" wave does not stop batches from being stored meanwhile.
        self._timer = threading.Thread(target=self._timers, name="envmon-timers", daemon=True)
        self.stats = Stats()
        # set while nothing is queued, collected or being committed
        self.idle = threading.Event()
        self._collector_idle = threading.Event()
        self._retry_delay = 0.5
        self._tz = ZoneInfo(settings.timezone)
        self._horizon = timedelta(seconds=settings.lateness_horizon_s)
        # the area-wide CJJ 92 inputs of the leakage rate rule
        self._outlet_pressure = settings.leakage_outlet_pressure_mpa
        self._frost_depth = settings.leakage_frost_depth_m
        self._last_tick = 0.0
        # DMA days (night flow, leakage) re-read the whole day of their meters: while a batch
        # waits behind this one, they are marked owed (dma_pending) and recomputed at most
        # every `dma_defer_s`; owed from the start too, for the marks a crash left
        self._dma_defer_s = settings.dma_defer_s
        self._dma_flushed = time.monotonic()
        self._dma_owed = True
        self._page_ended = settings.notify_ended_episodes
        self._copy = settings.ingest_copy
        # rule state kept between batches (alerts/incremental.py); None: rebuild every pair
        self._cache = Cache() if settings.eval_cache else None
        self._shadow = settings.eval_shadow
        # the batch taken from the queue and not yet acknowledged (or spooled): kept across
        # a failed step, so that it is retried, never dropped un-acknowledged
        self._pending: Batch | None = None
        # the kept rule state is a large long-lived heap: collections paced around it
        self._gc = GcPacer()
        self._quiet_since: float | None = None  # when the writer last found nothing to do
        # folds kept rule state while the committer waits for the batch's insert
        self._folder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="envmon-fold")

    @property
    def spool_depth(self) -> int:
        return self._spool.depth

    def start(self) -> None:
        self._collector.start()
        self._thread.start()
        self._timer.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Write what is queued (to the database or the spool), acknowledge it, and stop."""
        self._stopping.set()
        self._collector.join(timeout_s)
        self._thread.join(timeout_s)
        self._timer.join(timeout_s)
        self._folder.shutdown(wait=True)
        self._spool.close()

    # --- batching ---------------------------------------------------------------------

    def _collect(self) -> Batch:
        batch = Batch()
        deadline: float | None = None
        while len(batch.messages) < self._max_messages and batch.size_bytes < self._max_bytes:
            timeout = 0.2 if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                msg = self._inbox.get(timeout=timeout)
            except queue.Empty:
                if deadline is not None or self._stopping.is_set() or self._spool.depth:
                    break
                self._collector_idle.set()
                continue
            self._collector_idle.clear()
            self.idle.clear()
            if deadline is None:
                deadline = time.monotonic() + self._max_age
            batch.messages.append(msg)
            batch.size_bytes += len(msg.payload)
        metrics.QUEUE_DEPTH.set(self._inbox.qsize())
        return batch

    def _collect_ahead(self) -> None:
        """The collector thread: batches from the queue, validated, handed to the committer."""
        while True:
            batch = self._collect()
            if batch.messages:
                try:
                    self._validate_ahead(batch.messages)
                    self._ahead[id(batch.messages)] = (
                        batch.messages,
                        self._prepare(batch.messages),
                    )
                except Exception:
                    # never lose the batch: the committer validates what was not done here
                    log.exception("validating a batch ahead failed; the committer will")
                self._ready.put(batch)  # blocks while the committer has one waiting
            elif self._stopping.is_set():
                break
        self._collected.set()

    def _validate_ahead(self, messages: list[Message]) -> None:
        for m in messages:
            if m.topic == self._marker:
                continue
            # the registry's database away: the committer validates it again, and spools
            with contextlib.suppress(OperationalError):
                self._validated[id(m)] = (m, self._parse(m))

    def _validation(self, m: Message) -> Parsed:
        done = self._validated.get(id(m))
        if done is not None and done[0] is m:
            return done[1]
        return self._parse(m)

    def _next_batch(self) -> Batch:
        try:
            batch = self._ready.get(timeout=0.2)
        except queue.Empty:
            if self._collector_idle.is_set():
                if self._dma_owed and not self._spool.depth and not self._flush_dma_alone():
                    return Batch()  # the database is away: not idle while days are owed
                self.idle.set()  # nothing queued, collected, or being committed
                now = time.monotonic()
                if self._quiet_since is None:
                    self._quiet_since = now
                elif now - self._quiet_since >= IDLE_S:
                    self._gc.when_idle()
            return Batch()
        self.idle.clear()
        self._quiet_since = None
        return batch

    def _done(self, batch: Batch) -> None:
        """The batch is acknowledged (stored or spooled): forget its validation."""
        for m in batch.messages:
            self._validated.pop(id(m), None)
        self._ahead.pop(id(batch.messages), None)
        if batch.messages:
            self._gc.after_batch()

    def _run(self) -> None:
        while True:
            try:
                if self._step():
                    return
            except Exception:
                # Never let the writer thread die, nor forget its batch: the broker holds
                # those messages for us (un-acknowledged, counted against Receive Maximum),
                # so dropping them from memory would stall intake for good.
                held = len(self._pending.messages) if self._pending else 0
                log.exception("writer step failed; retrying it (%d messages held) in 2 s", held)
                metrics.WRITER_ERRORS.inc()
                time.sleep(2)

    def _step(self) -> bool:
        """One batch; True once stopping and everything is written."""
        batch = self._pending or self._next_batch()
        self._pending = batch
        if self._spool.depth:
            if batch.messages:
                self._spool_or_hold(batch)
            self._done(batch)
            self._pending = None
            if self._drain_spool():
                self._retry_delay = 0.5
            else:
                time.sleep(self._retry_delay)
                self._retry_delay = min(self._retry_delay * 2, 5.0)
        elif batch.messages:
            self._store_or_spool(batch)
        elif self._collected.is_set() and self._ready.empty():
            if self._dma_owed:
                self._flush_dma_alone()  # best effort: the marks outlive the process
            return True
        self._done(batch)
        self._pending = None
        return False

    def _timers(self) -> None:
        while not self._stopping.is_set():
            if time.monotonic() - self._last_tick >= TIMER_S:
                self._last_tick = time.monotonic()
                # another ingestor may have left owed DMA days (stopped before recomputing
                # them): look at the next batch, or when idle
                self._dma_owed = True
                try:
                    self._tick()
                except Exception:
                    log.exception("timer rules failed; trying again at the next tick")
            self._stopping.wait(0.5)

    def _tick(self) -> None:
        """Rules that fire on the clock, not on data: "no data from a device".

        Silence is judged only while this ingestor is caught up: with the database away
        (messages in the spool) or a backlog waiting (more than a batch in the queue), the
        devices' last messages are here, not yet stored, and every one of them would look
        silent."""
        if not self.caught_up():
            generation = self._generation() if self._generation else None
            if self._behind_logged != generation:
                self._behind_logged = generation
                log.info("not judging silence (no-data rules) until intake has caught up")
            self._last_tick = time.monotonic() - TIMER_S + 1.0  # look again in a second
            return
        waiting = self._inbox.qsize() + sum(len(b.messages) for b in list(self._ready.queue))
        if self._spool.depth or waiting >= self._max_messages:
            log.info(
                "not judging silence (no-data rules) while behind: %d messages queued, %d spooled",
                waiting,
                self._spool.depth,
            )
            return
        try:
            with self._engine.begin() as conn:
                if (
                    conn.dialect.name == "postgresql"
                    and not conn.execute(
                        text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": TIMER_LOCK}
                    ).scalar_one()
                ):
                    return  # another ingestor is judging them right now
                outcome = evaluate_timers(conn, datetime.now(UTC), self._tz)
        except OperationalError:
            return  # the database is away; the spool has the data, the next tick retries
        if outcome.opened or outcome.resolved:
            log.info("timer rules: %d alerts opened, %d resolved", outcome.opened, outcome.resolved)

    # --- the two destinations -------------------------------------------------------------

    def _store_or_spool(self, batch: Batch) -> None:
        try:
            self._store_batch(batch.messages)
        except OperationalError as exc:
            log.warning("database unavailable (%s); spooling to %s", exc.orig, self._spool.path)
            metrics.DB_UP.set(0)
            self._spool_or_hold(batch)
            return
        self._ack(batch.messages)

    def _spool_or_hold(self, batch: Batch) -> None:
        """Spool and acknowledge; if the spool is full, hold the batch un-acknowledged (the
        broker keeps it) and wait for the database, retrying, never dropping."""
        while True:
            try:
                self._spool.append(batch.messages)
                break
            except SpoolFull as exc:
                metrics.SPOOL_FULL.inc()
                log.error(
                    "%s; holding %d messages un-acknowledged until the database returns",
                    exc,
                    len(batch.messages),
                )
                if self._drain_spool():
                    continue
                time.sleep(2)
        self.stats.spooled += len(batch.messages)
        metrics.SPOOL_DEPTH.set(self._spool.depth)
        self._ack(batch.messages)

    def _drain_spool(self) -> bool:
        """Move spooled messages to the database, oldest first; False if it is still away."""
        while self._spool.depth:
            ids, messages = self._spool.peek(self._max_messages)
            try:
                self._store_batch(messages)
            except OperationalError:
                return False
            self._spool.remove(ids)
            metrics.SPOOL_DEPTH.set(self._spool.depth)
            if not self._spool.depth:
                log.info("spool drained; database writes are direct again")
        metrics.DB_UP.set(1)
        return True

    # --- storing ---------------------------------------------------------------------------

    def _store_batch(self, messages: list[Message]) -> None:
        """Store a batch in one transaction; a data error falls back to message by message.
        Raises OperationalError when the database cannot be reached."""
        started = time.perf_counter()
        try:
            self._count(self._transaction(messages))
        except OperationalError as exc:
            if not _retryable(exc):
                raise
            log.warning("batch of %d messages still failing (%s); one by one", len(messages), exc)
            for msg in messages:
                self._store_one(msg)
        except DBAPIError:
            log.exception("batch of %d messages failed; storing them one by one", len(messages))
            for msg in messages:
                self._store_one(msg)
        metrics.COMMIT_SECONDS.observe(time.perf_counter() - started)
        metrics.BATCH_SIZE.observe(len(messages))
        metrics.DB_UP.set(1)

    def _transaction(self, messages: list[Message]) -> Summary:
        """Store messages in one transaction, retrying a deadlock, serialisation failure or
        statement timeout a few times (each rolled back whole) with a short backoff."""
        for attempt in range(RETRY_ATTEMPTS):
            try:
                try:
                    with self._engine.begin() as conn:
                        summary = self._store(conn, messages)
                except BaseException:
                    if self._cache is not None:
                        self._cache.rollback()
                    self._dma_owed = True  # the marks this batch claimed are back
                    raise
                if self._cache is not None:
                    self._cache.commit()
                return summary
            except OperationalError as exc:
                if not _retryable(exc) or attempt == RETRY_ATTEMPTS - 1:
                    raise
                log.warning("transaction failed (%s); retrying", exc.orig)
                metrics.DB_RETRIES.inc()
                time.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")

    def _store_one(self, msg: Message) -> None:
        try:
            self._count(self._transaction([msg]))
        except OperationalError as exc:
            if _retryable(exc):
                log.error("message on %s kept failing (%s); spooling it", msg.topic, exc.orig)
            raise
        except DBAPIError as exc:
            log.exception("message on %s could not be stored", msg.topic)
            record = DeadLetterRecord(
                msg.topic,
                None,
                Reason.store_failed,
                f"storing failed: {type(exc.orig).__name__}: {exc.orig}",
                msg.payload[:4096].decode("utf-8", errors="replace"),
            )
            with self._engine.begin() as conn:
                insert_dead_letters(conn, [record], msg.received_at)

    def _parse(self, m: Message) -> Parsed:
        if m.topic == HJ212_DEAD_TOPIC:
            # dead letters the HJ 212 gateway judged itself (CRC, MN, PW, codes): stored in
            # the batch of the frame's readings, so the frame's answer waits for both
            return Parsed(dead=decode_dead(m.payload))
        try:
            return parse_message(
                m.topic,
                m.payload,
                lookup=self._lookup,
                limits=self._limits,
                received_at=m.received_at,
            )
        except OperationalError:
            raise
        except Exception as exc:
            # A bug in validation must not stop the writer (the redelivered message would stop
            # it again after every restart): keep the message as a dead letter and go on.
            log.exception("validating a message on %s failed", m.topic)
            out = Parsed()
            out.dead.append(
                DeadLetterRecord(
                    m.topic,
                    None,
                    Reason.store_failed,
                    f"validation failed: {type(exc).__name__}: {exc}",
                    m.payload[:4096].decode("utf-8", errors="replace"),
                )
            )
            return out

    def caught_up(self) -> bool:
        """Whether everything the broker held when this connection subscribed is stored: the
        marker published on this connection has been committed behind it."""
        if self._generation is None:
            return True
        return self._caught_up_at is not None and self._caught_up_at == self._generation()

    def _prepare(self, messages: list[Message]) -> Prepared:
        """What a batch is, before any database work: validated, its readings and dead
        letters gathered, what it says of each device, and its readings as the kept rule
        state takes them. The collector does this ahead, while the batch before commits."""
        markers = [m for m in messages if m.topic == self._marker]
        if markers:
            messages = [m for m in messages if m.topic != self._marker]
        facts = [m for m in messages if m.topic == HJ212_FACTS_TOPIC]
        if facts:
            messages = [m for m in messages if m.topic != HJ212_FACTS_TOPIC]
        parsed = [self._validation(m) for m in messages]
        rows: list[Row] = [r for p in parsed for r in p.rows]
        dead = [d for p in parsed for d in p.dead]
        # a dead letter is stamped with its message's receipt, not this commit: a batch
        # replayed from the spool or retried after a fault keeps the time it arrived
        dead_at = [m.received_at for p, m in zip(parsed, messages, strict=True) for _ in p.dead]
        seen: dict[str, tuple[datetime, float | None, str | None]] = {}
        for p, m in zip(parsed, messages, strict=True):
            if p.device_id is None or not (p.rows or p.status):
                continue
            newest = max((r.ts for r in p.rows), default=None)
            skew = (m.received_at - newest).total_seconds() if newest else None
            _, old_skew, old_status = seen.get(p.device_id, (m.received_at, None, None))
            seen[p.device_id] = (
                m.received_at,
                skew if skew is not None else old_skew,
                p.status or old_status,
            )
        fresh = Fresh(rows) if self._cache is not None else None
        return Prepared(messages, markers, facts, rows, dead, dead_at, seen, fresh)

    def _prepared(self, messages: list[Message]) -> Prepared:
        done = self._ahead.get(id(messages))
        if done is not None and done[0] is messages:
            return done[1]
        return self._prepare(messages)

    def _store(self, conn: Connection, batch: list[Message]) -> Summary:
        prep = self._prepared(batch)
        messages, rows, seen = prep.messages, prep.rows, prep.seen
        if prep.facts:
            record_hj212_facts(conn, [f for f in map(_facts, prep.facts) if f is not None])
        batch_devices = {r.device_id for r in rows}
        lock_devices(conn, batch_devices)
        known, versions = watermarks(conn, batch_devices)
        marks: dict[str, datetime] = {}
        for r in rows:
            if r.ts > marks.get(r.device_id, r.ts - self._horizon):
                marks[r.device_id] = r.ts
        for d, at in known.items():
            if at is not None and at > marks.get(d, at):
                marks[d] = at
        span: dict[tuple[str, str], tuple[datetime, datetime]] = {}
        for r in rows:
            # beyond the lateness horizon, measured from the device's watermark before this
            # batch (its own event time, never the ingestor's clock), a reading is kept but
            # re-opens no window; a batch of buffered readings newer than that is judged whole
            stored = known.get(r.device_id)
            ts = r.ts if stored is None else max(r.ts, stored - self._horizon)
            key = (r.device_id, r.metric)
            lo, hi = span.get(key, (ts, r.ts))
            span[key] = (min(lo, ts), max(hi, r.ts))
        touched = [Touched(d, m, lo, hi) for (d, m), (lo, hi) in span.items()]
        cache = self._cache
        pairs_before = (cache.hits, cache.misses) if cache is not None else (0, 0)
        planned: Planned | None = None
        folding: Future[Folded] | None = None
        if cache is not None and rows:
            fresh = prep.fresh if prep.fresh is not None else Fresh(rows)
            fresh.versions = versions
            cache.begin(fresh)
            planned = self._plan(conn, touched)
            if planned is not None and planned.plans:
                # kept state is folded on the side while the database stores the batch
                folding = self._folder.submit(
                    fold_cached, planned.plans, planned.devices, self._tz, cache
                )
        try:
            inserted = insert_readings(conn, rows, copy=self._copy)
            insert_dead_letters(conn, prep.dead, prep.dead_at)
        finally:
            folded = self._folded(folding)
        opened = 0
        if inserted:
            opened = self._evaluate(conn, touched, planned, folded, pairs_before)
            self._dma_days(conn, rows, now=not self._behind())
        elif cache is not None:
            cache.rollback()  # nothing new was stored: what was folded does not count
        # after the evaluation, which reads the watermarks as they were before the batch
        touch_devices(conn, seen, marks if inserted else {})
        return Summary(
            len(messages),
            inserted,
            len(rows) - inserted,
            prep.dead,
            opened,
            seen,
            [_marker_generation(m) for m in prep.markers],
        )

    def _plan(self, conn: Connection, touched: list[Touched]) -> Planned | None:
        """The evaluation's reads, before the insert (in a savepoint: a bug in a rule must
        cost the batch its alerts, never its readings; None then, and the evaluation plans
        again after the insert)."""
        try:
            with conn.begin_nested():
                return plan_batch(conn, touched, page_ended=self._page_ended)
        except OperationalError:
            raise
        except Exception:
            log.exception("planning the rule evaluation failed; planning again after the insert")
            return None

    def _folded(self, folding: Future[Folded] | None) -> Folded | None:
        """Wait for the side fold (also when the insert failed: the states must be left
        alone before the transaction's rollback drops them). A failed fold is done again,
        by the evaluation, with the states it changed dropped."""
        if folding is None:
            return None
        try:
            return folding.result()
        except Exception:
            log.exception("folding kept rule state failed; the evaluation rebuilds")
            self._undo_cache()
            return None

    def _evaluate(
        self,
        conn: Connection,
        touched: list[Touched],
        planned: Planned | None = None,
        folded: Folded | None = None,
        pairs_before: tuple[int, int] = (0, 0),
    ) -> int:
        """Run the rules over what the batch touched, in a savepoint: a bug in a rule must
        cost that batch its alerts (logged, counted), never its readings. `planned` and
        `folded`: what was done before and beside the insert (a retry after a stale alert
        folds again from rebuilt state)."""
        started = time.perf_counter()
        cache = self._cache
        side = [folded]

        def evaluate() -> Outcome:
            return evaluate_batch(
                conn,
                touched,
                self._tz,
                page_ended=self._page_ended,
                cache=cache,
                planned=planned,
                folded=side.pop() if side else None,
            )

        try:
            opened = self._retrying(conn, "rule evaluation", evaluate)
            if self._shadow and cache is not None:
                self._shadow_check(conn, touched)
            return opened
        finally:
            metrics.EVALUATE_SECONDS.observe(time.perf_counter() - started)
            if cache is not None:
                metrics.EVAL_PAIRS.labels("hit").inc(cache.hits - pairs_before[0])
                metrics.EVAL_PAIRS.labels("miss").inc(cache.misses - pairs_before[1])

    def _shadow_check(self, conn: Connection, touched: list[Touched]) -> None:
        """ENVMON_EVAL_SHADOW: count the alerts a rebuild without kept state would store
        differently (alerts.evaluator.shadow_mismatches)."""
        try:
            mismatches = shadow_mismatches(conn, touched, self._tz)
        except OperationalError:
            raise
        except Exception:
            log.exception("shadow check failed")
            return
        if mismatches:
            log.error("shadow check: %d alert(s) differ from a rebuild", mismatches)
            metrics.EVAL_SHADOW_MISMATCHES.inc(mismatches)

    def _retrying(self, conn: Connection, what: str, evaluate: Callable[[], Outcome]) -> int:
        """Run an evaluation in a savepoint, again when an alert changed meanwhile (an
        inspector, another ingestor); a bug in a rule costs the batch its alerts (logged,
        counted), never its readings. Returns the alerts opened."""
        try:
            for attempt in range(STALE_RETRIES):
                try:
                    with conn.begin_nested():
                        outcome = evaluate()
                    return outcome.opened
                except StaleAlert as exc:
                    self._undo_cache()  # the retry rebuilds what the stale state judged
                    if attempt == STALE_RETRIES - 1:
                        raise
                    log.info("alert changed while evaluating (%s); evaluating again", exc)
        except OperationalError:
            self._undo_cache()
            raise
        except Exception:
            self._undo_cache()
            log.exception("%s failed; the batch's readings are stored regardless", what)
            metrics.EVALUATION_ERRORS.inc()
        return 0

    def _undo_cache(self) -> None:
        if self._cache is not None:
            self._cache.undo()

    def _behind(self) -> bool:
        """Whether a batch waits behind the one being committed: collected, or a full one
        queued."""
        return not self._ready.empty() or self._inbox.qsize() >= self._max_messages

    def _dma_days(self, conn: Connection, rows: list[Row], *, now: bool = True) -> None:
        """The DMA days the batch's meter readings fall in (night flow, leakage) and their
        site rules, in the batch's transaction: recomputed at once when `now` (nothing waits
        behind this batch) or when the last recomputation is `dma_defer_s` old, with every
        day owed so far; else marked owed (`mark_pending`), for a later batch, the idle
        writer or another ingestor. A backfilled or late day is redone like a new one."""
        hours = {
            (r.device_id, r.ts.replace(minute=0, second=0, microsecond=0))
            for r in rows
            if r.metric in DMA_METRICS
        }
        due = now or time.monotonic() - self._dma_flushed >= self._dma_defer_s
        if not hours and not (due and self._dma_owed):
            return
        changed = changes(conn, hours, tz=self._tz) if hours else Changes(set(), {})
        if not due:
            if changed.days:
                mark_pending(conn, changed)
                self._dma_owed = True
            return
        self._flush_dma(conn, changed)

    def _flush_dma(self, conn: Connection, changed: Changes) -> None:
        """Recompute `changed` and every owed DMA day (`claim_pending`), then judge their
        sites' rules. Like rule evaluation, a failure costs those days their figures (until
        their next readings), never the batch's readings."""
        if self._dma_owed:
            changed = changed | claim_pending(conn)
        self._dma_owed = False
        self._dma_flushed = time.monotonic()
        if not changed.days:
            return
        try:
            with conn.begin_nested():
                recompute_days(conn, changed.days, tz=self._tz)
        except OperationalError:
            self._dma_owed = True  # the transaction rolls back, the marks with it
            raise
        except Exception:
            log.exception("DMA day figures failed; the batch's readings are stored regardless")
            return
        self._retrying(
            conn,
            "site rules",
            lambda: evaluate_sites(
                conn,
                changed.earliest_days(),
                self._tz,
                page_ended=self._page_ended,
                outlet_pressure_mpa=self._outlet_pressure,
                frost_depth_m=self._frost_depth,
                readings_since=changed.since,
            ),
        )

    def _flush_dma_alone(self) -> bool:
        """Recompute the owed DMA days in a transaction of their own (the writer is idle);
        False when the database is away (they stay owed)."""
        try:
            with self._engine.begin() as conn:
                self._flush_dma(conn, Changes(set(), {}))
        except OperationalError as exc:
            self._dma_owed = True
            log.warning("owed DMA days not recomputed (%s); trying again", exc.orig)
            return False
        except Exception:
            log.exception("taking the owed DMA days failed; trying again at the next tick")
        return True

    def _count(self, summary: Summary) -> None:
        """Account for a committed batch."""
        if summary.markers:
            self._caught_up_at = max(summary.markers)
        s = self.stats
        s.messages += summary.messages
        s.stored += summary.inserted
        s.duplicates += summary.duplicates
        s.dead_letters += len(summary.dead)
        s.batches += 1
        s.alerts_opened += summary.opened
        metrics.MESSAGES.inc(summary.messages)
        metrics.STORED.inc(summary.inserted)
        metrics.DUPLICATES.inc(summary.duplicates)
        metrics.ALERTS_OPENED.inc(summary.opened)
        for d in summary.dead:
            s.by_reason[d.reason] = s.by_reason.get(d.reason, 0) + 1
            metrics.DEAD.labels(d.reason.value).inc()
        metrics.devices_seen({d: at.timestamp() for d, (at, _, _) in summary.seen.items()})


def _facts(m: Message) -> Facts | None:
    try:
        return decode_facts(m.payload)
    except (ValueError, KeyError, TypeError):
        # only the gateway writes these; a bad one (an old spool?) must not stop the batch
        log.exception("HJ 212 device facts unreadable; skipped: %r", m.payload[:200])
        return None


def _marker_generation(m: Message) -> int:
    try:
        return int(m.payload)
    except ValueError:
        return -1
