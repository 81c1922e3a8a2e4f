from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from alerts.packs import load_packs
from devices.fleet import EXAMPLE_FLEET
from monitor.cli import main
from monitor.core.db import make_engine
from monitor.core.models import Device, Rule, table


def test_help_lists_every_verb() -> None:
    out = CliRunner().invoke(main, ["--help"]).output
    for verb in ("up", "api", "ingest", "migrate", "simulate", "devices"):
        assert f"  {verb}" in out
    up = CliRunner().invoke(main, ["up", "--help"]).output
    for option in ("--simulate", "--port", "--mqtt-port", "--data-dir"):
        assert option in up


def test_migrate_then_import_the_example_fleet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENVMON_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("ENVMON_DATABASE_URL", raising=False)
    runner = CliRunner()
    assert runner.invoke(main, ["migrate"]).exit_code == 0
    result = runner.invoke(main, ["devices", "import", str(EXAMPLE_FLEET)])
    assert result.exit_code == 0, result.output
    assert "7 sites and 9 devices" in result.output
    engine = make_engine(f"sqlite:///{tmp_path}/envmon.db")
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(table(Device))).scalar() == 9
        shipped = sum(len(p.rules) for p in load_packs())
        assert conn.execute(select(func.count()).select_from(table(Rule))).scalar() == shipped
    engine.dispose()

    bad = tmp_path / "bad.toml"
    bad.write_text("sites = []\n", encoding="utf-8")
    result = runner.invoke(main, ["devices", "import", str(bad)])
    assert result.exit_code != 0 and "devices" in result.output


def test_device_credentials_are_issued_once_then_only_rotated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENVMON_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("ENVMON_DATABASE_URL", raising=False)
    runner = CliRunner()
    runner.invoke(main, ["migrate"])
    result = runner.invoke(main, ["devices", "import", str(EXAMPLE_FLEET)])
    written = (tmp_path / "device-credentials.txt").read_text().splitlines()
    assert len(written) == 9 and "device-credentials.txt" in result.output
    assert (tmp_path / "device-credentials.txt").stat().st_mode & 0o077 == 0
    again = runner.invoke(main, ["devices", "credentials", "dust-001"])
    assert again.exit_code != 0 and "--rotate" in again.output
    rotated = runner.invoke(main, ["devices", "credentials", "dust-001", "--rotate"])
    assert rotated.exit_code == 0
    new = rotated.output.rsplit(" ", 1)[1].strip()
    old = next(line.split("=", 1)[1] for line in written if line.startswith("dust-001="))
    assert new != old and len(new) >= 32
    out = tmp_path / "broker"
    monkeypatch.setenv("ENVMON_MQTT_URL", "mqtt://envmon-ingest:s3cret-enough@broker:1883")
    assert runner.invoke(main, ["broker", "config", "--out", str(out)]).exit_code == 0
    passwd = (out / "passwd").read_text()
    assert passwd.count("\n") == 10 and "envmon-ingest:$7$" in passwd
    assert "pattern write envmon/v1/devices/%u/telemetry" in (out / "acl").read_text()
