"""Redelivery side effects: an older message moves nothing backwards."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from ingest.repository import insert_dead_letters, touch_devices
from ingest.validate import DeadLetterRecord, Reason
from monitor.core.db import make_engine
from monitor.core.models import DeadLetter, Device, table
from tests.conftest import register

T = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


@pytest.mark.parametrize("db", ["sqlite", "pg"])
def test_an_older_message_moves_neither_last_seen_nor_status_back(
    db: str, request: pytest.FixtureRequest
) -> None:
    engine = make_engine(request.getfixturevalue("sqlite_url" if db == "sqlite" else "pg_url"))
    try:
        register(engine, devices={"dust-1": "dust_monitor"}, rules=False)
        with engine.begin() as conn:
            touch_devices(conn, {"dust-1": (T, 1.5, "online")})
        with engine.begin() as conn:  # the last will from before, delivered again
            touch_devices(conn, {"dust-1": (T - timedelta(minutes=5), 9.0, "offline")})
        with engine.connect() as conn:
            row = conn.execute(select(table(Device)).where(table(Device).c.id == "dust-1")).one()
        assert row.last_seen_at.astimezone(UTC) == T
        assert (row.connection, row.clock_skew_s) == ("online", 1.5)

        with engine.begin() as conn:  # a newer message still moves them on
            touch_devices(conn, {"dust-1": (T + timedelta(minutes=1), None, "offline")})
        with engine.connect() as conn:
            row = conn.execute(select(table(Device)).where(table(Device).c.id == "dust-1")).one()
        assert row.last_seen_at.astimezone(UTC) == T + timedelta(minutes=1)
        assert (row.connection, row.clock_skew_s) == ("offline", 1.5)
    finally:
        engine.dispose()


@pytest.mark.parametrize("db", ["sqlite", "pg"])
def test_a_redelivered_bad_message_is_one_dead_letter(
    db: str, request: pytest.FixtureRequest
) -> None:
    engine = make_engine(request.getfixturevalue("sqlite_url" if db == "sqlite" else "pg_url"))
    bad = DeadLetterRecord("envmon/v1/devices/x/telemetry", "x", Reason.bad_json, "no", "{")
    other = DeadLetterRecord("envmon/v1/devices/x/telemetry", "x", Reason.bad_json, "no", "[")
    try:
        with engine.begin() as conn:
            insert_dead_letters(conn, [bad, bad], T)
        with engine.begin() as conn:  # delivered again after a reconnect
            insert_dead_letters(conn, [bad, other], T + timedelta(seconds=30))
        with engine.connect() as conn:
            kept = conn.execute(select(table(DeadLetter).c.payload)).scalars().all()
        assert sorted(kept) == ["[", "{"]
    finally:
        engine.dispose()
