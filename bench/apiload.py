"""The API under load, one endpoint at a time, against the 30-day dataset: N clients in a
closed loop (each sends its next request when the last answer has been read: throughput), and
an open loop (requests arrive at a set rate whatever the server does: latency at that load).

The open loop draws Poisson arrivals (exponential gaps, seeded) and measures each request from
its *scheduled* send time to the end of its answer. A closed loop, or an open loop that
measured from the actual send, would wait out a slow answer before sending the next request
and so leave out the queueing that real arrivals meet (coordinated omission); here a request
whose turn comes while every connection is busy waits, and that wait is in its latency."""

from __future__ import annotations

import http.client
import itertools
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from bench.dataset import Dataset
from bench.services import Api, BenchError, Database, cpu_between, cpu_mark, machine_busy_cores
from bench.stats import summary_ms

WARMUP_S = 1.0


def endpoints(ds: Dataset) -> dict[str, Callable[[random.Random], str]]:
    """Name -> a function drawing the next request's path."""

    def hourly(rng: random.Random) -> str:
        device_id, metrics = ds.devices[rng.randrange(len(ds.devices))]
        query = {
            "device_id": device_id,
            "metric": rng.choice(metrics),
            "bucket": "hour",
            "start": _iso(ds.start),
            "end": _iso(ds.end),
            "limit": "1000",
        }
        return f"/v1/readings?{urlencode(query)}"

    return {
        "alert list (newest 100)": lambda _: "/v1/alerts",
        "alert list, firing only": lambda _: "/v1/alerts?status=firing",
        "hourly readings, 1 device, 30 days": hourly,
    }


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def _client(
    port: int,
    headers: dict[str, str],
    draw: Callable[[random.Random], str],
    seed: int,
    until: float,
    record_from: float,
    out: list[float],
    errors: list[str],
    sizes: list[int],
) -> None:
    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        while True:
            path = draw(rng)
            t0 = time.perf_counter()
            if t0 >= until:
                return
            try:
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                continue
            elapsed = time.perf_counter() - t0
            if resp.status != 200:
                errors.append(f"HTTP {resp.status} for {path}: {body[:200]!r}")
            elif t0 >= record_from:
                out.append(elapsed)
                if len(sizes) < 5:
                    sizes.append(len(body))
    finally:
        conn.close()


def run(db: Database, api: Api, ds: Dataset, *, clients: int, seconds: float) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {db.api_token}"}
    return measure(db, api, endpoints(ds), headers, clients=clients, seconds=seconds, what="API")


def measure(
    db: Database,
    api: Api,
    draws: dict[str, Callable[[random.Random], str]],
    headers: dict[str, str],
    *,
    clients: int,
    seconds: float,
    what: str,
) -> dict[str, Any]:
    """Each endpoint in turn under `clients` closed-loop clients: latency, rate, CPU."""
    results: dict[str, Any] = {}
    for name, draw in draws.items():
        samples: list[float] = []
        errors: list[str] = []
        sizes: list[int] = []
        start = time.perf_counter()
        record_from = start + WARMUP_S
        until = record_from + seconds
        api_pids = api.pids()
        pids = [*api_pids, *db.backend_pids()]
        mark = cpu_mark(pids)
        threads = [
            threading.Thread(
                target=_client,
                args=(api.port, headers, draw, i, until, record_from, samples, errors, sizes),
                daemon=True,
            )
            for i in range(clients)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + 60)
        pg_pids = db.backend_pids()
        end = cpu_mark([*api_pids, *pg_pids])
        window = end.at - mark.at
        if errors:
            raise BenchError(f"{what} {name}: {len(errors)} failed requests, e.g. {errors[0]}")
        results[name] = {
            **summary_ms(samples),
            "requests_per_s": len(samples) / seconds,
            "response_bytes": sizes[0] if sizes else 0,
            "api_cores": cpu_between(mark, end, api_pids) / window,
            "postgres_cores": cpu_between(mark, end, pg_pids) / window,
            "machine_cores": machine_busy_cores(mark, end),
        }
    return results


def check_hourly(api: Api, token: str, ds: Dataset) -> int:
    """Items in one 30-day hourly answer (720 when the dataset is whole)."""
    import json
    import urllib.request

    path = endpoints(ds)["hourly readings, 1 device, 30 days"](random.Random(0))
    request = urllib.request.Request(api.base + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        body: dict[str, Any] = json.loads(resp.read())
    return len(body["items"])


# connections of the open loop: enough that at 100 requests/s a second-long stall still finds a
# free one (a request that finds none waits, and the wait counts in its latency)
OPEN_CONNECTIONS = 64


def arrivals(rate: float, seconds: float, seed: int) -> list[float]:
    """Poisson arrival times in [0, seconds) at `rate` per second: exponential gaps."""
    rng = random.Random(seed)
    out: list[float] = []
    at = rng.expovariate(rate)
    while at < seconds:
        out.append(at)
        at += rng.expovariate(rate)
    return out


@dataclass
class _OpenRun:
    """One endpoint's open loop: the schedule, shared by the connections' threads."""

    port: int
    headers: dict[str, str]
    draw: Callable[[random.Random], str]
    schedule: list[float]  # perf_counter times, ascending
    record_from: float
    next_index: Callable[[], int]
    latencies: list[float] = field(default_factory=list)
    send_lags: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def connection(self, seed: int) -> None:
        rng = random.Random(seed)
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            while (i := self.next_index()) < len(self.schedule):
                due = self.schedule[i]
                path = self.draw(rng)
                wait = due - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                sent = time.perf_counter()
                try:
                    conn.request("GET", path, headers=self.headers)
                    resp = conn.getresponse()
                    body = resp.read()
                except (OSError, http.client.HTTPException) as exc:
                    with self.lock:
                        self.errors.append(f"{type(exc).__name__}: {exc}")
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                    continue
                done = time.perf_counter()
                with self.lock:
                    if resp.status != 200:
                        self.errors.append(f"HTTP {resp.status} for {path}: {body[:200]!r}")
                    elif due >= self.record_from:
                        self.latencies.append(done - due)
                        self.send_lags.append(sent - due)
                        if len(self.sizes) < 5:
                            self.sizes.append(len(body))
        finally:
            conn.close()


def run_open(db: Database, api: Api, ds: Dataset, *, rate: float, seconds: float) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {db.api_token}"}
    return measure_open(db, api, endpoints(ds), headers, rate=rate, seconds=seconds, what="API")


def measure_open(
    db: Database,
    api: Api,
    draws: dict[str, Callable[[random.Random], str]],
    headers: dict[str, str],
    *,
    rate: float,
    seconds: float,
    what: str,
    connections: int = OPEN_CONNECTIONS,
) -> dict[str, Any]:
    """Each endpoint in turn at `rate` Poisson arrivals per second: latency from the
    scheduled send time, the rate achieved, how long requests waited to be sent (for a free
    connection, or a client short of CPU), CPU."""
    results: dict[str, Any] = {}
    for n, (name, draw) in enumerate(draws.items()):
        offsets = arrivals(rate, WARMUP_S + seconds, seed=1000 + n)
        start = time.perf_counter() + 0.05  # the threads are up before the first arrival
        run = _OpenRun(
            api.port,
            headers,
            draw,
            [start + t for t in offsets],
            start + WARMUP_S,
            itertools.count().__next__,  # atomic under the GIL: no lock needed
        )
        api_pids = api.pids()
        mark = cpu_mark([*api_pids, *db.backend_pids()])
        threads = [
            threading.Thread(target=run.connection, args=(i,), daemon=True)
            for i in range(connections)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WARMUP_S + seconds + 60)
        last_answer = time.perf_counter()
        pg_pids = db.backend_pids()
        end = cpu_mark([*api_pids, *pg_pids])
        window = end.at - mark.at
        if run.errors:
            raise BenchError(
                f"{what} {name}: {len(run.errors)} failed requests, e.g. {run.errors[0]}"
            )
        measured = [t for t in offsets if t >= WARMUP_S]
        lags = summary_ms(run.send_lags)
        results[name] = {
            **summary_ms(run.latencies),
            "offered_per_s": rate,
            "arrivals_per_s": len(measured) / seconds,
            # answers over the measured span, up to the last answer: below the offered rate
            # when the server falls behind
            "answered_per_s": len(run.latencies) / max(seconds, last_answer - run.record_from),
            "send_lag_p99_ms": lags["p99_ms"],
            "send_lag_max_ms": lags["max_ms"],
            "connections": connections,
            "response_bytes": run.sizes[0] if run.sizes else 0,
            "api_cores": cpu_between(mark, end, api_pids) / window,
            "postgres_cores": cpu_between(mark, end, pg_pids) / window,
            "machine_cores": machine_busy_cores(mark, end),
        }
    return results
