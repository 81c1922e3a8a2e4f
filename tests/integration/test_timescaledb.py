"""TimescaleDB conformance: the migrations, the hot write path, rule evaluation and the API on a
real TimescaleDB (2.23 in PostgreSQL 17.5 compiled to WASM: PGlite, served on a local port by
tests/timescale/server.mjs).

TimescaleDB has no Debian or PyPI package here, so the module fixture takes it from npm: it
runs `npm ci` in tests/timescale when node_modules is missing or differs from the lockfile,
starts server.mjs on a free port and stops it at the end. Without Node.js 20+ and npm, or when
the server does not come up, the tests fail: they never skip.

PGlite is one backend and serves one connection at a time (the server queues the others and
refuses them after ENVMON_PGLITE_QUEUE_TIMEOUT_MS): every engine here holds at most one
connection (NullPool), and no two engines are in use at once.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, insert, inspect, select, text
from sqlalchemy.pool import NullPool

from alerts.evaluator import Touched, evaluate_batch
from ingest.repository import insert_readings
from ingest.validate import Row
from monitor import __version__
from monitor.api.app import create_app
from monitor.core.db import downgrade, has_timescaledb, make_engine, upgrade
from monitor.core.models import Alert, AlertEvent, HourlyRollup, Reading, Rule, metadata, table
from monitor.core.settings import Settings
from tests.conftest import bearer, make_key, register

SERVER_DIR = Path(__file__).resolve().parents[1] / "timescale"
READY = re.compile(rb"envmon-pglite ready 127\.0\.0\.1:(\d+)")
START_TIMEOUT_S = 60.0
NPM_TIMEOUT_S = 300.0

# Midnight UTC: readings around it fall into two daily chunks of the hypertable.
T0 = datetime(2026, 11, 25, 0, 0, tzinfo=UTC)

Key = tuple[str, str, datetime]  # device_id, metric, ts (or hour)


# --- the server ----------------------------------------------------------------------------


@dataclass
class Pglite:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 40) -> str:
        text_ = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text_.splitlines()[-lines:])

    def check(self) -> None:
        """Fail the test, with the server's last words, when the server is gone."""
        if self.proc.poll() is not None:
            pytest.fail(
                f"the PGlite/TimescaleDB server exited with {self.proc.returncode}; "
                f"its log ({self.log}):\n{self.tail()}",
                pytrace=False,
            )

    def check_quiet_since(self, offset: int) -> None:
        """After its ready line the server prints only when something went wrong: a refused
        or failed connection, a failed session reset, a crash."""
        with self.log.open("rb") as f:
            f.seek(offset)
            said = f.read().decode(errors="replace").splitlines()
        debug = ("[pglite:debug]", "[PGLiteSocketHandler")  # with ENVMON_PGLITE_DEBUG=1
        problems = [line for line in said if not line.startswith(debug)]
        assert problems == [], f"the PGlite server reported problems ({self.log})"


def _installed_matches_lock() -> bool:
    """node_modules holds exactly what package-lock.json pins (npm's hidden lockfile)."""
    hidden = SERVER_DIR / "node_modules" / ".package-lock.json"
    if not hidden.exists():
        return False
    lock = json.loads((SERVER_DIR / "package-lock.json").read_text())["packages"]
    installed = json.loads(hidden.read_text())["packages"]
    wanted = {k: v.get("integrity") for k, v in lock.items() if k}
    have = {k: v.get("integrity") for k, v in installed.items()}
    return wanted == have


def _npm_ci(npm: str) -> None:
    if _installed_matches_lock():
        return
    cmd = [npm, "ci", "--legacy-peer-deps", "--no-audit", "--no-fund"]
    try:
        done = subprocess.run(
            cmd, cwd=SERVER_DIR, capture_output=True, text=True, timeout=NPM_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"`{' '.join(cmd)}` in {SERVER_DIR} took over {NPM_TIMEOUT_S} s", pytrace=False)
    if done.returncode != 0 or not _installed_matches_lock():
        pytest.fail(
            f"`{' '.join(cmd)}` in {SERVER_DIR} failed ({done.returncode}); the npm registry "
            f"must be reachable:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}",
            pytrace=False,
        )


def _node() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail(
            "the TimescaleDB tests need Node.js 20+ and npm on the PATH (they run PGlite with "
            f"TimescaleDB from {SERVER_DIR}); found node={node}, npm={npm}",
            pytrace=False,
        )
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    match = re.match(r"v(\d+)\.", version)
    if match is None or int(match.group(1)) < 20:
        pytest.fail(f"the TimescaleDB tests need Node.js 20+, found {version!r}", pytrace=False)
    return node, npm


@pytest.fixture(scope="module")
def pglite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pglite]:
    """PGlite with TimescaleDB on a free local port, for this module."""
    node, npm = _node()
    _npm_ci(npm)
    log = tmp_path_factory.mktemp("pglite") / "server.log"
    with log.open("wb") as out:
        # Port 0: the server binds a free port and reports it; --watch-stdin: it stops when
        # this process goes away, even without a SIGTERM.
        proc = subprocess.Popen(
            [node, "server.mjs", "0", "--watch-stdin"],
            cwd=SERVER_DIR,
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Pglite("", proc, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while (found := READY.search(log.read_bytes())) is None:
            server.check()
            if time.monotonic() > deadline:
                pytest.fail(
                    f"the PGlite/TimescaleDB server was not ready after {START_TIMEOUT_S} s; "
                    f"its log:\n{server.tail()}",
                    pytrace=False,
                )
            time.sleep(0.05)
        server.url = f"postgresql+psycopg://postgres:x@127.0.0.1:{int(found.group(1))}/postgres"
        yield server
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def ts_url(pglite: Pglite) -> Iterator[str]:
    """The server's database migrated to head for this test, and back to empty afterwards."""
    pglite.check()
    mark = pglite.log.stat().st_size
    upgrade(pglite.url)
    yield pglite.url
    pglite.check()
    downgrade(pglite.url)
    pglite.check_quiet_since(mark)


@pytest.fixture
def engine(ts_url: str) -> Iterator[Engine]:
    """An engine that holds no connection between uses (PGlite has one)."""
    eng = make_engine(ts_url, poolclass=NullPool)
    yield eng
    eng.dispose()


def compress_all(engine: Engine) -> int:
    """Compress every chunk of readings; return how many chunks there are."""
    with engine.begin() as conn:
        n = len(conn.execute(text("SELECT compress_chunk(c) FROM show_chunks('readings') c")).all())
        flags = conn.execute(
            text(
                "SELECT is_compressed FROM timescaledb_information.chunks "
                "WHERE hypertable_name = 'readings'"
            )
        ).scalars()
        assert list(flags) == [True] * n
    return n


# --- a model of the write path -------------------------------------------------------------


@dataclass
class Model:
    """What readings and hourly_rollups must hold: the first stored reading of a key wins, and
    only N-flagged readings count in rollups."""

    readings: dict[Key, tuple[float, str]] = field(default_factory=dict)

    def add(self, rows: Iterable[Row]) -> int:
        new = 0
        for r in rows:
            key = (r.device_id, r.metric, r.ts)
            if key not in self.readings:
                self.readings[key] = (r.value, r.quality)
                new += 1
        return new

    def rollups(self) -> dict[Key, tuple[int, float, float, float]]:
        acc: dict[Key, list[float]] = {}
        for (device_id, metric, ts), (value, quality) in self.readings.items():
            if quality != "N":
                continue
            hour = ts.replace(minute=0, second=0, microsecond=0)
            a = acc.setdefault((device_id, metric, hour), [0, 0.0, value, value])
            a[0] += 1
            a[1] += value
            a[2] = min(a[2], value)
            a[3] = max(a[3], value)
        return {k: (int(a[0]), a[1], a[2], a[3]) for k, a in acc.items()}


def stored(engine: Engine) -> tuple[dict[Key, tuple[float, str]], dict[Key, tuple[Any, ...]]]:
    with engine.connect() as conn:
        readings = {
            (r.device_id, r.metric, r.ts.astimezone(UTC)): (r.value, r.quality)
            for r in conn.execute(select(table(Reading)))
        }
        rollups = {
            (r.device_id, r.metric, r.hour.astimezone(UTC)): (r.count, r.sum, r.min, r.max)
            for r in conn.execute(select(table(HourlyRollup)))
        }
    return readings, rollups


def assert_matches(engine: Engine, model: Model) -> None:
    readings, rollups = stored(engine)
    assert readings == model.readings
    expected = model.rollups()
    assert rollups.keys() == expected.keys()
    for key, (count, total, low, high) in expected.items():
        assert rollups[key] == (count, pytest.approx(total), low, high), key


def store(engine: Engine, rows: Sequence[Row]) -> int:
    with engine.begin() as conn:
        return insert_readings(conn, rows)


def make_rows(
    rng: random.Random, start: datetime, hours: int, devices: Sequence[str], metrics: Sequence[str]
) -> list[Row]:
    """Readings about every 5 minutes per device and metric; one in five not N-flagged."""
    rows = []
    for device_id in devices:
        for metric in metrics:
            for i in range(hours * 12):
                ts = start + timedelta(minutes=5 * i, seconds=rng.randrange(0, 300))
                quality = "N" if rng.random() < 0.8 else rng.choice("FMSDCTB")
                rows.append(Row(device_id, metric, ts, round(rng.uniform(0, 500), 3), quality, ts))
    return rows


def redeliveries(rng: random.Random, rows: Sequence[Row], share: float) -> list[Row]:
    """Some of `rows` again, with other values and flags (which must not be stored)."""
    picked = rng.sample(list(rows), int(len(rows) * share))
    return [r._replace(value=r.value + 1000.0, quality=rng.choice("NNND")) for r in picked]


# --- the tests -----------------------------------------------------------------------------


def hypertable_state(engine: Engine) -> dict[str, Any]:
    """How TimescaleDB sees readings: hypertable, chunking, compression, policies."""
    with engine.connect() as conn:

        def rows(sql: str) -> list[tuple[Any, ...]]:
            return [tuple(r) for r in conn.execute(text(sql))]

        return {
            "hypertables": rows(
                "SELECT hypertable_name, compression_enabled "
                "FROM timescaledb_information.hypertables"
            ),
            "chunk_interval": rows(
                "SELECT column_name, time_interval FROM timescaledb_information.dimensions "
                "WHERE hypertable_name = 'readings'"
            ),
            "compression": rows(
                "SELECT hypertable::text, segmentby, orderby "
                "FROM timescaledb_information.hypertable_compression_settings"
            ),
            "jobs": [
                (proc, {k: v for k, v in config.items() if k != "hypertable_id"})
                for proc, config in rows(
                    "SELECT proc_name, config FROM timescaledb_information.jobs "
                    "WHERE hypertable_name = 'readings' ORDER BY proc_name"
                )
            ],
        }


def test_migrations_make_readings_a_compressed_hypertable(
    ts_url: str, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert has_timescaledb(engine)
    assert hypertable_state(engine) == {
        "hypertables": [("readings", True)],
        "chunk_interval": [("ts", timedelta(days=1))],
        "compression": [("readings", "device_id,metric", "ts DESC")],
        "jobs": [("policy_compression", {"compress_after": "7 days"})],
    }
    # The hypertable changes nothing autogenerate would see: models and migrations agree.
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []

    downgrade(ts_url)
    assert set(inspect(engine).get_table_names()) - {"alembic_version"} == set()
    assert hypertable_state(engine) == {
        "hypertables": [],
        "chunk_interval": [],
        "compression": [],
        "jobs": [],
    }

    # Upgrade again, with the TimescaleDB settings changed: they are honoured.
    monkeypatch.setenv("ENVMON_TIMESCALE_CHUNK_INTERVAL", "6 hours")
    monkeypatch.setenv("ENVMON_TIMESCALE_COMPRESS_AFTER", "3 days")
    monkeypatch.setenv("ENVMON_TIMESCALE_RETENTION", "400 days")
    upgrade(ts_url)
    assert set(inspect(engine).get_table_names()) - {"alembic_version"} == set(metadata.tables)
    assert has_timescaledb(engine)
    assert hypertable_state(engine) == {
        "hypertables": [("readings", True)],
        "chunk_interval": [("ts", timedelta(hours=6))],
        "compression": [("readings", "device_id,metric", "ts DESC")],
        "jobs": [
            ("policy_compression", {"compress_after": "3 days"}),
            ("policy_retention", {"drop_after": "400 days"}),
        ],
    }


def test_hot_path_counts_new_rows_and_rolls_up_also_into_compressed_chunks(
    engine: Engine,
) -> None:
    rng = random.Random(20261125)
    model = Model()
    devices, metrics = ["dust-1", "dust-2", "dust-3"], ["pm10", "pm25"]

    # Six hours across midnight (two daily chunks), out of order, then redeliveries of rows
    # of the same batch that carry other values (the first delivery is the one stored).
    base = make_rows(rng, T0 - timedelta(hours=3), 6, devices, metrics)
    rng.shuffle(base)
    batch = base + redeliveries(rng, base, 0.15)
    assert store(engine, batch) == model.add(batch) == len(base)
    assert_matches(engine, model)
    assert store(engine, batch) == 0  # the same batch again: nothing new, rollups unchanged
    assert_matches(engine, model)

    assert compress_all(engine) == 2

    # Into the compressed chunks: redeliveries of compressed rows, new rows in hours already
    # rolled up, and rows of a new day (a new chunk); again out of order.
    later = make_rows(rng, T0 - timedelta(hours=2, minutes=2), 2, devices, metrics[:1])
    new_day = make_rows(rng, T0 + timedelta(days=1), 1, devices[:2], metrics)
    batch2 = redeliveries(rng, base, 0.3) + later + new_day
    rng.shuffle(batch2)
    batch2 += redeliveries(rng, later, 0.2)
    expected_new = model.add(batch2)
    assert expected_new > len(new_day)  # some of `later` are new in compressed chunks
    assert store(engine, batch2) == expected_new
    assert_matches(engine, model)
    assert store(engine, batch2) == 0
    assert_matches(engine, model)


RULE: dict[str, Any] = {
    "name": "low-pressure",
    "device_kind": "leak_meter",
    "metric": "pressure",
    "aggregate": "raw",
    "window_s": 0,
    "min_samples": 1,
    "warn_below": 0.16,
    "alarm_below": 0.14,
    "for_s": 120,
    "auto_resolve": True,
    "quiet_s": 600,
    "basis": "test",
    "legal_limit": False,
    "enabled": True,
    "description": "",
    "created_at": T0,
    "updated_at": T0,
}


def leak_meter_with_rule(engine: Engine) -> None:
    register(engine, site="dma-1", site_kind="dma", devices={"leak-1": "leak_meter"}, rules=False)
    with engine.begin() as conn:
        conn.execute(insert(table(Rule)).values(**RULE))


def pressure(values: Sequence[float], start_min: int = 0, quality: str = "N") -> list[Row]:
    """One pressure reading a minute from T0 + `start_min`."""
    return [
        Row("leak-1", "pressure", T0 + timedelta(minutes=start_min + i), v, quality, T0)
        for i, v in enumerate(values)
    ]


def feed(engine: Engine, rows: Sequence[Row]) -> tuple[int, int]:
    """Store and evaluate one batch, as the writer does; return (new rows, alerts opened)."""
    with engine.begin() as conn:
        new = insert_readings(conn, rows)
        outcome = evaluate_batch(conn, [Touched("leak-1", "pressure", min(r.ts for r in rows))])
    return new, outcome.opened


def all_alerts(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(table(Alert)).order_by("id"))]


def test_evaluation_opens_one_alert_also_over_compressed_chunks(engine: Engine) -> None:
    leak_meter_with_rule(engine)
    assert feed(engine, pressure([0.30, 0.10, 0.10, 0.10, 0.10, 0.10])) == (6, 1)
    [alert] = all_alerts(engine)
    assert (alert["status"], alert["severity"]) == ("firing", "alarm")
    assert alert["started_at"] == T0 + timedelta(minutes=1)
    assert alert["fired_at"] == T0 + timedelta(minutes=3)  # for_s = 120
    assert alert["violations"] == 5  # minutes 1 and 2 pending, the firing step, 4 and 5

    assert feed(engine, pressure([0.30, 0.10, 0.10, 0.10, 0.10, 0.10])) == (0, 0)  # redelivery
    [again] = all_alerts(engine)
    assert (again["id"], again["violations"], again["last_violation_at"]) == (
        alert["id"],
        5,
        T0 + timedelta(minutes=5),
    )

    compress_all(engine)
    assert feed(engine, pressure([0.09, 0.10], start_min=6)) == (2, 0)
    [same] = all_alerts(engine)
    assert same["id"] == alert["id"] and same["violations"] == 7
    assert same["last_violation_at"] == T0 + timedelta(minutes=7)
    assert same["peak_value"] == pytest.approx(0.09)
    with engine.connect() as conn:
        kinds = conn.execute(select(table(AlertEvent).c.kind)).scalars().all()
    assert kinds == ["pending", "opened"]


@pytest.fixture
async def api(ts_url: str) -> AsyncIterator[httpx.AsyncClient]:
    engine = make_engine(ts_url, poolclass=NullPool)
    key = make_key(engine)
    engine.dispose()
    app = create_app(Settings(database_url=ts_url))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test", headers=bearer(key)
        ) as client,
    ):
        yield client


@pytest.fixture
def api_data(engine: Engine) -> Model:
    """A leak meter whose pressure fell below the alarm threshold, over two compressed chunks:
    stored before the app starts, as the app's pooled engine then holds the one connection."""
    leak_meter_with_rule(engine)
    model = Model()
    start = -90  # minutes from T0: across midnight
    values = [0.30] * 60 + [0.10] * 60 + [0.35] * 5  # clear for less than quiet_s: firing
    rows = pressure(values, start) + pressure([0.01] * 30, start + len(values), quality="D")
    model.add(rows)
    for i in range(0, len(rows), 40):
        feed(engine, rows[i : i + 40])
    compress_all(engine)
    engine.dispose()
    return model


async def test_api_on_timescaledb(api_data: Model, api: httpx.AsyncClient) -> None:
    r = await api.get("/v1/health")
    assert r.status_code == 200, r.text
    assert r.json() == {
        "status": "ok",
        "database": "postgresql",
        "version": __version__,
        "timescaledb": True,
        "hj212": None,  # no gateway in this process
    }

    r = await api.get("/v1/readings", params={"bucket": "hour", "device_id": "leak-1"})
    assert r.status_code == 200, r.text
    got = [
        (datetime.fromisoformat(b["hour"]), b["count"], b["mean"], b["min"], b["max"], b["unit"])
        for b in r.json()["items"]
    ]
    expected = [
        (hour, count, pytest.approx(total / count), low, high, "MPa")
        for (_, _, hour), (count, total, low, high) in sorted(
            api_data.rollups().items(), key=lambda kv: kv[0][2], reverse=True
        )
    ]
    assert len(expected) == 3
    assert got == expected

    # Raw readings from the compressed hypertable, page by page, newest first.
    seen: list[tuple[datetime, float, str]] = []
    params: dict[str, Any] = {"device_id": "leak-1", "metric": "pressure", "limit": 70}
    while True:
        r = await api.get("/v1/readings", params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        seen += [(datetime.fromisoformat(x["ts"]), x["value"], x["quality"]) for x in page["items"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert seen == [
        (ts, value, quality)
        for (_, _, ts), (value, quality) in sorted(api_data.readings.items(), reverse=True)
    ]

    r = await api.get("/v1/alerts")
    assert r.status_code == 200, r.text
    [alert] = r.json()["items"]
    assert (alert["device_id"], alert["rule_name"], alert["site_id"]) == (
        "leak-1",
        "low-pressure",
        "dma-1",
    )
    assert (alert["status"], alert["severity"], alert["metric"]) == ("firing", "alarm", "pressure")
    assert datetime.fromisoformat(alert["fired_at"]) == T0 - timedelta(minutes=28)

    r = await api.post(f"/v1/alerts/{alert['id']}/acknowledge", json={"note": "seen"})
    assert r.status_code == 200, r.text
    assert [e["kind"] for e in r.json()["events"]] == ["pending", "opened", "acknowledged"]
    r = await api.get("/v1/alerts", params={"status": "acknowledged"})
    assert [a["id"] for a in r.json()["items"]] == [alert["id"]]
