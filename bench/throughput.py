"""Ingest throughput: consumers draining the same prefilled QoS 1 backlog, one after another.

Each consumer (the raw paho subscriber, envmon with 1..N processes, the naive baseline)
connects and subscribes first, is paused (SIGSTOP), the backlog is published to the broker,
which queues it for the paused session(s), and the consumer is resumed (SIGCONT). The clock
runs from the resume to the last message counted (raw, naive) or the moment the last reading
is seen committed (envmon). Publisher and consumer never compete for the two cores, process
start-up is outside the window, and every consumer meets the same messages in the same order.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.context import Context
from bench.fleet import Backlog
from bench.mqttio import Publisher, ingest_topics, prepare_session
from bench.progress import Ticker, say
from bench.services import (
    BenchError,
    CpuMark,
    Ingestor,
    Proc,
    cpu_between,
    cpu_mark,
    machine_busy_cores,
    python_module,
)
from ingest.contract import telemetry_topic
from monitor.core.settings import Settings

PREFIX = "envmon"
# Mosquitto drops a client that sends nothing for 1.5 x its keepalive (30 s for envmon
# ingest): a paused consumer must be resumed well before.
MAX_PAUSE_S = 40.0


@dataclass
class Drain:
    """One consumer draining one backlog."""

    consumer: str
    processes: int
    messages: int
    readings: int
    seconds: float
    consumer_cpu_s: float
    broker_cpu_s: float
    postgres_cpu_s: float
    machine_cores: float
    publish_s: float
    stored: int | None = None
    lost: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def msg_rate(self) -> float:
        return self.messages / self.seconds

    @property
    def readings_rate(self) -> float:
        return self.readings / self.seconds

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["msg_per_s"] = self.msg_rate
        out["readings_per_s"] = self.readings_rate
        out["consumer_cpu_s_per_100k_readings"] = self.consumer_cpu_s / self.readings * 1e5
        out["consumer_cpu_us_per_message"] = self.consumer_cpu_s / self.messages * 1e6
        return out


def _publish_to_paused(
    ctx: Context, consumers: Sequence[Proc], backlog: Backlog, label: str
) -> tuple[float, CpuMark, float]:
    """Pause the consumers, publish the backlog, take the CPU mark, resume them.

    Returns (publish seconds, CPU mark at resume, wall-clock time of the resume).
    """
    for c in consumers:
        c.pause()
    publisher = Publisher(ctx.broker.host, ctx.broker.port)
    try:
        ticker = Ticker(5.0)

        def progress(i: int) -> None:
            if ticker.due():
                say(f"{label}: published {i:,}/{len(backlog.messages):,} messages")

        publish_s = publisher.publish_all(backlog.messages, progress)
    finally:
        publisher.close()
    if publish_s > MAX_PAUSE_S:
        raise BenchError(
            f"publishing the backlog took {publish_s:.0f}s: the paused consumers may have "
            "been dropped by the broker (keepalive); use a smaller --backlog"
        )
    pids = [c.pid for c in consumers] + ctx.broker_pids() + ctx.db.backend_pids()
    mark = cpu_mark(pids)
    resumed = time.time()
    for c in consumers:
        c.resume()
    return publish_s, mark, resumed


def _cpu_split(
    ctx: Context, mark: CpuMark, consumers: Sequence[Proc]
) -> tuple[CpuMark, float, float, float, float]:
    """(end mark, consumer, broker, PostgreSQL CPU seconds since `mark`, machine cores)."""
    consumer_pids = [c.pid for c in consumers]
    broker_pids = ctx.broker_pids()
    pg_pids = ctx.db.backend_pids()
    end = cpu_mark(consumer_pids + broker_pids + pg_pids)
    # backends that connected after the mark started from zero
    pg = cpu_between(mark, end, pg_pids)
    return (
        end,
        cpu_between(mark, end, consumer_pids),
        cpu_between(mark, end, broker_pids),
        pg,
        machine_busy_cores(mark, end),
    )


def _wait_result(proc: Proc, out: Path, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while not out.exists():
        if not proc.alive():
            raise BenchError(f"{proc.name} exited:\n{proc.log_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise BenchError(f"{proc.name} did not receive everything in {timeout_s:.0f}s")
        time.sleep(0.02)
    time.sleep(0.01)  # the writer of `out` finishes its write before we read it
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def _worker(ctx: Context, kind: str, backlog: Backlog) -> Drain:
    """The raw subscriber or the naive baseline draining `backlog`."""
    name = ctx.next_id(kind)
    client_id = f"bench-{name}"
    topics = ingest_topics(PREFIX)
    prepare_session(ctx.broker.host, ctx.broker.port, client_id, topics)
    out = ctx.workdir / f"{name}.json"
    args = [
        kind,
        "--port",
        str(ctx.broker.port),
        "--client-id",
        client_id,
        "--topics",
        json.dumps(topics),
        "--expect",
        str(len(backlog.messages)),
        "--receive-maximum",
        str(Settings.model_fields["mqtt_receive_maximum"].default),
        "--out",
        str(out),
    ]
    if kind == "naive":
        args += ["--dsn", ctx.db.dsn]
    proc = python_module(name, "bench.workers", args, ctx.workdir)
    ctx.stack.callback(proc.stop)
    proc.start()
    try:
        proc.wait_for_line("ready", 30)
        publish_s, mark, resumed = _publish_to_paused(ctx, [proc], backlog, kind)
        timeout = 120 + backlog.readings / (300 if kind == "naive" else 3000)
        result = _wait_result(proc, out, timeout)
        _, consumer_cpu, broker_cpu, pg_cpu, cores = _cpu_split(ctx, mark, [proc])
    finally:
        proc.stop()
    drain = Drain(
        consumer=kind,
        processes=1,
        messages=int(result["count"]),
        readings=backlog.readings,
        seconds=float(result["last"]) - resumed,
        consumer_cpu_s=consumer_cpu,
        broker_cpu_s=broker_cpu,
        postgres_cpu_s=pg_cpu,
        machine_cores=cores,
        publish_s=publish_s,
        extra={"first_message_after_resume_s": float(result["first"]) - resumed},
    )
    if kind == "raw":
        drain.lost = len(backlog.messages) - drain.messages
    else:
        drain.stored = ctx.db.scalar("SELECT count(*) FROM readings")
        drain.lost = backlog.readings - drain.stored
    return drain


def raw_limit(ctx: Context) -> Drain:
    """A bare paho subscriber that only counts: what this machine's MQTT path allows."""
    return _worker(ctx, "raw", ctx.backlog)


def naive_baseline(ctx: Context) -> Drain:
    """One INSERT per reading, autocommit, over the first messages of the same backlog."""
    ctx.db.reset_data()
    head = ctx.backlog.head(min(ctx.plan.naive_messages, len(ctx.backlog.messages)))
    drain = _worker(ctx, "naive", head)
    ctx.db.reset_data()
    return drain


def envmon(
    ctx: Context,
    processes: int,
    backlog: Backlog,
    *,
    label: str,
    profile_to: Path | None = None,
    fresh: bool = True,
    env: dict[str, str] | None = None,
    prefixes: list[str] | None = None,
) -> Drain:
    """`processes` envmon ingestors (sharing one subscription when more than one) draining
    `backlog` into an empty readings table (`fresh`), or into what the database holds
    (`env`: settings for the ingestors). With `prefixes`, one ingestor per topic prefix and
    no shared subscription: each sees only the devices published under its prefix (a sticky
    split, as a broker that routes by topic would make; see `sticky_backlog`)."""
    if fresh:
        ctx.db.reset_data()
    before = 0 if fresh else ctx.db.scalar("SELECT count(*) FROM readings")
    group = f"bench-{ctx.next_id('share')}" if processes > 1 or label.startswith("scale") else None
    roots = prefixes or [PREFIX] * processes
    if prefixes:
        group = None
    ingestors = [
        ctx.ingestor(
            "ingest",
            shared_group=group,
            env={**(env or {}), "ENVMON_MQTT_TOPIC_PREFIX": root} if prefixes else env,
        )
        for root in roots
    ]
    for ing, root in zip(ingestors, roots, strict=True):
        prepare_session(ctx.broker.host, ctx.broker.port, ing.client_id, ingest_topics(root, group))
    for ing in ingestors:
        ing.start()
    try:
        for ing in ingestors:
            ing.wait_ready()
        time.sleep(0.3)  # let SUBSCRIBE round trips settle before the pause
        publish_s, mark, resumed = _publish_to_paused(ctx, ingestors, backlog, label)
        profiler = None
        if profile_to is not None:
            from bench.profiling import start_profiler

            profiler = start_profiler(ingestors[0].pid, profile_to)
        try:
            finished = _wait_committed(ingestors, backlog.readings, label)
        finally:
            if profiler is not None:
                from bench.profiling import stop_profiler

                stop_profiler(profiler)
        _, consumer_cpu, broker_cpu, pg_cpu, cores = _cpu_split(ctx, mark, ingestors)
        counters = [
            ing.scrape(
                (
                    "envmon_readings_duplicate_total",
                    "envmon_dead_letters_total",
                    "envmon_messages_received_total",
                    "envmon_batch_messages_count",
                    "envmon_batch_commit_seconds_sum",
                    "envmon_eval_pairs_total",
                    "envmon_eval_shadow_mismatches_total",
                )
            )
            for ing in ingestors
        ]
    finally:
        for ing in ingestors:
            ing.stop()
    stored = ctx.db.scalar("SELECT count(*) FROM readings") - before
    dead = ctx.db.scalar("SELECT count(*) FROM dead_letters")
    batches = sum(c.get("envmon_batch_messages_count", 0) for c in counters)
    commit_s = sum(c.get("envmon_batch_commit_seconds_sum", 0) for c in counters)
    drain = Drain(
        consumer=label,
        processes=processes,
        messages=len(backlog.messages),
        readings=backlog.readings,
        seconds=finished - resumed,
        consumer_cpu_s=consumer_cpu,
        broker_cpu_s=broker_cpu,
        postgres_cpu_s=pg_cpu,
        machine_cores=cores,
        publish_s=publish_s,
        stored=stored,
        lost=backlog.readings - stored,
        extra={
            "dead_letters": dead,
            "duplicates": int(sum(c.get("envmon_readings_duplicate_total", 0) for c in counters)),
            "batches": int(batches),
            "mean_batch_messages": len(backlog.messages) / batches if batches else 0,
            "mean_batch_commit_ms": commit_s / batches * 1000 if batches else 0,
            "commit_share_of_wall": commit_s / processes / (finished - resumed),
            # (rule, device) pairs evaluated from kept state, rebuilt, and (shadow check on)
            # the alerts a rebuild would have written differently
            "eval_pairs_hit": int(
                sum(c.get('envmon_eval_pairs_total{result="hit"}', 0) for c in counters)
            ),
            "eval_pairs_miss": int(
                sum(c.get('envmon_eval_pairs_total{result="miss"}', 0) for c in counters)
            ),
            "shadow_mismatches": int(
                sum(c.get("envmon_eval_shadow_mismatches_total", 0) for c in counters)
            ),
            "per_process_messages": [
                int(c.get("envmon_messages_received_total", 0)) for c in counters
            ],
        },
    )
    if dead:
        raise BenchError(f"{label}: {dead} dead letters from a valid fleet")
    return drain


def sticky_backlog(backlog: Backlog, n: int) -> tuple[Backlog, list[str]]:
    """The backlog re-addressed for a sticky split over n ingestors: each device's messages
    under one of n topic prefixes, chosen by a stable hash of its id (as EMQX's `hash_topic`
    strategy picks a shared subscriber by topic)."""
    prefixes = [f"{PREFIX}-{i}" for i in range(n)]
    messages = []
    for topic, payload in backlog.messages:
        device_id = topic.split("/")[-2]
        root = prefixes[zlib.crc32(device_id.encode()) % n]
        messages.append((telemetry_topic(root, device_id), payload))
    return Backlog(messages, backlog.readings, backlog.reading_sets), prefixes


def _wait_committed(ingestors: list[Ingestor], expected: int, label: str) -> float:
    """Poll the ingestors' stored counters until `expected`; the wall-clock time seen."""
    interval = 0.05 if len(ingestors) == 1 else 0.1
    ticker = Ticker(5.0)
    last_progress = time.monotonic()
    best = 0
    while True:
        total = 0
        for ing in ingestors:
            if not ing.alive():
                raise BenchError(f"{ing.name} exited:\n{ing.log_text()[-3000:]}")
            total += ing.stored()
        now = time.time()
        if total >= expected:
            return now
        if total > best:
            best = total
            last_progress = time.monotonic()
        elif time.monotonic() - last_progress > 60:
            raise BenchError(f"{label}: stuck at {total:,}/{expected:,} readings for 60 s")
        if ticker.due():
            say(f"{label}: {total:,}/{expected:,} readings committed")
        time.sleep(interval)
