"""The soak stage (`--soak MINUTES`, opt-in): the simulated fleet publishing at a steady rate
for a long while, the API polled beside it, and every process's memory and the database's
size sampled over time. The goal is no growth beyond the data itself: resident memory flat
after warm-up, and the database growing in step with the readings stored (bytes per reading
steady), not faster.

Warm-up lasts until the rules' longest window of raw readings is full (until then the kept
windows fill, and that growth is the data itself), and at least the first third of the
samples. At real time that is 4 hours; `speed` K runs the fleet's event time K times faster
than the clock, ending at the present, so the windows fill K times sooner (each then holds K
times fewer readings: the plateau is lower than at real time, its flatness is what is
shown)."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.context import Context
from bench.fleet import value_pool
from bench.progress import say
from bench.services import BenchError, python_module

POLLED = ("/v1/alerts?limit=100", "/v1/devices?limit=100", "/v1/dead-letters?limit=100")
MEMORY_GROWTH_GOAL = 0.10  # resident memory after warm-up grows by less than this share
# the default packs' longest window of raw readings (the river sections' 4-hour COD, NH3-N
# and permanganate means); the 24-hour rules keep 24 hourly means, not readings
LONGEST_WINDOW_S = 4 * 3600


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


class Poller(threading.Thread):
    """An inspector's page, polling the API in a closed loop, one request at a time."""

    def __init__(self, base: str, token: str) -> None:
        super().__init__(name="soak-poller", daemon=True)
        self.base = base
        self.token = token
        self.stop = threading.Event()
        self.requests = 0
        self.errors = 0

    def run(self) -> None:
        while not self.stop.is_set():
            path = POLLED[self.requests % len(POLLED)]
            req = urllib.request.Request(
                self.base + path, headers={"Authorization": f"Bearer {self.token}"}
            )
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    resp.read()
            except OSError:
                self.errors += 1
            self.requests += 1
            self.stop.wait(0.2)


def run(
    ctx: Context, minutes: float, rate: float, sample_s: float, speed: float = 1.0
) -> dict[str, Any]:
    ctx.db.reset_data()
    ingestor = ctx.ingestor("soak")
    api = ctx.api()
    ingestor.start()
    api.start()
    ingestor.wait_ready()
    api.wait_ready()
    name = ctx.next_id("soak-paced")
    pool_file = ctx.workdir / f"{name}-pool.json"
    pool_file.write_text(json.dumps(value_pool(ctx.fleet, per_device=4, at=datetime.now(UTC))))
    out = ctx.workdir / f"{name}.json"
    seconds = minutes * 60
    publisher = python_module(
        name,
        "bench.workers",
        [
            *("paced", "--port", str(ctx.broker.port), "--pool", str(pool_file)),
            *("--rate", str(rate), "--duration", str(seconds), "--out", str(out)),
            *("--speed", str(speed)),
        ],
        ctx.workdir,
    )
    ctx.stack.callback(publisher.stop)
    poller = Poller(api.base, ctx.db.api_token)
    samples: list[dict[str, Any]] = []
    try:
        publisher.start()
        publisher.wait_for_line("ready", 30)
        poller.start()
        t0 = time.monotonic()
        while True:
            if not publisher.alive() or not ingestor.alive() or not api.alive():
                raise BenchError(f"soak: a process exited:\n{ingestor.log_text()[-2000:]}")
            samples.append(_sample(ctx, t0, ingestor.pid, api.pids(), publisher.pid))
            s = samples[-1]
            say(
                f"soak {s['t_s']:6.0f} s: {s['readings']:,} readings, db "
                f"{s['db_bytes'] / 2**20:,.0f} MiB, ingestor {s['rss']['ingestor'] / 2**20:.0f}"
                f" MiB, api {s['rss']['api'] / 2**20:.0f} MiB"
            )
            if out.exists():
                break
            time.sleep(min(sample_s, max(0.5, seconds + 1 - (time.monotonic() - t0))))
    finally:
        poller.stop.set()
        publisher.stop()
        ingestor.stop()
        api.stop()
    paced: dict[str, Any] = json.loads(out.read_text())
    return {
        "minutes": minutes,
        "speed": speed,
        "target_msg_per_s": rate,
        "offered_msg_per_s": float(paced["rate"]),
        "published_readings": int(paced["readings"]),
        "api_requests": poller.requests,
        "api_errors": poller.errors,
        "samples": samples,
        **summarise(samples, LONGEST_WINDOW_S / speed),
    }


def _sample(
    ctx: Context, t0: float, ingestor: int, api: list[int], publisher: int
) -> dict[str, Any]:
    with ctx.db.connect() as conn:
        row = conn.execute(
            "SELECT pg_database_size(current_database()), "
            "(SELECT count(*) FROM readings), (SELECT count(*) FROM dead_letters)"
        ).fetchone()
    assert row is not None
    backends = ctx.db.backend_pids()
    return {
        "t_s": round(time.monotonic() - t0, 1),
        "db_bytes": int(str(row[0])),
        "readings": int(str(row[1])),
        "dead_letters": int(str(row[2])),
        "rss": {
            "ingestor": rss_bytes(ingestor),
            "api": sum(rss_bytes(p) for p in api),
            "publisher": rss_bytes(publisher),
            "broker": sum(rss_bytes(p) for p in ctx.broker_pids()),
            "postgres_backends": sum(rss_bytes(p) for p in backends),
        },
    }


def summarise(samples: list[dict[str, Any]], warm_up_s: float = 0.0) -> dict[str, Any]:
    """Growth from the end of warm-up (the first third of the samples, and at least
    `warm_up_s`: until the longest window is full) to the last sample: per process, and the
    database's bytes per stored reading. No verdict when warm-up outlasts the samples."""
    none: dict[str, Any] = {"memory_growth": {}, "bytes_per_reading": None, "flat": None}
    if len(samples) < 3:
        return none
    after = [i for i, x in enumerate(samples) if x["t_s"] >= warm_up_s]
    start = max(len(samples) // 3, after[0] if after else len(samples))
    if start >= len(samples) - 1:
        return none | {"warm_up_s": warm_up_s, "windows_full": False}
    base = samples[start]
    last = samples[-1]
    growth = {
        proc: (last["rss"][proc] - base["rss"][proc]) / base["rss"][proc]
        for proc in base["rss"]
        if base["rss"][proc]
    }
    added = last["readings"] - base["readings"]
    per_reading = (last["db_bytes"] - base["db_bytes"]) / added if added > 0 else None
    envmon = [growth.get("ingestor", 0.0), growth.get("api", 0.0)]
    return {
        "memory_growth": growth,
        "bytes_per_reading_after_warmup": per_reading,
        "bytes_per_reading_overall": last["db_bytes"] / last["readings"]
        if last["readings"]
        else None,
        "flat": all(g < MEMORY_GROWTH_GOAL for g in envmon),
        "warm_up_s": warm_up_s,
        "windows_full": True,
        "growth_from_s": base["t_s"],
    }
