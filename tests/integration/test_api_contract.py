"""API hardening: every id and query bounded before it reaches a query; the OpenAPI documents
the error answers as they are sent."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from monitor.api.app import create_app
from monitor.core.db import make_engine
from monitor.core.settings import Settings
from tests.conftest import bearer, make_key

TOO_BIG = 2**64 + 1


@pytest.fixture(params=["sqlite", "pg"])
async def api(request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    engine = make_engine(url)
    key = make_key(engine)
    engine.dispose()
    app = create_app(Settings(database_url=url))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test", headers=bearer(key)
        ) as client,
    ):
        yield client


@pytest.mark.parametrize(
    ("method", "path", "field", "body"),
    [
        ("GET", f"/v1/alerts/{TOO_BIG}", "path.alert_id", None),
        ("POST", f"/v1/alerts/{TOO_BIG}/acknowledge", "path.alert_id", {}),
        ("POST", f"/v1/alerts/{TOO_BIG}/resolve", "path.alert_id", {}),
        ("POST", f"/v1/alerts/{TOO_BIG}/comment", "path.alert_id", {"note": "x"}),
        ("POST", f"/v1/alerts/{TOO_BIG}/assign", "path.alert_id", {"assignee": None}),
        ("GET", f"/v1/rules/{TOO_BIG}", "path.rule_id", None),
        ("PATCH", f"/v1/rules/{TOO_BIG}", "path.rule_id", {}),
        ("DELETE", f"/v1/rules/{TOO_BIG}", "path.rule_id", None),
        ("DELETE", f"/v1/maintenance/{TOO_BIG}", "path.window_id", None),
        ("DELETE", f"/v1/keys/{TOO_BIG}", "path.key_id", None),
        ("GET", f"/v1/alerts?rule={TOO_BIG}", "query.rule", None),
        ("GET", f"/v1/alerts/stream?follow=false&after={TOO_BIG}", "query.after", None),
        ("GET", "/v1/alerts/0", "path.alert_id", None),
    ],
)
async def test_ids_past_64_bits_are_a_422_naming_the_field(
    api: httpx.AsyncClient, method: str, path: str, field: str, body: object
) -> None:
    r = await api.request(method, path, json=body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["errors"][0]["field"].startswith(field)


async def test_a_forged_cursor_past_64_bits_is_a_422(api: httpx.AsyncClient) -> None:
    from monitor.api.pagination import encode_cursor

    r = await api.get("/v1/alerts", params={"cursor": encode_cursor([2**63])})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "query.cursor"


@pytest.mark.parametrize("value", ["0.5", "1764000000", "now"])
async def test_a_number_is_not_a_date_time(api: httpx.AsyncClient, value: str) -> None:
    for path in ("/v1/readings", "/v1/alerts", "/v1/dead-letters"):
        r = await api.get(path, params={"start": value})
        assert r.status_code == 422, (path, r.text)
        assert r.json()["errors"][0]["field"] == "query.start"
    r = await api.get("/v1/alerts", params={"start": "2026-11-25T08:00:00Z"})
    assert r.status_code == 200


def _operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            yield method.upper(), path, op


async def test_every_operation_documents_its_errors_as_problem_json(
    api: httpx.AsyncClient,
) -> None:
    spec = (await api.get("/v1/openapi.json")).json()
    assert "Problem" in spec["components"]["schemas"]
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    missing = []
    for method, path, op in _operations(spec):
        responses = op["responses"]
        params = op.get("parameters", [])
        expected = set()
        if op.get("security"):
            expected.add("401")
        if any(p["in"] == "path" for p in params):
            expected.add("404")
        if params or "requestBody" in op:
            expected.add("422")
        if "requestBody" in op:
            expected.add("413")
        if not expected <= set(responses):
            missing.append(f"{method} {path}: {sorted(expected - set(responses))}")
        for code, answer in responses.items():
            if int(code) >= 400:
                assert set(answer["content"]) == {"application/problem+json"}, (path, code)
                schema = answer["content"]["application/problem+json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Problem"}, (path, code)
    assert not missing, missing
    by_op = {(m, p): op["responses"] for m, p, op in _operations(spec)}
    assert "403" in by_op[("DELETE", "/v1/rules/{rule_id}")]
    assert "403" not in by_op[("GET", "/v1/alerts")]
    assert "409" in by_op[("POST", "/v1/alerts/{alert_id}/resolve")]


async def test_the_documented_error_answers_are_the_ones_sent(api: httpx.AsyncClient) -> None:
    anonymous = await api.get("/v1/alerts", headers={"Authorization": ""})
    missing = await api.get("/v1/alerts/12345")
    for r, code in ((anonymous, 401), (missing, 404)):
        assert r.status_code == code
        assert r.headers["content-type"] == "application/problem+json"
        assert {"type", "title", "status", "detail"} <= set(r.json())


@pytest.mark.parametrize(
    "path",
    [
        f"/v1/alerts/{2**31}",
        f"/v1/rules/{2**31}",
        f"/v1/alerts?rule={2**31}",
        f"/v1/alerts/stream?follow=false&after={2**31}",
    ],
)
async def test_ids_past_postgresqls_32_bit_integer_are_a_422_not_a_500(
    api: httpx.AsyncClient, path: str
) -> None:
    """Found by schemathesis: ids are INTEGER columns, 32 bits on PostgreSQL."""
    r = await api.get(path)
    assert r.status_code == 422, r.text
    r = await api.get("/v1/alerts/stream?follow=false", headers={"Last-Event-ID": str(2**31)})
    assert r.status_code == 422, r.text


async def test_a_405_says_which_methods_are_allowed(api: httpx.AsyncClient) -> None:
    """Found by schemathesis (RFC 9110: a 405 carries Allow)."""
    r = await api.request("TRACE", "/v1/me")
    assert r.status_code == 405 and r.headers["allow"] == "GET"
    assert r.headers["content-type"] == "application/problem+json"


async def test_a_report_documents_the_404_of_an_unknown_site(api: httpx.AsyncClient) -> None:
    spec = (await api.get("/v1/openapi.json")).json()
    assert "404" in spec["paths"]["/v1/reports/dust-compliance"]["get"]["responses"]
    r = await api.get("/v1/reports/dust-compliance?start=2026-01-01&end=2026-01-01&site=nope")
    assert r.status_code == 404


async def test_a_count_past_the_columns_range_is_a_422_naming_it(api: httpx.AsyncClient) -> None:
    """Found by schemathesis: a DMA's connections of 6.7e9 was a 500 on PostgreSQL."""
    body = {"id": "dma-x", "name": "x", "district": "Lanshan", "kind": "dma"}
    r = await api.post("/v1/sites", json={**body, "connections": 2**31})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body.connections"


async def test_a_value_the_database_refuses_as_data_is_a_422_not_a_500() -> None:
    """The net under the bounds: SQLSTATE class 22 (out of range, too long) from any route."""
    from fastapi import FastAPI
    from sqlalchemy.exc import DataError

    from monitor.api import errors

    app = FastAPI()
    errors.install(app)

    @app.get("/boom")
    def boom() -> None:
        raise DataError("INSERT ...", {}, Exception("integer out of range"))

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as c:
        r = await c.get("/boom")
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"


async def test_a_device_patched_with_status_null_is_a_422_not_a_500(
    api: httpx.AsyncClient,
) -> None:
    """Found by schemathesis: the column is NOT NULL."""
    site = {"id": "s1", "name": "s", "district": "Lanshan", "kind": "construction_site"}
    assert (await api.post("/v1/sites", json=site)).status_code == 201
    device = {"id": "n", "site_id": "s1", "kind": "dust_monitor"}
    assert (await api.post("/v1/devices", json=device)).status_code == 201
    r = await api.patch("/v1/devices/n", json={"status": None})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "status"


@pytest.mark.parametrize(
    ("path", "allow"),
    [
        ("/v1/devices", "GET, POST"),
        ("/v1/devices/dust-1", "GET, PATCH"),
        ("/v1/alerts/acknowledge", "POST"),
        ("/v1/rules/7", "DELETE, GET, PATCH"),
    ],
)
async def test_a_405_allows_every_documented_method_of_its_path(
    api: httpx.AsyncClient, path: str, allow: str
) -> None:
    """Found by schemathesis: Starlette named only the first route's methods."""
    r = await api.request("TRACE", path)
    assert r.status_code == 405 and r.headers["allow"] == allow


async def test_a_volume_of_true_or_false_is_a_422_not_zero_or_one(api: httpx.AsyncClient) -> None:
    """Found by schemathesis: pydantic's lax mode read false as 0.0 m³."""
    site = {"id": "dma-v", "name": "v", "district": "Lanshan", "kind": "dma"}
    assert (await api.post("/v1/sites", json=site)).status_code == 201
    period = {"period_start": "2026-11-01", "period_end": "2026-11-30", "billed_m3": 10.0}
    r = await api.post("/v1/sites/dma-v/consumption", json={**period, "unbilled_m3": False})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body.unbilled_m3"
    r = await api.post("/v1/sites/dma-v/consumption", json={**period, "unbilled_m3": 0})
    assert r.status_code == 201
    r = await api.patch(f"/v1/sites/dma-v/consumption/{r.json()['id']}", json={"billed_m3": True})
    assert r.status_code == 422
