"""The evaluator's memory between batches: per (rule, device), the state that the rule's kind
folds readings into (its `Feeder`: a rolling window, the tiers' runs), the episode in progress,
and a mirror of the pair's open alert (shared/DESIGN.md: "the evaluator keeps each (rule,
device) window as state in memory and folds in-order readings into it").

The state is a cache of the database, which stays the truth. It is used only when

- the device's evaluation version (devices.eval_version, moved by every transaction that
  stores readings of it, whoever stores them) is the one the state was last brought to, so
  no other ingestor stored readings of the device since;
- the rule and the device read the same as when the state was built (a rule edit or a new
  reporting interval starts it again);
- every new reading of the rule's metric in the batch is newer than the newest one folded
  in, and no two of them share a time.

Otherwise the pair is rebuilt from the database (the reference implementation in
`alerts.evaluator`), and the rebuild leaves a fresh state behind. A pair first seen after a
restart loads the same way, lazily.

State changes only count once their transaction commits: the writer calls `commit()` after
its commit and `rollback()` when the transaction (or the evaluation's savepoint) is undone,
which drops every state the transaction touched. An alert changed by someone else meanwhile
(an inspector) makes the mirror's version check fail in `alerts.service.save`, and the
evaluation is retried on rebuilt state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from itertools import pairwise
from typing import Any

from alerts.evaluation import EpisodeFold, Feeder, Point


class PairState(EpisodeFold):
    """One (rule, device): what was folded (up to `until`), the episode in progress (it is
    the pair's `EpisodeFold`: one object less a pair), and the open alert's mirror."""

    __slots__ = ("alert", "feeder", "metric", "signature", "until", "version")

    def __init__(
        self,
        signature: tuple[Any, ...],
        metric: str,
        until: datetime | None,
        feeder: Feeder,
        alert: dict[str, Any] | None,
        rule: Any,
        *,
        clear_above: float | None,
        clear_below: float | None,
        quiet_s: int,
        auto_resolve: bool,
    ) -> None:
        super().__init__(
            rule,
            clear_above=clear_above,
            clear_below=clear_below,
            quiet_s=quiet_s,
            auto_resolve=auto_resolve,
        )
        self.signature = signature
        self.metric = metric
        self.version = 0
        self.until = until
        self.feeder = feeder
        self.alert = alert


class Fresh:
    """What one batch stored, as the evaluator's cached path needs it: per (device, metric),
    its N-flagged readings in event-time order (None where two share a time: such a pair is
    rebuilt), the metrics each device had readings of (any flag), and each device's
    evaluation version before the batch."""

    __slots__ = ("_newest", "_points", "_rows", "instants", "metrics", "versions")

    def __init__(self, rows: Iterable[Any], versions: Mapping[str, int] | None = None) -> None:
        """`versions` may be set later (the writer builds this before its transaction reads
        them)."""
        points: dict[tuple[str, str], list[Point]] = {}
        by_device: dict[str, list[Any]] = {}
        newest: dict[str, datetime] = {}
        metrics: dict[str, set[str]] = {}
        new_point = Point._make
        # one datetime object per instant: a device's metrics come in rows of their own, each
        # with its own copy of the time, and kept windows would hold every copy (48 B each)
        self.instants: dict[datetime, datetime] = {}
        instant = self.instants.setdefault
        for r in rows:  # (a hot loop: ~10,000 rows a batch)
            d, m, ts, value, quality = r[:5]
            ts = instant(ts, ts)
            mine = by_device.get(d)
            if mine is None:
                by_device[d] = [r]
                newest[d] = ts
                metrics[d] = {m}
            else:
                mine.append(r)
                if ts > newest[d]:
                    newest[d] = ts
                metrics[d].add(m)
            if quality == "N":
                key = (d, m)
                got = points.get(key)
                if got is None:
                    points[key] = [new_point((ts, value))]
                else:
                    got.append(new_point((ts, value)))
        self._points: dict[tuple[str, str], list[Point] | None] = dict(points)
        self._rows = by_device
        self._newest = newest
        self.metrics = metrics
        self.versions: dict[str, int] = dict(versions or {})

    def points(self, device_id: str, metric: str) -> list[Point] | None:
        key = (device_id, metric)
        got = self._points.get(key)
        if not got:
            return [] if got is not None or key not in self._points else None
        if any(a.ts >= b.ts for a, b in pairwise(got)):  # out of order in the batch
            got.sort()
            if any(a.ts == b.ts for a, b in pairwise(got)):
                self._points[key] = None
                return None
        return got

    def newest(self, device_id: str) -> datetime | None:
        """The event time of the device's newest reading in the batch (any metric)."""
        return self._newest.get(device_id)

    def rows(self, device_id: str, metric: str) -> list[Any] | None:
        """Every reading the batch stored of the device (of `metric`; "*": of any), whatever
        its flag, in time order; None if two share a metric and a time."""
        rows = self._rows.get(device_id, [])
        if metric != "*":
            rows = [r for r in rows if r.metric == metric]
        ordered = sorted(rows, key=_instant)
        if any(_instant(a) == _instant(b) for a, b in pairwise(ordered)):
            return None
        return ordered


def _instant(r: Any) -> tuple[datetime, str]:
    return (r.ts, r.metric)


class Cache:
    """Pair states by device and rule, and what the open transaction did to them. A device's
    states are a list, one place per rule (`_slot`): a dict of a dozen rules cost ~650 bytes a
    device, the list ~150."""

    def __init__(self) -> None:
        self._pairs: dict[str, list[PairState | None]] = {}
        self._slot: dict[int, int] = {}  # rule id -> its place in a device's list
        self._rules: dict[int, tuple[Any, ...]] = {}
        self._signatures: dict[tuple[int, Any, Any], tuple[Any, ...]] = {}
        self._fresh: Fresh | None = None
        self._touched: set[str] = set()  # devices whose states this transaction changed
        self.hits = 0
        self.misses = 0

    def as_read(self, rule: Any) -> tuple[Any, ...]:
        """The rule's row as a tuple, for the pairs' signatures: the same object as the last
        time while the rule reads the same, so that comparing a pair's signature with it is
        an identity check, not a walk through the rule's values and lists."""
        now = tuple(rule)
        kept = self._rules.get(rule.id)
        if kept == now:
            return kept
        self._rules[rule.id] = now
        self._signatures.clear()  # (they hold the rule as it read before)
        return now

    def signature(self, rule: tuple[Any, ...], interval_s: Any, site_id: Any) -> tuple[Any, ...]:
        """A pair's signature, (rule as read, the device's interval, its site), one object for
        every pair with the same: kept state holds one per pair, 10,000s of them."""
        key = (id(rule), interval_s, site_id)
        got = self._signatures.get(key)
        if got is None or got[0] is not rule:
            got = self._signatures[key] = (rule, interval_s, site_id)
        return got

    # --- one transaction ----------------------------------------------------------------
    def begin(self, fresh: Fresh) -> None:
        self._fresh = fresh
        self._touched.clear()

    def get(self, rule_id: int, device_id: str, signature: tuple[Any, ...]) -> PairState | None:
        """The pair's state if it is good for this batch (see the module's doc), else None
        (and any stale state is dropped)."""
        fresh = self._fresh
        pairs = self._pairs.get(device_id)
        i = self._slot.get(rule_id, -1)
        state = pairs[i] if pairs is not None and 0 <= i < len(pairs) else None
        if state is None or fresh is None:
            self.misses += 1
            return None
        if state.version != fresh.versions.get(device_id) or state.signature != signature:
            pairs[i] = None  # type: ignore[index]
            self.misses += 1
            return None
        self.hits += 1
        return state

    @property
    def has_fresh(self) -> bool:
        """Whether a transaction's batch is open (`begin`)."""
        return self._fresh is not None

    @property
    def fresh(self) -> Fresh:
        """What the open transaction's batch stored."""
        assert self._fresh is not None
        return self._fresh

    def put(self, rule_id: int, device_id: str, state: PairState) -> None:
        """A state built or changed by this transaction (counted once it commits)."""
        assert self._fresh is not None
        state.version = self._fresh.versions.get(device_id, 0) + 1
        i = self._slot.get(rule_id)
        if i is None:
            i = self._slot[rule_id] = len(self._slot)
        pairs = self._pairs.get(device_id)
        if pairs is None:
            pairs = self._pairs[device_id] = [None] * len(self._slot)
        elif i >= len(pairs):
            pairs.extend([None] * (len(self._slot) - len(pairs)))
        pairs[i] = state
        self._touched.add(device_id)

    def discard(self, rule_id: int, device_id: str) -> None:
        pairs = self._pairs.get(device_id)
        i = self._slot.get(rule_id, -1)
        if pairs is not None and 0 <= i < len(pairs):
            pairs[i] = None

    def undo(self) -> None:
        """The evaluation's savepoint was rolled back: forget what it did to the states."""
        for d in self._touched:
            self._pairs.pop(d, None)
        self._touched.clear()

    def commit(self) -> None:
        """The transaction committed: every device it stored readings of is one version on.
        The states it changed are there already; a state of such a device on a metric the
        batch had nothing of is still right (its inputs did not change) and moves on too;
        any other is out of date and dropped."""
        fresh = self._fresh
        if fresh is None:
            return
        for d, old in fresh.versions.items():
            pairs = self._pairs.get(d)
            if not pairs:
                continue
            metrics = fresh.metrics.get(d, set())
            for i, state in enumerate(pairs):
                if state is None or state.version == old + 1:
                    continue
                if state.version == old and state.metric not in metrics and state.metric != "*":
                    state.version = old + 1
                else:
                    pairs[i] = None
        self._fresh = None
        self._touched.clear()

    def rollback(self) -> None:
        """The transaction was rolled back: the database is as before it, and so must be
        every state it touched."""
        self.undo()
        self._fresh = None
