"""API contract: registration, filters, pagination and problem objects that name the field."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import Engine, select

from ingest.repository import insert_readings
from ingest.validate import Row
from monitor.api.app import create_app
from monitor.core.db import make_engine
from monitor.core.models import Rule, table
from monitor.core.settings import Settings
from tests.conftest import bearer, make_key, serve


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


async def test_register_site_and_device_then_list_with_filters(api: httpx.AsyncClient) -> None:
    for i, district in enumerate(["Lanshan", "Hedong"]):
        r = await api.post(
            "/v1/sites",
            json={
                "id": f"cs-{i}",
                "name": f"Site {i}",
                "district": district,
                "kind": "construction_site",
                "latitude": 35.1,
                "longitude": 118.3,
            },
        )
        assert r.status_code == 201, r.text
        r = await api.post(
            "/v1/devices", json={"id": f"dust-{i}", "site_id": f"cs-{i}", "kind": "dust_monitor"}
        )
        assert r.status_code == 201 and r.json()["online"] is False
    listed = (await api.get("/v1/devices", params={"district": "Hedong"})).json()["items"]
    assert [d["id"] for d in listed] == ["dust-1"]
    retired = await api.patch("/v1/devices/dust-0", json={"status": "retired"})
    assert retired.json()["status"] == "retired"


async def test_bad_requests_get_problem_objects_naming_the_field(api: httpx.AsyncClient) -> None:
    r = await api.post(
        "/v1/devices", json={"id": "d-1", "site_id": "nowhere", "kind": "dust_monitor"}
    )
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["errors"][0]["field"] == "site_id"

    r = await api.post(
        "/v1/sites", json={"id": "s", "name": "S", "district": "D", "kind": "volcano"}
    )
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body.kind"

    r = await api.get("/v1/readings", params={"start": "2026-11-25T08:00:00"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "query.start"

    r = await api.get(
        "/v1/readings", params={"start": "2026-11-25T08:00:00Z", "end": "2026-11-25T07:00:00Z"}
    )
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "query.end"

    r = await api.get("/v1/readings", params={"metric": "radon"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "query.metric"

    r = await api.get("/v1/alerts", params={"cursor": "garbage"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "query.cursor"

    r = await api.get("/v1/alerts/999999")
    assert r.status_code == 404 and r.json()["errors"][0]["field"] == "path.alert_id"

    r = await api.post("/v1/alerts/999/acknowledge", json={"actor": "someone else"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body.actor"

    r = await api.post(
        "/v1/sites", content=b"{}" + b" " * 70_000, headers={"content-type": "application/json"}
    )
    assert r.status_code == 413 and r.json()["errors"][0]["field"] == "body"

    r = await api.get(
        "/v1/readings", params={"start": "2024-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"}
    )
    assert r.status_code == 422 and "400 days" in r.json()["detail"]

    r = await api.get("/v1/alerts", params={"limit": 5000})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "query.limit"


async def test_readings_paginate_by_cursor_without_gaps_or_repeats(
    api: httpx.AsyncClient, pg_url: str
) -> None:
    await api.post(
        "/v1/sites", json={"id": "np", "name": "NP", "district": "Lanshan", "kind": "network_point"}
    )
    await api.post("/v1/devices", json={"id": "w-1", "site_id": "np", "kind": "water_quality"})
    t0 = datetime(2026, 11, 25, tzinfo=UTC)
    engine: Engine = make_engine(pg_url)
    with engine.begin() as conn:
        insert_readings(
            conn,
            [
                Row("w-1", m, t0 + timedelta(minutes=i), 0.3, "N", t0)
                for i in range(25)
                for m in ("turbidity", "ph")
            ],
        )
    engine.dispose()
    seen: list[tuple[str, str]] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"device_id": "w-1", "limit": 7}
        if cursor:
            params["cursor"] = cursor
        page = (await api.get("/v1/readings", params=params)).json()
        seen += [(i["ts"], i["metric"]) for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 50 and len(set(seen)) == 50
    assert seen == sorted(seen, reverse=True)
    first = (await api.get("/v1/readings", params={"device_id": "w-1", "limit": 1})).json()
    assert first["items"][0]["unit"] in ("NTU", "pH")

    hours = (
        await api.get(
            "/v1/readings", params={"device_id": "w-1", "metric": "turbidity", "bucket": "hour"}
        )
    ).json()["items"]
    assert [(h["count"], h["mean"]) for h in hours] == [(25, pytest.approx(0.3))]


async def test_health_and_openapi_are_published(api: httpx.AsyncClient) -> None:
    health = (await api.get("/v1/health")).json()
    assert health["status"] == "ok" and health["database"] == "postgresql"
    spec = (await api.get("/v1/openapi.json")).json()
    for path in (
        "/v1/alerts",
        "/v1/alerts/{alert_id}/acknowledge",
        "/v1/readings",
        "/v1/dead-letters",
        "/v1/devices",
        "/v1/sites",
    ):
        assert path in spec["paths"], path
    rules = (await api.get("/v1/rules")).json()
    assert rules == []  # no default rules were installed in this database


def test_a_write_is_committed_before_its_response(pg_url: str, pg_engine: Engine) -> None:
    """A client that got its 201 finds the row at once, from any connection: the request's
    transaction commits before the response is sent (FastAPI's default would commit after)."""
    key = make_key(pg_engine)
    rules = table(Rule)
    with serve(create_app(Settings(database_url=pg_url))) as base, httpx.Client() as client:
        for i in range(30):
            body = {
                "name": f"pm10-{i}",
                "device_kind": "dust_monitor",
                "metric": "pm10",
                "alarm_above": 150 + i,
                "basis": "GB 3095-2012 test thresholds",
            }
            r = client.post(f"{base}/v1/rules", json=body, headers=bearer(key))
            assert r.status_code == 201, r.text
            with pg_engine.connect() as conn:
                q = select(rules.c.alarm_above).where(rules.c.id == r.json()["id"])
                stored = conn.execute(q).scalar_one_or_none()
            assert stored == 150 + i, f"rule {i} was not committed when its 201 came"


async def test_a_rule_patched_with_null_clears_or_resets_the_field(api: httpx.AsyncClient) -> None:
    """Every field of the rule PATCH is nullable in the OpenAPI: null clears a tier and resets
    a field that cannot be empty to its default (schemathesis found description: null a 422)."""
    body = {
        "name": "pm10-patch",
        "description": "before",
        "device_kind": "dust_monitor",
        "metric": "pm10",
        "warn_above": 100,
        "alarm_above": 150,
        "for_s": 120,
        "basis": "GB 3095-2012 test thresholds",
    }
    r = await api.post("/v1/rules", json=body)
    assert r.status_code == 201, r.text
    rule = r.json()["id"]
    r = await api.patch(
        f"/v1/rules/{rule}", json={"description": None, "for_s": None, "warn_above": None}
    )
    assert r.status_code == 200, r.text
    got = r.json()
    assert (got["description"], got["for_s"], got["warn_above"], got["alarm_above"]) == (
        "",
        0,
        None,
        150,
    )
    # clearing the last tier leaves a rule that judges nothing: refused, naming the tiers
    r = await api.patch(f"/v1/rules/{rule}", json={"alarm_above": None})
    assert r.status_code == 422 and "set at least one of warn_above" in r.text, r.text
