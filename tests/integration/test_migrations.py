"""The same Alembic revisions upgrade from empty and downgrade to empty on both databases."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from sqlalchemy import inspect, select, text
from sqlalchemy.engine import make_url

from monitor.core.db import downgrade, make_engine, upgrade
from monitor.core.models import metadata
from tests.conftest import PG_ADMIN, _libpq

TABLES = set(metadata.tables)


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def _round_trip(url: str) -> None:
    upgrade(url)
    assert _tables(url) == TABLES
    downgrade(url)
    assert _tables(url) == set()
    upgrade(url)
    assert _tables(url) == TABLES


def test_sqlite_upgrades_from_empty_and_downgrades_to_empty(tmp_path: Path) -> None:
    _round_trip(f"sqlite:///{tmp_path}/m.db")


def test_postgresql_upgrades_from_empty_and_downgrades_to_empty() -> None:
    name = f"envmon_m_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_libpq(PG_ADMIN), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        _round_trip(make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False))
    finally:
        with psycopg.connect(_libpq(PG_ADMIN), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_models_match_the_migrations(pg_url: str) -> None:
    """Autogenerate finds nothing to do: the tables in code are the tables migrated."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = make_engine(pg_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    engine.dispose()
    assert diff == []


def test_hourly_series_is_read_from_the_rollups_key_alone(pg_url: str) -> None:
    """The readings API's hourly query (its columns, filters and order) needs no heap page:
    the key carries the values (0014), so a 30-day series is a few adjacent index pages."""
    from monitor.api.routes.readings import BUCKET_COLUMNS, rollups

    q = (
        select(*BUCKET_COLUMNS)
        .where(rollups.c.device_id == "d1", rollups.c.metric == "pm10")
        .where(rollups.c.hour >= datetime(2026, 1, 1, tzinfo=UTC))
        .where(rollups.c.hour < datetime(2026, 1, 31, tzinfo=UTC))
        .order_by(rollups.c.hour.desc(), rollups.c.device_id.desc(), rollups.c.metric.desc())
        .limit(1001)
    )
    engine = make_engine(pg_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(
                text(
                    "INSERT INTO hourly_rollups SELECT 'd' || d, 'pm10', "
                    "timestamptz '2026-01-01' + h * interval '1 hour', 6, 300, 40, 60 "
                    "FROM generate_series(1, 20) d, generate_series(0, 800) h"
                )
            )
            conn.execute(text("VACUUM ANALYZE hourly_rollups"))  # the visibility map set
            # any plan but a scan of the key's index is off: is the key enough on its own?
            conn.execute(text("SET enable_seqscan = off; SET enable_bitmapscan = off"))
            sql = q.compile(engine, compile_kwargs={"literal_binds": True})
            plan = "\n".join(r[0] for r in conn.execute(text(f"EXPLAIN (ANALYZE) {sql}")))
    finally:
        engine.dispose()
    assert "Index Only Scan Backward using pk_hourly_rollups" in plan, plan
    assert "Heap Fetches: 0" in plan, plan
