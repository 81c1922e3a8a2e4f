"""The same Alembic revisions upgrade from empty and downgrade to empty on both databases."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy import inspect, select, text
from sqlalchemy.engine import make_url

from monitor.core.db import downgrade, make_engine, upgrade
from monitor.core.models import DmaDay, UTCDateTime, metadata, table
from monitor.core.settings import get_settings
from monitor.registry import SiteCreate, upsert_site
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


@contextmanager
def _empty_pg() -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped afterwards."""
    name = f"envmon_m_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_libpq(PG_ADMIN), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(_libpq(PG_ADMIN), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_postgresql_upgrades_from_empty_and_downgrades_to_empty() -> None:
    with _empty_pg() as url:
        _round_trip(url)


# 0015's table, as the slots were stored before 0016
_old_slots = sa.table(
    "dma_slots",
    sa.column("site_id", sa.String()),
    sa.column("slot_at", UTCDateTime()),
    sa.column("net_m3h", sa.Float()),
    sa.column("azp_mpa", sa.Float()),
)
# Europe/Berlin's spring-forward day (92 slots: 02:00-03:00 is skipped), its neighbour, and a
# day stored without slots; the first slot of 29 March starts on 28 March in UTC
SLOTS = [
    ("dma-m", datetime(2026, 3, 28, 23, 0, tzinfo=UTC), 10.0, 0.30),  # 00:00 CET: slot 0
    ("dma-m", datetime(2026, 3, 29, 0, 45, tzinfo=UTC), 11.5, None),  # 01:45 CET: slot 7
    ("dma-m", datetime(2026, 3, 29, 1, 0, tzinfo=UTC), 12.0, 0.25),  # 03:00 CEST: slot 8
    ("dma-m", datetime(2026, 3, 29, 21, 45, tzinfo=UTC), 13.0, 0.35),  # 23:45 CEST: slot 91
    ("dma-m", datetime(2026, 3, 29, 22, 0, tzinfo=UTC), 20.0, None),  # 30 March, slot 0
]
MOVED = {  # (site, day): (slot_index, slot_net_m3h, slot_azp_mpa, net_mean_m3h)
    ("dma-m", date(2026, 3, 29)): (
        [0, 7, 8, 91],
        [10.0, 11.5, 12.0, 13.0],
        [0.3, None, 0.25, 0.35],
        11.625,
    ),
    ("dma-m", date(2026, 3, 30)): ([0], [20.0], [None], 20.0),
    ("dma-m", date(2026, 3, 31)): ([], [], [], None),
}


def _slot_round_trip(url: str) -> None:
    """0016 moves the stored slots into their local days' arrays (the configured time
    zone's days) and its downgrade gives back the same slot rows."""
    upgrade(url, "0015")
    engine = make_engine(url)
    days = table(DmaDay)
    old_day = [
        c
        for c in days.c
        if c.name not in ("slot_index", "slot_net_m3h", "slot_azp_mpa", "net_mean_m3h")
    ]
    try:
        with engine.begin() as conn:
            upsert_site(conn, SiteCreate(id="dma-m", name="m", district="Lanshan", kind="dma"))
            conn.execute(
                sa.insert(sa.table("dma_days", *(sa.column(c.name, c.type) for c in old_day))),
                [
                    {
                        "site_id": s,
                        "day": d,
                        "valid": False,
                        "coverage": 0.0,
                        "night_coverage": 0.0,
                        "night_use_m3h": 0.0,
                        "computed_at": datetime.now(UTC),
                    }
                    for s, d in MOVED
                ],
            )
            conn.execute(
                _old_slots.insert(),
                [
                    dict(zip(("site_id", "slot_at", "net_m3h", "azp_mpa"), r, strict=True))
                    for r in SLOTS
                ],
            )
        upgrade(url)
        assert "dma_slots" not in _tables(url)
        with engine.connect() as conn:
            got = conn.execute(
                select(
                    days.c.site_id,
                    days.c.day,
                    days.c.slot_index,
                    days.c.slot_net_m3h,
                    days.c.slot_azp_mpa,
                    days.c.net_mean_m3h,
                ).order_by(days.c.day)
            ).all()
        assert {(r[0], r[1]): tuple(r[2:5]) for r in got} == {k: v[:3] for k, v in MOVED.items()}
        for r in got:
            assert r.net_mean_m3h == pytest.approx(MOVED[(r.site_id, r.day)][3])
        downgrade(url, "0015")
        with engine.connect() as conn:
            back = conn.execute(select(_old_slots).order_by(_old_slots.c.slot_at)).all()
        assert [tuple(r) for r in back] == SLOTS
        upgrade(url)
    finally:
        engine.dispose()


@pytest.fixture
def berlin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The configured time zone Europe/Berlin (the settings are cached: cleared either side)."""
    monkeypatch.setenv("ENVMON_TIMEZONE", "Europe/Berlin")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.usefixtures("berlin")
def test_sqlite_moves_the_slots_into_their_days_and_back(tmp_path: Path) -> None:
    _slot_round_trip(f"sqlite:///{tmp_path}/m.db")


@pytest.mark.usefixtures("berlin")
def test_postgresql_moves_the_slots_into_their_days_and_back() -> None:
    with _empty_pg() as url:
        _slot_round_trip(url)


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
