"""Who may do what: authentication on every endpoint, roles, district scope, revocation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, insert

from alerts.evaluator import Touched, evaluate_batch
from ingest.repository import insert_dead_letters, insert_readings
from ingest.validate import DeadLetterRecord, Reason, Row
from monitor import auth
from monitor.api.app import create_app
from monitor.cli import main
from monitor.core.models import Device, Role, Site, table
from monitor.core.settings import Environment, Settings
from tests.conftest import bearer, make_key, register

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def two_districts(engine: Engine) -> None:
    """A dust monitor in Lanshan and one in Hedong, each with an open alert and a dead letter."""
    register(engine, site="cs-ls", district="Lanshan", devices={"dust-ls": "dust_monitor"})
    with engine.begin() as conn:
        conn.execute(
            insert(table(Site)).values(
                id="cs-hd", name="cs-hd", district="Hedong", kind="construction_site", created_at=T0
            )
        )
        conn.execute(
            insert(table(Device)).values(
                id="dust-hd", site_id="cs-hd", kind="dust_monitor", status="active", created_at=T0
            )
        )
        rows = [
            Row(d, "pm10", T0 + timedelta(minutes=i), 400.0, "N", T0)
            for d in ("dust-ls", "dust-hd")
            for i in range(20)
        ]
        insert_readings(conn, rows)
        evaluate_batch(conn, [Touched(d, "pm10", T0) for d in ("dust-ls", "dust-hd")])
        insert_dead_letters(
            conn,
            [DeadLetterRecord("t", d, Reason.bad_value, "x", "{}") for d in ("dust-ls", "dust-hd")],
            T0,
        )


@pytest.fixture
async def client(pg_url: str, pg_engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    two_districts(pg_engine)
    app = create_app(Settings(database_url=pg_url))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c,
    ):
        yield c


async def test_every_endpoint_but_health_and_openapi_needs_a_key(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.get("/v1/health")).status_code == 200
    spec = (await client.get("/v1/openapi.json")).json()
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    checked = 0
    for path, methods in spec["paths"].items():
        if path == "/v1/health":
            continue
        url = path.replace("{alert_id}", "1").replace("{device_id}", "dust-ls")
        url = url.replace("{site_id}", "cs-ls").replace("{name}", "x").replace("{key_id}", "1")
        for method in methods:
            r = await client.request(method.upper(), url, json={})
            assert r.status_code == 401, f"{method} {path} -> {r.status_code}"
            assert r.headers["www-authenticate"] == "Bearer"
            checked += 1
    r = await client.get("/metrics")
    assert r.status_code == 401
    assert checked >= 15
    r = await client.get("/v1/alerts", headers={"Authorization": "Bearer envmon_nope_x"})
    assert r.status_code == 401 and r.json()["detail"] == "unknown API key"


async def test_roles(client: httpx.AsyncClient, pg_engine: Engine) -> None:
    viewer = bearer(make_key(pg_engine, "v", "viewer", "Lanshan"))
    inspector = bearer(make_key(pg_engine, "i", "inspector", "Lanshan"))
    alert = (await client.get("/v1/alerts", headers=viewer)).json()["items"][0]
    r = await client.post(f"/v1/alerts/{alert['id']}/acknowledge", json={}, headers=viewer)
    assert r.status_code == 403 and "inspector" in r.json()["detail"]
    site = {"id": "x", "name": "x", "district": "Lanshan", "kind": "construction_site"}
    assert (await client.post("/v1/sites", json=site, headers=inspector)).status_code == 403
    assert (await client.get("/v1/users", headers=inspector)).status_code == 403
    r = await client.post(f"/v1/alerts/{alert['id']}/acknowledge", json={}, headers=inspector)
    assert r.status_code == 200 and r.json()["events"][-1]["actor"] == "user:i"


async def test_another_districts_objects_are_absent_everywhere(
    client: httpx.AsyncClient, pg_engine: Engine
) -> None:
    ls = bearer(make_key(pg_engine, "ls", "inspector", "Lanshan"))
    admin = bearer(make_key(pg_engine))
    every = (await client.get("/v1/alerts", headers=admin)).json()["items"]
    theirs = next(a for a in every if a["district"] == "Hedong")
    assert len({a["district"] for a in every}) == 2

    async def ids(path: str, key: str = "id", **params: str) -> set[str]:
        body = (await client.get(path, params=params, headers=ls)).json()
        return {str(i[key]) for i in body["items"]}

    assert await ids("/v1/alerts") == {str(a["id"]) for a in every if a["district"] == "Lanshan"}
    assert await ids("/v1/alerts", district="Hedong") == set()
    assert await ids("/v1/alerts", device_id="dust-hd") == set()
    assert await ids("/v1/devices") == {"dust-ls"}
    assert await ids("/v1/sites") == {"cs-ls"}
    assert await ids("/v1/readings", key="device_id") == {"dust-ls"}
    assert await ids("/v1/readings", key="device_id", device_id="dust-hd") == set()
    assert await ids("/v1/readings", key="device_id", bucket="hour") == {"dust-ls"}
    assert await ids("/v1/dead-letters", key="device_id") == {"dust-ls"}
    for path in (
        f"/v1/alerts/{theirs['id']}",
        "/v1/devices/dust-hd",
        "/v1/sites/cs-hd",
        "/v1/devices/dust-hd/latest",
    ):
        assert (await client.get(path, headers=ls)).status_code == 404, path
    for action in ("acknowledge", "resolve"):
        r = await client.post(f"/v1/alerts/{theirs['id']}/{action}", json={}, headers=ls)
        assert r.status_code == 404
    assert (await client.get(f"/v1/alerts/{theirs['id']}", headers=admin)).json()["status"] == (
        "firing"
    )


async def test_revoked_key_and_disabled_user_stop_at_once(
    client: httpx.AsyncClient, pg_engine: Engine
) -> None:
    admin = bearer(make_key(pg_engine))
    user = (
        await client.post(
            "/v1/users",
            json={"name": "temp", "role": "viewer", "district": "Hedong"},
            headers=admin,
        )
    ).json()
    assert user["district"] == "Hedong"
    created = (await client.post("/v1/users/temp/keys", json={"label": "t"}, headers=admin)).json()
    key = bearer(created["key"])
    assert (await client.get("/v1/me", headers=key)).json() == {
        "name": "temp",
        "role": "viewer",
        "district": "Hedong",
    }
    listed = (await client.get("/v1/users/temp/keys", headers=admin)).json()
    assert "key" not in listed[0] and listed[0]["prefix"] in created["key"]
    assert (await client.delete(f"/v1/keys/{created['id']}", headers=admin)).status_code == 204
    r = await client.get("/v1/me", headers=key)
    assert r.status_code == 401 and "revoked" in r.json()["detail"]

    second = (await client.post("/v1/users/temp/keys", json={}, headers=admin)).json()
    await client.patch("/v1/users/temp", json={"disabled": True}, headers=admin)
    r = await client.get("/v1/me", headers=bearer(second["key"]))
    assert r.status_code == 401 and "disabled" in r.json()["detail"]
    r = await client.post(
        "/v1/users", json={"name": "boss", "role": "admin", "district": "Hedong"}, headers=admin
    )
    assert r.status_code == 409 and r.json()["errors"][0]["field"] == "district"


async def test_production_refuses_demo_keys(pg_url: str, pg_engine: Engine) -> None:
    with pg_engine.begin() as conn:
        uid = auth.create_user(conn, auth.UserCreate(name="demo-admin", role=Role.admin))
        _, demo_key = auth.create_key(conn, uid, demo=True)
        _, real_key = auth.create_key(conn, uid)
    for env, expected in ((Environment.development, 200), (Environment.production, 401)):
        app = create_app(Settings(database_url=pg_url, env=env))
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c,
        ):
            assert (await c.get("/v1/me", headers=bearer(demo_key))).status_code == expected
            assert (await c.get("/v1/me", headers=bearer(real_key))).status_code == 200


def test_production_start_refuses_default_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENVMON_ENV", "production")
    monkeypatch.setenv("ENVMON_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("ENVMON_DATABASE_URL", "postgresql+psycopg://envmon:postgres@db/envmon")
    monkeypatch.setenv("ENVMON_MQTT_URL", "mqtt://envmon-ingest@broker:1883")
    result = CliRunner().invoke(main, ["api"])
    assert result.exit_code != 0
    assert "database password" in result.output and "broker password" in result.output
    result = CliRunner().invoke(main, ["up", "--simulate"])
    assert result.exit_code != 0 and "not in production" in result.output


def test_cli_users_and_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVMON_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("ENVMON_DATABASE_URL", raising=False)
    runner = CliRunner()
    assert runner.invoke(main, ["migrate"]).exit_code == 0
    r = runner.invoke(
        main, ["users", "add", "wang", "--role", "inspector", "--district", "Lanshan"]
    )
    assert r.exit_code == 0 and "API key (shown once): envmon_" in r.output
    r = runner.invoke(main, ["users", "add", "wang", "--role", "viewer"])
    assert r.exit_code != 0 and "exists" in r.output
    r = runner.invoke(main, ["keys", "create", "wang", "--label", "tablet"])
    key_id = r.output.split()[1]
    assert runner.invoke(main, ["keys", "revoke", key_id]).exit_code == 0
    listed = runner.invoke(main, ["keys", "list", "wang"]).output
    assert "revoked" in listed and "active" in listed and "tablet" in listed
    assert "Lanshan" in runner.invoke(main, ["users", "list"]).output


@pytest.mark.parametrize("db", ["pg_url", "sqlite_url"])
async def test_a_revocation_in_one_worker_is_refused_by_another_at_its_next_request(
    db: str, request: pytest.FixtureRequest
) -> None:
    """Two app instances (two `envmon api` workers) on one database, each with its principal
    cache warm: whatever one changes, or an operator changes by hand in SQL, the other
    refuses at its very next request."""
    from sqlalchemy import event, text

    from monitor.core.db import make_engine

    url: str = request.getfixturevalue(db)
    engine = make_engine(url)
    admin = bearer(make_key(engine))
    keys = {name: make_key(engine, name, "viewer", "Lanshan") for name in ("a", "b", "c", "d")}
    with engine.begin() as conn:
        cookie = auth.open_session(conn, keys["d"], production=False, max_age=timedelta(hours=1))
    apps = [create_app(Settings(database_url=url)) for _ in range(2)]
    async with (
        apps[0].router.lifespan_context(apps[0]),
        apps[1].router.lifespan_context(apps[1]),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=apps[0]), base_url="http://a") as one,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=apps[1]), base_url="http://b") as two,
    ):

        async def me(client: httpx.AsyncClient, name: str) -> int:
            if name == "d":
                client.cookies.set("envmon_session", cookie)
                r = await client.get("/v1/me")
                client.cookies.clear()
            else:
                r = await client.get("/v1/me", headers=bearer(keys[name]))
            return r.status_code

        for name in keys:  # warm both caches
            assert [await me(one, name), await me(two, name)] == [200, 200]

        # a cached principal costs one statement: the epoch, not the key joined to its user
        statements: list[str] = []
        cached_engine = apps[1].state.sessionmaker.kw["bind"]
        listen = event.listen
        listen(cached_engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
        assert await me(two, "a") == 200
        assert len([s for s in statements if "api_keys" in s]) == 0, statements

        key_a = (await one.get("/v1/users/a/keys", headers=admin)).json()[0]["id"]
        assert (await one.delete(f"/v1/keys/{key_a}", headers=admin)).status_code == 204
        assert await me(two, "a") == 401
        assert (await one.patch("/v1/users/b", json={"disabled": True}, headers=admin)).is_success
        assert await me(two, "b") == 401
        with engine.begin() as conn:  # an operator's hand-made change counts too
            conn.execute(text("UPDATE users SET disabled = true WHERE name IN ('c', 'd')"))
        assert [await me(one, "c"), await me(two, "c")] == [401, 401]
        assert [await me(one, "d"), await me(two, "d")] == [401, 401]
        with engine.begin() as conn:
            conn.execute(text("UPDATE users SET disabled = false WHERE name = 'c'"))
        assert [await me(one, "c"), await me(two, "c")] == [200, 200]
    engine.dispose()


def test_a_principal_read_under_an_epoch_since_moved_is_not_cached() -> None:
    cache = auth.PrincipalCache(max_entries=2)
    p = auth.Principal(1, "x", Role.viewer, None, 1)
    cache._epoch = 2
    cache.put(1, "k", "h", p)
    assert cache.get(2, "k") is None
    for k in ("k1", "k2", "k3"):
        cache.put(2, k, "h", p)
    assert len(cache) == 2 and cache.get(2, "k1") is None and cache.get(2, "k3") == ("h", p)
    assert cache.get(1, "k3") is None  # a request that read an older epoch is not served


def test_an_older_epoch_read_never_moves_the_cache_back(sqlite_url: str) -> None:
    """A request from an older snapshot must not reset the epoch and refill the cache with
    what was true before a revocation."""
    from monitor.core.db import make_engine

    engine = make_engine(sqlite_url)
    cache = auth.PrincipalCache()
    p = auth.Principal(1, "x", Role.viewer, None, 1)
    with engine.connect() as conn:
        assert cache.check(conn) == 0
    cache._epoch = 5  # another request has seen the revocation's epoch
    cache.put(5, "k", "h", p)
    with engine.connect() as conn:
        assert cache.check(conn) == 0  # this one reads an older snapshot
    assert cache._epoch == 5 and cache.get(5, "k") == ("h", p)
    cache.put(0, "stale", "h", p)
    assert cache.get(5, "stale") is None
    engine.dispose()
