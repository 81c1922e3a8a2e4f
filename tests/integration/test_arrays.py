"""`pg_array` literals, read back by the real PostgreSQL exactly as given."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine, text

from monitor.core.db import pg_array

T = datetime(2026, 11, 25, 8, 30, 15, 123456, tzinfo=UTC)

CASES = [
    ("text[]", ["dust-1", 'a"b', "back\\slash", "com,ma", "{brace}", " spaced ", "", "NULL", "尘"]),
    ("text[]", ["plain", None, 'q"uote']),  # mixed: the per-element path
    ("float8[]", [0.0, -1.5, 1e-12, 123456789.125, 7.0]),
    ("int[]", [1, -2, 3]),
    ("timestamptz[]", [T, T + timedelta(hours=5), T.astimezone(timezone(timedelta(hours=8)))]),
    ("text[]", []),
]


IDS = [f"{cast}-{i}" for i, (cast, _) in enumerate(CASES)]


@pytest.mark.parametrize(("cast", "values"), CASES, ids=IDS)
def test_postgresql_reads_back_what_was_given(
    pg_engine: Engine, cast: str, values: list[object]
) -> None:
    with pg_engine.connect() as conn:
        got = conn.execute(text(f"SELECT CAST(:a AS {cast})"), {"a": pg_array(values)}).scalar()
    assert got == values
