"""Engine and session factories, and the schema upgrade entry point."""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    any_,
    bindparam,
    cast,
    create_engine,
    event,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.types import NullType

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


# The execution option that makes a SQLite transaction take the write lock when it begins:
# `engine.execution_options(**WRITING)` for the write path, `session.connection(
# execution_options=WRITING)` for a request that changes something. No effect elsewhere.
SQLITE_BEGIN = "envmon_sqlite_begin"
WRITING = {SQLITE_BEGIN: "IMMEDIATE"}


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine; SQLite gets WAL, a busy timeout and enforced foreign keys."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # pysqlite's own transaction handling emits BEGIN only before INSERT/UPDATE/
            # DELETE: a SAVEPOINT with no write before it opened the transaction itself, and
            # its RELEASE committed everything so far, half an evaluation included. Off: we
            # emit BEGIN ourselves (the "begin" event below), SQLAlchemy's pysqlite recipe.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # FULL: WAL is synced at every commit, so a message acknowledged after its commit
            # survives a power loss, as on PostgreSQL (NORMAL could lose the last commits)
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            # A transaction that writes after it has read takes the write lock at its start
            # (WRITING, below): otherwise, when another connection has written since its
            # first read, it cannot get the lock by waiting and fails (SQLITE_BUSY_SNAPSHOT,
            # "database is locked": two evaluators on one device, test_alert_properties).
            # Readers stay deferred and never wait for a writer (WAL).
            mode = conn.get_execution_options().get(SQLITE_BEGIN, "DEFERRED")
            conn.exec_driver_sql(f"BEGIN {mode}")

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    engine = create_engine(url, **kwargs)
    if parsed.get_backend_name() == "postgresql":

        @event.listens_for(engine, "connect")
        def _utc_session(dbapi_conn: Any, _record: Any) -> None:
            # Times come back in UTC (psycopg then hands out datetime.UTC, which
            # UTCDateTime passes through instead of converting every value); nothing here
            # depends on the server's zone: local days are computed with an explicit zone.
            dbapi_conn.execute("SET TIME ZONE 'UTC'")
            dbapi_conn.commit()

    return engine


def one_of(
    conn: Connection, column: ColumnElement[Any], values: Collection[Any]
) -> ColumnElement[bool]:
    """`column IN (values)`; on PostgreSQL `column = ANY(:array)`, one parameter whatever the
    number of values, so the statement text (and psycopg's prepared plan) stays the same from
    batch to batch, where IN renders and parses a parameter per value."""
    if conn.dialect.name == "postgresql":
        # The literal goes as a parameter of the array type, parsed once when bound; a CAST of
        # a text parameter instead would be evaluated per row under a generic plan.
        # (untyped: SQLAlchemy would take a str for a list under an ARRAY type)
        literal = bindparam(None, pg_array(values), type_=NullType())
        return column == any_(cast(literal, ARRAY(column.type)))
    return column.in_(list(values))


def pg_array(values: Iterable[object]) -> str:
    """A PostgreSQL array literal (`{"a","b"}`) of the values' text forms, to be CAST by the
    statement. psycopg dumps a Python list element by element in Python (about 6 µs each);
    one string is a single parameter, built here at a fraction of that (C-level joins for
    columns of one type without NULLs, the write path's case)."""
    items = values if isinstance(values, list | tuple) else list(values)
    if not items:
        return "{}"
    first = items[0]
    kind = type(first)
    if all(type(v) is kind for v in items):
        if kind is str:
            text = "\x00".join(items)  # type: ignore[arg-type]
            if '"' in text or "\\" in text:
                text = text.replace("\\", "\\\\").replace('"', '\\"')
            return '{"' + text.replace("\x00", '","') + '"}'
        if kind is float or kind is int:
            return "{" + ",".join(map(repr, items)) + "}"
        if kind is datetime:
            return "{" + ",".join(map(datetime.isoformat, items)) + "}"
    return "{" + ",".join(_element(v) for v in items) + "}"


def _element(v: object) -> str:
    if v is None:
        return "NULL"
    s = v if isinstance(v, str) else v.isoformat() if isinstance(v, datetime) else repr(v)
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on error."""
    with factory() as session, session.begin():
        yield session


def has_timescaledb(engine: Engine) -> bool:
    """True when the connected PostgreSQL has the timescaledb extension installed."""
    if engine.dialect.name != "postgresql":
        return False
    with engine.connect() as conn:
        row = conn.execute(text("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")).first()
    return row is not None


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logging"] = False
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the schema at `url` to `revision` (Alembic)."""
    from alembic import command

    log.info("migrating database to %s", revision)
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    from alembic import command

    command.downgrade(alembic_config(url), revision)


# pg_advisory_xact_lock(class, key): a class of envmon's own, the device id's hash as key
DEVICE_LOCK_CLASS = 0x656E7601

_PG_LOCK_DEVICES = text(
    "SELECT pg_advisory_xact_lock(:cls, hashtext(d)) "
    "FROM unnest(CAST(:ids AS text[])) AS d ORDER BY hashtext(d)"
)


def lock_devices(conn: Connection, device_ids: Iterable[str]) -> None:
    """Serialise writers of the same devices until commit (PostgreSQL; SQLite has one
    writer at a time anyway): an evaluation then sees every reading stored before it, so two
    ingestors sharing a device cannot each judge half of its data. Locks are taken in one
    order (by hash), so two batches cannot deadlock on them."""
    ids = sorted(set(device_ids))
    if ids and conn.dialect.name == "postgresql":
        conn.execute(_PG_LOCK_DEVICES, {"cls": DEVICE_LOCK_CLASS, "ids": pg_array(ids)})


SITE_LOCK_CLASS = 0x656E7602


def lock_sites(conn: Connection, site_ids: Iterable[str]) -> None:
    """Serialise the recomputation of the same DMA sites' days until commit (PostgreSQL):
    two ingestors storing readings of one DMA's meters (a round-robin `$share` splits them)
    would each delete and rewrite its slots, and the second insert would collide with the
    first's rows. A writer takes these after its device locks, both in hash order, so no two
    transactions wait on each other in a cycle."""
    ids = sorted(set(site_ids))
    if ids and conn.dialect.name == "postgresql":
        conn.execute(_PG_LOCK_DEVICES, {"cls": SITE_LOCK_CLASS, "ids": pg_array(ids)})
