"""The inspector's and the admin's API around alerts: rules (CRUD, backtest), comments,
assignment, bulk acknowledge, CSV export, the live stream, maintenance, the audit log."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, insert, select

from alerts.evaluator import Touched, evaluate_batch
from ingest.repository import insert_readings
from ingest.validate import Row
from monitor.api.app import create_app
from monitor.api.pagination import Page
from monitor.api.schemas import AlertRead, BucketRead, ReadingRead
from monitor.core.models import Alert, Device, Notification, Rule, Site, table
from monitor.core.settings import Settings
from tests.conftest import bearer, make_key, register

T0 = (datetime.now(UTC) - timedelta(hours=3)).replace(second=0, microsecond=0)
RULE = {
    "name": "pm10-raw",
    "device_kind": "dust_monitor",
    "metric": "pm10",
    "warn_above": 150,
    "alarm_above": 250,
    "quiet_s": 0,
    "basis": "test thresholds",
}


def feed(engine: Engine, device: str, values: list[float], start_min: int = 0) -> None:
    rows = [
        Row(device, "pm10", T0 + timedelta(minutes=start_min + i), v, "N", T0)
        for i, v in enumerate(values)
    ]
    with engine.begin() as conn:
        insert_readings(conn, rows)
        evaluate_batch(conn, [Touched(device, "pm10", rows[0].ts)])


@pytest.fixture
async def api(pg_url: str, pg_engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    register(
        pg_engine, site="cs-ls", district="Lanshan", devices={"d-ls": "dust_monitor"}, rules=False
    )
    with pg_engine.begin() as conn:
        conn.execute(
            insert(table(Site)).values(
                id="cs-hd", name="cs-hd", district="Hedong", kind="construction_site", created_at=T0
            )
        )
        conn.execute(
            insert(table(Device)).values(
                id="d-hd", site_id="cs-hd", kind="dust_monitor", status="active", created_at=T0
            )
        )
    app = create_app(Settings(database_url=pg_url))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://test",
            headers=bearer(make_key(pg_engine)),
        ) as client,
    ):
        yield client


async def test_rules_crud_validates_and_names_the_field(api: httpx.AsyncClient) -> None:
    r = await api.post("/v1/rules", json=RULE)
    assert r.status_code == 201
    rule = r.json()
    assert (await api.post("/v1/rules", json=RULE)).status_code == 409
    bad = await api.post("/v1/rules", json=RULE | {"name": "x", "alarm_above": 100})
    assert bad.status_code == 422 and "alarm_above" in bad.text
    r = await api.patch(f"/v1/rules/{rule['id']}", json={"warn_above": 300})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body.alarm_above"
    r = await api.patch(f"/v1/rules/{rule['id']}", json={"warn_above": 120, "enabled": False})
    assert r.status_code == 200 and r.json()["warn_above"] == 120 and not r.json()["enabled"]
    r = await api.post("/v1/rules", json=RULE | {"name": "r2", "kind": "rate_of_change"})
    assert r.status_code == 422 and "params.window_s" in r.text
    assert (await api.delete(f"/v1/rules/{rule['id']}")).status_code == 204
    assert (await api.get(f"/v1/rules/{rule['id']}")).status_code == 404
    log = (await api.get("/v1/audit")).json()
    assert [e["action"] for e in log[:3]] == ["rule.delete", "rule.update", "rule.create"]
    assert all(e["actor"] == "user:admin" for e in log)


async def test_backtest_reports_alerts_without_raising_them(
    api: httpx.AsyncClient, pg_engine: Engine
) -> None:
    with pg_engine.begin() as conn:
        insert_readings(
            conn,
            [
                Row("d-ls", "pm10", T0 + timedelta(minutes=i), v, "N", T0)
                for i, v in enumerate([100] * 5 + [300] * 5 + [100] * 5 + [200] * 3)
            ],
        )
    body = {
        "rule": RULE,
        "start": (T0 - timedelta(hours=1)).isoformat(),
        "end": (T0 + timedelta(hours=1)).isoformat(),
    }
    r = await api.post("/v1/rules/backtest", json=body)
    assert r.status_code == 200, r.text
    result = r.json()
    assert [(a["severity"], a["fired_at"][:16]) for a in result["alerts"]] == [
        ("alarm", (T0 + timedelta(minutes=5)).isoformat()[:16]),
        ("warning", (T0 + timedelta(minutes=15)).isoformat()[:16]),
    ]
    with pg_engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(table(Alert))).scalar() == 0
        assert conn.execute(select(func.count()).select_from(table(Rule))).scalar() == 0
        assert conn.execute(select(func.count()).select_from(table(Notification))).scalar() == 0


async def test_comment_assign_bulk_acknowledge_export_and_stream(
    api: httpx.AsyncClient, pg_engine: Engine
) -> None:
    await api.post("/v1/rules", json=RULE)
    start = (await api.get("/v1/alerts/stream", params={"follow": "false"})).text
    feed(pg_engine, "d-ls", [300] * 3)
    feed(pg_engine, "d-hd", [300] * 3)
    alerts = (await api.get("/v1/alerts")).json()["items"]
    mine = next(a for a in alerts if a["device_id"] == "d-ls")

    detail = (await api.get(f"/v1/alerts/{mine['id']}")).json()
    assert [p["value"] for p in detail["readings"]] == [300, 300, 300]
    r = await api.post(f"/v1/alerts/{mine['id']}/comment", json={"note": "water cart sent"})
    assert r.json()["events"][-1]["kind"] == "comment"
    r = await api.post(f"/v1/alerts/{mine['id']}/assign", json={"assignee": "wang"})
    assert r.json()["assignee"] == "wang" and r.json()["events"][-1]["actor"] == "user:admin"
    assert (await api.post(f"/v1/alerts/{mine['id']}/comment", json={})).status_code == 422

    ls = bearer(make_key(pg_engine, "li", "inspector", "Lanshan"))
    r = await api.post("/v1/alerts/acknowledge", json={"note": "all seen"}, headers=ls)
    assert r.json()["acknowledged"] == [mine["id"]]  # the Hedong alert is out of scope
    statuses = {a["device_id"]: a["status"] for a in (await api.get("/v1/alerts")).json()["items"]}
    assert statuses == {"d-ls": "acknowledged", "d-hd": "firing"}

    exported = await api.get("/v1/alerts/export.csv", headers=ls)
    assert exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [r["device_id"] for r in rows] == ["d-ls"] and rows[0]["assignee"] == "wang"

    assert start.startswith(": envmon")
    stream = (
        await api.get("/v1/alerts/stream", params={"follow": "false", "after": 0}, headers=ls)
    ).text
    kinds = [line.split(": ", 1)[1] for line in stream.splitlines() if line.startswith("event:")]
    assert kinds == ["opened", "comment", "assigned", "acknowledged"]
    ids = [int(line.split(": ")[1]) for line in stream.splitlines() if line.startswith("id:")]
    resumed = (
        await api.get(
            "/v1/alerts/stream",
            params={"follow": "false"},
            headers=ls | {"Last-Event-ID": str(ids[1])},
        )
    ).text
    assert [line for line in resumed.splitlines() if line.startswith("event:")] == [
        "event: assigned",
        "event: acknowledged",
    ]


async def test_maintenance_suppresses_and_says_so(
    api: httpx.AsyncClient, pg_engine: Engine
) -> None:
    await api.post("/v1/rules", json=RULE)
    r = await api.post(
        "/v1/maintenance",
        json={
            "site_id": "cs-ls",
            "starts_at": (T0 - timedelta(minutes=5)).isoformat(),
            "ends_at": (T0 + timedelta(days=1)).isoformat(),
            "reason": "filter replacement",
        },
    )
    assert r.status_code == 201 and r.json()["created_by"] == "user:admin"
    bad = await api.post(
        "/v1/maintenance",
        json={
            "device_id": "d-ls",
            "site_id": "cs-ls",
            "starts_at": T0.isoformat(),
            "ends_at": T0.isoformat(),
            "reason": "x",
        },
    )
    assert bad.status_code == 422 and "device_id" in bad.text
    feed(pg_engine, "d-ls", [300] * 3)
    feed(pg_engine, "d-hd", [300] * 3)
    alerts = {a["device_id"]: a for a in (await api.get("/v1/alerts")).json()["items"]}
    assert alerts["d-ls"]["suppressed"] and "filter replacement" in alerts["d-ls"]["message"]
    assert not alerts["d-hd"]["suppressed"]
    with pg_engine.connect() as conn:
        notified = {r.alert_id for r in conn.execute(select(table(Notification)))}
    assert notified == {alerts["d-hd"]["id"]}
    assert len((await api.get("/v1/maintenance")).json()) == 1


async def test_hand_written_list_pages_are_exactly_what_their_response_models_write(
    api: httpx.AsyncClient, pg_engine: Engine
) -> None:
    """The alert list and the readings list write their JSON without building models (for
    speed): it must be byte for byte what pydantic writes for the documented schema."""
    await api.post("/v1/rules", json=RULE)
    feed(pg_engine, "d-ls", [100, 300, 120.5, 90, 260, 40])
    feed(pg_engine, "d-hd", [151.25, 152])
    checks: list[tuple[str, type[Page[Any]]]] = [
        ("/v1/alerts", Page[AlertRead]),
        ("/v1/alerts?limit=1", Page[AlertRead]),
        ("/v1/readings?bucket=hour&limit=5", Page[BucketRead]),
        ("/v1/readings?limit=3", Page[ReadingRead]),
    ]
    for url, model in checks:
        r = await api.get(url)
        assert r.status_code == 200, r.text
        assert r.json()["items"], url
        assert r.content == model.model_validate_json(r.content).model_dump_json().encode(), url
        assert r.headers["content-type"] == "application/json"


async def test_a_composite_must_combine_rules_that_exist(api: httpx.AsyncClient) -> None:
    part = (await api.post("/v1/rules", json=RULE)).json()
    composite = {
        "name": "both",
        "kind": "composite",
        "params": {"op": "all", "rules": [part["name"], "no-such-rule"]},
        "device_kind": "dust_monitor",
        "metric": "*",
        "basis": "test",
    }
    r = await api.post("/v1/rules", json=composite)
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "body.params.rules"
    assert "no-such-rule" in r.json()["detail"]
    ok = composite | {"params": {"op": "all", "rules": [part["name"], part["name"] + "-2"]}}
    await api.post("/v1/rules", json=RULE | {"name": part["name"] + "-2"})
    r = await api.post("/v1/rules", json=ok)
    assert r.status_code == 201, r.text
    r = await api.patch(f"/v1/rules/{r.json()['id']}", json={"params": composite["params"]})
    assert r.status_code == 422 and "no-such-rule" in r.json()["detail"]
