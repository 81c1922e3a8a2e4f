"""DMA days deferred while the ingestor is behind (`ENVMON_DMA_DEFER_S`, `dma_pending`).

The property: whatever batches the readings come in, whichever of them find the writer
behind (their DMA days only marked owed) and wherever the ingestor restarts without having
recomputed what it owed, once a writer has gone idle the DMA days and the site rules' alerts
are those of recomputing after every batch. Through the real `Writer`, on both databases,
with the history of tests/integration/test_dma_rules.py (bursts on the judged days).

ENVMON_PROPERTY_EXAMPLES sets how many cases run per backend (default 6)."""

from __future__ import annotations

import os
import queue
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select

from alerts.dma import Changes, claim_pending, mark_pending
from ingest.contract import ReadingSet, TelemetryBatch, encode, telemetry_topic
from ingest.mqtt import Message
from ingest.registry import DeviceRegistry
from ingest.validate import Row
from ingest.writer import Writer
from monitor.core.models import DmaDay, DmaPending, table
from monitor.core.settings import Settings
from tests.integration import test_dma_rules as dma_rules
from tests.integration.test_dma_rules import (
    DMA_RULES,
    HISTORY_DAYS,
    JUDGED,
    TZ,
    _compared,
    _empty,
    _forget_judged_days,
    deliver,
    judged_bursts,
    readings,
)

EXAMPLES = int(os.environ.get("ENVMON_PROPERTY_EXAMPLES", "6"))
PREFIX = "defer"
NEVER = 1e9  # a defer interval no test outlives: deferred until the writer is idle


# the DMA of test_dma_rules (its rules, site and inlet meter), on both databases
engine = dma_rules.engine


def messages(rows: list[Row]) -> list[Message]:
    """The readings as the meter publishes them: an hour (12 sets) a message."""
    sets: dict[Any, dict[str, float]] = {}
    for r in rows:
        sets.setdefault(r.ts, {})[r.metric] = r.value
    ordered = sorted(sets.items())
    out = []
    for i in range(0, len(ordered), 12):
        batch = TelemetryBatch(batch=[ReadingSet(ts=t, values=v) for t, v in ordered[i : i + 12]])
        out.append(
            Message(telemetry_topic(PREFIX, "dma-p-in"), encode(batch), i, 1, ordered[i][0], 0)
        )
    return out


def writer(engine: Engine, spool: Path, defer_s: float, behind: Iterator[bool]) -> Writer:
    """A writer that is told, batch by batch, whether one waits behind it."""
    w = Writer(
        Settings(
            database_url=str(engine.url),
            mqtt_topic_prefix=PREFIX,
            spool_path=str(spool),
            dma_defer_s=defer_s,
            timezone=str(TZ),
        ),
        engine,
        queue.Queue(),
        DeviceRegistry(engine),
        lambda _acked: None,
    )
    w._behind = lambda: next(behind)  # type: ignore[method-assign]
    return w


def go_idle(w: Writer) -> None:
    """What the writer does when nothing is queued: the owed days first, then idle."""
    w._collector_idle.set()
    w._next_batch()
    assert w.idle.is_set()


def owed(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table(DmaPending))).scalar_one())


def days(engine: Engine) -> list[tuple[object, ...]]:
    t = table(DmaDay)
    cols = [c for c in t.c if c.name != "computed_at"]
    with engine.connect() as conn:
        rows = conn.execute(select(*cols).order_by(t.c.day)).all()
    return [tuple(round(v, 9) if isinstance(v, float) else v for v in r) for r in rows]


def dma_alerts(engine: Engine) -> list[tuple[object, ...]]:
    return [a for a in _compared(engine) if a[0] in DMA_RULES]


def test_deferred_days_and_any_restart_end_as_recomputing_every_batch(
    engine: Engine, tmp_path: Path
) -> None:
    _empty(engine)
    for day in range(HISTORY_DAYS):
        deliver(engine, readings(day, [], seed=1))
    exercised = {"deferred": 0, "restarted": 0, "alerts": 0}

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(judged_bursts(), st.data())
    def check(injected: list[Any], data: st.DataObject) -> None:
        note(f"bursts: {injected}")
        rows = [r for d in JUDGED for r in readings(d, [b for b in injected if b.day == d], 1)]
        sent = messages(rows)
        # the reference: every message its own batch, the days recomputed after each
        _forget_judged_days(engine)
        w = writer(engine, tmp_path / "ref", 0.0, iter(lambda: False, None))
        for m in sent:
            w._store_batch([m])
        expected = (days(engine), dma_alerts(engine))

        cuts = sorted(data.draw(st.sets(st.integers(1, len(sent) - 1), max_size=12), "cuts"))
        batches = [sent[a:b] for a, b in zip([0, *cuts], [*cuts, len(sent)], strict=True)]
        behind = data.draw(st.lists(st.booleans(), min_size=len(batches)), "behind")
        defer_s = data.draw(st.sampled_from([0.0, NEVER]), "defer_s")
        restarts = data.draw(st.sets(st.integers(1, len(batches) - 1) if cuts else st.nothing()))
        _forget_judged_days(engine)
        flags = iter(behind)
        w = writer(engine, tmp_path / "w", defer_s, flags)
        for i, batch in enumerate(batches):
            if i in restarts:  # the ingestor stops with days owed; a new one starts
                exercised["restarted"] += owed(engine) > 0
                w = writer(engine, tmp_path / f"w{i}", defer_s, flags)
            w._store_batch(batch)
            exercised["deferred"] += owed(engine) > 0
        go_idle(w)
        assert owed(engine) == 0
        assert (days(engine), dma_alerts(engine)) == expected
        exercised["alerts"] += bool(expected[1])

    check()
    # (a restart while days are owed is drawn only now and then: the next test makes one)
    assert exercised["deferred"] and exercised["alerts"], exercised


def test_a_new_ingestor_recomputes_what_a_stopped_one_owed(engine: Engine, tmp_path: Path) -> None:
    """An ingestor that stored a day while behind, and stopped before recomputing it, leaves
    the day owed; the next one to start recomputes it once idle, with no new data."""
    _empty(engine)
    for day in range(HISTORY_DAYS):
        deliver(engine, readings(day, [], seed=1))
    sent = messages(readings(JUDGED[0], [], 1))
    w = writer(engine, tmp_path / "ref", 0.0, iter(lambda: False, None))
    w._store_batch(sent)
    expected = days(engine)
    _forget_judged_days(engine)
    w = writer(engine, tmp_path / "a", NEVER, iter(lambda: True, None))
    for m in sent:
        w._store_batch([m])
    assert owed(engine) > 0
    assert days(engine) != expected  # the judged day is not there yet
    go_idle(writer(engine, tmp_path / "b", NEVER, iter(lambda: True, None)))
    assert owed(engine) == 0
    assert days(engine) == expected


def test_owed_days_another_transaction_is_taking_are_skipped_until_it_ends(
    pg_engine: Engine,
) -> None:
    """Two ingestors flushing at once never take the same marks: the second skips those the
    first holds, and gets them if the first rolls back (PostgreSQL's SKIP LOCKED)."""
    since = datetime(2026, 12, 1, 3, tzinfo=UTC)
    with pg_engine.begin() as conn:
        mark_pending(conn, Changes({("dma-x", date(2026, 12, 1))}, {"dma-x": since}))
    with pg_engine.connect() as first, pg_engine.connect() as second:
        taking = first.begin()
        assert claim_pending(first).days == {("dma-x", date(2026, 12, 1))}
        with second.begin():
            assert claim_pending(second).days == set()
        taking.rollback()
        with second.begin():
            got = claim_pending(second)
        assert got.days == {("dma-x", date(2026, 12, 1))} and got.since == {"dma-x": since}
    assert owed(pg_engine) == 0
