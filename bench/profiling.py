"""Sampling profiles of an ingestor with py-spy, and what they say in a few numbers.

Two samplers run side by side, both non-blocking (they read the target's memory without
stopping it, so the drain runs at full speed): one counts only samples where a thread was
running (CPU view), the other every sample (`--idle`, wall-clock view: where the writer
thread's time goes, waiting for PostgreSQL included).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

RATE_HZ = 200
PROJECT_PACKAGES = ("ingest", "alerts", "monitor", "devices")

# A sample belongs to the first category whose marker appears in its stack.
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("timer rules (evaluate_timers, own thread)", ("evaluate_timers",)),
    ("rule evaluation (alerts.evaluator)", ("evaluate_batch",)),
    ("insert readings + rollups (one statement)", ("insert_readings",)),
    ("touch devices (UPDATE per device)", ("touch_devices",)),
    ("dead letters", ("insert_dead_letters",)),
    ("validation (ingest.validate, pydantic)", ("parse_message",)),
    ("commit", ("commit",)),
    ("acknowledge (paho PUBACK)", ("MqttIntake.ack", "ack (ingest/mqtt.py")),
    ("counters and Prometheus metrics", ("Writer._count",)),
    ("batching (queue get)", ("Writer._collect",)),
    ("MQTT receive (paho, on_message)", ("_on_message", "_packet_read", "loop_read")),
    ("MQTT network loop (paho select)", ("loop_forever", "_loop")),
]

_LINE = re.compile(r":\d+\)$")


def py_spy() -> str | None:
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    return found


def start_profiler(pid: int, prefix: Path) -> list[subprocess.Popen[bytes]]:
    binary = py_spy()
    if binary is None:
        return []
    procs = []
    for view, extra in (("cpu", []), ("wall", ["--idle"])):
        out = prefix.with_name(f"{prefix.name}-{view}.txt")
        argv = [binary, "record", "--pid", str(pid), "--rate", str(RATE_HZ), "--format", "raw"]
        argv += ["--threads", "--nonblocking", "--output", str(out), *extra]
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return procs


def stop_profiler(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _frame(frame: str) -> str:
    return _LINE.sub(")", frame)


def _category(frames: list[str]) -> str:
    stack = ";".join(frames)
    for label, markers in CATEGORIES:
        if any(m in stack for m in markers):
            return label
    return "other"


def summarize(path: Path, top: int = 15) -> dict[str, Any]:
    """Shares of samples per thread, per category within each thread, and the top frames."""
    if not path.exists():
        return {}
    per_thread: Counter[str] = Counter()
    categories: dict[str, Counter[str]] = defaultdict(Counter)
    leaf: Counter[str] = Counter()
    project: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        parts = stack.split(";")
        thread = parts[0].split(": ", 1)[-1] if parts[0].startswith("thread") else "?"
        frames = [_frame(f) for f in parts[1:]]
        total += count
        per_thread[thread] += count
        categories[thread][_category(frames)] += count
        if frames:
            leaf[frames[-1]] += count
        for f in set(frames):
            inclusive[f] += count
            if any(f"({pkg}/" in f for pkg in PROJECT_PACKAGES):
                project[f] += count
    if not total:
        return {"samples": 0}

    def share(c: Counter[str], n: int) -> list[tuple[str, float]]:
        return [(k, v / total) for k, v in c.most_common(n)]

    return {
        "samples": total,
        "threads": dict(share(per_thread, 10)),
        "categories": {
            t: {k: v / per_thread[t] for k, v in c.most_common()} for t, c in categories.items()
        },
        "top_self": share(leaf, top),
        "top_inclusive": [
            (k, v)
            for k, v in share(inclusive, top * 4)
            if not k.startswith(("Thread.", "<module>", "main ", "invoke", "Command."))
        ][:top],
        "top_project_inclusive": share(project, top * 2),
    }
