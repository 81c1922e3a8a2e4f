"""The engine's promise, as a property: for any readings of a device, delivered in any order of
chunks (late chunks inside the horizon), with redeliveries, restarts between chunks and two
evaluators on two connections interleaving, the alerts equal those of the same readings
delivered in order, minute by minute, to one fresh evaluator. On PostgreSQL and SQLite.

The reference rebuilds every pair from the database (ENVMON_EVAL_CACHE off); the in-order run
with the cache on folds each minute into the kept state (incremental == rebuild), and the
shuffled runs use the cache as an ingestor does (stale states dropped, late chunks rebuilt).

Each example reuses its backend's database, emptied between deliveries. ENVMON_PROPERTY_EXAMPLES
runs more examples (default 40 per backend, derandomised, so CI sees the same cases)."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, func, insert, select, update

from alerts.schemas import RuleSpec
from ingest.mqtt import Message
from ingest.validate import DeviceInfo
from ingest.writer import Writer
from monitor.core.catalogue import DeviceKind
from monitor.core.db import make_engine
from monitor.core.models import (
    Alert,
    AlertEvent,
    AlertStatus,
    Device,
    HourlyRollup,
    Notification,
    Reading,
    Rule,
    table,
)
from monitor.core.settings import Settings
from tests.conftest import register

T0 = datetime(2026, 11, 25, 1, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)
DEVICE = "dust-p"
EXAMPLES = int(os.environ.get("ENVMON_PROPERTY_EXAMPLES", "40"))
# derandomised, so CI sees the same cases; the database fixtures live across examples
PROPERTY = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
RULES = [
    # the issue's example: a raw rule with a "for" and a quiet period
    RuleSpec(
        name="noise-raw",
        device_kind="dust_monitor",
        metric="noise",
        warn_above=75,
        alarm_above=80,
        for_s=120,
        quiet_s=180,
        basis="test",
    ),
    # a rolling mean: a late reading changes the values around it, not only itself
    RuleSpec(
        name="noise-mean",
        device_kind="dust_monitor",
        metric="noise",
        aggregate="mean",
        window_s=300,
        min_samples=3,
        warn_above=78,
        quiet_s=120,
        basis="test",
    ),
    # a change over a window: the reading two minutes back, not older than four
    RuleSpec(
        name="noise-rise",
        device_kind="dust_monitor",
        kind="rate_of_change",
        params={"window_s": 120},
        metric="noise",
        warn_above=9,
        alarm_above=20,
        quiet_s=60,
        basis="test",
    ),
    # a mean of whole hours from the rollups (an hour counts with 75% of its readings)
    RuleSpec(
        name="noise-hourly",
        device_kind="dust_monitor",
        metric="noise",
        aggregate="hourly_mean",
        window_s=7200,
        min_samples=1,
        warn_above=70,
        alarm_above=80,
        quiet_s=0,
        basis="test",
    ),
    # a calendar-period mean: each whole quarter hour, valid with 75% of its readings
    RuleSpec(
        name="noise-quarter",
        device_kind="dust_monitor",
        metric="noise",
        aggregate="period_mean",
        window_s=900,
        warn_above=74,
        alarm_above=80,
        quiet_s=0,
        basis="test",
    ),
    # hours of the local day whose mean was above a limit, from the rollups
    RuleSpec(
        name="noise-hours",
        device_kind="dust_monitor",
        kind="daily_count",
        params={"hour_above": 72},
        metric="noise",
        warn_above=1,
        alarm_above=3,
        quiet_s=0,
        basis="test",
    ),
    # a fault flag held: minutes of readings flagged D on any metric
    RuleSpec(
        name="fault-held",
        device_kind="dust_monitor",
        kind="flag_held",
        params={"flags": ["D"]},
        metric="*",
        warn_above=1,
        alarm_above=3,
        quiet_s=0,
        basis="test",
    ),
]
COMPARED = (
    "rule_id",
    "device_id",
    "severity",
    "started_at",
    "fired_at",
    "resolved_at",
    "status",
    "violations",
    "peak_value",
)


@pytest.fixture(params=["postgresql", "sqlite"])
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    url = request.getfixturevalue("pg_url" if request.param == "postgresql" else "sqlite_url")
    eng = make_engine(url)
    register(eng, devices={DEVICE: "dust_monitor"}, rules=False)
    with eng.begin() as conn:
        for spec in RULES:
            conn.execute(insert(table(Rule)).values(spec.model_dump()))
    yield eng
    eng.dispose()


def _empty(engine: Engine) -> None:
    with engine.begin() as conn:
        for model in (Notification, AlertEvent, Alert, HourlyRollup, Reading):
            conn.execute(delete(table(model)))
        conn.execute(update(table(Device)).values(watermark_at=None, last_seen_at=None))


class Ingestor:
    """The write path of one ingestor process (parse, store, evaluate, in one transaction)
    on its own engine and connections, without the MQTT side."""

    def __init__(self, url: str, *, cache: bool = True) -> None:
        self.engine = make_engine(url)
        self.writer = Writer(
            Settings(database_url=url, eval_cache=cache),
            self.engine,
            queue.Queue(),
            lambda _d: DeviceInfo(DeviceKind.dust_monitor, True),
            lambda _m: None,
        )

    def deliver(self, minutes: Sequence[tuple[float, float]]) -> None:
        """Minute m's noise reading v; a value of FAULT is a reading flagged D (fault)."""
        payload = orjson.dumps(
            {
                "batch": [
                    {"ts": (T0 + m * MIN).isoformat(), "values": {"noise": v}}
                    if v != FAULT
                    else {
                        "ts": (T0 + m * MIN).isoformat(),
                        "values": {"noise": v},
                        "flags": {"noise": "D"},
                    }
                    for m, v in minutes
                ]
            }
        )
        msg = Message(f"envmon/v1/devices/{DEVICE}/telemetry", payload, 1, 1, datetime.now(UTC), 1)
        summary = self.writer._transaction([msg])  # the writer's own transaction
        assert not summary.dead, summary.dead

    @property
    def folded(self) -> int:
        """Pairs evaluated from kept state instead of rebuilt."""
        cache = self.writer._cache
        return cache.hits if cache is not None else 0

    def close(self) -> None:
        self.engine.dispose()


def _alerts(engine: Engine) -> list[tuple[Any, ...]]:
    alerts = table(Alert)
    with engine.connect() as conn:
        rows = conn.execute(
            select(*(alerts.c[c] for c in COMPARED))
            .where(alerts.c.status != AlertStatus.retracted)
            .order_by(alerts.c.rule_id, alerts.c.started_at)
        ).all()
    return [tuple(round(v, 6) if isinstance(v, float) else v for v in r) for r in rows]


# A device's minutes: runs of one level (below, around and above the tiers), with gaps and
# runs of readings flagged as faults
FAULT = 61.5
LEVELS = (60.0, 76.0, 79.0, 85.0, FAULT)
runs = st.lists(
    st.tuples(st.sampled_from((*LEVELS, None)), st.integers(1, 7)), min_size=2, max_size=9
)


def _series(levels: list[tuple[float | None, int]], step: int) -> list[tuple[int, float]]:
    """(minute, value) every `step` minutes: runs of one level (None: a gap)."""
    minutes: list[tuple[int, float]] = []
    t = 0
    for level, length in levels:
        for _ in range(length):
            if level is not None:
                minutes.append((t, level))
            t += step
    return minutes or [(0, 60.0)]


def _cut(draw: st.DrawFn, minutes: list[tuple[int, float]], most: int) -> list[list[Any]]:
    """The readings in order, cut at up to `most` random places."""
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(minutes) - 1)), max_size=most)))
    chunks = [minutes[a:b] for a, b in zip([0, *cuts], [*cuts, len(minutes)], strict=True)]
    return [c for c in chunks if c]


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list[tuple[int, float]], list[list[tuple[int, float]]]]:
    minutes = _series(draw(runs), 1)
    # cut into chunks, shuffle them (late uploads), redeliver some
    chunks = _cut(draw, minutes, 6)
    order = draw(st.permutations(chunks))
    again = draw(st.lists(st.sampled_from(chunks), max_size=2))
    return minutes, [*order, *again]


def test_alerts_are_the_same_in_any_delivery_order_restart_and_evaluator(engine: Engine) -> None:
    url = engine.url.render_as_string(hide_password=False)
    seen = 0
    folded = 0

    @PROPERTY
    @given(deliveries(), st.lists(st.sampled_from(("a", "b", "restart", "both")), min_size=12))
    def check(
        case: tuple[list[tuple[int, float]], list[list[tuple[int, float]]]], how: list[str]
    ) -> None:
        nonlocal seen, folded
        minutes, chunks = case
        _empty(engine)
        reference = Ingestor(url, cache=False)
        for m in minutes:  # in order, as a live stream, every pair rebuilt
            reference.deliver([m])
        reference.close()
        expected = _alerts(engine)

        _empty(engine)
        incremental = Ingestor(url)
        for m in minutes:  # the same, folded into the kept state
            incremental.deliver([m])
        incremental.close()
        assert _alerts(engine) == expected, ("incremental", minutes)
        folded += incremental.folded

        _empty(engine)
        a, b = Ingestor(url), Ingestor(url)
        try:
            i = 0
            while i < len(chunks):
                step = how[i % len(how)]
                if step == "restart":  # a new process: nothing carried over in memory
                    a.close()
                    a = Ingestor(url)
                if step == "both" and i + 1 < len(chunks):
                    # two ingestors store two chunks of the device at the same time
                    errors: list[BaseException] = []

                    def run(
                        ing: Ingestor,
                        chunk: list[tuple[int, float]],
                        errors: list[BaseException] = errors,
                    ) -> None:
                        try:
                            ing.deliver(chunk)
                        except BaseException as exc:  # re-raised below, in the test's thread
                            errors.append(exc)

                    threads = [
                        threading.Thread(target=run, args=(a, chunks[i])),
                        threading.Thread(target=run, args=(b, chunks[i + 1])),
                    ]
                    for th in threads:
                        th.start()
                    for th in threads:
                        th.join(60)
                    assert not errors, errors
                    i += 2
                    continue
                (b if step == "b" else a).deliver(chunks[i])
                i += 1
        finally:
            a.close()
            b.close()
        assert _alerts(engine) == expected, (minutes, chunks)
        seen += bool(expected)

    check()
    assert seen, "no example raised an alert: the property was not exercised"
    assert folded, "no pair was folded from kept state: the incremental path was not exercised"


def _kept_equals_rebuild(engine: Engine, chunks: list[list[tuple[int, float]]]) -> int:
    """Deliver the chunks in this order to an ingestor that rebuilds every pair, then to one
    with kept state: the alerts must be the same after each chunk. Returns the pairs the
    second one folded from kept state."""
    url = engine.url.render_as_string(hide_password=False)
    seen: list[list[tuple[Any, ...]]] = []
    _empty(engine)
    rebuild = Ingestor(url, cache=False)
    for chunk in chunks:
        rebuild.deliver(chunk)
        seen.append(_alerts(engine))
    rebuild.close()
    _empty(engine)
    kept = Ingestor(url)
    try:
        for i, chunk in enumerate(chunks):
            kept.deliver(chunk)
            assert _alerts(engine) == seen[i], (i, chunks)
    finally:
        kept.close()
    return kept.folded


def test_kept_state_gives_the_alerts_of_a_rebuild_after_every_delivery(engine: Engine) -> None:
    """Incremental == rebuild, delivery by delivery: the same chunks in the same (shuffled)
    order to one ingestor with kept state and to one that rebuilds every pair give the same
    alerts after each chunk, not only at the end (a redelivery or a restart would heal a wrong
    state; here nothing does)."""
    folded = 0

    @PROPERTY
    @given(deliveries())
    def check(case: tuple[list[tuple[int, float]], list[list[tuple[int, float]]]]) -> None:
        nonlocal folded
        _, chunks = case
        # one minute at a time for the in-order part, so most batches are folded
        folded += _kept_equals_rebuild(engine, [[m] for m in chunks[0]] + chunks[1:])

    check()
    assert folded, "no pair was folded from kept state"


@st.composite
def hours(draw: st.DrawFn) -> list[list[tuple[int, float]]]:
    """Hours of 5-minute readings (runs of one level, gaps), cut into chunks and shuffled a
    little: what the hourly-mean rule judges."""
    levels = st.tuples(st.sampled_from((60.0, 75.0, 85.0, None)), st.integers(3, 30))
    chunks = _cut(draw, _series(draw(st.lists(levels, max_size=8)), 5), 12)
    swaps = draw(st.lists(st.integers(0, max(0, len(chunks) - 2)), max_size=3))
    for i in swaps:  # a late chunk here and there
        if i + 1 < len(chunks):
            chunks[i], chunks[i + 1] = chunks[i + 1], chunks[i]
    return chunks


def test_hourly_means_from_kept_state_equal_the_rebuild_after_every_delivery(
    engine: Engine,
) -> None:
    """The hourly-mean rule keeps each open hour's count and sum (as the rollups do) and the
    window of valid hours: delivery by delivery, the alerts equal a rebuild's from the
    rollups, for readings every 5 minutes (a device reporting at that interval)."""
    with engine.begin() as conn:
        conn.execute(update(table(Device)).values(interval_s=300))
    folded = 0

    @settings(PROPERTY, max_examples=max(10, EXAMPLES // 2))
    @given(hours())
    def check(chunks: list[list[tuple[int, float]]]) -> None:
        nonlocal folded
        folded += _kept_equals_rebuild(engine, chunks)

    try:
        check()
    finally:
        with engine.begin() as conn:
            conn.execute(update(table(Device)).values(interval_s=60))
    assert folded, "no pair was folded from kept state"


def test_kept_state_is_dropped_when_another_ingestor_stored_readings_of_the_device(
    engine: Engine,
) -> None:
    """Two ingestors on one shared subscription: A's state of the device is good only at the
    device's evaluation version A left it at; after B stores a reading, A rebuilds (and so
    judges B's reading too), then folds again."""
    url = engine.url.render_as_string(hide_password=False)
    _empty(engine)
    a, b = Ingestor(url), Ingestor(url)
    try:
        a.deliver([(0, 60.0)])  # first seen: rebuilt
        a.deliver([(1, 60.0)])  # folded
        cache = a.writer._cache
        assert cache is not None and cache.hits > 0
        b.deliver([(2, 85.0), (3, 85.0)])  # raw rule: over 75 for 2 min -> warning, then more
        misses = cache.misses
        a.deliver([(4, 85.0)])
        assert cache.misses > misses, "A folded into a state that lacks B's readings"
        hits = cache.hits
        a.deliver([(5, 85.0)])
        assert cache.hits > hits, "A's rebuilt state was not kept"
    finally:
        a.close()
        b.close()
    got = _alerts(engine)
    _empty(engine)
    reference = Ingestor(url, cache=False)
    for m in range(6):
        reference.deliver([(m, 60.0 if m < 2 else 85.0)])
    reference.close()
    assert got == _alerts(engine)


def test_the_horizon_counts_from_the_watermark_before_the_batch(engine: Engine) -> None:
    """A logger uploading three hours of buffered minutes in one message gets the alerts of
    its first hour (the lateness horizon, 2 h, counts back from what the device had sent
    before, not from the batch's own newest reading); a reading that arrives more than the
    horizon behind the stored watermark is stored but opens no alert."""
    url = engine.url.render_as_string(hide_password=False)
    _empty(engine)
    ing = Ingestor(url)
    try:
        ing.deliver([(m, 85.0 if m < 10 else 60.0) for m in range(180)])
        raw = [a for a in _alerts(engine) if a[0] == 1]  # noise-raw
        assert [(a[3], a[6]) for a in raw] == [(T0, "resolved")]
        before = _alerts(engine)
        # half minutes 30.5-39.5 above the tiers: 2 h 20 min behind the watermark (minute 179)
        ing.deliver([(m + 0.5, 85.0) for m in range(30, 40)])
        assert _alerts(engine) == before
        with engine.connect() as conn:
            stored = conn.execute(select(func.count()).select_from(table(Reading))).scalar_one()
        assert stored == 190
    finally:
        ing.close()


def test_the_issue_example_late_early_episode_gives_two_alerts(engine: Engine) -> None:
    """Minutes 0-3 above, 4-8 below, 20-23 above: two alerts, also when 20-23 arrive first."""
    url = engine.url.render_as_string(hide_password=False)
    early = [(m, 85.0) for m in range(4)] + [(m, 60.0) for m in range(4, 9)]
    late = [(m, 85.0) for m in range(20, 24)]
    ing = Ingestor(url)
    ing.deliver(late)
    ing.deliver(early)
    ing.close()
    raw = [a for a in _alerts(engine) if a[0] == 1]
    assert [(a[3], a[6]) for a in raw] == [
        (T0, "resolved"),
        (T0 + 20 * MIN, "firing"),
    ]


def test_reevaluate_recomputes_stored_readings_and_a_second_run_changes_nothing(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from ingest.repository import insert_readings
    from ingest.validate import Row
    from monitor.cli import main

    url = engine.url.render_as_string(hide_password=False)
    minutes = [(m, 85.0 if m % 20 < 6 else 60.0) for m in range(50)]
    ing = Ingestor(url)
    for m in minutes:
        ing.deliver([m])
    ing.close()
    expected = _alerts(engine)
    assert expected
    _empty(engine)
    with engine.begin() as conn:  # stored, never evaluated (e.g. before a rule existed)
        insert_readings(
            conn, [Row(DEVICE, "noise", T0 + m * MIN, v, "N", T0 + m * MIN) for m, v in minutes]
        )
    monkeypatch.setenv("ENVMON_DATABASE_URL", url)
    runner = CliRunner()
    since = (T0 - timedelta(hours=1)).isoformat()
    first = runner.invoke(main, ["reevaluate", "--since", since, "--device", DEVICE])
    assert first.exit_code == 0, first.output
    assert _alerts(engine) == expected
    again = runner.invoke(main, ["reevaluate", "--since", since])
    assert again.exit_code == 0, again.output
    assert "already matched" in again.output
    assert _alerts(engine) == expected


def test_an_inspectors_resolve_racing_the_evaluator_is_never_lost_or_doubled(
    pg_url: str,
) -> None:
    """An inspector resolves a firing alert while an ingestor stores readings that resolve it
    too (and more violations after): whoever comes second sees the first one's change. The
    alert is resolved once, by one of them, with one notification; a later violation opens a
    new alert instead of reviving the resolved one."""
    from alerts import service
    from monitor.core.exceptions import Conflict
    from monitor.core.models import AlertEvent, Notification

    engine = make_engine(pg_url)
    register(engine, devices={DEVICE: "dust_monitor"}, rules=False)
    with engine.begin() as conn:
        conn.execute(insert(table(Rule)).values(RULES[0].model_dump()))
    events, notes, alerts_t = table(AlertEvent), table(Notification), table(Alert)
    errors: list[BaseException] = []
    outcome: dict[str, str] = {}
    try:
        for round_ in range(8):
            errors.clear()
            outcome.clear()
            _empty(engine)
            ing = Ingestor(pg_url)
            ing.deliver([(m, 85.0) for m in range(5)])  # firing from minute 2
            with engine.connect() as conn:
                alert_id = conn.execute(select(alerts_t.c.id)).scalar_one()
            barrier = threading.Barrier(2)

            def inspector(alert_id: int = alert_id, barrier: threading.Barrier = barrier) -> None:
                try:
                    barrier.wait(10)
                    with engine.begin() as conn:
                        service.resolve(conn, alert_id, "inspector:wang", "site visited")
                    outcome["inspector"] = "resolved"
                except Conflict:
                    outcome["inspector"] = "409"
                except BaseException as exc:
                    errors.append(exc)

            def evaluator(
                ing: Ingestor = ing, barrier: threading.Barrier = barrier, round_: int = round_
            ) -> None:
                try:
                    barrier.wait(10)
                    # clear for the quiet period, then (in odd rounds) violate again
                    later = [(m, 60.0) for m in range(5, 10)]
                    if round_ % 2:
                        later += [(m, 85.0) for m in range(10, 14)]
                    ing.deliver(later)
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=inspector), threading.Thread(target=evaluator)]
            for th in threads:
                th.start()
            for th in threads:
                th.join(60)
            ing.close()
            assert not errors, errors
            with engine.connect() as conn:
                first = conn.execute(select(alerts_t).where(alerts_t.c.id == alert_id)).one()
                resolved = conn.execute(
                    select(events.c.actor).where(
                        events.c.alert_id == alert_id, events.c.kind == "resolved"
                    )
                ).all()
                paged = conn.execute(
                    select(notes.c.id)
                    .join(events, events.c.id == notes.c.event_id)
                    .where(events.c.alert_id == alert_id, events.c.kind == "resolved")
                ).all()
                others = conn.execute(select(alerts_t).where(alerts_t.c.id != alert_id)).all()
            assert first.status == "resolved"
            assert len(resolved) == 1 and len(paged) == 1, (round_, outcome, resolved)
            by_person = outcome["inspector"] == "resolved"
            assert (resolved[0].actor == "inspector:wang") == by_person
            assert first.resolved_by == resolved[0].actor
            # the violation after the resolve is a new alert, never the resolved one again
            assert len(others) == (round_ % 2), (round_, outcome, others)
    finally:
        engine.dispose()
