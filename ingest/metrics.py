"""Prometheus metrics of the write path (served at /metrics by the API, or by `envmon ingest`)."""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterator, Mapping

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

MESSAGES = Counter("envmon_messages_received", "MQTT messages taken from the broker")
STORED = Counter("envmon_readings_stored", "Readings stored (new)")
DUPLICATES = Counter("envmon_readings_duplicate", "Readings already stored (redelivery/repeat)")
DEAD = Counter("envmon_dead_letters", "Messages or parts not stored, by reason", ["reason"])
BATCH_SIZE = Histogram(
    "envmon_batch_messages",
    "Messages per write batch",
    buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000),
)
COMMIT_SECONDS = Histogram(
    "envmon_batch_commit_seconds",
    "Time to store, evaluate and commit one batch",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
EVALUATE_SECONDS = Histogram(
    "envmon_evaluate_seconds",
    "Time to evaluate the alert rules over one stored batch (inside its transaction)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
EVALUATION_ERRORS = Counter(
    "envmon_evaluation_errors", "Batches whose rule evaluation failed (readings still stored)"
)
EVAL_PAIRS = Counter(
    "envmon_eval_pairs",
    "(rule, device) pairs of incremental kinds evaluated: from kept state (hit) or rebuilt "
    "from the database (miss: first seen, late data, or another ingestor stored readings)",
    ["result"],
)
EVAL_SHADOW_MISMATCHES = Counter(
    "envmon_eval_shadow_mismatches",
    "Alerts a rebuild without kept state would have written differently (ENVMON_EVAL_SHADOW; "
    "should stay 0)",
)
QUEUE_DEPTH = Gauge("envmon_queue_depth", "Messages waiting between the MQTT thread and writer")
SPOOL_DEPTH = Gauge("envmon_spool_depth", "Messages in the local spool awaiting the database")
SPOOL_FULL = Counter("envmon_spool_full", "Times the spool was full and intake was held back")
WRITER_ERRORS = Counter(
    "envmon_writer_errors", "Writer steps that failed unexpectedly (the batch is retried)"
)
DB_RETRIES = Counter(
    "envmon_database_retries",
    "Transactions retried after a deadlock, serialisation failure or timeout",
)
DB_UP = Gauge("envmon_database_up", "1 while the writer can reach the database")
ALERTS_OPENED = Counter("envmon_alerts_opened", "Alerts opened by the evaluator")
LAST_SEEN_NAME = "envmon_device_last_seen_timestamp_seconds"
LAST_SEEN_HELP = "When a device's last message arrived (active registered devices only)"
# device id -> the epoch seconds of its last stored message, read when /metrics is scraped
_seen: dict[str, float] = {}
_seen_lock = threading.Lock()


class _LastSeen(Collector):
    """The LAST_SEEN series, built from `_seen` at scrape time: the writer updates one dict
    per batch instead of one Prometheus child per device (a lock and a label key each,
    ~5% of the writer thread with thousands of devices a batch)."""

    def collect(self) -> Iterator[Metric]:
        with _seen_lock:
            items = list(_seen.items())
        family = GaugeMetricFamily(LAST_SEEN_NAME, LAST_SEEN_HELP, labels=["device_id"])
        for device_id, at in items:
            family.add_metric([device_id], at)
        yield family

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(LAST_SEEN_NAME, LAST_SEEN_HELP, labels=["device_id"])


REGISTRY.register(_LastSeen())


def devices_seen(seen: Mapping[str, float]) -> None:
    """Set the LAST_SEEN series of these devices (the writer calls this once a batch, for
    stored devices only)."""
    with _seen_lock:
        _seen.update(seen)


def keep_devices(active: Collection[str]) -> int:
    """Drop the LAST_SEEN series of every device not in `active` (retired or deleted): the
    series stay as many as the active fleet, not as every id ever seen. Returns how many."""
    with _seen_lock:
        gone = [d for d in _seen if d not in active]
        for device_id in gone:
            del _seen[device_id]
    return len(gone)


# The HJ 212 gateway; its dead letters are counted by reason in envmon_dead_letters
HJ212_CONNECTIONS = Gauge("envmon_hj212_connections", "Open HJ 212 logger connections")
HJ212_FRAMES = Counter("envmon_hj212_frames", "HJ 212 frames that passed framing and CRC")
HJ212_ANSWERS = Counter("envmon_hj212_answers", "HJ 212 answers (9014, 9013) sent to loggers")
