"""`envmon consumption import`: billing periods from CSV into a fresh SQLite database."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from monitor.cli import main
from monitor.core.db import make_engine
from monitor.core.models import AuditEntry, Consumption, Device, Site, table


def test_consumption_import_registers_periods_and_refuses_an_overlap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENVMON_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("ENVMON_DATABASE_URL", raising=False)
    runner = CliRunner()
    assert runner.invoke(main, ["migrate"]).exit_code == 0
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(
        '[[sites]]\nid = "dma-1"\nname = "DMA 1"\ndistrict = "Lanshan"\nkind = "dma"\n'
        "latitude = 35.1\nlongitude = 118.3\nconnections = 800\nmains_km = 7.5\n\n"
        '[[devices]]\nid = "lm-1"\nsite_id = "dma-1"\nkind = "leak_meter"\n'
        'name = "outlet"\ndma_role = "outlet"\n',
        encoding="utf-8",
    )
    result = runner.invoke(main, ["devices", "import", str(fleet)])
    assert result.exit_code == 0, result.output
    good = tmp_path / "c.csv"
    good.write_text(
        "site_id,period_start,period_end,billed_m3,unbilled_m3,residential_metered_m3\n"
        "dma-1,2025-01-01,2025-12-31,880000,0,400000\n",
        encoding="utf-8",
    )
    result = runner.invoke(main, ["consumption", "import", str(good)])
    assert result.exit_code == 0, result.output
    assert "registered 1 consumption periods" in result.output
    result = runner.invoke(main, ["consumption", "import", str(good)])
    assert result.exit_code != 0 and "line 2" in result.output and "overlaps" in result.output
    engine = make_engine(f"sqlite:///{tmp_path}/envmon.db")
    with engine.connect() as conn:
        site = conn.execute(select(table(Site)).where(table(Site).c.id == "dma-1")).one()
        assert (site.connections, site.mains_km) == (800, 7.5)
        role = conn.execute(select(table(Device).c.dma_role)).scalar_one()
        assert role == "outlet"
        assert conn.execute(select(func.count()).select_from(table(Consumption))).scalar() == 1
        actions = conn.execute(select(table(AuditEntry).c.action)).scalars().all()
    engine.dispose()
    assert actions == ["consumption.create"]
