"""The write path alone, in this process: the bench fleet's messages handed to one `Writer`
batch by batch (no broker, no subprocess), on a throwaway PostgreSQL database. For profiling
the writer (`py-spy record -- python -m bench.inprocess`) and for before/after figures of a
change to it; the drains of `python -m bench` stay the figures that count.

    python -m bench.inprocess --devices 5000 --rounds 8

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
from datetime import UTC, datetime

from bench.fleet import DEFAULT_MIX, PREFIX, build_fleet, make_backlog, register
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
    args = p.parse_args(argv)
    db = Database(args.pg_admin)
    db.create()
    try:
        fleet = build_fleet(args.devices, DEFAULT_MIX)
        register(db.dsn, fleet)
        now = datetime.now(UTC).replace(microsecond=0)
        backlog = make_backlog(
            fleet,
            messages=args.devices * args.rounds,
            sets_per_message=1,
            interval_s=10,
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
            writer._folder.shutdown()
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


if __name__ == "__main__":
    raise SystemExit(main())
