"""The same Alembic revisions upgrade from empty and downgrade to empty on both databases."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
from sqlalchemy import inspect
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
