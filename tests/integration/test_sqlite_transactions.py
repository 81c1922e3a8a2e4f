"""SQLite, the embedded default, keeps PostgreSQL's transaction promises: a savepoint is
part of its transaction (a failed nested step rolls back only itself, a released one commits
nothing alone), and a commit is synced before it returns."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from monitor.core.db import make_engine


@pytest.fixture(params=["sqlite", "pg"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    url = (
        f"sqlite:///{tmp_path}/t.db"
        if request.param == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    eng = make_engine(url)
    with eng.begin() as conn:
        conn.execute(text("CREATE TABLE probe (name VARCHAR(20) PRIMARY KEY)"))
    return eng


def _names(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return sorted(conn.execute(text("SELECT name FROM probe")).scalars())


def _add(conn: object, name: str) -> None:
    conn.execute(text("INSERT INTO probe VALUES (:n)"), {"n": name})  # type: ignore[attr-defined]


def test_a_failed_nested_step_rolls_back_only_itself(engine: Engine) -> None:
    with engine.begin() as conn:
        _add(conn, "outer")
        with pytest.raises(RuntimeError), conn.begin_nested():
            _add(conn, "nested")
            raise RuntimeError("evaluation failed")
        _add(conn, "after")
    assert _names(engine) == ["after", "outer"]


def test_a_released_savepoint_commits_nothing_when_its_transaction_rolls_back(
    engine: Engine,
) -> None:
    """The writer's shape: reads, then a nested evaluation, then the transaction fails. With
    pysqlite's own handling the SAVEPOINT opened the transaction and RELEASE committed it."""
    with pytest.raises(RuntimeError), engine.begin() as conn:
        conn.execute(text("SELECT count(*) FROM probe"))
        with conn.begin_nested():
            _add(conn, "nested")
        _add(conn, "outer")
        raise RuntimeError("batch failed")
    assert _names(engine) == []


def test_sqlite_syncs_every_commit(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/t.db")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
