"""The benchmark's own child processes: `python -m bench.workers {raw,naive,paced} ...`.

raw    the raw limit: a bare paho subscriber that only counts the messages of its session.
naive  the naive baseline: parse each message, one INSERT (autocommit) per reading.
paced  a publisher at a fixed rate, each message stamped with its publish time.

Each prints `ready` once connected and subscribed, writes its figures as JSON to --out when
done, and then waits to be stopped (so that its CPU time can still be read from /proc).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from bench.fleet import live_payload
from bench.mqttio import Publisher, connect_properties


def _ready() -> None:
    print("ready", flush=True)


def _wait_for_stop(done: threading.Event) -> None:
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    done.wait()


class Counter:
    """Counts delivered messages of a persistent session until `expect` have arrived."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.expect: int = args.expect
        self.out = Path(args.out)
        self.count = 0
        self.first = 0.0
        self.finished = threading.Event()
        self.extra: dict[str, Any] = {}
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=mqtt.MQTTv5
        )
        topics: list[str] = json.loads(args.topics)
        self.client.on_connect = lambda c, *_: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda *_: _ready()
        self.client.on_message = self.on_message
        self.client.connect(
            args.host,
            args.port,
            keepalive=60,
            clean_start=False,
            properties=connect_properties(args.receive_maximum),
        )

    def handle(self, msg: mqtt.MQTTMessage) -> None:
        """What the consumer does with a message (nothing, for the raw limit)."""

    def on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if self.count >= self.expect:
            return
        if self.count == 0:
            self.first = time.time()
        self.handle(msg)
        self.count += 1
        if self.count == self.expect:
            result = {
                "count": self.count,
                "first": self.first,
                "last": time.time(),
                "cpu_s": time.process_time(),
                **self.extra,
            }
            self.out.write_text(json.dumps(result))
            self.finished.set()

    def run(self) -> None:
        # paho acknowledges a QoS 1 message when on_message returns (auto-ack): after the
        # naive consumer's INSERTs have committed, as envmon acknowledges after its commit.
        self.client.loop_start()
        _wait_for_stop(threading.Event())
        self.client.disconnect()
        self.client.loop_stop()


class Naive(Counter):
    """One INSERT per reading, each its own transaction: the first thing one would write."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.db = psycopg.connect(args.dsn, autocommit=True)
        self.cur = self.db.cursor()
        self.extra["readings"] = 0

    def handle(self, msg: mqtt.MQTTMessage) -> None:
        device_id = msg.topic.split("/")[-2]
        doc = json.loads(msg.payload)
        for item in doc.get("batch", [doc]):
            for metric, value in item["values"].items():
                self.cur.execute(
                    "INSERT INTO readings (device_id, metric, ts, value, quality, received_at)"
                    " VALUES (%s, %s, %s, %s, 'N', now()) ON CONFLICT DO NOTHING",
                    (device_id, metric, item["ts"], value),
                )
                self.extra["readings"] += 1


def paced(args: argparse.Namespace) -> None:
    """Publish `rate` messages/s for `duration` s, cycling through the device pool; each
    message's event time is the moment it is published (ms), which the bench compares with
    the moment its reading is visible in the database. With `speed` K > 1 event time runs K
    times faster than the clock and reaches the present at the end (it starts (K - 1) x
    duration in the past): the soak fills the rules' windows K times sooner."""
    pool: list[tuple[str, list[dict[str, float]]]] = json.loads(Path(args.pool).read_text())
    publisher = Publisher(args.host, args.port)
    _ready()
    rate: float = args.rate
    sent = 0
    readings = 0
    behind_max = 0.0
    started_wall = time.time()
    t0 = time.monotonic()
    end = t0 + args.duration
    speed: float = args.speed
    end_wall = started_wall + args.duration
    n_devices = len(pool)
    while True:
        now = time.monotonic()
        if now >= end:
            break
        due = int((now - t0) * rate) + 1
        behind_max = max(behind_max, (due - sent - 1) / rate)
        while sent < due:
            topic, values = pool[sent % n_devices]
            chosen = values[(sent // n_devices) % len(values)]
            wall = time.time()
            stamp = wall if speed == 1 else end_wall - (end_wall - wall) * speed
            publisher.publish(topic, live_payload(int(stamp * 1000), chosen))
            readings += len(chosen)
            sent += 1
        time.sleep(0.001)
    ended_wall = time.time()
    publisher.flush()
    publisher.close()
    result = {
        "published": sent,
        "readings": readings,
        "started": started_wall,
        "ended": ended_wall,
        "rate": sent / (ended_wall - started_wall),
        "behind_max_s": behind_max,
        "cpu_s": time.process_time(),
    }
    Path(args.out).write_text(json.dumps(result))
    _wait_for_stop(threading.Event())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.workers")
    sub = parser.add_subparsers(dest="kind", required=True)
    for kind in ("raw", "naive"):
        p = sub.add_parser(kind)
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--client-id", required=True)
        p.add_argument("--topics", required=True, help="JSON list")
        p.add_argument("--expect", type=int, required=True)
        p.add_argument("--receive-maximum", type=int, default=5000)
        p.add_argument("--out", required=True)
        if kind == "naive":
            p.add_argument("--dsn", required=True)
    p = sub.add_parser("paced")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pool", required=True)
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--speed", type=float, default=1.0, help="event time per second of clock")
    p.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.kind == "raw":
        Counter(args).run()
    elif args.kind == "naive":
        Naive(args).run()
    else:
        paced(args)


if __name__ == "__main__":
    main(sys.argv[1:])
