"""Pure rule evaluation over an event-time series: no database, no clock.

`evaluate` answers, for each reading time, which tier is violated and which tier has held
long enough ("for") to fire. The evaluator feeds it readings from the database and turns its
answers into alert changes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple, Protocol

from monitor.core.models import Severity

RANK = {None: 0, Severity.warning: 1, Severity.alarm: 2}

# A window mean counts only when its readings span at least this share of the window, so a
# 24-hour mean is not judged from the first hour of data (HJ 212-2017 C.20-22 75% rule [C]).
MIN_COVERAGE = 0.75


class Thresholds(Protocol):
    @property
    def warn_above(self) -> float | None: ...
    @property
    def warn_below(self) -> float | None: ...
    @property
    def alarm_above(self) -> float | None: ...
    @property
    def alarm_below(self) -> float | None: ...
    @property
    def aggregate(self) -> str: ...
    @property
    def window_s(self) -> int: ...
    @property
    def min_samples(self) -> int: ...
    @property
    def for_s(self) -> int: ...


class Point(NamedTuple):
    ts: datetime
    value: float


@dataclass(frozen=True, slots=True)
class Step:
    ts: datetime
    value: float  # the evaluated value: raw, or the window mean
    level: Severity | None  # tier violated at this instant
    held: Severity | None  # highest tier violated continuously for at least for_s
    since: datetime | None  # start of the run that makes `held` hold


def _violates(value: float, above: float | None, below: float | None) -> bool:
    return (above is not None and value > above) or (below is not None and value < below)


def level_of(rule: Thresholds, value: float) -> Severity | None:
    if _violates(value, rule.alarm_above, rule.alarm_below):
        return Severity.alarm
    if _violates(value, rule.warn_above, rule.warn_below):
        return Severity.warning
    return None


def evaluated_values(rule: Thresholds, points: Sequence[Point]) -> list[Point]:
    """The value the rule judges at each reading time: raw, or the mean over (t - window, t]
    when the window holds `min_samples` readings spanning `MIN_COVERAGE` of it."""
    if rule.aggregate != "mean":
        return list(points)
    window = timedelta(seconds=rule.window_s)
    out: list[Point] = []
    win: deque[Point] = deque()
    total = 0.0
    for p in points:
        win.append(p)
        total += p.value
        while win[0].ts <= p.ts - window:
            total -= win.popleft().value
        if len(win) >= rule.min_samples and p.ts - win[0].ts >= window * MIN_COVERAGE:
            out.append(Point(p.ts, total / len(win)))
    return out


def evaluate(rule: Thresholds, points: Sequence[Point]) -> list[Step]:
    """Steps for points sorted by event time (only readings flagged N belong here)."""
    hold = timedelta(seconds=rule.for_s)
    run_start: dict[Severity, datetime | None] = {Severity.warning: None, Severity.alarm: None}
    steps: list[Step] = []
    for p in evaluated_values(rule, points):
        level = level_of(rule, p.value)
        held: Severity | None = None
        since: datetime | None = None
        for tier in (Severity.warning, Severity.alarm):
            if RANK[level] >= RANK[tier]:
                start = run_start[tier] or p.ts
                run_start[tier] = start
                if p.ts - start >= hold:
                    held, since = tier, start
            else:
                run_start[tier] = None
        steps.append(Step(p.ts, p.value, level, held, since))
    return steps


def more_extreme(rule: Thresholds, a: float, b: float) -> float:
    """The worse of two values for this rule (higher for upper limits, lower for lower)."""
    if rule.alarm_above is None and rule.warn_above is None:
        return min(a, b)
    if rule.alarm_below is None and rule.warn_below is None:
        return max(a, b)
    lo = rule.alarm_below if rule.alarm_below is not None else rule.warn_below
    hi = rule.alarm_above if rule.alarm_above is not None else rule.warn_above
    mid = ((lo or 0.0) + (hi or 0.0)) / 2
    return a if abs(a - mid) >= abs(b - mid) else b
