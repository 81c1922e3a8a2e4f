"""DMA parameters and meter roles: the sites/devices APIs and the fleet file carry them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, insert, select, text

from monitor.api.app import create_app
from monitor.consumption import import_csv
from monitor.core.exceptions import InvalidInput
from monitor.core.models import Device, DmaDay, Site
from monitor.core.settings import Settings
from monitor.registry import import_fleet
from tests.conftest import bearer, make_key


@pytest.fixture
async def api(pg_url: str, pg_engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings(database_url=pg_url))
    key = make_key(pg_engine)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test", headers=bearer(key)
        ) as client,
    ):
        yield client


DMA = {"id": "dma-1", "name": "DMA 1", "district": "Lanshan", "kind": "dma"}


async def test_dma_parameters_are_created_patched_and_read(api: httpx.AsyncClient) -> None:
    r = await api.post("/v1/sites", json={**DMA, "connections": 800, "mains_km": 12.5})
    assert r.status_code == 201, r.text
    assert r.json()["connections"] == 800 and r.json()["night_from"] is None
    r = await api.patch(
        "/v1/sites/dma-1",
        json={"night_from": "01:00", "night_to": "04:00", "special_night_use_m3h": 0.8},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["night_from"], body["night_to"], body["connections"]) == ("01:00", "04:00", 800)
    r = await api.patch("/v1/sites/dma-1", json={"night_to": "00:30"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "night_to"
    r = await api.patch("/v1/sites/dma-1", json={"connections": -1})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body.connections"

    r = await api.post(
        "/v1/devices",
        json={"id": "lm-out", "site_id": "dma-1", "kind": "leak_meter", "dma_role": "outlet"},
    )
    assert r.status_code == 201, r.text
    assert r.json()["dma_role"] == "outlet"
    r = await api.patch("/v1/devices/lm-out", json={"dma_role": "azp"})
    assert r.json()["dma_role"] == "azp"
    r = await api.patch("/v1/devices/lm-out", json={"dma_role": "pump"})
    assert r.status_code == 422


def test_fleet_reimport_without_dma_keys_leaves_them_unchanged(pg_engine: Engine) -> None:
    site = {**DMA, "connections": 800, "night_use_l_per_conn_h": 2.0}
    device = {"id": "lm-1", "site_id": "dma-1", "kind": "leak_meter", "dma_role": "outlet"}
    with pg_engine.begin() as conn:
        import_fleet(conn, {"sites": [site], "devices": [device]})
    with pg_engine.begin() as conn:
        import_fleet(
            conn,
            {
                "sites": [{**DMA, "mains_km": 3.0}],
                "devices": [{k: v for k, v in device.items() if k != "dma_role"}],
            },
        )
    with pg_engine.connect() as conn:
        s = conn.execute(select(Site).where(Site.id == "dma-1")).one()
        d = conn.execute(select(Device).where(Device.id == "lm-1")).one()
    assert (s.connections, s.night_use_l_per_conn_h, s.mains_km) == (800, 2.0, 3.0)
    assert d.dma_role == "outlet"


async def test_consumption_is_validated_corrected_deleted_and_audited(
    api: httpx.AsyncClient, pg_engine: Engine
) -> None:
    assert (await api.post("/v1/sites", json=DMA)).status_code == 201
    url = "/v1/sites/dma-1/consumption"
    year = {"period_start": "2025-01-01", "period_end": "2025-12-31", "billed_m3": 8.0e5}
    r = await api.post(url, json={**year, "unbilled_m3": 2e4, "residential_metered_m3": 4e5})
    assert r.status_code == 201, r.text
    first = r.json()
    assert first["registered_m3"] == 8.2e5
    r = await api.post(url, json={**year, "period_start": "2025-12-01", "period_end": "2026-01-31"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "period_start"
    r = await api.post(
        url, json={"period_start": "2026-01-01", "period_end": "2026-01-31", "billed_m3": -1}
    )
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body.billed_m3"
    r = await api.post(
        url, json={"period_start": "2026-01-01", "period_end": "2026-01-31", "billed_m3": 1e4}
    )
    assert r.status_code == 201
    second = r.json()["id"]
    r = await api.patch(f"{url}/{second}", json={"period_start": "2025-12-31"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "period_start"
    r = await api.patch(f"{url}/{second}", json={"unbilled_m3": -5})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body.unbilled_m3"
    r = await api.patch(f"{url}/{second}", json={"billed_m3": 1.2e4})
    assert r.status_code == 200 and r.json()["billed_m3"] == 1.2e4
    assert [p["id"] for p in (await api.get(url)).json()] == [first["id"], second]
    assert (await api.delete(f"{url}/{second}")).status_code == 204
    assert (await api.get(f"{url}/{second}")).status_code in (404, 405)
    assert len((await api.get(url)).json()) == 1
    with pg_engine.connect() as conn:
        actions = (
            conn.execute(
                text("SELECT action FROM audit_log WHERE object LIKE 'consumption:%' ORDER BY id")
            )
            .scalars()
            .all()
        )
    assert actions == [
        "consumption.create",
        "consumption.create",
        "consumption.update",
        "consumption.delete",
    ]


def test_consumption_csv_import_is_all_or_nothing(pg_engine: Engine, tmp_path: Path) -> None:
    with pg_engine.begin() as conn:
        import_fleet(conn, {"sites": [DMA], "devices": []})
    good = tmp_path / "c.csv"
    good.write_text(
        "site_id,period_start,period_end,billed_m3,unbilled_m3\n"
        "dma-1,2025-01-01,2025-06-30,400000,1000\n"
        "dma-1,2025-07-01,2025-12-31,410000,\n",
        encoding="utf-8",
    )
    with pg_engine.begin() as conn:
        assert import_csv(conn, "cli", good) == 2
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "site_id,period_start,period_end,billed_m3\n"
        "dma-1,2026-01-01,2026-01-31,1000\n"
        "dma-1,2025-12-15,2026-02-28,1000\n",
        encoding="utf-8",
    )
    with pytest.raises(InvalidInput, match="line 3"), pg_engine.begin() as conn:
        import_csv(conn, "cli", bad)
    with pg_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM consumption")).scalar_one() == 2


async def test_leakage_report_has_days_and_cjj92_periods_scoped_by_district(
    api: httpx.AsyncClient, pg_url: str, pg_engine: Engine
) -> None:
    await api.post("/v1/sites", json={**DMA, "connections": 800, "mains_km": 7.5})
    await api.post("/v1/sites", json={**DMA, "id": "dma-2", "district": "Hedong"})
    with pg_engine.begin() as conn:
        for day in range(365):
            conn.execute(
                insert(DmaDay).values(
                    site_id="dma-1",
                    day=date(2025, 1, 1) + timedelta(days=day),
                    valid=True,
                    coverage=1.0,
                    night_coverage=1.0,
                    night_use_m3h=1.36,
                    inlet_m3=1e6 / 365,
                    mnf_m3h=4.36,
                    net_night_flow_m3h=3.0,
                    ndf_h=24.0,
                    leakage_m3=72.0,
                    leakage_pct=7.5,
                    computed_at=datetime.now(UTC),
                )
            )
    # Q_s = 100 × 10⁴ m³, Q_a = 88 × 10⁴: R_WL 12; r = 0.4: R1 3.2; A = 0.075: R2 0.5643
    r = await api.post(
        "/v1/sites/dma-1/consumption",
        json={
            "period_start": "2025-01-01",
            "period_end": "2025-12-31",
            "billed_m3": 8.8e5,
            "residential_metered_m3": 4e5,
        },
    )
    assert r.status_code == 201
    r = await api.get("/v1/reports/leakage", params={"start": "2025-12-30", "end": "2025-12-31"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [(i["site_id"], i["day"]) for i in body["items"]] == [
        ("dma-1", "2025-12-30"),
        ("dma-1", "2025-12-31"),
    ]
    assert body["items"][0]["leakage_pct"] == 7.5
    kinds = {p["kind"]: p for p in body["periods"] if p["site_id"] == "dma-1"}
    assert sorted(kinds) == ["billing_period", "calendar_year", "rolling_12m"]
    # the whole supply area's rows (site_id null) of the windows: one DMA, so its figures
    area = {p["kind"]: p for p in body["periods"] if p["site_id"] is None}
    assert sorted(area) == ["calendar_year", "rolling_12m"]
    assert len(body["periods"]) == 5
    for p in [*kinds.values(), *area.values()]:  # they all coincide with the year 2025
        assert p["annual"] is True and p["supply_days"] == 365 and p["consumption_days"] == 365
        assert abs(p["r_wl"] - 12.0) < 0.01 and abs(p["r1"] - 3.2) < 0.01
        assert abs(p["r2"] - 0.5643) < 0.01 and p["r3"] == 0 and p["r4"] == 0
        assert abs(p["r_bl"] - 8.2357) < 0.01 and p["grade"] == 1
    assert area["rolling_12m"]["supply_m3"] == kinds["rolling_12m"]["supply_m3"]
    assert area["rolling_12m"]["mains_km"] == 7.5
    assert abs(body["area_r_bl"] - 8.2357) < 0.01
    # 12 months to 2026-01-15: consumption known for 350 of its 365 days, so no rates
    r = await api.get("/v1/reports/leakage", params={"start": "2026-01-15", "end": "2026-01-15"})
    (rolling,) = [p for p in r.json()["periods"] if p["kind"] == "rolling_12m"]
    assert rolling["consumption_days"] == 350 and rolling["r_wl"] is None
    assert abs(rolling["registered_m3"] - 8.8e5 * 350 / 365) < 1e-6
    assert r.json()["area_r_bl"] is None
    csv_r = await api.get(
        "/v1/reports/leakage",
        params={"start": "2025-12-31", "end": "2025-12-31", "format": "csv"},
    )
    assert csv_r.headers["content-type"].startswith("text/csv")
    lines = csv_r.text.strip().splitlines()
    assert lines[0].startswith("site_id,site_name,district,day,inlet_m3")
    assert len(lines) == 2

    key = make_key(pg_engine, name="hedong", role="viewer", district="Hedong")
    r = await api.get(
        "/v1/reports/leakage",
        params={"start": "2025-12-31", "end": "2025-12-31"},
        headers=bearer(key),
    )
    assert r.status_code == 200 and r.json()["items"] == [] and r.json()["periods"] == []
    r = await api.get(
        "/v1/reports/leakage",
        params={"start": "2025-12-31", "end": "2025-12-31", "site": "dma-1"},
        headers=bearer(key),
    )
    assert r.status_code == 404


async def test_registered_consumption_judges_the_dma_leakage_rate_rule(
    api: httpx.AsyncClient, pg_engine: Engine
) -> None:
    """A year of DMA days and its billing period put R_BL over 12%: the leakage-rate rule
    alarms the site (no device); correcting the billed volume disproves it (retracted)."""
    from alerts.leakage import Cjj92Inputs, cjj92
    from alerts.packs import install_default_rules
    from monitor.core.models import Alert, Rule

    with pg_engine.begin() as conn:
        install_default_rules(conn)
    r = await api.post("/v1/sites", json={**DMA, "connections": 800, "mains_km": 10.0})
    assert r.status_code == 201, r.text
    first, last = date(2025, 12, 1), date(2026, 11, 30)
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    now = datetime.now(UTC)
    with pg_engine.begin() as conn:
        conn.execute(
            insert(DmaDay),
            [
                {
                    "site_id": "dma-1",
                    "day": d,
                    "valid": True,
                    "coverage": 1.0,
                    "night_coverage": 1.0,
                    "night_use_m3h": 1.36,
                    "inlet_m3": 1000.0,
                    "computed_at": now,
                }
                for d in days
            ],
        )
    expected = cjj92(
        Cjj92Inputs(supply_m3=365_000, registered_m3=300_000, annual=True, mains_km=10.0)
    ).r_bl
    assert expected is not None and expected > 12
    r = await api.post(
        "/v1/sites/dma-1/consumption",
        json={"period_start": str(first), "period_end": str(last), "billed_m3": 300_000},
    )
    assert r.status_code == 201, r.text
    period = r.json()["id"]

    def alerts() -> list[dict[str, object]]:
        with pg_engine.connect() as conn:
            q = (
                select(Alert.__table__)
                .join(Rule.__table__, Rule.__table__.c.id == Alert.__table__.c.rule_id)
                .where(Rule.__table__.c.name == "dma-leakage-rate-12m")
            )
            return [dict(a._mapping) for a in conn.execute(q)]

    (alert,) = alerts()
    assert (alert["device_id"], alert["site_id"], alert["severity"]) == (None, "dma-1", "alarm")
    assert alert["peak_value"] == pytest.approx(expected)
    listed = (await api.get("/v1/alerts", params={"site_id": "dma-1"})).json()["items"]
    assert [(a["id"], a["device_id"], a["device_kind"]) for a in listed] == [
        (alert["id"], None, "leak_meter")
    ]
    detail = (await api.get(f"/v1/alerts/{alert['id']}")).json()
    assert detail["readings"] == [] and "R_BL" in detail["message"]

    r = await api.patch(f"/v1/sites/dma-1/consumption/{period}", json={"billed_m3": 345_000})
    assert r.status_code == 200, r.text
    assert [a["status"] for a in alerts()] == ["retracted"]
