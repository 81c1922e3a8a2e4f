"""What the benchmark starts and stops: a throwaway database, envmon processes, CPU readings.

Every process and database made here is registered with the caller's `ExitStack`, so a
failure or Ctrl-C anywhere still stops and drops everything.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

from alerts.packs import install_default_rules
from monitor import auth
from monitor.core.db import make_engine, upgrade
from monitor.core.models import Role

CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A stage could not run, or its result is wrong (lost messages, a crashed process)."""


_HANDED_OUT: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            lo, hi = (int(x) for x in f.read().split())
            return lo, hi
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port() -> int:
    """A port nothing listens on now, for a process started next to listen on. Not from
    bind(0): that is a port of the kernel's ephemeral range, which it also gives to outgoing
    connections (the bench and the tests open thousands), so another socket could take it
    before the process binds it ("Address already in use" at an ingestor's start). Below that
    range, only listeners take ports, and none is handed out twice by this process."""
    lo, _ = _ephemeral_range()
    first = 20_000 if lo > 21_000 else 1_024
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(200):
        port = rng.randrange(first, lo)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise OSError("no free port below the ephemeral range")


def libpq(url: str) -> str:
    """A libpq connection string from a SQLAlchemy URL."""
    u = make_url(url)
    dsn = (
        f"host={u.host or '127.0.0.1'} port={u.port or 5432} user={u.username} dbname={u.database}"
    )
    return dsn + (f" password={u.password}" if u.password else "")


# --- CPU time from /proc ------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    # the command name (field 2) may hold spaces and parentheses: split after the last ")"
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine since boot."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]  # idle + iowait
    total = sum(parts[:8])  # guest time is already counted in user
    return total - idle, total


def children(pid: int) -> list[int]:
    """Child processes of `pid` (from /proc; empty once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def pids_with_cmdline(fragment: str) -> list[int]:
    """Processes whose command line contains `fragment` (our own mosquitto, by its config)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if fragment in cmdline:
            found.append(int(entry.name))
    return found


@dataclass
class CpuMark:
    """CPU seconds of a set of processes and of the machine, at one instant."""

    at: float
    per_pid: dict[int, float]
    machine_busy: int
    machine_total: int


def cpu_mark(pids: list[int]) -> CpuMark:
    busy, total = machine_jiffies()
    return CpuMark(time.monotonic(), {p: cpu_seconds(p) for p in pids}, busy, total)


def cpu_between(a: CpuMark, b: CpuMark, pids: list[int]) -> float:
    return sum(b.per_pid.get(p, 0.0) - a.per_pid.get(p, 0.0) for p in pids)


def machine_busy_cores(a: CpuMark, b: CpuMark) -> float:
    """Cores busy on average between two marks (2.0 = both cores of this machine)."""
    total = b.machine_total - a.machine_total
    if total <= 0:
        return 0.0
    return (b.machine_busy - a.machine_busy) / total * (os.cpu_count() or 1)


# --- the throwaway database ----------------------------------------------------------------


class Database:
    """`CREATE DATABASE bench_<random>` on the given server, migrated; dropped by `drop`."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.name = f"bench_{uuid.uuid4().hex[:10]}"
        self.url = str(
            make_url(admin_url).set(database=self.name).render_as_string(hide_password=False)
        )
        self.dsn = libpq(self.url)
        self.api_token = ""
        self._created = False

    def create(self) -> None:
        try:
            admin = psycopg.connect(libpq(self.admin_url), autocommit=True, connect_timeout=5)
        except psycopg.OperationalError as exc:
            raise BenchError(f"PostgreSQL is not reachable at {self.admin_url}: {exc}") from exc
        with admin:
            admin.execute(f'CREATE DATABASE "{self.name}"')
        self._created = True
        upgrade(self.url)
        engine = make_engine(self.url)
        with engine.begin() as conn:
            install_default_rules(conn)
            # a city-wide inspector: what the API stages call as
            user_id = auth.create_user(conn, auth.UserCreate(name="bench", role=Role.inspector))
            _, self.api_token = auth.create_key(conn, user_id, label="benchmark")
        engine.dispose()

    def drop(self) -> None:
        if not self._created:
            return
        with psycopg.connect(libpq(self.admin_url), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        self._created = False

    def connect(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.dsn, autocommit=True)

    def backend_pids(self) -> list[int]:
        """Server processes serving this database (the ingestors', the API's, ours)."""
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            ).fetchall()
        return [int(str(r[0])) for r in rows]

    def reset_data(self) -> None:
        """Empty what the stages write, keeping the schema, rules, sites and devices. The
        fleet starts each stage as just seen (a fleet that was online): otherwise the no-data
        rules would first open an alert for every device silent since the last stage."""
        with self.connect() as conn:
            conn.execute(
                "TRUNCATE readings, hourly_rollups, dead_letters, alert_events, alerts CASCADE"
            )
            conn.execute("UPDATE devices SET last_seen_at = now(), clock_skew_s = NULL")
            conn.execute("VACUUM ANALYZE readings")

    def scalar(self, sql: str) -> int:
        with self.connect() as conn:
            row = conn.execute(sql.encode()).fetchone()
        return int(str(row[0])) if row and row[0] is not None else 0


# --- envmon processes ------------------------------------------------------------------------


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENVMON_")}
    env.update(extra)
    return env


def envmon_binary() -> str:
    return str(Path(sys.executable).with_name("envmon"))


class Proc:
    """A child process with its output in a log file; stop() is idempotent."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.workdir = workdir
        self.log = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopped = False

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        out = self.log.open("ab")
        # cwd = our own folder, so no .env of the checkout leaks into the settings
        self.proc = subprocess.Popen(
            self.argv, env=self.env, cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT
        )
        out.close()

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_for_line(self, needle: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while needle not in self.log_text():
            if not self.alive():
                raise BenchError(f"{self.name} exited at start:\n{self.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{self.name} not ready in {timeout_s}s:\n{self.log_text()[-3000:]}"
                )
            time.sleep(0.05)

    def pause(self) -> None:
        """SIGSTOP: the process keeps its connections but reads nothing."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.stopped = True

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self.stopped = False

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if self.stopped:
            self.resume()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Ingestor(Proc):
    """`envmon ingest` with its own client id, metrics port and data folder."""

    def __init__(
        self,
        name: str,
        *,
        database_url: str,
        mqtt_url: str,
        client_id: str,
        workdir: Path,
        shared_group: str | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.metrics_port = free_port()
        self.client_id = client_id
        env = {
            "ENVMON_DATABASE_URL": database_url,
            "ENVMON_MQTT_URL": mqtt_url,
            "ENVMON_MQTT_CLIENT_ID": client_id,
            "ENVMON_METRICS_PORT": str(self.metrics_port),
            "ENVMON_DATA_DIR": str(workdir / name),
            "ENVMON_LOG_LEVEL": "INFO",
        }
        if shared_group:
            env["ENVMON_MQTT_SHARED_GROUP"] = shared_group
        env.update(extra_env or {})
        super().__init__(name, [envmon_binary(), "ingest"], _clean_env(env), workdir)

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        self.wait_for_line("ingestor running", timeout_s)

    def scrape(self, names: tuple[str, ...]) -> dict[str, float]:
        """Some counters from /metrics (only the named families, which costs the ingestor
        little: prometheus_client collects nothing else for a `name[]` query)."""
        query = "&".join(f"name[]={n}" for n in names)
        url = f"http://127.0.0.1:{self.metrics_port}/metrics?{query}"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
        return values

    def stored(self) -> int:
        """Readings this process has committed (its envmon_readings_stored_total)."""
        return int(
            self.scrape(("envmon_readings_stored_total",)).get("envmon_readings_stored_total", 0)
        )


class Api(Proc):
    """`envmon api` on a free port."""

    def __init__(self, *, database_url: str, workdir: Path, workers: int = 1) -> None:
        self.port = free_port()
        env = {"ENVMON_DATABASE_URL": database_url, "ENVMON_LOG_LEVEL": "WARNING"}
        argv = [envmon_binary(), "api", "--port", str(self.port), "--host", "127.0.0.1"]
        argv += ["--workers", str(workers)]
        super().__init__("api", argv, _clean_env(env), workdir)

    def pids(self) -> list[int]:
        """The server and its worker processes (uvicorn forks one per --workers)."""
        return [self.pid, *children(self.pid)]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{self.base}/v1/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            if not self.alive():
                raise BenchError(f"envmon api exited at start:\n{self.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise BenchError(f"envmon api not ready in {timeout_s}s")
            time.sleep(0.1)


def python_module(name: str, module: str, args: list[str], workdir: Path) -> Proc:
    """A bench worker (`python -m bench.workers ...`) as a child process."""
    root = str(Path(__file__).resolve().parents[1])
    env = _clean_env({"PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")})
    return Proc(name, [sys.executable, "-m", module, *args], env, workdir)
