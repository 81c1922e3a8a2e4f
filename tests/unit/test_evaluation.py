"""Rule evaluation over event time, without a database."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from alerts.evaluation import (
    Point,
    Window,
    evaluate,
    hourly_window_means,
    level_of,
    more_extreme,
)
from alerts.kinds import _Hours
from alerts.packs import load_packs
from alerts.schemas import RuleSpec
from monitor.core.models import Severity

T0 = datetime(2026, 11, 25, 0, 0, tzinfo=UTC)


def rule(**kw: object) -> RuleSpec:
    base: dict[str, object] = {
        "name": "r",
        "device_kind": "dust_monitor",
        "metric": "pm10",
        "basis": "test",
    }
    return RuleSpec.model_validate(base | kw)


def series(values: Sequence[float], step_s: int = 60) -> list[Point]:
    return [Point(T0 + timedelta(seconds=i * step_s), v) for i, v in enumerate(values)]


def test_tiers_above_and_below_and_band() -> None:
    up = rule(warn_above=150, alarm_above=250)
    assert [level_of(up, v) for v in (100, 150.1, 251)] == [None, Severity.warning, Severity.alarm]
    ph = rule(
        device_kind="water_quality",
        metric="ph",
        warn_below=6.8,
        warn_above=8.2,
        alarm_below=6.5,
        alarm_above=8.5,
    )
    assert [level_of(ph, v) for v in (7.2, 6.7, 8.3, 6.4, 8.6)] == [
        None,
        Severity.warning,
        Severity.warning,
        Severity.alarm,
        Severity.alarm,
    ]


def test_for_duration_must_hold_continuously() -> None:
    r = rule(warn_above=100, for_s=300)
    steps = evaluate(r, series([150, 150, 150, 50, 150, 150, 150, 150, 150, 150]))
    held = [s.held for s in steps]
    # the run broken at minute 3 restarts at minute 4 and has held 5 minutes at minute 9
    assert held[:9] == [None] * 9
    assert held[9] == Severity.warning
    assert steps[9].since == T0 + timedelta(minutes=4)


def test_alarm_needs_its_own_for_duration() -> None:
    r = rule(warn_above=100, alarm_above=200, for_s=120)
    steps = evaluate(r, series([150, 150, 150, 250, 250, 250]))
    assert [s.held for s in steps] == [
        None,
        None,
        Severity.warning,
        Severity.warning,
        Severity.warning,
        Severity.alarm,
    ]


def test_window_mean_is_not_judged_before_the_window_is_covered() -> None:
    r = rule(aggregate="mean", window_s=3600, warn_above=150, alarm_above=250, min_samples=6)
    steps = evaluate(r, series([400] * 90))
    # 75% of an hour at one reading a minute: the first verdict comes at minute 45
    assert steps[0].ts == T0 + timedelta(minutes=45)
    assert all(s.level == Severity.alarm for s in steps)


def test_window_mean_follows_a_falling_value() -> None:
    r = rule(aggregate="mean", window_s=600, warn_above=150, min_samples=1)
    steps = evaluate(r, series([300] * 10 + [0] * 10))
    by_minute = {int((s.ts - T0).total_seconds() // 60): s for s in steps}
    assert by_minute[9].value == pytest.approx(300)
    assert by_minute[14].value == pytest.approx(150)  # minutes 5..14: half 300, half 0
    assert by_minute[14].level is None and by_minute[13].level == Severity.warning


def test_more_extreme_depends_on_direction() -> None:
    assert more_extreme(rule(warn_above=1), 3, 5) == 5
    low = rule(device_kind="leak_meter", metric="pressure", warn_below=0.16)
    assert more_extreme(low, 0.1, 0.05) == 0.05


def test_rule_spec_errors_name_the_field() -> None:
    with pytest.raises(ValidationError, match="metric"):
        rule(metric="turbidity", warn_above=1)
    with pytest.raises(ValidationError, match="alarm_above"):
        rule(warn_above=300, alarm_above=200)
    with pytest.raises(ValidationError, match="window_s"):
        rule(aggregate="mean", warn_above=1)
    with pytest.raises(ValidationError, match="at least one"):
        rule()


def test_default_packs_cover_every_domain_and_cite_a_basis() -> None:
    packs = {p.pack: p for p in load_packs()}
    assert set(packs) == {
        "dust",
        "drinking_water",
        "surface_water",
        "black_odorous",
        "supply_network",
    }
    names = [r.name for p in packs.values() for r in p.rules]
    assert len(names) == len(set(names))
    for p in packs.values():
        for r in p.rules:
            assert r.basis.strip(), r.name
    turbidity = next(r for r in packs["drinking_water"].rules if r.metric == "turbidity")
    assert turbidity.alarm_above == 1.0 and "GB 5749-2022" in turbidity.basis


def test_hourly_window_mean_needs_min_hours_and_waits_for_the_hour_to_be_over() -> None:
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    hours = [Point(t0 + timedelta(hours=h), v) for h, v in enumerate([400, 100, 100, 100], 1)]
    # a 3-hour window with at least 2 hourly means; the 4th hour is not over yet
    got = hourly_window_means(hours, 3 * 3600, 2, complete_until=t0 + timedelta(hours=3.5))
    assert got == [Point(t0 + timedelta(hours=2), 250.0), Point(t0 + timedelta(hours=3), 200.0)]
    # once it is, the 400 has left the window: (100 + 100 + 100) / 3
    got = hourly_window_means(hours, 3 * 3600, 2, complete_until=t0 + timedelta(hours=4))
    assert got[-1] == Point(t0 + timedelta(hours=4), 100.0)


@pytest.mark.parametrize(
    ("window_s", "min_samples", "field"),
    [(5400, 1, "window_s"), (1800, 1, "window_s"), (7200, 3, "min_samples")],
)
def test_hourly_mean_rules_count_whole_hours(window_s: int, min_samples: int, field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        RuleSpec(
            name="x",
            device_kind="dust_monitor",
            metric="pm10",
            aggregate="hourly_mean",
            window_s=window_s,
            min_samples=min_samples,
            alarm_above=150,
            basis="test",
        )


@given(
    st.lists(
        st.tuples(st.integers(0, 600), st.integers(0, 900)),
        max_size=300,
    )
)
def test_a_window_drops_as_a_deque_does(ops: list[tuple[int, int]]) -> None:
    """The kept state's `Window` (a list, an array and a head, compacted) against a deque of Points
    doing the same: any appends in time order and any cuts leave the same points and the
    same running sum, subtracted in the same order."""
    win, model = Window(), deque[Point]()
    total = model_total = 0.0
    t = T0
    for step_s, cut_s in ops:
        t += timedelta(seconds=step_s, microseconds=cut_s)  # time order, not always whole s
        p = Point(t, step_s / 7)
        win.append(p)
        model.append(p)
        total += p.value
        model_total += p.value
        cut = t - timedelta(seconds=cut_s)
        total = win.drop_through(cut, total)
        while model and model[0].ts <= cut:
            model_total -= model.popleft().value
        assert win.points() == list(model) and len(win) == len(model)
        assert total == model_total
    assert len(win.times) == len(win.values) <= 2 * len(model) + 32  # compacted as it goes


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("add"), st.lists(st.integers(0, 6 * 3600), max_size=8)),
            st.tuples(st.just("over"), st.integers(0, 7 * 3600)),
        ),
        max_size=40,
    )
)
def test_kept_hours_add_and_close_as_a_dict_of_hours_does(
    ops: list[tuple[str, Any]],
) -> None:
    """The hourly kinds' kept hours (`_Hours`: one flat tuple of (start, count, sum), in
    order) against a dict of [count, sum] by hour start doing the same: any batches of
    readings in any hours, and any closings, give the same hours closed, in the same order,
    with the same sums, and leave the same hours open."""
    hours = _Hours(cast(Any, rule(alarm_above=150)))  # (a rule row's attributes suffice)
    model: dict[datetime, list[float]] = {}
    newest: datetime | None = None
    for op, arg in ops:
        if op == "add":
            points = [Point(T0 + timedelta(seconds=s), s / 7) for s in arg]
            hours.add(points)
            part: dict[datetime, list[float]] = {}  # (a batch's part of an hour, then added)
            for p in points:
                h = p.ts.replace(minute=0, second=0, microsecond=0)
                got = part.setdefault(h, [0, 0.0])
                got[0] += 1
                got[1] += p.value
                newest = h if newest is None or h > newest else newest
            for h, (count, total) in part.items():
                got = model.setdefault(h, [0, 0.0])
                got[0] += count
                got[1] += total
        else:
            until = T0 + timedelta(seconds=arg)
            expected = [
                (h + timedelta(hours=1), *model.pop(h))
                for h in sorted(h for h in model if h + timedelta(hours=1) <= until)
            ]
            assert list(hours.over(until)) == expected
        flat = hours.open
        assert {flat[i]: [flat[i + 1], flat[i + 2]] for i in range(0, len(flat), 3)} == model
        assert list(flat[::3]) == sorted(model)
        assert hours.newest_hour == newest
