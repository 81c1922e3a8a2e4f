"""Fixtures for tests against the real PostgreSQL and Mosquitto.

A test that needs a service fails when the service is missing: it never skips. Point the
tests elsewhere with ENVMON_TEST_PG_ADMIN (a SQLAlchemy URL of a database we may CREATE
DATABASE from) and ENVMON_TEST_MQTT (host:port).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import psycopg
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import Engine, insert
from sqlalchemy.engine import make_url

from alerts.packs import install_default_rules
from bench.services import free_port as free_port  # below the ephemeral range: see there
from monitor.core.db import make_engine, upgrade
from monitor.core.models import Device, Site, table

PG_ADMIN = os.environ.get(
    "ENVMON_TEST_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
MQTT = os.environ.get("ENVMON_TEST_MQTT", "127.0.0.1:1883")


def _libpq(url: str) -> str:
    u = make_url(url)
    return f"host={u.host} port={u.port or 5432} user={u.username} dbname={u.database}" + (
        f" password={u.password}" if u.password else ""
    )


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """The app served by uvicorn on a free port of 127.0.0.1 in a thread; yields its base URL.
    A real server, not ASGITransport: what a client sees before and after a response is sent
    only shows over a socket."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=2
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        assert thread.is_alive(), "uvicorn stopped while starting"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test, dropped afterwards."""
    name = f"envmon_t_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(_libpq(PG_ADMIN), autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN}: {exc}", pytrace=False)
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = str(make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False))
    upgrade(url)
    yield url
    with psycopg.connect(_libpq(PG_ADMIN), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_url(tmp_path: object) -> str:
    url = f"sqlite:///{tmp_path}/envmon.db"
    upgrade(url)
    return url


@pytest.fixture
def mqtt_url() -> str:
    """The real Mosquitto; fails (never skips) when it is not listening."""
    host, port = MQTT.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as exc:
        pytest.fail(f"Mosquitto is not reachable at {MQTT}: {exc}", pytrace=False)
    return f"mqtt://{MQTT}"


@pytest.fixture
def prefix() -> str:
    """A topic prefix of this test's own, so tests never see each other's messages."""
    return f"t{uuid.uuid4().hex[:10]}"


def register(
    engine: Engine,
    *,
    site: str = "cs-1",
    site_kind: str = "construction_site",
    district: str = "Lanshan",
    devices: dict[str, str] | None = None,
    rules: bool = True,
) -> None:
    """Register one site with devices {id: kind}, and the default rules."""
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            insert(table(Site)).values(
                id=site, name=site, district=district, kind=site_kind, created_at=now
            )
        )
        for device_id, kind in (devices or {}).items():
            conn.execute(
                insert(table(Device)).values(
                    id=device_id, site_id=site, kind=kind, status="active", created_at=now
                )
            )
        if rules:
            install_default_rules(conn)


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    engine = make_engine(pg_url)
    yield engine
    engine.dispose()


def make_key(
    engine: Engine, name: str = "admin", role: str = "admin", district: str | None = None
) -> str:
    """A user with an API key; returns the key."""
    from monitor import auth
    from monitor.core.models import Role

    with engine.begin() as conn:
        user_id = auth.create_user(
            conn, auth.UserCreate(name=name, role=Role(role), district=district)
        )
        return auth.create_key(conn, user_id)[1]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
