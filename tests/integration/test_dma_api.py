"""DMA parameters and meter roles: the sites/devices APIs and the fleet file carry them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import Engine, select

from monitor.api.app import create_app
from monitor.core.models import Device, Site
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
