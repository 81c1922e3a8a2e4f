"""Pure rule evaluation over an event-time series: no database, no clock.

`evaluate` answers, for each reading time, which tier is violated and which tier has held
long enough ("for") to fire. The evaluator feeds it readings from the database and turns its
answers into alert changes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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


def _violates(
    value: float, above: float | None, below: float | None, inclusive: bool = False
) -> bool:
    if inclusive:  # "a drop of 0.05 MPa or more"
        return (above is not None and value >= above) or (below is not None and value <= below)
    return (above is not None and value > above) or (below is not None and value < below)


def level_of(rule: Thresholds, value: float) -> Severity | None:
    """The tier a value violates. Limits are exclusive ("<= 1 NTU" is violated above 1), but
    for a rate of change they are inclusive ("a drop of 0.05 MPa or more")."""
    inclusive = getattr(rule, "kind", None) == "rate_of_change"
    if _violates(value, rule.alarm_above, rule.alarm_below, inclusive):
        return Severity.alarm
    if _violates(value, rule.warn_above, rule.warn_below, inclusive):
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


def evaluate(
    rule: Thresholds, points: Sequence[Point], max_gap: timedelta | None = None
) -> list[Step]:
    """Steps for points sorted by event time (only readings flagged N belong here)."""
    return steps_of(rule, evaluated_values(rule, points), max_gap)


def steps_of(
    rule: Thresholds,
    values: Sequence[Point],
    max_gap: timedelta | None = None,
    level: Callable[[Point], Severity | None] | None = None,
) -> list[Step]:
    """Tiers and "for" runs over already-derived values (a mean, a change, a count ...).

    A run holds only on evidence: where two values are more than `max_gap` apart, nothing is
    known in between, so the run starts again. (Otherwise two violating readings with the
    readings between them still on their way would "hold" for the whole gap, and the late
    readings could show that it never did.)

    `level` says the tier a value violates where the rule's tiers alone do not (a DMA's
    rules also ask for an absolute excess); by default `level_of`."""
    hold = timedelta(seconds=rule.for_s)
    run_start: dict[Severity, datetime | None] = {Severity.warning: None, Severity.alarm: None}
    steps: list[Step] = []
    previous: datetime | None = None
    for p in values:
        if max_gap is not None and previous is not None and p.ts - previous > max_gap:
            run_start = {Severity.warning: None, Severity.alarm: None}
        previous = p.ts
        tier_now = level_of(rule, p.value) if level is None else level(p)
        held: Severity | None = None
        since: datetime | None = None
        for tier in (Severity.warning, Severity.alarm):
            if RANK[tier_now] >= RANK[tier]:
                start = run_start[tier] or p.ts
                run_start[tier] = start
                if p.ts - start >= hold:
                    held, since = tier, start
            else:
                run_start[tier] = None
        steps.append(Step(p.ts, p.value, tier_now, held, since))
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


def changes(points: Sequence[Point], window_s: int) -> list[Point]:
    """Value now minus the value `window_s` earlier (the latest reading at or before then);
    no value until the series reaches back that far."""
    window = timedelta(seconds=window_s)
    out: list[Point] = []
    j = -1
    for p in points:
        while j + 1 < len(points) and points[j + 1].ts <= p.ts - window:
            j += 1
        if j >= 0:
            # rounded: 0.30 - 0.25 is -0.04999999999999999 in binary floating point
            out.append(Point(p.ts, round(p.value - points[j].value, 9)))
    return out


class FlaggedPoint(NamedTuple):
    ts: datetime
    quality: str


def flag_runs(points: Sequence[FlaggedPoint], flags: frozenset[str]) -> list[Point]:
    """Minutes the current run of readings flagged with one of `flags` has lasted, at each
    reading (0 when the reading is not so flagged)."""
    out: list[Point] = []
    start: datetime | None = None
    for p in points:
        if p.quality in flags:
            start = start or p.ts
            out.append(Point(p.ts, (p.ts - start).total_seconds() / 60))
        else:
            start = None
            out.append(Point(p.ts, 0.0))
    return out


def exceeding_hours_per_day(
    hourly: Sequence[Point], above: float, day_of: Callable[[datetime], object]
) -> list[Point]:
    """For hourly means stamped at the end of their hour: how many hours of the same local
    day so far had a mean above `above`."""
    out: list[Point] = []
    day: object = None
    count = 0
    for p in hourly:
        d = day_of(p.ts - timedelta(seconds=1))  # an hour ending at midnight is yesterday's
        if d != day:
            day, count = d, 0
        if p.value > above:
            count += 1
        out.append(Point(p.ts, float(count)))
    return out


def differences(
    site: Sequence[Point], reference: dict[datetime, float], cap: float | None
) -> list[Point]:
    """Hourly site mean minus the same hour's reference mean (capped, as the difference-method
    dust standards do: DB13/2934-2019 caps the county mean at 150 µg/m³). Hours without a
    reference value are not judged."""
    out: list[Point] = []
    for p in site:
        ref = reference.get(p.ts)
        if ref is None:
            continue
        out.append(Point(p.ts, p.value - (min(ref, cap) if cap is not None else ref)))
    return out


def in_window(local_hhmm: str, start: str | None, end: str | None) -> bool:
    """Whether a local "HH:MM" falls in [start, end); a window may wrap midnight."""
    if start is None or end is None:
        return True
    if start <= end:
        return start <= local_hhmm < end
    return local_hhmm >= start or local_hhmm < end


def cleared(
    rule: Thresholds, value: float, clear_above: float | None, clear_below: float | None
) -> bool:
    """Back within limits, and past the clearing thresholds where the rule has them
    (hysteresis: a value hovering at the limit does not open and close alerts)."""
    if level_of(rule, value) is not None:
        return False
    if clear_above is not None and value > clear_above:
        return False
    return not (clear_below is not None and value < clear_below)


def period_means(
    points: Sequence[Point],
    period_s: int,
    expected: float,
    period_of: Callable[[datetime], datetime],
    until: datetime,
) -> list[Point]:
    """Calendar-period means (15 min, hour, day in the city's time zone), stamped at the end
    of their period, for complete periods (ending by `until`) that are valid: at least 75% of
    the `expected` samples present (only N-flagged readings are passed in)."""
    sums: dict[datetime, list[float]] = {}
    for p in points:
        acc = sums.setdefault(period_of(p.ts), [0, 0.0])
        acc[0] += 1
        acc[1] += p.value
    out = []
    for start in sorted(sums):
        end = start + timedelta(seconds=period_s)
        count, total = sums[start]
        if end <= until and count >= MIN_COVERAGE * expected:
            out.append(Point(end, total / count))
    return out


def hourly_window_means(
    hours: Sequence[Point], window_s: int, min_hours: int, complete_until: datetime
) -> list[Point]:
    """At the end of each complete hour, the mean of the valid hourly means that ended in
    (t - window, t], when there are at least `min_hours` of them (GB 3095-2012: a 24-hour PM
    mean needs at least 20 hourly values [U]). `hours` are valid hourly means stamped at
    their hour's end, in time order; those ending after `complete_until` are not over yet
    (by the device's data) and are left for a later pass."""
    window = timedelta(seconds=window_s)
    out: list[Point] = []
    win: deque[Point] = deque()
    total = 0.0
    for p in hours:
        if p.ts > complete_until:
            break
        win.append(p)
        total += p.value
        while win[0].ts <= p.ts - window:
            total -= win.popleft().value
        if len(win) >= min_hours:
            out.append(Point(p.ts, total / len(win)))
    return out


@dataclass(slots=True)
class Episode:
    """One alert's worth of steps: from the first violation to its resolution (or now)."""

    started_at: datetime
    severity: Severity
    first_value: float
    peak: float
    last_value: float
    last_violation_at: datetime
    violations: int = 1
    fired_at: datetime | None = None  # None: still pending (its "for" not met yet)
    clear_since: datetime | None = None
    resolved_at: datetime | None = None  # event time of the step that resolved it
    until: datetime | None = None  # the last step folded in
    escalations: list[tuple[datetime, Severity, float]] = field(default_factory=list)


def episodes(
    rule: Thresholds,
    steps: Sequence[Step],
    *,
    clear_above: float | None,
    clear_below: float | None,
    quiet_s: int,
    auto_resolve: bool,
) -> list[Episode]:
    """The alert lifecycle over a step series, as a pure function of it: the same steps give
    the same episodes whatever order the readings arrived in. A pending episode that clears
    before its "for" is met leaves nothing."""
    out: list[Episode] = []
    cur: Episode | None = None
    quiet = timedelta(seconds=quiet_s)
    for s in steps:
        if cur is None:
            if s.level is None:
                continue
            cur = Episode(
                started_at=s.since or s.ts,
                severity=s.held or s.level,
                first_value=s.value,
                peak=s.value,
                last_value=s.value,
                last_violation_at=s.ts,
                until=s.ts,
            )
            if s.held is not None:
                cur.fired_at = s.ts
            continue
        cur.until = s.ts
        if cur.fired_at is None:  # pending
            if s.level is None:
                cur = None
                continue
            cur.violations += 1
            cur.last_violation_at, cur.last_value = s.ts, s.value
            cur.peak = more_extreme(rule, cur.peak, s.value)
            cur.severity = (
                s.held or s.level if RANK[s.held or s.level] > RANK[cur.severity] else cur.severity
            )
            if s.held is not None:
                cur.fired_at = s.ts
                cur.severity = s.held
            continue
        if s.level is not None:
            cur.violations += 1
            cur.last_violation_at, cur.last_value = s.ts, s.value
            cur.peak = more_extreme(rule, cur.peak, s.value)
            cur.clear_since = None
        if s.held is not None and RANK[s.held] > RANK[cur.severity]:
            cur.severity = s.held
            cur.escalations.append((s.ts, s.held, s.value))
        if auto_resolve and cleared(rule, s.value, clear_above, clear_below):
            cur.clear_since = cur.clear_since or s.ts
            if s.ts - cur.clear_since >= quiet:
                cur.resolved_at = s.ts
                cur.last_value = s.value
                out.append(cur)
                cur = None
        elif s.level is None:
            cur.clear_since = None  # inside the limits, not yet past the clearing line
    if cur is not None:
        out.append(cur)
    return out
