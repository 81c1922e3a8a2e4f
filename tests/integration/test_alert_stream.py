"""The alert event stream: no event skipped when ids commit out of order, and no query on
the event loop."""

from __future__ import annotations

import threading
from typing import Any

import httpx

from monitor.api.app import create_app
from monitor.api.routes.alerts import HOLE_WAIT_S, EventCursor
from monitor.core.db import make_engine
from monitor.core.settings import Settings
from tests.conftest import bearer, make_key


def _ids(rows: list[dict[str, Any]]) -> list[int]:
    return [r["id"] for r in rows]


def test_an_event_committed_after_a_higher_id_is_still_sent_once() -> None:
    table: dict[int, dict[str, Any]] = {}
    cursor = EventCursor(0)

    def poll(now: float) -> list[int]:
        holes = set(cursor.pending())
        rows = [r for i, r in table.items() if i > cursor.since or i in holes]
        return _ids(cursor.take(rows, now))

    table[1] = {"id": 1}
    table[3] = {"id": 3}  # id 2 is taken by a transaction that has not committed yet
    assert poll(0.0) == [1, 3]
    assert cursor.pending() == [2]
    table[2] = {"id": 2}
    table[4] = {"id": 4}
    assert poll(1.0) == [2, 4]
    assert poll(2.0) == []  # nothing twice
    table[6] = {"id": 6}  # 5 was rolled back: given up after a while
    assert poll(3.0) == [6]
    assert poll(3.0 + HOLE_WAIT_S) == []
    assert cursor.pending() == []


async def test_the_streams_first_query_runs_off_the_event_loop(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    key = make_key(engine)
    engine.dispose()
    app = create_app(Settings(database_url=sqlite_url))
    loop_thread = threading.get_ident()
    threads: list[int] = []
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test", headers=bearer(key)
        ) as client,
    ):
        factory = app.state.sessionmaker

        def recording() -> Any:
            threads.append(threading.get_ident())
            return factory()

        app.state.sessionmaker = recording
        r = await client.get("/v1/alerts/stream", params={"follow": "false"})
        assert r.status_code == 200
    assert threads and loop_thread not in threads
