"""One class per rule kind: how far back it reads, what it reads, the steps it judges and
how it describes a value (shared/DESIGN.md, "Inside alerts/").

The evaluator plans (which (rule, device) pairs a batch touches), fetches once for all the
rules on a metric (what `raw_key` names, from the start `lookback` gives), asks each rule's
kind for its steps (`series`), and reconciles the episodes of those steps with the stored
alerts. A kind knows nothing of alerts, and the pure functions of `alerts.evaluation` do
the arithmetic. A new kind is one class here, listed in `KINDS`."""

from __future__ import annotations

import math
import statistics
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from itertools import groupby
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, TypeVar, cast
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Row

from alerts import dma, repository
from alerts.evaluation import (
    MIN_COVERAGE,
    RANK,
    Changes,
    Feeder,
    Point,
    RollingMean,
    Runs,
    Step,
    Timed,
    Window,
    differences,
    level_of,
    seconds,
    shared,
    steps_of,
)
from monitor.core.catalogue import METRICS

if TYPE_CHECKING:
    from alerts.incremental import Fresh
from monitor.core.models import Aggregate, RuleKind, Severity

HOUR = timedelta(hours=1)
SLOT = timedelta(seconds=900)  # a DMA's 15-minute slot (alerts/leakage.py SLOT_S)
# a missed reading (no reading for 1.5 reporting intervals) breaks a "for" run (steps_of)
GAP_INTERVALS = 1.5


@dataclass(frozen=True, slots=True)
class Sources:
    """What a kind builds its series from: the batch's connection (for rollups), the devices
    (interval, for gaps and hour validity), the city's time zone (calendar periods and days),
    the raw readings the evaluator fetched for every rule at once, and each device's newest
    event time in the batch where known (else it is looked up); `instants`: one datetime
    object per instant read, for the kept states (a device's metrics come in rows of their
    own, each with its own copy of the time: kept, 48 bytes each, in every window)."""

    conn: Connection
    devices: Mapping[str, Row[Any]]
    tz: ZoneInfo
    fetched: repository.Fetched
    latest: Mapping[str, datetime | None]
    instants: dict[datetime, datetime] = field(default_factory=dict)


class Kind:
    """A rule seen through its kind. The base class is a rule on a measured value with
    `window_s` and `for_s`; subclasses override what differs."""

    kind: ClassVar[RuleKind]
    # a device's readings (most kinds), or a DMA site's figures (DmaKind)
    subject_is_site: ClassVar[bool] = False
    # whether its steps come from a `Feeder` over the N-flagged readings of its metric, so
    # that the evaluator can keep that feeder between batches (alerts/incremental.py)
    incremental: ClassVar[bool] = False
    # whether a device that `worth_reading` leaves out has, for certain, nothing going on,
    # so that its kept state can start empty instead of being read
    starts_empty: ClassVar[bool] = False

    def __init__(self, rule: Row[Any]) -> None:
        self.rule = rule
        self.r = rule._mapping
        self.params: dict[str, Any] = self.r["params"] or {}
        self.metric = str(self.r["metric"])

    # --- what to read ---------------------------------------------------------------------
    def lookback(self) -> timedelta:
        """How far before the earliest new reading the series must start for its first
        judged step to see a whole window."""
        r = self.r
        return timedelta(
            seconds=int(r["window_s"]) + int(r["for_s"]) + int(self.params.get("window_s", 0))
        )

    def fold_from(self, since: datetime, device: Any) -> datetime:
        """Where a pair's fold must start (before `_fold_start` moves it back to an alert
        going on) for a batch whose earliest new reading of it is at `since`."""
        return since - self.lookback()

    def raw_key(self) -> tuple[str, bool] | None:
        """Which raw readings the series is made of: (metric, every quality flag?); None
        for kinds judged on hourly rollups (nothing to fetch for them)."""
        return (self.metric, False)

    def bounded_by_extremes(self) -> bool:
        """Whether every value of the series lies between the smallest and the largest reading
        it is made of: then a device none of whose readings passes a tier has nothing to
        judge (unless an alert is there to reconcile)."""
        return False

    def may_pass(self, extremes: tuple[float, float] | None) -> bool:
        """Whether a value between these (min, max) could pass one of the rule's tiers."""
        if extremes is None:
            return False
        low, high = extremes
        above = [t for t in (self.r["warn_above"], self.r["alarm_above"]) if t is not None]
        below = [t for t in (self.r["warn_below"], self.r["alarm_below"]) if t is not None]
        return (bool(above) and high > min(above)) or (bool(below) and low < max(below))

    def worth_reading(self, conn: Connection, begin: Mapping[str, datetime]) -> set[str] | None:
        """The devices whose series could hold a step worth judging (None: all of them)."""
        return None

    # --- what it judges -------------------------------------------------------------------
    def series(self, src: Sources, starts: Mapping[str, datetime]) -> dict[str, list[Step]]:
        """The rule's steps per device from `starts[device]` on."""
        raise NotImplementedError

    def feeder(self, gap: timedelta) -> Feeder:
        """For an `incremental` kind: the state that turns readings into steps, one at a time
        (`gap`: the silence that breaks a run)."""
        raise NotImplementedError(f"{type(self).__name__} is not incremental")

    def fresh_items(self, fresh: Fresh, device_id: str) -> list[Timed] | None:
        """For an `incremental` kind: what a batch stored of the device, as its feeder takes
        it (None: the batch cannot be folded in, e.g. two readings at one time)."""
        return fresh.points(device_id, self.metric)  # type: ignore[return-value]

    def takes(self, feeder: Any, items: list[Any]) -> bool:
        """For an `incremental` kind: whether the kept feeder can take these new items (they
        are newer than what it folded; a kind may ask more)."""
        return True

    def fold(self, feeder: Any, items: list[Any], device: Row[Any], fresh: Fresh) -> list[Step]:
        """For an `incremental` kind: the steps of a batch's new items, folded into the kept
        feeder."""
        feed = feeder.feed
        return [s for item in items if (s := feed(item)) is not None]

    def fed(
        self, src: Sources, starts: Mapping[str, datetime]
    ) -> dict[str, tuple[list[Step], Feeder, datetime | None]]:
        """For an `incremental` kind: per device, its steps from its start (the same as
        `series`), the feeder that made them, ready for the next readings, and the event time
        of the newest reading it was fed."""
        out = {}
        instant = src.instants.setdefault
        for d, rows, gap in self._rows(src, starts):
            f = self.feeder(gap)
            feed = f.feed
            points = [Point(instant(row.ts, row.ts), row.value) for row in rows]
            steps = [s for p in points if (s := feed(p)) is not None]
            out[d] = (steps, f, points[-1].ts if points else None)
        return out

    # --- how it speaks --------------------------------------------------------------------
    def how(self) -> str:
        """What the value is, after the metric's name ("" for the reading itself)."""
        return ""

    def limit(self, severity: str) -> str:
        prefix = "alarm" if severity == Severity.alarm else "warn"
        limits = []
        if self.r[f"{prefix}_above"] is not None:
            limits.append(f"> {self.r[f'{prefix}_above']:g}")
        if self.r[f"{prefix}_below"] is not None:
            limits.append(f"< {self.r[f'{prefix}_below']:g}")
        return " or ".join(limits)

    def describe(self, severity: str, value: float) -> str:
        unit = METRICS[self.metric].unit
        limit = self.limit(severity)
        return f"{self.metric}{self.how()} {value:.4g} {unit} ({severity}: {limit} {unit})"

    # --- shared by the kinds that read raw readings ---------------------------------------
    def _rows(
        self, src: Sources, starts: Mapping[str, datetime]
    ) -> Iterator[tuple[str, list[Any], timedelta]]:
        """Per device: its raw readings from its start, and the gap that breaks a run."""
        key = self.raw_key()
        assert key is not None, f"{type(self).__name__} reads no raw readings"
        fetched = src.fetched
        if key not in fetched:
            fetched = repository.fetch_readings(src.conn, {key: starts})
        by_device = fetched.get(key, {})
        for d, start in starts.items():
            rows = by_device.get(d, [])
            gap = seconds(GAP_INTERVALS * int(src.devices[d].interval_s))
            yield d, rows[bisect_left(rows, start, key=_ts) :], gap


class ThresholdFeeder(Runs):
    """A threshold rule's state: the tiers' runs, and the rolling mean's window (aggregate
    `mean`). O(1) amortised per reading."""

    __slots__ = ("mean",)

    def __init__(self, rule: Row[Any], gap: timedelta) -> None:
        super().__init__(rule, gap)
        r = rule._mapping
        self.mean = (
            RollingMean(int(r["window_s"]), int(r["min_samples"]))
            if r["aggregate"] == Aggregate.mean
            else None
        )

    def feed(self, p: Point) -> Step | None:
        if self.mean is not None:
            v = self.mean.feed(p)
            return None if v is None else self.step(v)
        return self.step(p)


class Threshold(Kind):
    """The reading (aggregate `raw`) or its rolling mean over `window_s` (`mean`) passes a
    tier for `for_s`."""

    kind = RuleKind.threshold
    incremental = True

    def bounded_by_extremes(self) -> bool:
        return True

    def feeder(self, gap: timedelta) -> Feeder:
        return ThresholdFeeder(self.rule, gap)

    def series(self, src: Sources, starts: Mapping[str, datetime]) -> dict[str, list[Step]]:
        return {d: got[0] for d, got in self.fed(src, starts).items()}

    def how(self) -> str:
        if self.r["aggregate"] == Aggregate.raw:
            return ""
        return f" {int(self.r['window_s']) // 60}-min mean"


class PeriodFeeder(Runs):
    """A calendar-period mean rule's state: each period not yet over as (count, sum) of its
    N-flagged readings, the newest reading's time (a period is over once a reading at or
    after its end is in), and the runs."""

    __slots__ = ("expected", "newest", "open", "period", "start_of")

    def __init__(
        self, rule: Row[Any], expected: float, start_of: Callable[[datetime], datetime]
    ) -> None:
        super().__init__(rule)
        self.period = timedelta(seconds=int(rule._mapping["window_s"]))
        self.expected = expected
        self.start_of = start_of
        self.open: dict[datetime, list[float]] = {}
        self.newest: datetime | None = None

    def feed_all(self, points: Iterable[Point]) -> list[Step]:
        """Add readings (in time order); the steps of the periods they end."""
        for p in points:
            start = self.start_of(p.ts)
            acc = self.open.get(start)
            if acc is None:
                self.open[start] = [1, p.value]
            else:
                acc[0] += 1
                acc[1] += p.value
            if self.newest is None or p.ts > self.newest:
                self.newest = p.ts
        out: list[Step] = []
        newest = self.newest
        if newest is None:
            return out
        for start in sorted(s for s in self.open if s + self.period <= newest):
            count, total = self.open.pop(start)
            end = start + self.period
            # valid with 75% of the period's expected N-flagged samples
            if count >= MIN_COVERAGE * self.expected:
                out.append(self.step(Point(end, total / count)))
        return out


class PeriodMean(Threshold):
    """The mean of a calendar period (15 min, hour or day in the city's time zone), valid with
    75% of the period's expected readings, passes a tier."""

    def lookback(self) -> timedelta:
        # back to the start of the period the earliest new reading is in
        return timedelta(seconds=2 * int(self.r["window_s"]) + int(self.r["for_s"]))

    def fed(
        self, src: Sources, starts: Mapping[str, datetime]
    ) -> dict[str, tuple[list[Step], Feeder, datetime | None]]:
        period = int(self.r["window_s"])

        def start_of(t: datetime, tz: ZoneInfo = src.tz) -> datetime:
            return period_start(t, period, tz)

        out = {}
        for d, rows, _ in self._rows(src, starts):
            f = PeriodFeeder(self.rule, period / max(1, int(src.devices[d].interval_s)), start_of)
            steps = f.feed_all([Point(row.ts, row.value) for row in rows])
            out[d] = (steps, cast(Feeder, f), rows[-1].ts if rows else None)
        return out

    def fold(self, feeder: Any, items: list[Any], device: Row[Any], fresh: Fresh) -> list[Step]:
        # (a new reading is newer than every one fed, so it is in no period judged yet)
        return list(feeder.feed_all(items))


class _Hours(Runs):
    """What the kinds judged on hourly rollups keep of the hours not yet judged: each one's
    (count, sum) of its N-flagged readings (the rollups' arithmetic: a batch's part of an
    hour is summed, then added), and `newest_hour`, the start of the newest hour with data
    (an hour before it is over). The hours are one flat tuple, oldest first, of (start,
    count, sum) triples, made again when it changes (once a batch): mostly one or two hours,
    where a dict of lists cost ~300 bytes a (rule, device)."""

    __slots__ = ("judged", "newest_hour", "open")

    def __init__(self, rule: Row[Any]) -> None:
        super().__init__(rule)
        self.open: tuple[Any, ...] = ()  # (start, count, sum, start, count, sum, ...)
        self.newest_hour: datetime | None = None
        self.judged: datetime | None = None  # the end of the newest hour judged

    def _put(self, hour: datetime, count: float, total: float) -> None:
        """Add (count, sum) to the hour's, keeping the hours in order."""
        hours = self.open
        i = len(hours) - 3
        while i >= 0 and hours[i] > hour:
            i -= 3
        if i >= 0 and hours[i] == hour:
            got = (hours[i], hours[i + 1] + count, hours[i + 2] + total)
            self.open = (*hours[:i], *got, *hours[i + 3 :])
        else:
            # (one hour object for every kept pair that holds it: 10,000s of them)
            self.open = (*hours[: i + 3], shared(hour)[0], count, total, *hours[i + 3 :])
        if self.newest_hour is None or hour > self.newest_hour:
            self.newest_hour = shared(hour)[0]

    def load(self, counted: list[tuple[datetime, float, int, float]]) -> None:
        """The hours read from the rollups (`repository.hourly_counted`)."""
        for end, _, count, total in counted:
            self._put(end - HOUR, count, total)
        if counted:
            self.newest_hour = shared(counted[-1][0] - HOUR)[0]

    def takes(self, points: Iterable[Point]) -> bool:
        """Whether none of these readings falls in an hour already judged (then the hour's
        mean changes: the pair is rebuilt)."""
        judged = self.judged
        return judged is None or all(p.ts >= judged for p in points)

    def add(self, points: Iterable[Point]) -> None:
        """A batch's new readings of the metric."""
        part: dict[datetime, list[float]] = {}
        for p in points:
            hour = p.ts.replace(minute=0, second=0, microsecond=0)
            got = part.get(hour)
            if got is None:
                part[hour] = [1, p.value]
            else:
                got[0] += 1
                got[1] += p.value
        for hour, (count, total) in part.items():
            self._put(hour, count, total)

    def over(self, until: datetime) -> Iterator[tuple[datetime, float, float]]:
        """The hours over by `until`, oldest first, as (end, count, sum), taken out."""
        done = self.open
        n = 0
        while n < len(done) and done[n] + HOUR <= until:
            n += 3
        self.open = done[n:]
        for i in range(0, n, 3):
            self.judged = done[i] + HOUR
            yield self.judged, done[i + 1], done[i + 2]

    def complete(self, newest: datetime, interval_s: int) -> datetime:
        """Up to when hours are over: `repository.complete_until` for one device."""
        by_reading = newest + timedelta(seconds=interval_s)
        return max(by_reading, self.newest_hour) if self.newest_hour else by_reading


class HourlyFeeder(_Hours):
    """An hourly-mean rule's state: the hours not yet judged (`_Hours`), the valid hourly
    means of the window, and the runs."""

    __slots__ = ("hours", "shape", "total")

    def __init__(self, rule: Row[Any], expected: float) -> None:
        super().__init__(rule)
        r = rule._mapping
        # (window, min hours, expected samples an hour): one tuple per rule and interval
        self.shape = shared(seconds(int(r["window_s"])), int(r["min_samples"]), expected)
        self.hours: Window | None = None  # (none until an hour is judged: most stay idle)
        self.total = 0.0

    def judge(self, until: datetime, since: datetime | None = None) -> list[Step]:
        """Steps of the hours over by `until`, oldest first (`hourly_window_means`); means
        before `since` only fill the window."""
        out: list[Step] = []
        window, min_hours, expected = self.shape
        for end, count, total in self.over(until):
            # an hour is valid with 75% of its expected N-flagged samples (HJ 212 [C])
            if count < MIN_COVERAGE * expected:
                continue
            win = self.hours
            if win is None:
                win = self.hours = Window()
            win.append(Point(end, total / count))
            self.total = win.drop_through(end - window, self.total + total / count)
            if len(win) >= min_hours and (since is None or end >= since):
                out.append(self.step(Point(end, self.total / len(win))))
        return out


class _KeptHours(Kind):
    """A kind whose kept state is an `_Hours` feeder over the hourly rollups (the hourly
    mean, the daily count): built from the rollups (`fed`), then folded a batch at a time."""

    incremental = True

    def hours_from(self, src: Sources, starts: Mapping[str, datetime]) -> datetime:
        """From which hour the feeders read the rollups."""
        raise NotImplementedError

    def hours_feeder(self, src: Sources, device: Row[Any]) -> _Hours:
        raise NotImplementedError

    def loaded_steps(self, feeder: Any, until: datetime, lo: datetime) -> list[Step]:
        """The steps of a feeder just loaded from the hours from `lo`."""
        return list(feeder.judge(until))

    def fed(
        self, src: Sources, starts: Mapping[str, datetime]
    ) -> dict[str, tuple[list[Step], Feeder, datetime | None]]:
        return per_group(self._fed, src, starts)

    def _fed(
        self, src: Sources, starts: Mapping[str, datetime]
    ) -> dict[str, tuple[list[Step], Feeder, datetime | None]]:
        ids = list(starts)
        lo = self.hours_from(src, starts)
        counted, until = counted_hours(src, self.metric, ids, lo)
        out = {}
        for d in ids:
            device = src.devices[d]
            f = self.hours_feeder(src, device)
            f.load(counted.get(d, []))
            # (the rollups do not say when in its hour the newest reading was)
            newest = newest_stored(device, src.latest.get(d))
            out[d] = (self.loaded_steps(f, until[d], lo), cast(Feeder, f), newest)
        return out

    def series(self, src: Sources, starts: Mapping[str, datetime]) -> dict[str, list[Step]]:
        return {d: got[0] for d, got in self.fed(src, starts).items()}

    def takes(self, feeder: Any, items: list[Any]) -> bool:
        return bool(feeder.takes(items))

    def fold(self, feeder: Any, items: list[Any], device: Row[Any], fresh: Fresh) -> list[Step]:
        newest = fresh.newest(device.id)
        assert newest is not None  # the device had readings in the batch
        feeder.add(items)
        return list(feeder.judge(feeder.complete(newest, int(device.interval_s))))


class HourlyMean(_KeptHours, Threshold):
    """The mean of `window_s` whole hours from the hourly rollups (an hour counts with 75%
    of its expected valid readings; `min_samples` hours make a window), judged at each
    hour's end."""

    def lookback(self) -> timedelta:
        # and back to the start of the hour the earliest new reading is in
        return super().lookback() + HOUR

    def fold_from(self, since: datetime, device: Any) -> datetime:
        return back_to_stored_hour(since - self.lookback(), device)

    def raw_key(self) -> tuple[str, bool] | None:
        return None

    def bounded_by_extremes(self) -> bool:
        return False

    def hours_from(self, src: Sources, starts: Mapping[str, datetime]) -> datetime:
        return min(starts.values()) - HOUR

    def hours_feeder(self, src: Sources, device: Row[Any]) -> _Hours:
        return HourlyFeeder(self.rule, 3600 / max(1, int(device.interval_s)))

    def loaded_steps(self, feeder: Any, until: datetime, lo: datetime) -> list[Step]:
        # only windows wholly inside the hours read
        return list(feeder.judge(until, since=lo + timedelta(seconds=int(self.r["window_s"]))))


class RateFeeder(Runs):
    """A rate-of-change rule's state: the runs, and the readings back to one window ago."""

    __slots__ = ("changes",)

    def __init__(self, rule: Row[Any], window_s: int, gap: timedelta) -> None:
        super().__init__(rule, gap)
        self.changes = Changes(window_s)

    def feed(self, p: Point) -> Step | None:
        v = self.changes.feed(p)
        return None if v is None else self.step(v)


class RateOfChange(Kind):
    """The change of the reading over `params.window_s` (a pressure falling fast) passes a
    tier."""

    kind = RuleKind.rate_of_change
    incremental = True

    def lookback(self) -> timedelta:
        # the earlier reading may be up to two windows back (alerts.evaluation.Changes)
        return super().lookback() + timedelta(seconds=int(self.params["window_s"]))

    def feeder(self, gap: timedelta) -> Feeder:
        return RateFeeder(self.rule, int(self.params["window_s"]), gap)

    def series(self, src: Sources, starts: Mapping[str, datetime]) -> dict[str, list[Step]]:
        return {d: got[0] for d, got in self.fed(src, starts).items()}

    def how(self) -> str:
        return f" change over {int(self.params.get('window_s', 0)) // 60} min"


class FlagGroup(NamedTuple):
    """One instant of a device: the (metric, quality flag) of each reading at `ts`."""

    ts: datetime
    flags: tuple[tuple[str, str], ...]


def flag_groups(rows: Iterable[Any]) -> list[FlagGroup]:
    """Readings (with .ts, .metric, .quality) in time order, grouped by instant."""
    out: list[FlagGroup] = []
    for ts, group in groupby(rows, key=_ts):
        out.append(FlagGroup(ts, tuple((r.metric, r.quality) for r in group)))
    return out


class FlagFeeder(Runs):
    """A flag rule's state: when each metric's current run of fault flags began, and the
    runs of the tiers over the longest of them (minutes)."""

    __slots__ = ("flags", "started")

    def __init__(self, rule: Row[Any], flags: frozenset[str], gap: timedelta) -> None:
        super().__init__(rule, gap)
        self.flags = flags
        # when each flagged metric's run began (None: no metric flagged since the state began)
        self.started: dict[str, datetime] | None = None

    def feed(self, g: FlagGroup) -> Step:
        longest = 0.0
        started = self.started
        for metric, quality in g.flags:
            if quality in self.flags:
                if started is None:
                    started = self.started = {}
                start = started.get(metric) or g.ts
                started[metric] = start
                longest = max(longest, (g.ts - start).total_seconds() / 60)
            elif started:
                started.pop(metric, None)
        return self.step(Point(g.ts, longest))


@lru_cache(maxsize=256)
def _flag_set(flags: tuple[str, ...]) -> frozenset[str]:
    """One frozenset per list of flags (every device's feeder holds it)."""
    return frozenset(flags)


class FlagHeld(Kind):
    """A device fault flag (HJ 212 D, B, ...; `params.flags`) held on a metric ("*": any) for
    the tiers' minutes."""

    kind = RuleKind.flag_held
    incremental = True
    starts_empty = True

    def flags(self) -> frozenset[str]:
        return _flag_set(tuple(self.params.get("flags", ["D", "B"])))

    def lookback(self) -> timedelta:
        # the run of flags may have begun up to the highest tier (minutes) ago
        tiers = [t for t in (self.r["warn_above"], self.r["alarm_above"]) if t is not None]
        return timedelta(seconds=int(max(tiers, default=0) * 60) + int(self.r["for_s"]) + 3600)

    def raw_key(self) -> tuple[str, bool] | None:
        return (self.metric, True)

    def worth_reading(self, conn: Connection, begin: Mapping[str, datetime]) -> set[str] | None:
        # nearly every reading is flagged N: only devices with a flagged reading in the window
        return repository.flagged(conn, self.metric, self.flags(), begin)

    def feeder(self, gap: timedelta) -> Feeder:
        return FlagFeeder(self.rule, self.flags(), gap)

    def fresh_items(self, fresh: Fresh, device_id: str) -> list[Timed] | None:
        rows = fresh.rows(device_id, self.metric)
        return None if rows is None else flag_groups(rows)  # type: ignore[return-value]

    def fed(
        self, src: Sources, starts: Mapping[str, datetime]
    ) -> dict[str, tuple[list[Step], Feeder, datetime | None]]:
        out = {}
        for d, rows, gap in self._rows(src, starts):
            f = FlagFeeder(self.rule, self.flags(), gap)
            steps = [f.feed(g) for g in flag_groups(rows)]
            out[d] = (steps, cast(Feeder, f), rows[-1].ts if rows else None)
        return out

    def series(self, src: Sources, starts: Mapping[str, datetime]) -> dict[str, list[Step]]:
        return {d: got[0] for d, got in self.fed(src, starts).items()}

    def describe(self, severity: str, value: float) -> str:
        return f"{self.metric} flagged {value:.0f} min ({severity}: {self.limit(severity)} min)"


class _Daily(Kind):
    """Kinds judged on the hourly rollups of whole local days."""

    def fold_from(self, since: datetime, device: Any) -> datetime:
        return back_to_stored_hour(since - self.lookback(), device)

    def raw_key(self) -> tuple[str, bool] | None:
        return None

    def _hours(
        self, src: Sources, ids: list[str], starts: Mapping[str, datetime]
    ) -> tuple[dict[str, list[Point]], dict[str, datetime]]:
        """Hourly means of `ids` from the local day before the earliest start, and up to when
        each device's hours are over by its data (a half-uploaded hour is not judged)."""
        counted, until = counted_hours(src, self.metric, ids, day_before(src, starts))
        hourly = {d: [Point(end, mean) for end, mean, _, _ in rows] for d, rows in counted.items()}
        return hourly, until


class DailyFeeder(_Hours):
    """A daily-count rule's state: the hours not yet judged (`_Hours`), the local day of the
    newest hour judged and how many of its hours so far had a mean above the limit, and the
    runs."""

    __slots__ = ("above", "count", "day", "tz")

    def __init__(self, rule: Row[Any], above: float, tz: ZoneInfo) -> None:
        super().__init__(rule)
        self.above = shared(above)[0]
        self.tz = tz
        self.day: date | None = None
        self.count = 0

    def judge(self, until: datetime) -> list[Step]:
        """Steps of the hours over by `until`, oldest first: at each hour's end, how many hours
        of its local day so far had a mean above the limit."""
        out: list[Step] = []
        for end, count, total in self.over(until):
            day = (end - timedelta(seconds=1)).astimezone(self.tz).date()  # 24:00 is yesterday's
            if day != self.day:
                self.day, self.count = day, 0
            if total / count > self.above:
                self.count += 1
            out.append(self.step(Point(end, float(self.count))))
        return out


class DailyCount(_KeptHours, _Daily):
    """How many hours of the local day so far had a mean above `params.hour_above`."""

    kind = RuleKind.daily_count

    def hours_from(self, src: Sources, starts: Mapping[str, datetime]) -> datetime:
        return day_before(src, starts)

    def hours_feeder(self, src: Sources, device: Row[Any]) -> _Hours:
        return DailyFeeder(self.rule, float(self.params["hour_above"]), src.tz)

    def describe(self, severity: str, value: float) -> str:
        return f"{value:.0f} exceeding hours today ({severity}: {self.limit(severity)})"


class ReferenceDiff(_Daily):
    """A site's hourly mean minus the mean of the reference stations' for the same hour
    (capped at `params.reference_cap`)."""

    kind = RuleKind.reference_diff

    def references(self) -> list[str]:
        return list(self.params.get("reference_device_ids", []))

    def series(self, src: Sources, starts: Mapping[str, datetime]) -> dict[str, list[Step]]:
        return per_group(self._series, src, starts)

    def _series(self, src: Sources, starts: Mapping[str, datetime]) -> dict[str, list[Step]]:
        refs = self.references()
        hourly, until = self._hours(src, list(starts) + refs, starts)
        per_hour: dict[datetime, list[float]] = defaultdict(list)
        for ref in refs:
            for p in hourly.get(ref, []):
                per_hour[p.ts].append(p.value)
        reference = {ts: sum(v) / len(v) for ts, v in per_hour.items()}
        cap = self.params.get("reference_cap")
        out = {}
        for d in starts:
            complete = [p for p in hourly.get(d, []) if p.ts <= until[d]]
            out[d] = steps_of(self.rule, differences(complete, reference, cap))
        return out

    def how(self) -> str:
        return " hourly mean minus reference"


class NoData(Kind):
    """Silence: minutes (or reporting intervals, `params.per_interval`) since the device was
    last heard from, judged on the timer against wall time, not on batches."""

    kind = RuleKind.no_data

    def raw_key(self) -> tuple[str, bool] | None:
        return None

    def silence(self, device: Any, now: datetime) -> Step:
        """The step at `now` for a device last heard from at `last_seen_at`."""
        seen = device.last_seen_at or device.created_at
        silent_s = (now - seen).total_seconds()
        per_interval = self.params.get("per_interval")
        value = silent_s / device.interval_s if per_interval else silent_s / 60
        level = level_of(self.rule, value)
        if level == Severity.alarm and silent_s < self.params.get("alarm_min_s", 0):
            level = Severity.warning if self.r["warn_above"] is not None else None
        return Step(now, value, level, level, seen)

    def describe(self, severity: str, value: float) -> str:
        unit = "intervals" if self.params.get("per_interval") else "min"
        return f"no data for {value:.1f} {unit} ({severity}: {self.limit(severity)} {unit})"


class Composite(Kind):
    """All (`op` "all") or any (`op` "any") of other rules firing on the device: e.g. a burst
    is a pressure drop AND an inflow rise. Judged after the reading rules of a batch."""

    kind = RuleKind.composite

    def parts(self) -> list[str]:
        return list(self.params.get("rules", []))

    def raw_key(self) -> tuple[str, bool] | None:
        return None

    def combine(self, severities: list[str | None]) -> tuple[float, Severity | None]:
        """The composite's value (a rank: 0 none, 1 warning, 2 alarm) and level from the
        severities of its parts' open alerts (None: not firing)."""
        ranks = [RANK[Severity(s)] if s is not None else 0 for s in severities]
        rank = min(ranks) if self.params.get("op", "all") == "all" else max(ranks)
        return float(rank), {1: Severity.warning, 2: Severity.alarm}.get(rank)

    def describe(self, severity: str, value: float) -> str:
        joiner = " AND " if self.params.get("op", "all") == "all" else " OR "
        return f"{joiner.join(self.parts())} ({severity})"


@dataclass(frozen=True, slots=True)
class SiteSources:
    """What a DMA kind builds its series from: the connection (daily figures, readings,
    consumption), the DMA sites' rows, the city's time zone, and the area-wide CJJ 92 inputs."""

    conn: Connection
    sites: Mapping[str, Row[Any]]
    tz: ZoneInfo
    outlet_pressure_mpa: float | None = None
    frost_depth_m: float | None = None


class DmaKind(Kind):
    """A rule whose subject is a DMA site, judged on its daily figures (`dma_days`) or its
    meters' readings taken together, not on one meter's readings. Each reads the history its
    baseline needs before the start itself, so its lookback is only the fold's margin."""

    subject_is_site: ClassVar[bool] = True

    def lookback(self) -> timedelta:
        return timedelta(days=1)

    def raw_key(self) -> tuple[str, bool] | None:
        return None

    def series(self, src: Sources, starts: Mapping[str, datetime]) -> dict[str, list[Step]]:
        raise TypeError(f"a {self.kind} rule judges DMA sites: use site_series")

    def site_series(
        self, src: SiteSources, starts: Mapping[str, datetime]
    ) -> dict[str, list[Step]]:
        """The rule's steps per DMA site from `starts[site]` on."""
        raise NotImplementedError

    def start_of(self, day_start: datetime, changed: datetime | None) -> datetime:
        """From when a site's steps may have changed, given the local midnight of its earliest
        changed day and its earliest changed reading (None: the change was not readings, e.g.
        consumption): the midnight, as a rule on daily figures judges whole days."""
        return day_start

    def _night_end(self, site: Any, day: date, tz: ZoneInfo) -> datetime:
        """When a day's night window ends (its figures are judged then), UTC."""
        params = dma.params_of(site)
        return datetime.combine(day, params.night_to, tzinfo=tz).astimezone(UTC)

    def _days(self, src: SiteSources, starts: Mapping[str, datetime], before: timedelta) -> Any:
        return repository.dma_days(
            src.conn,
            list(starts),
            min(starts.values()).astimezone(src.tz).date() - timedelta(days=before.days),
        )


class NetNightFlow(DmaKind):
    """(MNF - legitimate night use) per service connection, L/conn/h, each valid night."""

    kind = RuleKind.net_night_flow

    def site_series(
        self, src: SiteSources, starts: Mapping[str, datetime]
    ) -> dict[str, list[Step]]:
        out: dict[str, list[Step]] = {}
        for s, rows in self._days(src, starts, timedelta(days=1)).items():
            site = src.sites[s]
            if not site.connections:
                continue  # no connections registered: nothing to divide by
            points = [
                Point(
                    self._night_end(site, r.day, src.tz),
                    1000 * r.net_night_flow_m3h / site.connections,
                )
                for r in rows
                if r.valid and r.net_night_flow_m3h is not None
            ]
            out[s] = steps_of(self.rule, [p for p in points if p.ts >= starts[s]])
        return out

    def describe(self, severity: str, value: float) -> str:
        limit = self.limit(severity)
        return f"net night flow {value:.1f} L/conn/h ({severity}: {limit} L/conn/h)"


class NightFlowRise(DmaKind):
    """The night's MNF against the median MNF of the previous valid nights, percent; a tier
    counts only with an absolute rise of at least `params.warn_min_m3h` / `alarm_min_m3h`."""

    kind = RuleKind.night_flow_rise

    def site_series(
        self, src: SiteSources, starts: Mapping[str, datetime]
    ) -> dict[str, list[Step]]:
        history = int(self.params.get("history_nights", 14))
        least = int(self.params.get("min_nights", 7))
        minimum = {
            Severity.warning: float(self.params.get("warn_min_m3h", 1.0)),
            Severity.alarm: float(self.params.get("alarm_min_m3h", 2.0)),
        }
        out: dict[str, list[Step]] = {}
        # twice the history in days: invalid nights do not count towards it
        for s, rows in self._days(src, starts, timedelta(days=2 * history + 1)).items():
            site = src.sites[s]
            valid = [r for r in rows if r.valid and r.mnf_m3h is not None]
            points: list[tuple[Point, float]] = []
            for i, r in enumerate(valid):
                ts = self._night_end(site, r.day, src.tz)
                before = [
                    v.mnf_m3h
                    for v in valid[max(0, i - history) : i]
                    if (r.day - v.day).days <= 2 * history
                ]
                if ts < starts[s] or len(before) < least:
                    continue
                baseline = statistics.median(before)
                if baseline <= 0:
                    continue
                points.append(
                    (Point(ts, 100 * (r.mnf_m3h - baseline) / baseline), r.mnf_m3h - baseline)
                )
            rise = {p.ts: m3h for p, m3h in points}

            def level(p: Point, rise: Mapping[datetime, float] = rise) -> Severity | None:
                got = level_of(self.rule, p.value)
                while got is not None and rise[p.ts] < minimum[got]:
                    got = Severity.warning if got == Severity.alarm else None
                return got

            out[s] = steps_of(self.rule, [p for p, _ in points], level=level)
        return out

    def describe(self, severity: str, value: float) -> str:
        return (
            f"night flow {value:+.0f}% over the previous nights' median "
            f"({severity}: {self.limit(severity)}%)"
        )


class Burst(DmaKind):
    """The DMA's net inflow over the last 15 minutes, at each of its meters' reading times,
    above the median of the same 15 minutes of the day on the previous days, in percent of
    the DMA's mean flow over those days (a burst of 10% of the mean flow is 10 whatever the
    hour: at the morning peak it is a smaller share of the flow, at night a larger one). A
    tier counts only with an excess of `params.min_m3h` and, where the DMA has an AZP meter,
    its pressure over the same 15 minutes below the median of the same windows (a burst
    lowers the pressure). The means are trailing (`leakage.TrailingMeans`, over the
    readings in (t - 15 min, t]): with 5-minute meters the third reading after a burst
    starts has a window wholly in the burst, 15 minutes at most after it started.

    The mean flow of a reading at t in local day D (the city's time zone) is the mean of the
    days D-1 ... D-history's mean net inflow over their defined slots
    (`dma_days.net_mean_m3h`, those stored): local days, as the days are cut, not UTC days
    (before migration 0016 it was the UTC days', from one row per slot)."""

    kind = RuleKind.burst

    def lookback(self) -> timedelta:
        return timedelta(hours=1)

    def start_of(self, day_start: datetime, changed: datetime | None) -> datetime:
        # A reading at t changes the trailing means at t and after (its own window, and the
        # same times of later days as their baseline) and its day's mean flow, which only
        # later days use: nothing before t. So the rebuild starts there, not at midnight (a
        # batch at 23:00 would re-read the whole day and 14 days of the same windows).
        return changed if changed is not None else day_start

    def site_series(
        self, src: SiteSources, starts: Mapping[str, datetime]
    ) -> dict[str, list[Step]]:
        history = int(self.params.get("history_days", 14))
        least = int(self.params.get("min_days", 7))
        floor = float(self.params.get("min_m3h", 1.0))
        day_s = 86400  # the same time of day k days before is k × 24 h earlier (as a slot's)
        # each local day's mean net inflow (of its defined slots), from the first day a
        # reading's baseline can take: the history days before the earliest start's day
        first = min(starts.values()).astimezone(src.tz).date() - timedelta(days=history)
        day_mean = repository.dma_day_means(src.conn, list(starts), first)
        back = [timedelta(days=k) for k in range(1, history + 1)]
        out: dict[str, list[Step]] = {}
        for s, means in dma.trailing_means(src.conn, starts, history).items():
            days = day_mean.get(s, {})
            points: list[Point] = []
            confirmed: dict[datetime, bool] = {}
            for t in means.reading_times(starts[s].timestamp()):
                net = means.net(t)
                if net is None:
                    continue
                before = [t - k * day_s for k in range(1, history + 1)]
                same = [v for b in before if (v := means.net(b)) is not None]
                if len(same) < least:
                    continue
                baseline = statistics.median(same)
                day = datetime.fromtimestamp(t, src.tz).date()  # t's local day
                flows = [m for k in back if (m := days.get(day - k)) is not None]
                mean_flow = math.fsum(flows) / len(flows) if flows else 0.0
                if mean_flow <= 0:
                    continue
                azp = means.azp(t)
                pressures = [p for b in before if (p := means.azp(b)) is not None]
                dropped = azp is None or not pressures or azp < statistics.median(pressures)
                ts = datetime.fromtimestamp(t, UTC)
                points.append(Point(ts, 100 * (net - baseline) / mean_flow))
                confirmed[ts] = dropped and net - baseline >= floor

            def level(p: Point, ok: Mapping[datetime, bool] = confirmed) -> Severity | None:
                return level_of(self.rule, p.value) if ok[p.ts] else None

            # a missing reading (no net inflow for 1.5 slots) breaks a run
            out[s] = steps_of(self.rule, points, SLOT * 1.5, level=level)
        return out

    def describe(self, severity: str, value: float) -> str:
        return (
            f"net inflow over 15 minutes {value:+.0f}% of the mean flow above the same 15 "
            "minutes of the previous days "
            f"({severity}: {self.limit(severity)}%)"
        )


class LeakageRate(DmaKind):
    """The rolling 12-month CJJ 92 leakage rate R_BL of the DMA, percent, at each day's end
    (only where a year of registered consumption and the DMA's mains length exist)."""

    kind = RuleKind.leakage_rate

    def site_series(
        self, src: SiteSources, starts: Mapping[str, datetime]
    ) -> dict[str, list[Step]]:
        wanted: dict[str, list[date]] = {}
        for s, rows in self._days(src, starts, timedelta(days=1)).items():
            first = starts[s].astimezone(src.tz).date()
            wanted[s] = [r.day for r in rows if r.day >= first]
        rates = dma.rolling_rates(
            src.conn,
            src.sites,
            wanted,
            outlet_pressure_mpa=src.outlet_pressure_mpa,
            frost_depth_m=src.frost_depth_m,
        )
        out: dict[str, list[Step]] = {}
        for s, days in wanted.items():
            points = [
                Point(
                    datetime.combine(d + timedelta(days=1), time(0), tzinfo=src.tz).astimezone(UTC),
                    r_bl,
                )
                for d in days
                if (r_bl := rates[s][d].r_bl) is not None
            ]
            out[s] = steps_of(self.rule, points)
        return out

    def describe(self, severity: str, value: float) -> str:
        return (
            f"leakage rate R_BL {value:.1f}% over 12 months ({severity}: {self.limit(severity)}%)"
        )


KINDS: dict[RuleKind, type[Kind]] = {
    cls.kind: cls
    for cls in (
        Threshold,
        RateOfChange,
        FlagHeld,
        DailyCount,
        ReferenceDiff,
        NoData,
        Composite,
        NightFlowRise,
        NetNightFlow,
        Burst,
        LeakageRate,
    )
}
# a threshold's value may be a calendar period's mean or a mean of hourly rollups
THRESHOLDS: dict[Aggregate, type[Threshold]] = {
    Aggregate.period_mean: PeriodMean,
    Aggregate.hourly_mean: HourlyMean,
}


T = TypeVar("T")


def back_to_stored_hour(start: datetime, device: Any) -> datetime:
    """`start`, moved back to the hour of the device's newest reading stored before the
    batch (the hourly kinds' fold start): a new reading after a gap is what shows that hour
    over, and its step (at the hour's end) is older than the new reading."""
    stored: datetime | None = device.watermark_at
    if stored is None:
        return start
    return min(start, stored.replace(minute=0, second=0, microsecond=0))


def day_before(src: Sources, starts: Mapping[str, datetime]) -> datetime:
    """The start of the local day before the earliest start's (UTC), so that every day the
    daily kinds judge counts whole."""
    day = min(starts.values()).astimezone(src.tz).replace(hour=0, minute=0, second=0)
    return day.astimezone(UTC) - timedelta(days=1)


def counted_hours(
    src: Sources, metric: str, ids: list[str], lo: datetime
) -> tuple[dict[str, list[tuple[datetime, float, int, float]]], dict[str, datetime]]:
    """The devices' hours from the rollups from `lo` (`repository.hourly_counted`), and up to
    when each device's hours are over by its data (a half-uploaded hour is not judged)."""
    counted = repository.hourly_counted(src.conn, metric, ids, lo)
    until = repository.complete_until(src.conn, metric, counted, src.devices, src.latest, lo, ids)
    return counted, until


def newest_stored(device: Any, in_batch: datetime | None) -> datetime | None:
    """The event time of the newest reading stored of a device, before (its watermark) or in
    this batch: what a state built without reading the device's readings is as of."""
    return max((t for t in (device.watermark_at, in_batch) if t), default=None)


def per_group(
    part: Callable[[Sources, Mapping[str, datetime]], dict[str, T]],
    src: Sources,
    starts: Mapping[str, datetime],
) -> dict[str, T]:
    """`part` per group of devices whose starts are close (`repository.start_groups`), so
    that a device whose series reaches back days reads alone instead of stretching every
    device's read."""
    out: dict[str, T] = {}
    for group in repository.start_groups(starts):
        out.update(part(src, group))
    return out


def kind_of(rule: Row[Any]) -> Kind:
    """The rule seen through its kind."""
    cls = KINDS[RuleKind(rule.kind)]
    if cls is Threshold:
        cls = THRESHOLDS.get(Aggregate(rule.aggregate), Threshold)
    return cls(rule)


def describe(rule: Row[Any], severity: str, value: float) -> str:
    """An alert's message: the value, what it is, and the tier it passed."""
    return kind_of(rule).describe(severity, value)


def period_start(ts: datetime, period_s: int, tz: ZoneInfo) -> datetime:
    """Start of the calendar period (in the city's time zone) that holds `ts`."""
    local = ts.astimezone(tz)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    offset = (local - midnight).total_seconds() // period_s * period_s
    return (midnight + timedelta(seconds=offset)).astimezone(UTC)


def _ts(row: Any) -> datetime:
    return row.ts  # type: ignore[no-any-return]
