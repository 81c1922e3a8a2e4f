"""Services a test starts for itself, on its own ports, so the shared ones are never stopped:
a Mosquitto (the embedded broker's generated config: persistence on, large queues), a
PostgreSQL cluster, and the ingestor as a separate process that can be killed."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from monitor.broker import EmbeddedBroker, port_open
from tests.conftest import free_port


def own_broker(tmp_path: Path, verbose_log: bool = False) -> EmbeddedBroker:
    broker = EmbeddedBroker(tmp_path / "broker", free_port(), verbose_log=verbose_log)
    broker.start()
    return broker


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    assert versions, "PostgreSQL server binaries are not installed"
    return str(versions[-1] / name)


class OwnPostgres:
    """A throw-away PostgreSQL cluster in a temporary folder, run as the postgres user."""

    def __init__(self) -> None:
        # not under pytest's tmp_path: that is private to root, and the server runs as postgres
        self.dir = Path(tempfile.mkdtemp(prefix="envmon-pg-"))
        self.port = free_port()
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self._run(
            _pg_bin("initdb"),
            "-D",
            str(self.dir / "data"),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        )
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/envmon"

    def _run(self, *cmd: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self._as_postgres else []
        subprocess.run([*prefix, *cmd], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._run(
            _pg_bin("pg_ctl"),
            "-D",
            str(self.dir / "data"),
            "-l",
            str(self.dir / "log"),
            "-w",
            "-o",
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        )

    def stop(self) -> None:
        self._run(_pg_bin("pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def create_database(self) -> None:
        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True
        ) as conn:
            conn.execute("CREATE DATABASE envmon")


class IngestProcess:
    """`envmon ingest` (or another verb that logs "ingestor running", e.g. `envmon hj212`)
    in its own process, with the given settings as environment."""

    def __init__(self, env: dict[str, str], log: Path, command: str = "ingest") -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ENVMON_")}
        self.env.update(env)
        self.env.setdefault("ENVMON_METRICS_PORT", str(free_port()))
        self.log = log
        self.command = command
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.mark()
        envmon = str(Path(sys.executable).with_name("envmon"))
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [envmon, self.command], env=self.env, stdout=out, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 20
        while b"ingestor running" not in self.log.read_bytes().split(b"=== start")[-1]:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"envmon {self.command} did not start:\n{self.log.read_text()}"
                )
            time.sleep(0.1)

    def mark(self) -> None:
        with self.log.open("ab") as f:
            f.write(b"\n=== start\n")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_for(check: object, timeout_s: float, what: object) -> None:
    """Poll `check` until true; else fail, with `what` (or what it returns, if callable)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"{what() if callable(what) else what} within {timeout_s}s")


PUBLISH_LINE = re.compile(r"(Received|Sending) PUBLISH (?:from|to) (\S+) \(d\d, q\d, r\d, m(\d+),")


def broker_traffic(log: Path) -> dict[tuple[str, str], int]:
    """From a `log_type all` Mosquitto log: distinct packet ids per (direction, client), e.g.
    how many different messages a publisher got in and how many went out to a subscriber."""
    seen: dict[tuple[str, str], set[int]] = {}
    for line in log.read_text(errors="replace").splitlines():
        if m := PUBLISH_LINE.search(line):
            seen.setdefault((m[1], m[2]), set()).add(int(m[3]))
    return {k: len(v) for k, v in seen.items()}


__all__ = ["IngestProcess", "OwnPostgres", "own_broker", "port_open", "wait_for"]
