"""The HJ 212 identity through the devices API: an MN names one logger, and reads show it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import Engine

from monitor.api.app import create_app
from monitor.core.settings import Settings
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
        r = await client.post(
            "/v1/sites",
            json={"id": "cs-1", "name": "cs", "district": "Lanshan", "kind": "construction_site"},
        )
        assert r.status_code == 201, r.text
        yield client


def logger(device_id: str, mn: str, **extra: object) -> dict[str, object]:
    return {
        "id": device_id,
        "site_id": "cs-1",
        "kind": "dust_monitor",
        "hj212_mn": mn,
        "hj212_password": "123456",
        **extra,
    }


async def test_a_duplicate_mn_is_a_409_naming_the_field(api: httpx.AsyncClient) -> None:
    first = await api.post("/v1/devices", json=logger("dust-1", "ZX00001", hj212_unit="ng/m3"))
    assert first.status_code == 201, first.text
    assert first.json()["hj212_mn"] == "ZX00001" and first.json()["hj212_unit"] == "ng/m3"
    second = await api.post("/v1/devices", json=logger("dust-2", "ZX00001"))
    assert second.status_code == 409, second.text
    assert second.headers["content-type"] == "application/problem+json"
    body = second.json()
    assert body["status"] == 409 and "ZX00001" in body["detail"]
    assert body["errors"] == [{"field": "body.hj212_mn", "message": body["detail"]}]
    # nothing of the refused registration was kept
    assert (await api.get("/v1/devices/dust-2")).status_code == 404
    # the owner re-registering its own MN is no conflict
    again = await api.post("/v1/devices", json=logger("dust-1", "ZX00001"))
    assert again.status_code == 201, again.text


async def test_device_reads_show_the_mn_and_never_the_password(api: httpx.AsyncClient) -> None:
    assert (await api.post("/v1/devices", json=logger("dust-1", "MN0001"))).status_code == 201
    assert (
        await api.post(
            "/v1/devices", json={"id": "dust-2", "site_id": "cs-1", "kind": "dust_monitor"}
        )
    ).status_code == 201
    one = (await api.get("/v1/devices/dust-1")).json()
    assert one["hj212_mn"] == "MN0001" and one["hj212_unit"] is None
    listed = {d["id"]: d for d in (await api.get("/v1/devices")).json()["items"]}
    assert listed["dust-1"]["hj212_mn"] == "MN0001" and listed["dust-2"]["hj212_mn"] is None
    assert not any("password" in k and "mqtt" not in k for k in one)
    assert "123456" not in str(listed)


async def test_health_shows_the_gateway_of_this_process_and_degrades_when_it_stops(
    pg_url: str, pg_engine: Engine, tmp_path: object
) -> None:
    from tests.integration.services import wait_for
    from tests.integration.test_hj212 import Logger, start_gateway

    app = create_app(Settings(database_url=pg_url))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        alone = (await client.get("/v1/health")).json()
        assert alone["status"] == "ok" and alone["hj212"] is None  # `envmon api`: not here
        ing = start_gateway(pg_url, pg_engine, tmp_path)
        assert ing.gateway is not None
        try:
            app.state.hj212_status = ing.gateway.status  # as `envmon up` wires it
            logger = Logger(ing)
            wait_for(lambda: ing.gateway and ing.gateway.counters.connections == 1, 10, "connected")
            up = (await client.get("/v1/health")).json()
            assert up["status"] == "ok"
            assert up["hj212"] == {"listening": True, "port": ing.gateway.port, "connections": 1}
            logger.close()
            ing.gateway.stop()
            down = (await client.get("/v1/health")).json()
            assert down["status"] == "degraded" and down["hj212"]["listening"] is False
        finally:
            ing.stop()


def test_a_fleet_file_with_a_taken_mn_imports_nothing_and_says_which(
    sqlite_url: str, tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pathlib import Path

    from click.testing import CliRunner
    from sqlalchemy import func, select

    from monitor.cli import main
    from monitor.core.db import make_engine
    from monitor.core.models import Device, table

    site = (
        'id = "cs-1"\nname = "cs"\ndistrict = "Lanshan"\nkind = "construction_site"\n'
        "latitude = 35.1\nlongitude = 118.3\n"
    )
    fleet = Path(str(tmp_path)) / "fleet.toml"
    fleet.write_text(
        f"[[sites]]\n{site}"
        + "".join(
            f'[[devices]]\nid = "dust-{i}"\nsite_id = "cs-1"\nkind = "dust_monitor"\nname = "d"\n'
            'hj212_mn = "MN0001"\nhj212_password = "123456"\n'
            for i in (1, 2)
        )
    )
    monkeypatch.setenv("ENVMON_DATABASE_URL", sqlite_url)
    result = CliRunner().invoke(main, ["devices", "import", str(fleet)])
    assert result.exit_code == 1, result.output
    assert "hj212_mn 'MN0001' is already registered by device 'dust-1'" in result.output
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(table(Device))).scalar() == 0
    finally:
        engine.dispose()


async def test_rules_from_is_set_on_create_changed_by_patch_and_kept_by_a_post_without_it(
    api: httpx.AsyncClient,
) -> None:
    made = await api.post("/v1/devices", json=logger("dust-1", "MN0001", hj212_rules_from="hour"))
    assert made.status_code == 201, made.text
    assert made.json()["hj212_rules_from"] == "hour"
    # a re-registration without the key leaves it as it was
    again = await api.post("/v1/devices", json=logger("dust-1", "MN0001"))
    assert again.status_code == 201 and again.json()["hj212_rules_from"] == "hour"
    patched = await api.patch("/v1/devices/dust-1", json={"hj212_rules_from": "minute"})
    assert patched.status_code == 200, patched.text
    assert (await api.get("/v1/devices/dust-1")).json()["hj212_rules_from"] == "minute"
    bad = await api.patch("/v1/devices/dust-1", json={"hj212_rules_from": "day"})
    assert bad.status_code == 422, bad.text
    # null: back to the default, the real-time values
    reset = await api.patch("/v1/devices/dust-1", json={"hj212_rules_from": None})
    assert reset.status_code == 200 and reset.json()["hj212_rules_from"] is None
