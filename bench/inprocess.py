"""The write path alone, in this process: the bench fleet's messages handed to one `Writer`
batch by batch (no broker, no subprocess), on a throwaway PostgreSQL database. For profiling
the writer (`py-spy record -- python -m bench.inprocess`) and for before/after figures of a
change to it; the drains of `python -m bench` stay the figures that count.

    python -m bench.inprocess --devices 5000 --rounds 8
    python -m bench.inprocess --devices 1000 --rounds 1 --mix dust --kept-state

`--kept-state` walks the evaluator's kept state after the last batch and prints its bytes
per device by object type (what an idle HJ 212 logger costs the gateway after its login
frame, with `--rounds 1`): every object reachable from the cache once, rule rows left out.

Each batch is prepared first, as the collector thread does it ahead of the committer, and
only the committer's part (`Writer._store_batch`) is timed; garbage collection is paced as
in the ingestor (after each batch)."""

from __future__ import annotations

import argparse
import gc
import queue
import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from bench.fleet import DEFAULT_MIX, PREFIX, build_fleet, make_backlog, parse_mix, register
from bench.services import Database
from ingest.mqtt import Message
from ingest.registry import DeviceRegistry
from ingest.writer import Writer
from monitor.core.db import make_engine
from monitor.core.settings import Settings

ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.inprocess", description=__doc__)
    p.add_argument("--devices", type=int, default=5000, help="fleet size [5000]")
    p.add_argument("--rounds", type=int, default=8, help="messages per device [8]")
    p.add_argument("--batch", type=int, default=1786, help="messages a batch [1786]")
    p.add_argument("--pg-admin", default=ADMIN, help=f"server to CREATE DATABASE on [{ADMIN}]")
    p.add_argument("--no-cache", action="store_true", help="kept rule state off")
    p.add_argument("--mix", type=parse_mix, default=DEFAULT_MIX, help="fleet mix [dust=4,...]")
    p.add_argument("--interval", type=float, default=10, help="seconds between a device's sets")
    p.add_argument(
        "--behind",
        action="store_true",
        help="as when draining a backlog: a batch always waits behind the one committing, so "
        "the DMA days are deferred (ENVMON_DMA_DEFER_S); the last flush is timed too",
    )
    p.add_argument(
        "--kept-state",
        action="store_true",
        help="after the last batch, print the kept rule state's bytes per device by type",
    )
    args = p.parse_args(argv)
    db = Database(args.pg_admin)
    db.create()
    try:
        fleet = build_fleet(args.devices, args.mix)
        register(db.dsn, fleet)
        now = datetime.now(UTC).replace(microsecond=0)
        backlog = make_backlog(
            fleet,
            messages=args.devices * args.rounds,
            sets_per_message=1,
            interval_s=args.interval,
            end=now,
        )
        engine = make_engine(db.url)
        with tempfile.TemporaryDirectory() as spool:
            settings = Settings(
                database_url=db.url,
                mqtt_topic_prefix=PREFIX,
                spool_path=f"{spool}/spool",
                eval_cache=not args.no_cache,
            )
            writer = Writer(
                settings, engine, queue.Queue(), DeviceRegistry(engine), lambda _acked: None
            )
            if args.behind:
                writer._behind = lambda: True  # type: ignore[method-assign]
            messages = [
                Message(topic, payload, i, 1, now, 0)
                for i, (topic, payload) in enumerate(backlog.messages)
            ]
            batches = [messages[i : i + args.batch] for i in range(0, len(messages), args.batch)]
            times: list[float] = []
            cpu = 0.0
            for n, batch in enumerate(batches, 1):
                writer._validate_ahead(batch)
                writer._ahead[id(batch)] = (batch, writer._prepare(batch))
                started, cpu_started = time.perf_counter(), time.process_time()
                writer._store_batch(batch)
                times.append(time.perf_counter() - started)
                cpu += time.process_time() - cpu_started
                writer._gc.after_batch()
                print(f"batch {n}/{len(batches)}: {1000 * times[-1]:.0f} ms", file=sys.stderr)
            if args.behind:  # what was deferred, as the idle writer recomputes it
                started, cpu_started = time.perf_counter(), time.process_time()
                writer._flush_dma_alone()
                times[-1] += time.perf_counter() - started
                cpu += time.process_time() - cpu_started
            writer._folder.shutdown()
            if args.kept_state and writer._cache is not None:
                del messages, batches, backlog
                print_kept_state(writer._cache._pairs)
        engine.dispose()
    finally:
        gc.unfreeze()
        db.drop()
    warm = times[len(times) // 3 :]  # after the first third: every pair seen once
    wall = sum(times)
    print(
        f"{len(batches)} batches of {args.batch} messages ({backlog.readings:,} readings): "
        f"{wall:.2f} s committing ({cpu:.2f} s CPU of this process, both threads), "
        f"{len(messages) / wall:,.0f} msg/s; after the first third: median "
        f"{1000 * statistics.median(warm):.0f} ms a batch"
    )
    return 0


def print_kept_state(pairs: dict[str, Any]) -> None:
    """Bytes of every object reachable from the cache's pair states, once each, by type."""
    gc.collect()
    seen: set[int] = set()
    size: Counter[str] = Counter()
    count: Counter[str] = Counter()
    todo: list[Any] = [pairs]
    while todo:
        o = todo.pop()
        name = type(o).__name__
        if id(o) in seen or isinstance(o, type) or name in ("Row", "function", "module"):
            continue
        seen.add(id(o))
        size[name] += sys.getsizeof(o)
        count[name] += 1
        if isinstance(o, dict):
            todo.extend(o.keys())
            todo.extend(o.values())
        elif isinstance(o, (list, tuple, set, frozenset)):
            todo.extend(o)
        else:
            for cls in type(o).__mro__:
                todo.extend(getattr(o, a) for a in getattr(cls, "__slots__", ()) if hasattr(o, a))
    devices = len(pairs)
    kept = count["PairState"]
    total = sum(size.values())
    print(
        f"kept state: {devices:,} devices, {kept:,} (rule, device) pairs, {total:,} bytes = "
        f"{total / max(1, devices):,.0f} B a device, {total / max(1, kept):,.0f} B a pair"
    )
    for name, b in size.most_common(15):
        print(f"  {name:20s} {count[name]:9,} objects {b / max(1, devices):8,.0f} B a device")


if __name__ == "__main__":
    raise SystemExit(main())
