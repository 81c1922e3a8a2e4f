"""The newcomer's path on the embedded default: `envmon up --simulate` (SQLite + the embedded
Mosquitto) shows readings of all three kinds and an alert within a minute, takes a
`mosquitto_pub` message in the documented form, and stops cleanly on Ctrl-C."""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from monitor.broker import port_open
from tests.conftest import free_port


class Demo:
    def __init__(
        self, proc: subprocess.Popen[bytes], api: str, mqtt_port: int, log: Path, data: Path
    ) -> None:
        self.proc, self.api, self.mqtt_port, self.log = proc, api, mqtt_port, log
        self.key_file = data / "demo-admin.key"
        self.credentials = data / "device-credentials.txt"

    def password(self, device_id: str) -> str:
        lines = self.credentials.read_text().splitlines()
        return next(line.split("=", 1)[1] for line in lines if line.startswith(f"{device_id}="))

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key_file.read_text().strip()}"}

    def get(self, path: str, **params: Any) -> Any:
        r = httpx.get(f"{self.api}{path}", params=params, headers=self.headers, timeout=5)
        r.raise_for_status()
        return r.json()


def eventually(check: Callable[[], Any], timeout_s: float, what: str, demo: Demo) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if demo.proc.poll() is not None:
            pytest.fail(f"envmon up exited early:\n{demo.log.read_text()[-3000:]}")
        try:
            result = check()
            if result:
                return result
        except (httpx.HTTPError, KeyError, IndexError, FileNotFoundError):
            pass
        time.sleep(0.5)
    pytest.fail(f"{what} not seen within {timeout_s}s:\n{demo.log.read_text()[-3000:]}")


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    api_port, mqtt_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENVMON_")}
    log = tmp_path / "envmon.log"
    envmon = Path(sys.executable).with_name("envmon")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(envmon),
                "up",
                "--simulate",
                "--port",
                str(api_port),
                "--mqtt-port",
                str(mqtt_port),
                "--data-dir",
                str(tmp_path / "data"),
            ],
            cwd=tmp_path,
            env=env,
            start_new_session=True,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    d = Demo(proc, f"http://127.0.0.1:{api_port}", mqtt_port, log, tmp_path / "data")
    try:
        yield d
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # envmon and its broker
            proc.wait()


def test_demo_shows_all_kinds_and_an_alert_and_takes_mosquitto_pub(demo: Demo) -> None:
    started = time.monotonic()
    for kind in ("dust_monitor", "water_quality", "leak_meter"):
        eventually(
            functools.partial(lambda k: demo.get("/v1/readings", kind=k, limit=1)["items"], kind),
            60,
            f"a {kind} reading",
            demo,
        )
    alerts = eventually(
        lambda: demo.get("/v1/alerts", status="firing")["items"], 60, "a firing alert", demo
    )
    assert time.monotonic() - started < 60
    assert {a["device_kind"] for a in alerts} >= {"dust_monitor"}

    # the two DMAs: a year of daily leakage (about 8% and 18%) and CJJ 92 rates, and the burst
    # in DMA 02 (whose alert is about the site) found by the burst rule, within a minute
    def burst() -> list[Any]:
        items = demo.get("/v1/alerts", site_id="dma-lanshan-02")["items"]
        return [a for a in items if a["rule_name"] == "dma-burst" and a["device_id"] is None]

    eventually(burst, 60, "the burst alert of DMA 02", demo)
    # (the rolling 12 months end on the report's last day: yesterday, the last billed day)
    yesterday = str(datetime.now(ZoneInfo("Asia/Shanghai")).date() - timedelta(days=1))
    report = demo.get("/v1/reports/leakage", start=yesterday, end=yesterday)
    days = {(r["site_id"], r["day"]): r for r in report["items"] if r["valid"]}
    assert 6 < days[("dma-hedong-01", yesterday)]["leakage_pct"] < 10
    assert 15 < days[("dma-lanshan-02", yesterday)]["leakage_pct"] < 21
    rolling = [p for p in report["periods"] if p["kind"] == "rolling_12m" and p["r_bl"] is not None]
    # the two DMAs' rows and the whole supply area's (site_id null), whose R_BL is the area rate
    assert {p["site_id"] for p in rolling} == {"dma-hedong-01", "dma-lanshan-02", None}
    (area,) = [p for p in rolling if p["site_id"] is None]
    assert abs(area["r_bl"] - report["area_r_bl"]) < 1e-9
    assert time.monotonic() - started < 120
    devices = demo.get("/v1/devices")["items"]
    assert all(d["online"] for d in devices)

    # the documented form, published with the Mosquitto command-line client
    mosquitto_pub = shutil.which("mosquitto_pub")
    assert mosquitto_pub, "mosquitto_pub is needed (Debian: mosquitto-clients)"
    # milliseconds the simulator never uses, so the fleet's own reading cannot take this key
    ts = datetime.now(UTC).replace(microsecond=123000).isoformat(timespec="milliseconds")
    topic = "envmon/v1/devices/leak-002/telemetry"
    good = f'{{"ts": "{ts}", "values": {{"pressure": 0.287, "flow": 61.5}}}}'
    for payload in (good, '{"ts": "2026-11-25T08:00:00+08:00", "values": {"pressure": "high"}}'):
        subprocess.run(
            [
                mosquitto_pub,
                "-h",
                "127.0.0.1",
                "-p",
                str(demo.mqtt_port),
                "-u",
                "leak-002",
                "-P",
                demo.password("leak-002"),
                "-q",
                "1",
                "-t",
                topic,
                "-m",
                payload,
            ],
            check=True,
            timeout=10,
        )
    stored = eventually(
        lambda: [
            r
            for r in demo.get("/v1/readings", device_id="leak-002", metric="pressure", start=ts)[
                "items"
            ]
            if r["value"] == 0.287
        ],
        15,
        "the mosquitto_pub reading",
        demo,
    )
    assert stored[0]["unit"] == "MPa"
    dead = eventually(
        lambda: demo.get("/v1/dead-letters", device_id="leak-002")["items"],
        15,
        "the malformed message in dead letters",
        demo,
    )
    assert dead[0]["reason"] == "bad_value" and "pressure" in dead[0]["detail"]

    # an inspector acknowledges and resolves an alert over HTTP
    # the demo's dust episode lasts beyond the test, so its hourly alert stays firing
    hourly = eventually(
        lambda: [
            a
            for a in demo.get("/v1/alerts", status="firing", device_id="dust-001")["items"]
            if a["rule_name"] == "dust-pm10-1h"
        ],
        30,
        "the dust episode's alert",
        demo,
    )
    alert_id = hourly[0]["id"]
    r = httpx.post(
        f"{demo.api}/v1/alerts/{alert_id}/acknowledge",
        json={"note": "on my way"},
        headers=demo.headers,
    )
    assert r.status_code == 200 and r.json()["status"] == "acknowledged"
    r = httpx.post(
        f"{demo.api}/v1/alerts/{alert_id}/resolve", json={"note": "fixed"}, headers=demo.headers
    )
    assert r.json()["status"] == "resolved"
    assert r.json()["events"][-1]["actor"] == "user:demo-admin"
    # the printed key is the one in the file; without it the API says 401
    assert demo.key_file.read_text().strip() in demo.log.read_text()
    assert httpx.get(f"{demo.api}/v1/alerts").status_code == 401
    assert httpx.get(f"{demo.api}/v1/health").status_code == 200

    # the embedded broker enforces per-device accounts: leak-002 cannot speak for leak-001,
    # and a wrong password is refused
    spoof = subprocess.run(
        [
            mosquitto_pub,
            "-h",
            "127.0.0.1",
            "-p",
            str(demo.mqtt_port),
            "-u",
            "leak-002",
            "-P",
            demo.password("leak-002"),
            "-q",
            "1",
            "-t",
            "envmon/v1/devices/leak-001/telemetry",
            "-m",
            good.replace("0.287", "0.111"),
        ],
        timeout=10,
        capture_output=True,
    )
    wrong = subprocess.run(
        [
            mosquitto_pub,
            "-h",
            "127.0.0.1",
            "-p",
            str(demo.mqtt_port),
            "-u",
            "leak-002",
            "-P",
            "guess",
            "-q",
            "1",
            "-t",
            topic,
            "-m",
            good,
        ],
        timeout=10,
        capture_output=True,
    )
    assert wrong.returncode != 0
    time.sleep(1)
    assert not [
        r
        for r in demo.get("/v1/readings", device_id="leak-001", metric="pressure", start=ts)[
            "items"
        ]
        if r["value"] == 0.111
    ], spoof

    # Ctrl-C stops everything, the embedded broker included
    demo.proc.send_signal(signal.SIGINT)
    assert demo.proc.wait(30) == 0, demo.log.read_text()[-3000:]
    assert not port_open("127.0.0.1", demo.mqtt_port)
    assert "ingestor stopped" in demo.log.read_text()


@pytest.mark.parametrize("hour", [0, 1, 13])
def test_the_history_registers_yesterday_whenever_the_fleet_starts(
    sqlite_url: str, hour: int
) -> None:
    """The history ends where the fleet's first upload starts (two hours back), which in the
    first two hours of a local day is still the day before; yesterday's consumption is
    registered all the same, so the rolling 12 months have rates (CI failed at 00:47 Shanghai
    time when the seed named its days from the history's end)."""
    from sqlalchemy import func, select

    from devices.fleet import demo_fleet
    from monitor.core.db import make_engine
    from monitor.core.models import Consumption, table
    from monitor.core.settings import Settings
    from monitor.demo import seed_dma_history
    from monitor.registry import import_fleet

    settings = Settings(database_url=sqlite_url)
    tz = ZoneInfo(settings.timezone)
    now = datetime(2026, 12, 3, hour, 47, tzinfo=tz)
    fleet = demo_fleet(now.astimezone(UTC))
    engine = make_engine(sqlite_url)
    with engine.begin() as conn:
        import_fleet(conn, {"sites": fleet.sites, "devices": fleet.devices})
    until = (now - timedelta(hours=2)).astimezone(UTC)
    seed_dma_history(
        engine, fleet.sites, fleet.devices, fleet.simulators, until, settings, today=now.date()
    )
    c = table(Consumption)
    with engine.connect() as conn:
        ends = dict(
            conn.execute(select(c.c.site_id, func.max(c.c.period_end)).group_by(c.c.site_id)).all()
        )
        starts = dict(
            conn.execute(
                select(c.c.site_id, func.min(c.c.period_start)).group_by(c.c.site_id)
            ).all()
        )
    engine.dispose()
    yesterday = now.date() - timedelta(days=1)
    assert ends and {str(e) for e in ends.values()} == {str(yesterday)}
    assert {str(s) for s in starts.values()} == {str(yesterday - timedelta(days=364))}
