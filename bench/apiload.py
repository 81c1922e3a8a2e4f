"""The API under load: N clients in a closed loop (each sends its next request when the last
answer has been read), one endpoint at a time, against the 30-day dataset."""

from __future__ import annotations

import http.client
import random
import threading
import time
from collections.abc import Callable
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
