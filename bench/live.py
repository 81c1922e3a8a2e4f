"""Live load: commit latency of every message at a fixed offered rate, and alert latency.

A worker process publishes the fleet at `live_rate` messages/s, each message stamped with
the moment it is published (ms). Here, one thread polls PostgreSQL every 10 ms for newly
committed readings (one tracked metric per message, so one row per message): publish to
commit latency is the start of the poll that first sees the row minus its stamp, an upper
bound at most one poll interval late. Another thread publishes, one at a time, a reading with
negative pressure from a probe leak meter and polls the API for the alert it opens: alert
latency is the moment the API response with the alert arrives minus the publish time.
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.request
from datetime import UTC, datetime
from typing import Any

from bench.context import Context
from bench.fleet import PROBE_PREFIX, TRACKED_METRICS, Device, value_pool, violating_payload
from bench.mqttio import Publisher
from bench.progress import Ticker, say
from bench.services import BenchError, cpu_between, cpu_mark, machine_busy_cores, python_module
from bench.stats import summary_ms

POLL_S = 0.010
PROBE_RULE = "net-pressure-negative"
API_POLL_S = 0.020


class CommitWatcher(threading.Thread):
    """Sees each tracked reading become visible; records (publish stamp, latency)."""

    def __init__(self, dsn: str) -> None:
        super().__init__(name="commit-watcher", daemon=True)
        self.dsn = dsn
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        import psycopg

        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                since = datetime.now(UTC)
                at_since: set[str] = set()
                while not self.stop.is_set():
                    started = time.time()
                    # one publisher connection, one ingestor: rows commit in stamp order, so
                    # everything new is at or after the newest stamp seen
                    rows = conn.execute(
                        "SELECT device_id, ts FROM readings WHERE ts >= %s AND metric = ANY(%s)"
                        " AND device_id NOT LIKE %s",
                        (since, list(TRACKED_METRICS), PROBE_PREFIX + "%"),
                    ).fetchall()
                    newest = since
                    for device_id, ts in rows:
                        if ts == since and device_id in at_since:
                            continue
                        stamp = ts.timestamp()
                        self.samples.append((stamp, started - stamp))
                        if ts > newest:
                            newest, at_since = ts, set()
                        if ts == newest:
                            at_since.add(device_id)
                    since = newest
                    time.sleep(max(0.0, POLL_S - (time.time() - started)))
        except BaseException as exc:  # reported by the stage, which fails
            self.error = exc


class AlertProber(threading.Thread):
    """One probe at a time: publish a violation, poll the API until its alert shows."""

    def __init__(self, ctx: Context, api_base: str, probes: list[Device]) -> None:
        super().__init__(name="alert-prober", daemon=True)
        self.ctx = ctx
        self.probes = probes
        self.rule_id = ctx.db.scalar(f"SELECT id FROM rules WHERE name = '{PROBE_RULE}'")
        self.api_base = api_base
        self.latencies: list[float] = []
        self.timeouts = 0
        self.stop = threading.Event()  # no new probe
        self.abort = threading.Event()  # give up on the one being watched
        self.error: BaseException | None = None

    def _visible(self, device_id: str) -> bool:
        # by rule too: a silent probe device may also have a no-data alert of its own
        request = urllib.request.Request(
            f"{self.api_base}/v1/alerts?device_id={device_id}&rule={self.rule_id}&limit=1",
            headers={"Authorization": f"Bearer {self.ctx.db.api_token}"},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            body: dict[str, Any] = json.loads(resp.read())
        return bool(body["items"])

    def run(self) -> None:
        try:
            publisher = Publisher(self.ctx.broker.host, self.ctx.broker.port, max_inflight=10)
            try:
                for probe in self.probes:
                    if self.stop.is_set():
                        break
                    published = time.time()
                    publisher.publish(probe.topic, violating_payload(int(published * 1000)))
                    while not self._visible(probe.id):
                        if self.abort.is_set():
                            self.timeouts += 1
                            break
                        time.sleep(API_POLL_S)
                    else:
                        self.latencies.append(time.time() - published)
                    # irregular gaps, so probes do not lock step with the writer's batches
                    self.stop.wait(random.uniform(0.1, 0.3))
            finally:
                publisher.close()
        except BaseException as exc:
            self.error = exc


def run(ctx: Context, rate: float, probes: list[Device]) -> dict[str, Any]:
    """One live run at `rate` messages/s; each probe device is used once."""
    plan = ctx.plan
    ctx.db.reset_data()
    ingestor = ctx.ingestor("live")
    api = ctx.api()
    ingestor.start()
    api.start()
    ingestor.wait_ready()
    api.wait_ready()
    name = ctx.next_id("paced")
    pool_file = ctx.workdir / f"{name}-pool.json"
    pool_file.write_text(json.dumps(value_pool(ctx.fleet, per_device=4, at=datetime.now(UTC))))
    out = ctx.workdir / f"{name}.json"
    publisher = python_module(
        name,
        "bench.workers",
        [
            "paced",
            "--port",
            str(ctx.broker.port),
            "--pool",
            str(pool_file),
            "--rate",
            str(rate),
            "--duration",
            str(plan.live_seconds),
            "--out",
            str(out),
        ],
        ctx.workdir,
    )
    ctx.stack.callback(publisher.stop)
    watcher = CommitWatcher(ctx.db.dsn)
    prober = AlertProber(ctx, api.base, probes)
    watcher.start()
    caught_up: float | None = None
    try:
        publisher.start()
        publisher.wait_for_line("ready", 30)
        api_pids = api.pids()
        pids = [ingestor.pid, *api_pids, publisher.pid, *ctx.broker_pids()]
        mark = cpu_mark(pids + ctx.db.backend_pids())
        prober.start()
        ticker = Ticker(5.0)
        while not out.exists():
            if not publisher.alive() or not ingestor.alive():
                raise BenchError(f"live stage: a process exited:\n{ingestor.log_text()[-2000:]}")
            if watcher.error is not None:
                raise BenchError(f"commit watcher failed: {watcher.error}")
            if ticker.due():
                say(
                    f"live: {len(watcher.samples):,} messages seen committed, "
                    f"{len(prober.latencies)} alerts seen"
                )
            time.sleep(0.1)
        time.sleep(0.05)
        paced: dict[str, Any] = json.loads(out.read_text())
        prober.stop.set()
        pg_pids = ctx.db.backend_pids()
        end = cpu_mark(pids + pg_pids)
        stored_at_end = _stored(ctx)
        # what the ingestor still has to store when the publisher stops: wait it out, within
        # a bound (an overloaded ingestor leaves the rest with the broker, unacknowledged)
        expected = int(paced["readings"])
        caught_up = _wait_stored(ctx, expected, timeout_s=plan.live_catchup_s)
        prober.abort.set()
        prober.join(15)
        watcher.stop.set()
        watcher.join(5)
    finally:
        watcher.stop.set()
        prober.stop.set()
        prober.abort.set()
        publisher.stop()
        ingestor.stop()
        api.stop()
    if prober.error is not None:
        raise BenchError(f"alert prober failed: {prober.error!r}")
    started = float(paced["started"])
    ended = float(paced["ended"])
    steady = [lat for stamp, lat in watcher.samples if stamp >= started + plan.live_warmup_s]
    stored_fleet = _stored(ctx)
    opened = ctx.db.scalar(
        f"SELECT count(*) FROM alerts WHERE device_id NOT LIKE '{PROBE_PREFIX}%'"
    )
    window = end.at - mark.at
    result: dict[str, Any] = {
        "offered_msg_per_s": float(paced["rate"]),
        "target_msg_per_s": rate,
        "publisher_behind_max_s": float(paced["behind_max_s"]),
        "published_messages": int(paced["published"]),
        "published_readings": expected,
        "stored_readings": stored_fleet,
        "unstored": expected - stored_fleet,
        "caught_up": caught_up is not None,
        "catchup_bound_s": plan.live_catchup_s,
        "committed_msg_per_s_during": stored_at_end / (expected / int(paced["published"])) / window,
        "seconds": ended - started,
        "warmup_s": plan.live_warmup_s,
        "caught_up_after_publisher_s": (caught_up - ended) if caught_up is not None else None,
        "commit_latency": summary_ms(steady),
        "commit_latency_all": summary_ms([lat for _, lat in watcher.samples]),
        "messages_seen_committed": len(watcher.samples),
        "alert_latency": summary_ms(prober.latencies),
        "alert_probe_timeouts": prober.timeouts,
        "fleet_alerts_opened": opened,
        "ingestor_cpu_s": cpu_between(mark, end, [ingestor.pid]),
        "ingestor_cores": cpu_between(mark, end, [ingestor.pid]) / window,
        "api_cores": cpu_between(mark, end, api_pids) / window,
        "publisher_cores": cpu_between(mark, end, [publisher.pid]) / window,
        "broker_cores": cpu_between(mark, end, ctx.broker_pids()) / window,
        "postgres_cores": cpu_between(mark, end, pg_pids) / window,
        "machine_cores": machine_busy_cores(mark, end),
    }
    if caught_up is None:
        say(
            f"live: the ingestor had not caught up {plan.live_catchup_s:g} s after the publisher"
            f" stopped ({result['unstored']:,} readings still with the broker): overloaded"
        )
    if not prober.latencies:
        raise BenchError("live: no probe alert became visible in the API")
    return result


def _stored(ctx: Context) -> int:
    return ctx.db.scalar(
        f"SELECT count(*) FROM readings WHERE device_id NOT LIKE '{PROBE_PREFIX}%'"
    )


def _wait_stored(ctx: Context, expected: int, timeout_s: float) -> float | None:
    """When the fleet's readings were all seen stored (wall clock), None after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        if _stored(ctx) >= expected:
            return time.time()
        if time.monotonic() > deadline:
            return None
        time.sleep(0.1)
