"""Pure rule evaluation over an event-time series: no database, no clock.

`evaluate` answers, for each reading time, which tier is violated and which tier has held
long enough ("for") to fire. The evaluator feeds it readings from the database and turns its
answers into alert changes.
"""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, NamedTuple, Protocol

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


# Kept state holds a dozen (rule, device) pairs per device, each with a few durations and a
# window: at 10,000 HJ 212 loggers that is the gateway's memory (docs/benchmarks.md), so the
# pieces that are the same for every pair of a rule are one object (see also `Window`).


@lru_cache(maxsize=4096)
def seconds(n: float) -> timedelta:
    """`timedelta(seconds=n)`, one object per length (timedeltas are immutable)."""
    return timedelta(seconds=n)


@lru_cache(maxsize=4096)
def window_of(window_s: int) -> tuple[timedelta, timedelta]:
    """A window's length and the span `MIN_COVERAGE` asks of it (one object each per length,
    held by every pair of the rule)."""
    return seconds(window_s), seconds(window_s) * MIN_COVERAGE


@lru_cache(maxsize=4096)
def shared(*values: Any) -> tuple[Any, ...]:
    """The tuple of `values`, one object per content (a rule's limits, read by every pair)."""
    return values


class Window:
    """Points in time order, dropped oldest first: their instants in a list and their values
    in an array of doubles, from index `head` on, compacted when half is dropped (O(1)
    amortised). About 64 bytes a point (the datetime and two slots) where a deque of
    `Point`s holds about 140 and a 64-slot block (~600 bytes) from its first point on; the
    rolling kinds are windows themselves, one object less per (rule, device). Their `feed`s
    are inlined: they run for every reading of every rule's metric."""

    __slots__ = ("head", "times", "values")

    def __init__(self) -> None:
        self.times: list[datetime] = []
        self.values = array("d")
        self.head = 0

    def __len__(self) -> int:
        return len(self.times) - self.head

    def append(self, p: Point) -> None:
        self.times.append(p.ts)
        self.values.append(p.value)

    def points(self) -> list[Point]:
        head = self.head
        return [Point(t, v) for t, v in zip(self.times[head:], self.values[head:], strict=True)]

    def drop_through(self, cut: datetime, total: float = 0.0) -> float:
        """Drop the points at or before `cut`, oldest first; `total` less the values dropped,
        subtracted one at a time (a running sum is kept the way it was built)."""
        times, values, head = self.times, self.values, self.head
        while len(times) - head > 0 and times[head] <= cut:
            total -= values[head]
            head += 1
        self.head = self._compacted(head)
        return total

    def _compacted(self, head: int) -> int:
        times = self.times
        if head and head == len(times):
            del times[:], self.values[:]
            return 0
        if head >= 32 and 2 * head >= len(times):
            del times[:head], self.values[:head]
            return 0
        return head


class Timed(Protocol):
    @property
    def ts(self) -> datetime: ...


class Feeder(Protocol):
    """A rule kind's state between readings: items in (readings, or one instant's flags), in
    event-time order, one step out per item (None: no step yet, e.g. a window not full)."""

    def feed(self, item: Any) -> Step | None: ...


class Step(NamedTuple):
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


class RollingMean(Window):
    """The mean over (t - window, t] at each reading time t, folded one reading at a time:
    a value only when the window holds `min_samples` readings spanning `MIN_COVERAGE` of it."""

    __slots__ = ("spec", "total")

    def __init__(self, window_s: int, min_samples: int) -> None:
        super().__init__()
        # (window, the span it must cover, min_samples): one tuple for every pair of a rule
        self.spec = shared(*window_of(window_s), min_samples)
        self.total = 0.0

    def feed(self, p: Point) -> Point | None:
        times, values = self.times, self.values
        t = p.ts
        times.append(t)
        values.append(p.value)
        total = self.total + p.value
        head = self.head
        window, covered, min_samples = self.spec
        cut = t - window
        while times[head] <= cut:  # (the new point is never dropped: window > 0)
            total -= values[head]
            head += 1
        self.head = head = self._compacted(head) if head >= 32 else head
        self.total = total
        n = len(times) - head
        if n >= min_samples and t - times[head] >= covered:
            return Point(t, total / n)
        return None


def _tier(
    tiers: tuple[float | None, float | None, float | None, float | None, bool], value: float
) -> Severity | None:
    """`level_of` on limits read beforehand."""
    alarm_above, alarm_below, warn_above, warn_below, inclusive = tiers
    if _violates(value, alarm_above, alarm_below, inclusive):
        return Severity.alarm
    if _violates(value, warn_above, warn_below, inclusive):
        return Severity.warning
    return None


def evaluated_values(rule: Thresholds, points: Sequence[Point]) -> list[Point]:
    """The value the rule judges at each reading time: raw, or the mean over (t - window, t]
    when the window holds `min_samples` readings spanning `MIN_COVERAGE` of it."""
    if rule.aggregate != "mean":
        return list(points)
    mean = RollingMean(rule.window_s, rule.min_samples)
    return [v for p in points if (v := mean.feed(p)) is not None]


def evaluate(
    rule: Thresholds, points: Sequence[Point], max_gap: timedelta | None = None
) -> list[Step]:
    """Steps for points sorted by event time (only readings flagged N belong here)."""
    return steps_of(rule, evaluated_values(rule, points), max_gap)


class Runs:
    """Tiers and "for" runs over derived values, folded one value at a time (see `steps_of`).
    The rule kinds' feeders are runs themselves (one object less per kept (rule, device));
    what every pair of a rule reads the same (the hold, the gap, the limits) is one shared
    tuple, `spec`."""

    __slots__ = ("alarm", "previous", "spec", "warning")

    def __init__(
        self,
        rule: Thresholds,
        max_gap: timedelta | None = None,
        level: Callable[[Point], Severity | None] | None = None,
    ) -> None:
        # the rule's limits, read once (a rule row's attributes are slow to read per value)
        tiers = shared(
            rule.alarm_above,
            rule.alarm_below,
            rule.warn_above,
            rule.warn_below,
            getattr(rule, "kind", None) == "rate_of_change",
        )
        spec = (seconds(rule.for_s), max_gap, level, tiers)
        self.spec = shared(*spec) if level is None else spec
        # where the current run of each tier began (None: not violated now)
        self.warning: datetime | None = None
        self.alarm: datetime | None = None
        self.previous: datetime | None = None

    def step(self, p: Point) -> Step:
        hold, max_gap, level, tiers = self.spec
        if max_gap is not None and self.previous is not None and p.ts - self.previous > max_gap:
            self.warning = self.alarm = None
        self.previous = p.ts
        tier_now = _tier(tiers, p.value) if level is None else level(p)
        rank = RANK[tier_now]
        held: Severity | None = None
        since: datetime | None = None
        if rank >= 1:
            self.warning = self.warning or p.ts
            if p.ts - self.warning >= hold:
                held, since = Severity.warning, self.warning
        else:
            self.warning = None
        if rank >= 2:
            self.alarm = self.alarm or p.ts
            if p.ts - self.alarm >= hold:
                held, since = Severity.alarm, self.alarm
        else:
            self.alarm = None
        return Step(p.ts, p.value, tier_now, held, since)


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
    runs = Runs(rule, max_gap, level)
    return [runs.step(p) for p in values]


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


class Changes(Window):
    """Value now minus the value `window_s` earlier, folded one reading at a time: the
    earlier value is the latest reading at or before t - window, and counts only when it is
    no older than one more window (so a change is never measured across a silence, and
    the value at t does not depend on how far back anyone read)."""

    __slots__ = ("window",)

    def __init__(self, window_s: int) -> None:
        super().__init__()
        self.window = seconds(window_s)

    def feed(self, p: Point) -> Point | None:
        times = self.times
        t = p.ts
        times.append(t)
        self.values.append(p.value)
        cut = t - self.window
        head, last = self.head, len(times) - 1
        while head < last and times[head + 1] <= cut:
            head += 1
        self.head = head = self._compacted(head) if head >= 32 else head
        if cut - self.window <= times[head] <= cut:
            # rounded: 0.30 - 0.25 is -0.04999999999999999 in binary floating point
            return Point(t, round(p.value - self.values[head], 9))
        return None


def changes(points: Sequence[Point], window_s: int) -> list[Point]:
    """Value now minus the value `window_s` earlier (see `Changes`); no value until the
    series reaches back that far."""
    c = Changes(window_s)
    return [v for p in points if (v := c.feed(p)) is not None]


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


class EpisodeFold:
    """The alert lifecycle folded one step at a time (see `episodes`): `cur` is the episode in
    progress, and `feed` returns an episode when a step ends it (resolved)."""

    __slots__ = ("cur", "rule", "spec")

    def __init__(
        self,
        rule: Thresholds,
        *,
        clear_above: float | None,
        clear_below: float | None,
        quiet_s: int,
        auto_resolve: bool,
    ) -> None:
        self.rule = rule
        # (clear_above, clear_below, quiet, auto_resolve): one tuple for every pair of a rule
        self.spec = shared(clear_above, clear_below, seconds(quiet_s), auto_resolve)
        self.cur: Episode | None = None

    def feed(self, s: Step) -> Episode | None:
        cur = self.cur
        rule = self.rule
        if cur is None:
            if s.level is None:
                return None
            cur = self.cur = Episode(
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
            return None
        cur.until = s.ts
        if cur.fired_at is None:  # pending
            if s.level is None:
                self.cur = None  # cleared before its "for" was met: nothing was said
                return None
            cur.violations += 1
            cur.last_violation_at, cur.last_value = s.ts, s.value
            cur.peak = more_extreme(rule, cur.peak, s.value)
            cur.severity = (
                s.held or s.level if RANK[s.held or s.level] > RANK[cur.severity] else cur.severity
            )
            if s.held is not None:
                cur.fired_at = s.ts
                cur.severity = s.held
            return None
        if s.level is not None:
            cur.violations += 1
            cur.last_violation_at, cur.last_value = s.ts, s.value
            cur.peak = more_extreme(rule, cur.peak, s.value)
            cur.clear_since = None
        if s.held is not None and RANK[s.held] > RANK[cur.severity]:
            cur.severity = s.held
            cur.escalations.append((s.ts, s.held, s.value))
        clear_above, clear_below, quiet, auto_resolve = self.spec
        if auto_resolve and cleared(rule, s.value, clear_above, clear_below):
            cur.clear_since = cur.clear_since or s.ts
            if s.ts - cur.clear_since >= quiet:
                cur.resolved_at = s.ts
                cur.last_value = s.value
                self.cur = None
                return cur
        elif s.level is None:
            cur.clear_since = None  # inside the limits, not yet past the clearing line
        return None


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
    fold = EpisodeFold(
        rule,
        clear_above=clear_above,
        clear_below=clear_below,
        quiet_s=quiet_s,
        auto_resolve=auto_resolve,
    )
    out = [e for s in steps if (e := fold.feed(s)) is not None]
    if fold.cur is not None:
        out.append(fold.cur)
    return out
