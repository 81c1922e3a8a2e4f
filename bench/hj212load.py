"""The hj212 stage: `envmon hj212` under thousands of logger connections.

The gateway runs as its own process (`envmon hj212`, the writer and rules included); the
loggers are `bench.hj212client` processes, each holding its share of the connections from
its own 127.0.0.x source addresses, with the file-descriptor limit raised to the hard limit
first (children inherit it). In order:

1. idle: open `idle` connections and log each in (one 2011 frame, answered), then hold them;
   the gateway's resident memory before and after, per connection. Then they are closed.
2. latency: `connections` loggers send 2011 frames at a fixed total rate (open loop, the
   loggers' own clocks), frame -> 9014 answer p50/p99 measured by the clients.
3. throughput: the same loggers in a closed loop (each sends its next frame once the last is
   answered) for a fixed time: frames/s and readings/s, set against the MQTT path's
   readings/s of the same run (the envmon stage) when it ran.

Then the check for loss: every answered frame is 8 readings that must be in the database
(answered means committed), and there must be no dead letters.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from bench.context import Context
from bench.progress import say
from bench.services import BenchError, _clean_env, cpu_seconds, envmon_binary, free_port
from bench.stats import summary_ms
from monitor.broker_auth import hash_password

READINGS_PER_FRAME = 8  # bench.hj212client sends 8 dust values per frame
SITE = "bench-hj212"
MN_PREFIX = "BENCHMN"
PASSWORD = "212212"
SOURCES = [f"127.0.0.{i}" for i in range(2, 10)]  # eight source addresses
SUSTAINABLE_SHARE = 0.5


@dataclass
class Client:
    name: str
    proc: subprocess.Popen[str]

    def command(self, line: str, timeout_s: float) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            out = self.proc.stdout.readline()
            if not out:
                raise BenchError(f"{self.name} exited during {line!r}")
            if out.startswith("RESULT "):
                result: dict[str, Any] = json.loads(out[len("RESULT ") :])
                return result
        raise BenchError(f"{self.name}: no answer to {line!r} in {timeout_s:.0f}s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def raise_fd_limit() -> int:
    """Soft limit of open files up to the hard one, for this process and its children."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def register_loggers(dsn: str, count: int) -> None:
    """One dust monitor per logger, all with the same PW (hashed once: PBKDF2 per row would
    cost the setup more than the stage)."""
    now = datetime.now(UTC)
    secret = hash_password(PASSWORD)
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO sites (id, name, district, kind, created_at) VALUES "
            "(%s, %s, 'Bench', 'construction_site', %s) ON CONFLICT DO NOTHING",
            (SITE, SITE, now),
        )
        with cur.copy(
            "COPY devices (id, site_id, kind, name, status, created_at, last_seen_at, "
            "interval_s, hj212_mn, hj212_password_hash) FROM STDIN"
        ) as copy:
            for i in range(count):
                copy.write_row(
                    (
                        f"hj-{i:07d}",
                        SITE,
                        "dust_monitor",
                        "bench HJ 212 logger",
                        "active",
                        now,
                        now,
                        60,
                        f"{MN_PREFIX}{i:07d}",
                        secret,
                    )
                )


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Gateway:
    """`envmon hj212` on a free port, with its own data folder and metrics port."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.log = ctx.workdir / "hj212.log"
        self.proc: subprocess.Popen[bytes] | None = None
        ctx.stack.callback(self.stop)

    def _spawn(self) -> None:
        self.port = free_port()
        env = {
            "ENVMON_DATABASE_URL": self.ctx.db.url,
            "ENVMON_HJ212_PORT": str(self.port),
            "ENVMON_HJ212_IDLE_S": "3600",
            "ENVMON_METRICS_PORT": str(free_port()),
            "ENVMON_DATA_DIR": str(self.ctx.workdir / "hj212"),
            "ENVMON_LOG_LEVEL": "WARNING",
        }
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [envmon_binary(), "hj212"],
            env=_clean_env(env),
            cwd=self.ctx.workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()

    def start(self, timeout_s: float = 30.0, attempts: int = 3) -> None:
        """Start and wait until it accepts connections; a port that another process took
        between our choice and its bind (the machine is shared) gets another try."""
        import socket

        for _ in range(attempts):
            self._spawn()
            assert self.proc is not None
            deadline = time.monotonic() + timeout_s
            while self.proc.poll() is None and time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return
                except OSError:
                    time.sleep(0.1)
            self.stop()
        raise BenchError(f"envmon hj212 did not start:\n{self.log.read_text()[-3000:]}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _clients(ctx: Context, port: int, total: int, processes: int, hours_back: int) -> list[Client]:
    """Client processes for loggers 0..total-1; their frames' DataTimes start `hours_back`
    hours ago (the idle and the load fleets use the same MNs, never the same instants)."""
    first = 0
    root = str(Path(__file__).resolve().parents[1])
    env = _clean_env({"PYTHONPATH": root})
    per = -(-total // processes)
    out: list[Client] = []
    for k in range(processes):
        start = first + k * per
        count = min(per, first + total - start)
        if count <= 0:
            break
        # each process its own source addresses, so no two share an address pair's ports
        sources = SOURCES[k % len(SOURCES) :: processes] or SOURCES
        argv = [
            sys.executable,
            "-m",
            "bench.hj212client",
            "--port",
            str(port),
            "--sources",
            ",".join(sources),
            "--mn-prefix",
            MN_PREFIX,
            "--first",
            str(start),
            "--count",
            str(count),
            "--password",
            PASSWORD,
            "--hours-back",
            str(hours_back),
        ]
        err = (ctx.workdir / f"hj212-client-{k}.log").open("ab")
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=ctx.workdir,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        err.close()
        client = Client(f"hj212-client-{k}", proc)
        ctx.stack.callback(client.stop)
        out.append(client)
    return out


def _all(clients: list[Client], line: str, timeout_s: float) -> list[dict[str, Any]]:
    """Send one command to every client at once, then collect the answers."""
    for c in clients:
        assert c.proc.stdin is not None
        c.proc.stdin.write(line + "\n")
        c.proc.stdin.flush()
    results = []
    for c in clients:
        assert c.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while True:
            out = c.proc.stdout.readline()
            if not out:
                raise BenchError(f"{c.name} exited during {line!r}")
            if out.startswith("RESULT "):
                results.append(json.loads(out[len("RESULT ") :]))
                break
            if time.monotonic() > deadline:
                raise BenchError(f"{c.name}: no answer to {line!r} in {timeout_s:.0f}s")
    return results


def run(ctx: Context, mqtt_readings_per_s: float | None) -> dict[str, Any]:
    plan = ctx.plan
    fd_limit = raise_fd_limit()
    need = max(plan.hj212_connections, plan.hj212_idle_connections) + 200
    if need > fd_limit:
        raise BenchError(f"{need:,} connections need more than the fd hard limit {fd_limit:,}")
    ctx.db.reset_data()
    devices = max(plan.hj212_connections, plan.hj212_idle_connections)
    register_loggers(ctx.db.dsn, devices)
    gateway = Gateway(ctx)
    gateway.start()
    processes = plan.hj212_clients
    answered = 0
    out: dict[str, Any] = {
        "connections": plan.hj212_connections,
        "client_processes": processes,
        "source_addresses": len(SOURCES),
        "fd_limit": fd_limit,
        "readings_per_frame": READINGS_PER_FRAME,
    }
    cpu0 = cpu_seconds(gateway.pid)

    # 1. idle connections and their memory: TCP only, then logged in
    time.sleep(1.0)
    rss_before = rss_mb(gateway.pid)
    idle = _clients(ctx, gateway.port, plan.hj212_idle_connections, processes, 12)
    connected = _all(idle, "connect", 300)
    n_idle = sum(r["opened"] for r in connected)
    time.sleep(1.0)
    rss_connected = rss_mb(gateway.pid)
    logged = _all(idle, "login", 300)
    # the gateway hands the login burst's freed heap back after a quiet second (its sweep
    # runs every second): read its memory once that has had time to happen
    time.sleep(3.0)
    rss_after = rss_mb(gateway.pid)
    answered += sum(r["answered"] for r in logged)
    unanswered = sum(r["unanswered"] for r in logged)
    per_tcp = (rss_connected - rss_before) * 1024 / n_idle if n_idle else None
    per_logged = (rss_after - rss_before) * 1024 / n_idle if n_idle else None
    out["idle"] = {
        "connections": n_idle,
        "connect_s": max(r["seconds"] for r in connected),
        "login_s": max(r["seconds"] for r in logged),
        "rss_before_mb": rss_before,
        "rss_connected_mb": rss_connected,
        "rss_after_mb": rss_after,
        # a connection alone (TCP, handler, framer) ...
        "kb_per_connection_before_login": per_tcp,
        # ... and logged in, which adds what its first frame leaves behind per device: the
        # identity cache entry, the writer's and the rule evaluator's state for the device
        "kb_per_connection": per_logged,
        "mb_per_10k": (rss_after - rss_before) / n_idle * 10_000 if n_idle else None,
        "mb_per_10k_before_login": (rss_connected - rss_before) / n_idle * 10_000
        if n_idle
        else None,
    }
    say(
        f"hj212 idle: {n_idle:,} connections, gateway RSS {rss_before:.0f} -> "
        f"{rss_connected:.0f} MB connected -> {rss_after:.0f} MB logged in"
    )
    _all(idle, "close", 60)
    for c in idle:
        c.stop()

    # 2. latency at a fixed rate, on fresh connections (their logins are answered too)
    load = _clients(ctx, gateway.port, plan.hj212_connections, processes, 6)
    opened = _all(load, "open", 300)
    answered += sum(r["answered"] for r in opened)
    unanswered += sum(r["unanswered"] for r in opened)
    per_process = plan.hj212_rate / len(load)
    paced = _all(load, f"paced {per_process} {plan.hj212_paced_s}", plan.hj212_paced_s + 120)
    latencies = [x for r in paced for x in r["latencies_s"]]
    sent = sum(r["sent"] for r in paced)
    answered += sum(r["answered"] for r in paced)
    unanswered += sum(r["unanswered"] for r in paced)
    out["latency"] = {
        "target_frames_per_s": plan.hj212_rate,
        "offered_frames_per_s": sent / max(r["send_seconds"] for r in paced),
        "seconds": plan.hj212_paced_s,
        "frames": sent,
        "schedule_lag_max_s": max(r["schedule_lag_max_s"] for r in paced),
        "answer": summary_ms(latencies),
    }
    a = out["latency"]["answer"]
    say(
        f"hj212 latency at {out['latency']['offered_frames_per_s']:,.0f} frames/s: "
        f"frame -> 9014 p50 {a['p50_ms']:,.0f} ms, p99 {a['p99_ms']:,.0f} ms"
    )

    # 3. throughput, closed loop
    sat = _all(load, f"saturate {plan.hj212_saturate_s}", plan.hj212_saturate_s + 180)
    in_window = sum(r["answered_in_window"] for r in sat)
    frames = in_window + sum(r["answered_after_window"] for r in sat)
    answered += frames
    unanswered += sum(r["unanswered"] for r in sat)
    # Every frame sent in the window over the time until the last of them was answered: a
    # round of 2,000 frames can take seconds on a busy machine, so counting only the answers
    # inside a short window would measure where the window's end falls in a round.
    elapsed = max(r["elapsed_s"] for r in sat)
    frames_per_s = frames / elapsed
    readings_per_s = frames_per_s * READINGS_PER_FRAME
    out["throughput"] = {
        "seconds": elapsed,
        "window_s": plan.hj212_saturate_s,
        "frames": frames,
        "frames_answered_in_window": in_window,
        "frames_per_s": frames_per_s,
        "readings_per_s": readings_per_s,
        "answer": summary_ms([x for r in sat for x in r["latencies_s"]]),
        "mqtt_readings_per_s": mqtt_readings_per_s,
        "readings_over_mqtt": readings_per_s / mqtt_readings_per_s if mqtt_readings_per_s else None,
    }
    say(
        f"hj212 throughput: {frames_per_s:,.0f} frames/s, {readings_per_s:,.0f} readings/s"
        + (
            f" ({out['throughput']['readings_over_mqtt']:.2f} of the MQTT path)"
            if mqtt_readings_per_s
            else ""
        )
    )
    # 4. latency again at half the rate the closed loop reached: where the gateway keeps up
    # (the goal's 1,000 frames/s may be beyond this machine; cf. live-sustainable)
    rate = min(plan.hj212_rate, max(1.0, frames_per_s * SUSTAINABLE_SHARE))
    paced = _all(load, f"paced {rate / len(load)} {plan.hj212_paced_s}", plan.hj212_paced_s + 120)
    sent = sum(r["sent"] for r in paced)
    answered += sum(r["answered"] for r in paced)
    unanswered += sum(r["unanswered"] for r in paced)
    out["latency_sustainable"] = {
        "target_frames_per_s": rate,
        "offered_frames_per_s": sent / max(r["send_seconds"] for r in paced),
        "seconds": plan.hj212_paced_s,
        "frames": sent,
        "schedule_lag_max_s": max(r["schedule_lag_max_s"] for r in paced),
        "answer": summary_ms([x for r in paced for x in r["latencies_s"]]),
    }
    a = out["latency_sustainable"]["answer"]
    say(
        f"hj212 latency at {rate:,.0f} frames/s (half the closed loop's): "
        f"p50 {a['p50_ms']:,.0f} ms, p99 {a['p99_ms']:,.0f} ms"
    )
    _all(load, "close", 60)
    for c in load:
        c.stop()
    out["gateway_cpu_s"] = cpu_seconds(gateway.pid) - cpu0
    gateway.stop()

    # 5. nothing lost: every answered frame committed, nothing dead-lettered
    stored = ctx.db.scalar("SELECT count(*) FROM readings WHERE device_id LIKE 'hj-%'")
    dead = ctx.db.scalar("SELECT count(*) FROM dead_letters")
    out.update(
        {
            "frames_answered": answered,
            "frames_unanswered": unanswered,
            "stored": stored,
            "lost": answered * READINGS_PER_FRAME - stored,
            "dead_letters": dead,
        }
    )
    if stored < answered * READINGS_PER_FRAME:
        raise BenchError(
            f"hj212: {answered:,} frames answered but only {stored:,} readings stored "
            f"(expected {answered * READINGS_PER_FRAME:,})"
        )
    if unanswered or dead:
        raise BenchError(f"hj212: {unanswered:,} frames unanswered, {dead:,} dead letters")
    ctx.db.reset_data()
    return out
