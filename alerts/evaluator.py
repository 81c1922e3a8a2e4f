"""Evaluate rules on each stored batch, in the batch's transaction, and on a timer.

For every (rule, device) a batch touched, the evaluator asks the rule's kind
(`alerts.kinds`) for its steps, built from readings, flags or hourly rollups that
`alerts.repository` reads once per metric for all the rules, and reconciles the episodes of
those steps with the pair's stored alerts from a point where nothing was in progress (see
`_evaluate_rules`): late, out-of-order and redelivered readings give the alerts in-order
data gives. "No data" rules run on a timer instead; composites after the reading rules.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Row, delete, insert, or_, select
from sqlalchemy.exc import IntegrityError

from alerts import repository
from alerts.evaluation import (
    RANK,
    Episode,
    Feeder,
    Step,
    cleared,
    episodes,
    in_window,
    more_extreme,
    seconds,
)
from alerts.incremental import Cache, PairState
from alerts.kinds import (
    GAP_INTERVALS,
    Composite,
    DmaKind,
    Kind,
    NoData,
    SiteSources,
    Sources,
    describe,
    kind_of,
    newest_stored,
)
from alerts.schemas import SITE_RULE_KINDS
from alerts.service import SYSTEM_ACTOR, StaleAlert, record_event, save
from monitor.core.db import lock_devices, one_of
from monitor.core.models import (
    CLOSED,
    Alert,
    AlertEventKind,
    AlertStatus,
    DeviceStatus,
    Rule,
    RuleKind,
    Severity,
    table,
    utcnow,
)

log = logging.getLogger(__name__)

rules_t = table(Rule)
alerts_t = table(Alert)
readings_t = repository.readings_t

DEFAULT_TZ = ZoneInfo("Asia/Shanghai")
READING_KINDS = (
    RuleKind.threshold,
    RuleKind.rate_of_change,
    RuleKind.flag_held,
    RuleKind.daily_count,
    RuleKind.reference_diff,
)
EPSILON = timedelta(microseconds=1)
FOREVER = datetime.max.replace(tzinfo=UTC)
# events of an alert raised or changed by readings older than what the device had already sent
LATE_TAG = "[from late data] "


class Touched(NamedTuple):
    """Earliest (and, if known, latest) event time a batch added for one (device, metric).
    (A tuple: a batch makes one per device and metric, and frozen dataclasses are slow to
    make.)"""

    device_id: str
    metric: str
    earliest: datetime
    latest: datetime | None = None


@dataclass(slots=True)
class Outcome:
    opened: int = 0
    escalated: int = 0
    resolved: int = 0
    retracted: int = 0


@dataclass(frozen=True, slots=True)
class Subject:
    """What an alert is about: a device (of a site), or a site itself (a DMA's leakage rules
    judge the district metered area, not one of its meters)."""

    site_id: str
    device_id: str | None = None

    def __str__(self) -> str:
        return f"device {self.device_id}" if self.device_id else f"site {self.site_id}"


@dataclass(frozen=True, slots=True)
class _Context:
    """What one evaluation knows besides the readings: each device's event-time watermark
    before this batch (an episode that fired at or before it was raised from late data), and
    whether an episode found already over pages anyone."""

    known: Mapping[str, datetime | None]
    page_ended: bool = False

    def late(self, subject: Subject, e: Episode) -> bool:
        known = self.known.get(subject.device_id or "")
        return known is not None and (e.fired_at or e.started_at) <= known


def applies(rule: Any, device: Any) -> bool:
    """Whether a rule's selectors (kind, site kind, site, district, device) take a device."""
    return _Selector.of(rule).takes(device)


@dataclass(frozen=True, slots=True)
class _Selector:
    """A rule's device selectors, read once per evaluation instead of once per device."""

    device_kind: str
    site_kinds: frozenset[str]
    site_ids: frozenset[str]
    districts: frozenset[str]
    device_ids: frozenset[str]

    @classmethod
    def of(cls, rule: Any) -> _Selector:
        r = rule._mapping
        return cls(
            r["device_kind"],
            frozenset(r["site_kinds"] or ()),
            frozenset(r["site_ids"] or ()),
            frozenset(r["site_districts"] or ()),
            frozenset(r["device_ids"] or ()),
        )

    def any_of_kind(self) -> bool:
        """Whether the rule takes every device of its kind (most rules: no other selector)."""
        return not (self.site_kinds or self.site_ids or self.districts or self.device_ids)

    def takes(self, device: Any) -> bool:
        return (
            self.device_kind == device.kind
            and (not self.site_kinds or device.site_kind in self.site_kinds)
            and (not self.site_ids or device.site_id in self.site_ids)
            and (not self.districts or device.district in self.districts)
            and (not self.device_ids or device.id in self.device_ids)
        )


@dataclass(slots=True)
class Planned:
    """What a batch's evaluation reads before it judges anything: the rules, the devices,
    and which (rule, device) pairs to judge (`plan_batch`)."""

    plans: list[tuple[Row[Any], dict[str, datetime]]]
    composites: list[Row[Any]]
    devices: dict[str, Any]
    latest: dict[str, datetime | None]
    ctx: _Context


def plan_batch(
    conn: Connection,
    touched: Iterable[Touched],
    *,
    page_ended: bool = False,
    rule_ids: Collection[int] | None = None,
) -> Planned | None:
    """The first part of `evaluate_batch`: read the rules and devices a batch touched and
    plan the pairs to judge (None: nothing to judge). Reads only: the readings of the batch
    need not be stored yet."""
    earliest: dict[tuple[str, str], datetime] = {}
    latest: dict[str, datetime | None] = {}
    for t in touched:
        key = (t.device_id, t.metric)
        if key not in earliest or t.earliest < earliest[key]:
            earliest[key] = t.earliest
        # a device's newest event time in the batch; None if any part does not say (then it
        # is looked up where needed)
        known = latest.get(t.device_id, t.latest)
        latest[t.device_id] = None if known is None or t.latest is None else max(known, t.latest)
    if not earliest:
        return None
    # one evaluation of a device at a time (the writer holds these locks already)
    lock_devices(conn, latest)
    by_metric: dict[str, dict[str, datetime]] = defaultdict(dict)
    for (d, m), ts in earliest.items():
        by_metric[m][d] = ts
    q = select(rules_t).where(
        rules_t.c.enabled.is_(True),
        rules_t.c.kind.in_([*READING_KINDS, RuleKind.composite]),
        or_(rules_t.c.metric.in_(list(by_metric)), rules_t.c.metric == "*"),
    )
    if rule_ids is not None:
        q = q.where(rules_t.c.id.in_(list(rule_ids)))
    rules = conn.execute(q.order_by(rules_t.c.id)).all()
    if not rules:
        return None
    devices = repository.devices(conn, latest)
    any_metric: dict[str, datetime] = {}
    for (d, _), ts in earliest.items():
        any_metric[d] = min(ts, any_metric.get(d, ts))
    everyone: dict[str, Any] | None = None
    plans: list[tuple[Row[Any], dict[str, datetime]]] = []
    of_kind: dict[str, dict[str, Any]] = defaultdict(dict)  # a rule takes one kind of device
    for d, device in devices.items():
        of_kind[device.kind][d] = device
    for rule in rules:
        if rule.kind == RuleKind.composite:
            continue
        selector = _Selector.of(rule)
        candidates = any_metric if rule.metric == "*" else by_metric.get(rule.metric, {})
        mine = of_kind.get(selector.device_kind, {})
        if selector.any_of_kind():  # (the plan's hot loop: devices × rules)
            targets = {d: ts for d, ts in candidates.items() if d in mine}
        else:
            targets = {
                d: ts
                for d, ts in candidates.items()
                if (device := mine.get(d)) is not None and selector.takes(device)
            }
        refs = set((rule.params or {}).get("reference_device_ids", []))
        late_refs = [ts for d, ts in by_metric.get(rule.metric, {}).items() if d in refs]
        if rule.kind == RuleKind.reference_diff and late_refs:
            # a reference station's hour changes every site's difference for that hour
            everyone = everyone if everyone is not None else repository.devices(conn)
            for d, device in everyone.items():
                if d not in refs and selector.takes(device):
                    targets[d] = min(min(late_refs), targets.get(d, min(late_refs)))
                    devices = {**devices, d: device}
        if targets:
            plans.append((rule, targets))
    ctx = _Context({d: row.watermark_at for d, row in devices.items()}, page_ended)
    composites = [rule for rule in rules if rule.kind == RuleKind.composite]
    return Planned(plans, composites, devices, latest, ctx)


def evaluate_batch(
    conn: Connection,
    touched: Iterable[Touched],
    tz: ZoneInfo = DEFAULT_TZ,
    *,
    page_ended: bool = False,
    rule_ids: Collection[int] | None = None,
    cache: Cache | None = None,
    planned: Planned | None = None,
    folded: Folded | None = None,
) -> Outcome:
    """Apply every enabled reading-driven rule to what a stored batch touched, then the
    composite rules over their results.

    The work is shared between rules: the open alerts and resolved watermarks of every (rule,
    device) pair come in one query each, and the readings of one metric in one query for all
    the rules on that metric, so a batch costs a few queries per metric, not per rule and
    device.

    `planned` and `folded` are the batch's `plan_batch` and `fold_cached`, when the caller
    ran them already (the writer folds kept state while the batch's insert runs)."""
    outcome = Outcome()
    if planned is None:
        planned = plan_batch(conn, touched, page_ended=page_ended, rule_ids=rule_ids)
    if planned is None:
        return outcome
    if planned.plans:
        _evaluate_rules(
            conn,
            planned.plans,
            planned.devices,
            planned.latest,
            outcome,
            tz,
            planned.ctx,
            cache,
            folded,
        )
    if planned.composites:
        _evaluate_composites(conn, planned.composites, planned.latest, planned.devices, outcome)
    return outcome


def reevaluate(
    conn: Connection,
    device_ids: Collection[str],
    since: datetime,
    tz: ZoneInfo = DEFAULT_TZ,
    rule_ids: Collection[int] | None = None,
) -> Outcome:
    """Recompute the alerts of these devices from their stored readings since `since` (after
    a rule change, or to check the engine). The same rebuild as every batch's, so running it
    twice changes nothing the first run did not."""
    pairs = conn.execute(
        select(readings_t.c.device_id, readings_t.c.metric)
        .where(one_of(conn, readings_t.c.device_id, device_ids), readings_t.c.ts >= since)
        .distinct()
    ).all()
    touched = [Touched(d, m, since) for d, m in pairs]
    return evaluate_batch(conn, touched, tz, rule_ids=rule_ids)


SHADOWED = (
    "rule_id",
    "device_id",
    "status",
    "severity",
    "started_at",
    "fired_at",
    "resolved_at",
    "violations",
    "peak_value",
    "last_value",
    "last_violation_at",
    "clear_since",
    "evaluated_until",
)


def shadow_mismatches(
    conn: Connection, touched: Iterable[Touched], tz: ZoneInfo = DEFAULT_TZ
) -> int:
    """Check kept state against the reference: rebuild everything a batch touched without a
    cache, in a savepoint that is rolled back, and count the alerts of those devices that the
    rebuild leaves different from what the batch's evaluation stored (0: the cached path and
    the rebuild agree)."""
    touched = list(touched)
    ids = {t.device_id for t in touched}
    before = _alert_states(conn, ids)
    savepoint = conn.begin_nested()
    try:
        evaluate_batch(conn, touched, tz)
        after = _alert_states(conn, ids)
    finally:
        savepoint.rollback()
    return sum(1 for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def _alert_states(conn: Connection, device_ids: Collection[str]) -> dict[Any, tuple[Any, ...]]:
    rows = conn.execute(
        select(*(alerts_t.c[c] for c in SHADOWED), alerts_t.c.id).where(
            one_of(conn, alerts_t.c.device_id, device_ids),
            alerts_t.c.status != AlertStatus.retracted,
        )
    )
    return {(r.rule_id, r.device_id, r.started_at): tuple(r)[:-1] for r in rows}


def evaluate_sites(
    conn: Connection,
    days: Mapping[str, date],
    tz: ZoneInfo = DEFAULT_TZ,
    *,
    page_ended: bool = False,
    rule_ids: Collection[int] | None = None,
    outlet_pressure_mpa: float | None = None,
    frost_depth_m: float | None = None,
    readings_since: Mapping[str, datetime] | None = None,
) -> Outcome:
    """The rules whose subject is a DMA site (night flow, bursts, leakage rate) over the
    sites whose figures changed: `days` maps each site to the earliest local day whose
    figures (or consumption) changed, `readings_since` (when readings changed them) to the
    earliest changed reading, from which a rule that reads readings (the burst rule) judges
    rather than from local midnight (`DmaKind.start_of`). The same rebuild and reconcile as
    the reading rules', so late days and recomputed figures give the alerts in-order data
    gives."""
    outcome = Outcome()
    if not days:
        return outcome
    q = select(rules_t).where(rules_t.c.enabled.is_(True), rules_t.c.kind.in_(SITE_RULE_KINDS))
    if rule_ids is not None:
        q = q.where(rules_t.c.id.in_(list(rule_ids)))
    rules = conn.execute(q.order_by(rules_t.c.id)).all()
    sites = repository.dma_sites(conn, days)
    if not rules or not sites:
        return outcome
    src = SiteSources(conn, sites, tz, outlet_pressure_mpa, frost_depth_m)
    since = {
        s: datetime.combine(d, time(0), tzinfo=tz).astimezone(UTC)
        for s, d in days.items()
        if s in sites
    }
    ctx = _Context({}, page_ended)
    for rule in rules:
        kind = kind_of(rule)
        assert isinstance(kind, DmaKind)
        r = rule._mapping
        changed = readings_since or {}
        targets = {
            s: kind.start_of(ts, changed.get(s))
            for s, ts in since.items()
            if (not r["site_ids"] or s in r["site_ids"])
            and (not r["site_districts"] or sites[s].district in r["site_districts"])
        }
        if not targets:
            continue
        lookback = kind.lookback()
        existing = repository.pair_alerts(
            conn, [rule.id], [], min(targets.values()) - lookback, site_ids=list(targets)
        )
        fold = {
            s: _fold_start(ts - lookback, existing.get((rule.id, s), []))
            for s, ts in targets.items()
        }
        series = kind.site_series(src, {s: start - lookback for s, (start, _) in fold.items()})
        for s, (start, mine) in fold.items():
            found = _episodes(rule, series.get(s, []), start, tz)
            _reconcile(conn, rule, Subject(s), _dicts(mine), found, outcome, ctx)
    return outcome


def evaluate_timers(conn: Connection, now: datetime, tz: ZoneInfo = DEFAULT_TZ) -> Outcome:
    """ "No data" rules: how long each active device has been silent, at wall time `now`."""
    outcome = Outcome()
    rules = conn.execute(
        select(rules_t).where(rules_t.c.enabled.is_(True), rules_t.c.kind == RuleKind.no_data)
    ).all()
    if not rules:
        return outcome
    devices = repository.devices(conn)
    for rule in rules:
        if not in_window(_hhmm(now, tz), rule.active_from, rule.active_to):
            continue
        # one query for the rule's open alerts, not one per device: this runs every 30 s
        open_alerts = {
            row.device_id: row
            for row in conn.execute(
                select(alerts_t).where(
                    alerts_t.c.rule_id == rule.id, alerts_t.c.status.not_in(CLOSED)
                )
            )
        }
        kind = kind_of(rule)
        assert isinstance(kind, NoData)
        for device in devices.values():
            if device.status != DeviceStatus.active or not applies(rule, device):
                continue
            step = kind.silence(device, now)
            state = open_alerts.get(device.id)
            if state is None and step.level is None:
                continue
            _fold(conn, rule, Subject(device.site_id, device.id), state, [step], outcome)
    return outcome


def _hhmm(ts: datetime, tz: ZoneInfo) -> str:
    return ts.astimezone(tz).strftime("%H:%M")


def _evaluate_rules(
    conn: Connection,
    plans: list[tuple[Row[Any], dict[str, datetime]]],
    devices: Mapping[str, Row[Any]],
    latest: Mapping[str, datetime | None],
    outcome: Outcome,
    tz: ZoneInfo,
    ctx: _Context,
    cache: Cache | None = None,
    folded: Folded | None = None,
) -> None:
    """Rebuild each rule's episodes over each device's series from a point where nothing was
    in progress, and reconcile them with every alert of the pair from there on.

    A reading at t changes no step before t, so the alerts stored for the steps before t are
    still right. The fold starts a lookback before the earliest new reading, moved back to the
    start of any alert still going on there (however old), and never before an inspector's
    resolve (final). The series itself starts one more lookback earlier, so the first folded
    step's window is whole. Late, out-of-order and redelivered readings therefore give the
    alerts in-order data gives, within the lateness horizon.

    With a `cache`, the pairs whose state it holds for this batch fold only the batch's new
    readings into it (`fold_cached`, or `folded` when the caller ran it); the others are
    rebuilt here and leave their state in the cache."""
    if cache is not None:
        if folded is None:
            folded = fold_cached(plans, devices, tz, cache)
        plans = _reconcile_folded(conn, folded, outcome, ctx)
        if not plans:
            return
    kinds = [kind_of(rule) for rule, _ in plans]
    keep = [cache is not None and k.incremental for k in kinds]
    lookbacks = [k.lookback() for k in kinds]
    froms = [
        {d: kind.fold_from(since, devices[d]) for d, since in targets.items()}
        for (_, targets), kind in zip(plans, kinds, strict=True)
    ]
    earliest = min(ts for f in froms for ts in f.values())
    by_pair = repository.pair_alerts(
        conn,
        [rule.id for rule, _ in plans],
        {d for _, targets in plans for d in targets},
        earliest,
    )
    starts: list[dict[str, datetime]] = []
    folds: list[dict[str, tuple[datetime, list[Row[Any]]]]] = []
    for (rule, targets), kind, lookback, fold_from in zip(
        plans, kinds, lookbacks, froms, strict=True
    ):
        begin: dict[str, datetime] = {}
        fold: dict[str, tuple[datetime, list[Row[Any]]]] = {}
        for device_id in targets:
            start, mine = _fold_start(fold_from[device_id], by_pair.get((rule.id, device_id), []))
            begin[device_id] = start - lookback
            fold[device_id] = (start, mine)
        worth = kind.worth_reading(conn, begin)
        if worth is not None:
            # and the devices with an alert that may change
            begin = {d: ts for d, ts in begin.items() if d in worth or fold[d][1]}
        starts.append(begin)
        folds.append(fold)
    # (a pair whose state is to be kept is read whole: its state needs the readings)
    bounded = [
        (k.metric if k.bounded_by_extremes() and not kept else None, begin)
        for k, begin, kept in zip(kinds, starts, keep, strict=True)
    ]
    extremes = repository.extremes(conn, repository.earliest_by(bounded))
    for i, kind in enumerate(kinds):
        if kind.bounded_by_extremes() and not keep[i]:
            # A mean lies between the smallest and the largest reading it averages: where
            # none of a device's readings in the window passes a tier, neither can any mean
            # of them, and unless an alert is there to reconcile there is nothing to judge.
            got = extremes.get(kind.metric, {})
            starts[i] = {
                d: ts for d, ts in starts[i].items() if folds[i][d][1] or kind.may_pass(got.get(d))
            }
    raw = [(k.raw_key(), begin) for k, begin in zip(kinds, starts, strict=True)]
    src = Sources(
        conn,
        devices,
        tz,
        repository.fetch_readings(conn, repository.earliest_by(raw)),
        latest,
        cache.fresh.instants if cache is not None and cache.has_fresh else {},
    )
    for (rule, targets), kind, begin, fold, kept in zip(
        plans, kinds, starts, folds, keep, strict=True
    ):
        if kept:
            fed = kind.fed(src, begin) if begin else {}
            series = {d: got[0] for d, got in fed.items()}
        else:
            series = kind.series(src, begin) if begin else {}
        for device_id in targets:
            start, existing = fold[device_id]
            steps = series.get(device_id, [])
            found = _episodes(rule, steps, start, tz)
            subject = Subject(devices[device_id].site_id, device_id)
            still_open = _reconcile(conn, rule, subject, _dicts(existing), found, outcome, ctx)
            if not kept or cache is None:
                continue
            device = devices[device_id]
            if device_id in fed:
                _keep(cache, rule, kind, device, fed[device_id], found, still_open)
            elif kind.starts_empty and not existing:
                # left out as having nothing to judge: its state is an empty one, as of the
                # newest reading stored of it (before or in this batch)
                gap = seconds(GAP_INTERVALS * int(device.interval_s))
                empty: tuple[list[Step], Feeder, datetime | None] = (
                    [],
                    kind.feeder(gap),
                    newest_stored(device, latest.get(device_id)),
                )
                _keep(cache, rule, kind, device, empty, found, still_open)


def _dicts(rows: list[Row[Any]]) -> list[dict[str, Any]]:
    return [dict(row._mapping) for row in rows]


def _signature(cache: Cache, rule: tuple[Any, ...], device: Row[Any]) -> tuple[Any, ...]:
    """What a pair's state was built from besides readings: the rule as it reads now, and the
    device's reporting interval (runs break on gaps of it) and site (the alert's subject)."""
    return cache.signature(rule, device.interval_s, device.site_id)


def _keep(
    cache: Cache,
    rule: Row[Any],
    kind: Kind,
    device: Row[Any],
    fed: tuple[list[Step], Feeder, datetime | None],
    found: list[Episode],
    still_open: dict[str, Any] | None,
) -> None:
    """Leave the state of a rebuilt pair in the cache: its feeder (fed every reading read), the
    episode still going on at the end of the fold, and the open alert as now stored."""
    _, feeder, newest = fed
    r = rule._mapping
    state = PairState(
        _signature(cache, cache.as_read(rule), device),
        kind.metric,
        newest,
        feeder,
        still_open,
        rule,
        clear_above=r["clear_above"],
        clear_below=r["clear_below"],
        quiet_s=int(r["quiet_s"]),
        auto_resolve=bool(r["auto_resolve"]),
    )
    if found and found[-1].resolved_at is None:
        state.cur = found[-1]
    cache.put(rule.id, device.id, state)


@dataclass(slots=True)
class Folded:
    """The kept-state part of a batch's evaluation (`fold_cached`): the pairs whose episodes
    changed, to be reconciled with their alerts, and the plans of the pairs left to rebuild."""

    judged: list[tuple[Row[Any], Subject, PairState, list[Episode]]]
    rest: list[tuple[Row[Any], dict[str, datetime]]]


def fold_cached(
    plans: list[tuple[Row[Any], dict[str, datetime]]],
    devices: Mapping[str, Row[Any]],
    tz: ZoneInfo,
    cache: Cache,
) -> Folded:
    """Fold the batch's new readings into the cached state of every pair the cache holds and
    can take them (see alerts/incremental.py). No database work: the writer runs this while
    the batch's insert runs. Its states count as changed by the open transaction."""
    judged: list[tuple[Row[Any], Subject, PairState, list[Episode]]] = []
    rest: list[tuple[Row[Any], dict[str, datetime]]] = []
    fresh = cache.fresh
    for rule, targets in plans:
        kind = kind_of(rule)
        if not kind.incremental:
            rest.append((rule, targets))
            continue
        r = rule._mapping
        windowed = r["active_from"] is not None and r["active_to"] is not None
        rebuild: dict[str, datetime] = {}
        as_read = cache.as_read(rule)  # (once per rule, not per device)
        for device_id, since in targets.items():
            device = devices[device_id]
            state = cache.get(rule.id, device_id, _signature(cache, as_read, device))
            points = kind.fresh_items(fresh, device_id) if state is not None else None
            if (
                state is None
                or points is None
                or (points and state.until is not None and points[0].ts <= state.until)
                or not kind.takes(state.feeder, points)
            ):
                # late, repeated or first seen: rebuilt (and kept) by the reference path
                cache.discard(rule.id, device_id)
                rebuild[device_id] = since
                continue
            cache.put(rule.id, device_id, state)  # before any change: undone on failure
            if not points:
                continue
            found: list[Episode] = []
            fold = state  # (the pair's state is its episode's fold)
            for step in kind.fold(state.feeder, points, device, fresh):
                if windowed and not in_window(_hhmm(step.ts, tz), r["active_from"], r["active_to"]):
                    continue
                ended = fold.feed(step)
                if ended is not None:
                    found.append(ended)
            state.until = points[-1].ts
            if fold.cur is not None:
                found.append(fold.cur)
            if found or state.alert is not None:
                judged.append((rule, Subject(device.site_id, device_id), state, found))
        if rebuild:
            rest.append((rule, rebuild))
    return Folded(judged, rest)


def _reconcile_folded(
    conn: Connection, folded: Folded, outcome: Outcome, ctx: _Context
) -> list[tuple[Row[Any], dict[str, datetime]]]:
    """Store what the kept states judged; returns the plans of the pairs left to rebuild."""
    for rule, subject, state, found in folded.judged:
        existing = [state.alert] if state.alert is not None else []
        state.alert = _reconcile(conn, rule, subject, existing, found, outcome, ctx)
    return folded.rest


def _episodes(rule: Row[Any], series: list[Step], start: datetime, tz: ZoneInfo) -> list[Episode]:
    """The episodes of a pair's steps from the fold start, in the rule's active hours."""
    r = rule._mapping
    steps = [
        s
        for s in series
        if s.ts >= start and in_window(_hhmm(s.ts, tz), r["active_from"], r["active_to"])
    ]
    if steps and steps[0].since is not None and steps[0].since < start:
        # a run that began before the fold start (an inspector closed what came before)
        steps = [
            Step(s.ts, s.value, s.level, s.held, max(s.since, start)) if s.since else s
            for s in steps
        ]
    return episodes(
        rule,
        steps,
        clear_above=r["clear_above"],
        clear_below=r["clear_below"],
        quiet_s=int(r["quiet_s"]),
        auto_resolve=bool(r["auto_resolve"]),
    )


def _fold_start(lo: datetime, alerts: list[Row[Any]]) -> tuple[datetime, list[Row[Any]]]:
    """Where to fold a pair's steps from, and the alerts to reconcile from there: `lo`, moved
    back to the start of an alert going on at `lo`, but never to or before an inspector's
    resolve (what it closed stays closed; only later steps are judged)."""
    closed_by_person = [
        a.resolved_at
        for a in alerts
        if a.status == AlertStatus.resolved
        and a.resolved_by not in (None, SYSTEM_ACTOR)
        and a.resolved_at is not None
    ]
    barrier = max(closed_by_person, default=None)
    start = lo
    for a in alerts:
        if a.started_at < start and (a.resolved_at is None or a.resolved_at >= start):
            start = a.started_at
    if barrier is not None and start <= barrier:
        start = barrier + EPSILON
    mine = [
        a
        for a in alerts
        if (a.resolved_at is None or a.resolved_at >= start)
        and a.started_at >= (barrier or a.started_at)
        and not (a.status == AlertStatus.resolved and a.resolved_by not in (None, SYSTEM_ACTOR))
    ]
    return start, mine


def _reconcile(
    conn: Connection,
    rule: Row[Any],
    subject: Subject,
    existing: list[dict[str, Any]],
    found: list[Episode],
    outcome: Outcome,
    ctx: _Context,
) -> dict[str, Any] | None:
    """Make the pair's alerts from the fold start on exactly the episodes found: an episode
    takes over the first alert it overlaps (and retracts the others it overlaps: late data
    joined them), an alert that overlaps no episode is retracted (a pending one is deleted:
    nothing was said about it), an episode that overlaps no alert is inserted.

    Returns the pair's open alert afterwards (its columns as now stored), if any."""
    used: set[int] = set()
    plan: list[tuple[dict[str, Any] | None, Episode]] = []
    merged: list[tuple[dict[str, Any], str]] = []
    for e in found:
        end = e.resolved_at or FOREVER
        over = [
            a
            for a in existing
            if a["id"] not in used
            and a["started_at"] <= end
            and e.started_at <= (a["resolved_at"] or FOREVER)
        ]
        for a in over:
            used.add(a["id"])
        if over:
            plan.append((over[0], e))
            merged += [(a, f"merged into alert {over[0]['id']} by later data") for a in over[1:]]
        else:
            plan.append((None, e))
    gone = [(a, "later data shows no episode here") for a in existing if a["id"] not in used]
    for alert, why in merged + gone:
        _retract(conn, alert, why, outcome)
    still_open: dict[str, Any] | None = None
    for target, e in plan:
        if target is not None:
            _update(conn, rule, target, e, outcome, ctx.late(subject, e))
            if e.resolved_at is None:
                still_open = target
    for target, e in plan:
        if target is None:
            inserted = _insert_episode(conn, rule, subject, e, outcome, ctx)
            if inserted is None:
                # another evaluator opened this alert first (it holds the device's lock only
                # on PostgreSQL): the next batch's reconcile takes it over
                raise StaleAlert(f"rule {rule.id} {subject}: opened meanwhile")
            if e.resolved_at is None:
                still_open = inserted
    return still_open


def _retract(conn: Connection, alert: dict[str, Any], why: str, outcome: Outcome) -> None:
    if alert["status"] == AlertStatus.pending:
        conn.execute(delete(alerts_t).where(alerts_t.c.id == alert["id"]))
        return
    save(conn, alert["id"], alert["version"], {"status": AlertStatus.retracted})
    _event(conn, alert["id"], AlertEventKind.retracted, note=why)
    outcome.retracted += 1


def _insert_episode(
    conn: Connection,
    rule: Row[Any],
    subject: Subject,
    e: Episode,
    outcome: Outcome,
    ctx: _Context,
) -> dict[str, Any] | None:
    """Insert the episode's alert with its events; returns its columns (None when another
    evaluator has the pair's open alert)."""
    maintenance = repository.in_maintenance(conn, subject.site_id, subject.device_id, e.started_at)
    severity = e.severity
    message = describe(rule, severity, e.peak)
    if maintenance:
        message = f"[maintenance: {maintenance}] {message}"
    status = (
        AlertStatus.resolved
        if e.resolved_at
        else AlertStatus.firing
        if e.fired_at
        else AlertStatus.pending
    )
    now = utcnow()
    values: dict[str, Any] = {
        "rule_id": rule.id,
        "device_id": subject.device_id,
        "site_id": subject.site_id,
        "status": status,
        "severity": severity,
        "started_at": e.started_at,
        "fired_at": e.fired_at or e.started_at,
        "last_violation_at": e.last_violation_at,
        "evaluated_until": e.until or e.started_at,
        "last_value": e.last_value,
        "peak_value": e.peak,
        "violations": e.violations,
        "message": message,
        "suppressed": maintenance is not None,
        "clear_since": e.clear_since,
        "resolved_at": e.resolved_at,
        "resolved_by": SYSTEM_ACTOR if e.resolved_at else None,
        "version": 1,
        "created_at": now,
        "updated_at": now,
    }
    alert_id = _insert_alert(conn, values)
    if alert_id is None:
        return None
    values.update(id=alert_id, acknowledged_at=None)
    late = ctx.late(subject, e)
    # an episode already over when it is found is recorded, not paged (unless asked to)
    notify = e.resolved_at is None or ctx.page_ended
    tag = LATE_TAG if late else ""
    if e.fired_at is None or rule.for_s:
        # the history is the same however the readings were batched: a rule with a "for"
        # window always shows its pending phase
        _event(
            conn,
            alert_id,
            AlertEventKind.pending,
            note=tag + message,
            severity=severity,
            value=e.first_value,
        )
    if e.fired_at is None:
        return values
    # escalations only go up, so an episode that escalated was first a warning
    first_severity = Severity.warning if e.escalations else severity
    _event(
        conn,
        alert_id,
        AlertEventKind.opened,
        note=tag + describe(rule, first_severity, e.first_value),
        severity=first_severity,
        value=e.first_value,
        notify=notify,
    )
    outcome.opened += 1
    for _, sev, value in e.escalations:
        _event(
            conn,
            alert_id,
            AlertEventKind.escalated,
            note=tag + describe(rule, sev, value),
            severity=sev,
            value=value,
            notify=notify,
        )
        outcome.escalated += 1
    if e.resolved_at:
        _event(
            conn,
            alert_id,
            AlertEventKind.resolved,
            note=tag + _cleared(e),
            value=e.last_value,
            notify=notify,
        )
        outcome.resolved += 1
    return values


def _cleared(e: Episode) -> str:
    since = e.clear_since.isoformat() if e.clear_since else ""
    return f"condition clear since {since}: value back to {e.last_value:.4g}"


def _update(
    conn: Connection,
    rule: Row[Any],
    state: dict[str, Any],
    e: Episode,
    outcome: Outcome,
    late: bool,
) -> None:
    """Bring an alert to its episode's state. Every field is the episode's (a function of
    the readings), so evaluating the same readings twice changes nothing; the status moves
    as the episode says, keeping an inspector's acknowledgement."""
    tag = LATE_TAG if late else ""
    changes: dict[str, Any] = {
        "started_at": e.started_at,
        "last_violation_at": e.last_violation_at,
        "last_value": e.last_value,
        "peak_value": e.peak,
        "violations": e.violations,
        "clear_since": e.clear_since,
        "evaluated_until": e.until or e.started_at,
        "severity": e.severity,
        "fired_at": e.fired_at or e.started_at,
    }
    status = state["status"]
    if status == AlertStatus.pending:
        if e.fired_at is not None:
            status = AlertStatus.firing
            changes.update(status=status, message=describe(rule, e.severity, e.peak))
            _event(
                conn,
                state["id"],
                AlertEventKind.opened,
                note=tag + changes["message"],
                severity=e.severity,
                value=e.peak,
            )
            outcome.opened += 1
        else:
            changes["message"] = describe(rule, e.severity, e.peak)
    elif RANK[e.severity] > RANK[Severity(state["severity"])]:
        changes["message"] = describe(rule, e.severity, e.peak)
        _event(
            conn,
            state["id"],
            AlertEventKind.escalated,
            note=tag + changes["message"],
            severity=e.severity,
            value=e.peak,
        )
        outcome.escalated += 1
    if e.resolved_at is not None and status != AlertStatus.pending:
        if status != AlertStatus.resolved:
            _event(
                conn,
                state["id"],
                AlertEventKind.resolved,
                note=tag + _cleared(e),
                value=e.last_value,
            )
            outcome.resolved += 1
        changes.update(
            status=AlertStatus.resolved, resolved_at=e.resolved_at, resolved_by=SYSTEM_ACTOR
        )
    elif e.resolved_at is None and status == AlertStatus.resolved:
        # late data shows the episode had not ended: open again (acknowledged, if it was)
        reopened = AlertStatus.acknowledged if state["acknowledged_at"] else AlertStatus.firing
        changes.update(status=reopened, resolved_at=None, resolved_by=None)
        _event(
            conn,
            state["id"],
            AlertEventKind.reopened,
            note=tag + "later data shows the condition had not cleared",
            value=e.last_value,
        )
    if any(state.get(k) != v for k, v in changes.items()):
        state["version"] = save(conn, state["id"], state["version"], changes)
        state.update(changes)


_WARNED: set[int] = set()  # composite rules already reported as naming unknown rules


def _evaluate_composites(
    conn: Connection,
    rules: list[Row[Any]],
    latest: Mapping[str, datetime | None],
    devices: Mapping[str, Row[Any]],
    outcome: Outcome,
) -> None:
    """AND/OR of other rules: e.g. a burst is a pressure drop AND an inflow rise. Judged at
    each touched device's newest reading in the batch, after the reading rules have run."""
    names = {name for rule in rules for name in (rule.params or {}).get("rules", [])}
    ids: dict[str, int] = dict(
        conn.execute(select(rules_t.c.name, rules_t.c.id).where(rules_t.c.name.in_(names))).all()
    )
    for rule in rules:
        kind = kind_of(rule)
        assert isinstance(kind, Composite)
        parts = [ids[name] for name in kind.parts() if name in ids]
        if len(parts) < len(kind.parts()):
            if rule.id not in _WARNED:
                _WARNED.add(rule.id)
                missing = sorted(set(kind.parts()) - set(ids))
                log.warning("composite %s names unknown rules %s: not judged", rule.name, missing)
            continue
        selector = _Selector.of(rule)
        targets = [d for d in latest if d in devices and selector.takes(devices[d])]
        if not parts or not targets:
            continue
        severities: dict[str, dict[int, str]] = defaultdict(dict)
        for row in conn.execute(
            select(alerts_t.c.device_id, alerts_t.c.rule_id, alerts_t.c.severity).where(
                one_of(conn, alerts_t.c.device_id, targets),
                one_of(conn, alerts_t.c.rule_id, parts),
                alerts_t.c.status.in_([AlertStatus.firing, AlertStatus.acknowledged]),
            )
        ):
            severities[row.device_id][row.rule_id] = row.severity
        open_alerts = {
            row.device_id: row
            for row in conn.execute(
                select(alerts_t).where(
                    alerts_t.c.rule_id == rule.id,
                    one_of(conn, alerts_t.c.device_id, targets),
                    alerts_t.c.status.not_in(CLOSED),
                )
            )
        }
        for device_id in targets:
            have = severities.get(device_id, {})
            rank, level = kind.combine([have.get(i) for i in parts])
            state = open_alerts.get(device_id)
            if state is None and level is None:
                continue
            at = latest[device_id] or repository.newest_reading(conn, device_id)
            if state is not None and state.evaluated_until >= at:
                continue
            subject = Subject(devices[device_id].site_id, device_id)
            _fold(conn, rule, subject, state, [Step(at, rank, level, level, at)], outcome)


def _event(
    conn: Connection,
    alert_id: int,
    kind: AlertEventKind,
    *,
    note: str,
    severity: str | None = None,
    value: float | None = None,
    notify: bool = True,
) -> None:
    """An alert event by the evaluator itself."""
    record_event(
        conn,
        alert_id,
        kind,
        SYSTEM_ACTOR,
        note=note,
        severity=severity,
        value=value,
        notify=notify,
    )


def _insert_alert(conn: Connection, values: dict[str, Any]) -> int | None:
    """Insert an open alert; None if another evaluator opened one for the same rule and
    device first (the database allows one open alert per pair)."""
    try:
        with conn.begin_nested():
            return int(
                conn.execute(insert(alerts_t).values(values).returning(alerts_t.c.id)).scalar_one()
            )
    except IntegrityError:
        return None


def _fold(
    conn: Connection,
    rule: Row[Any],
    subject: Subject,
    alert: Row[Any] | None,
    steps: list[Step],
    outcome: Outcome,
) -> None:
    """Incremental lifecycle for the rules judged on the clock or on other alerts (no data,
    composites): their steps have no history to rebuild, and always hold at once (held ==
    level), so they have no pending phase. Reading rules go through `_reconcile`."""
    r = rule._mapping
    state = dict(alert._mapping) if alert is not None else None
    changed = False
    for step in steps:
        if state is None:
            if step.held is None:
                continue
            state = _open(conn, rule, subject, step, outcome)
            changed = False
            if state is None:  # another evaluator holds the open alert: fold into it
                existing = repository.open_alert(conn, r["id"], subject.site_id, subject.device_id)
                if existing is None or step.ts <= existing.evaluated_until:
                    continue
                state = dict(existing._mapping)
            else:
                continue
        state["evaluated_until"] = step.ts
        changed = True
        if step.level is not None:
            state["violations"] += 1
            state["last_violation_at"] = step.ts
            state["last_value"] = step.value
            state["peak_value"] = more_extreme(rule, state["peak_value"], step.value)
            state["clear_since"] = None
        if step.held is not None and RANK[step.held] > RANK[Severity(state["severity"])]:
            state["severity"] = step.held
            state["message"] = describe(rule, step.held, step.value)
            _event(
                conn,
                state["id"],
                AlertEventKind.escalated,
                note=state["message"],
                severity=step.held,
                value=step.value,
            )
            outcome.escalated += 1
        if r["auto_resolve"] and cleared(rule, step.value, r["clear_above"], r["clear_below"]):
            since = state.get("clear_since") or step.ts
            state["clear_since"] = since
            if step.ts - since >= timedelta(seconds=int(r["quiet_s"])):
                state["status"] = AlertStatus.resolved
                state["resolved_at"] = step.ts
                state["resolved_by"] = SYSTEM_ACTOR
                _event(
                    conn,
                    state["id"],
                    AlertEventKind.resolved,
                    note=f"condition clear since {since.isoformat()}: value back to "
                    f"{step.value:.4g}",
                    value=step.value,
                )
                outcome.resolved += 1
                _save(conn, state)
                state, changed = None, False
        elif step.level is None:
            state["clear_since"] = None  # back inside the limits but not past the clearing line
    if state is not None and changed:
        _save(conn, state)


def _open(
    conn: Connection, rule: Row[Any], subject: Subject, step: Step, outcome: Outcome
) -> dict[str, Any] | None:
    """Open a firing alert for a step that holds; None when another evaluator has one open."""
    assert step.held is not None
    e = Episode(
        started_at=step.since or step.ts,
        severity=step.held,
        first_value=step.value,
        peak=step.value,
        last_value=step.value,
        last_violation_at=step.ts,
        fired_at=step.ts,
        until=step.ts,
    )
    inserted = _insert_episode(conn, rule, subject, e, outcome, _Context({}))
    if inserted is None:
        return None
    row = conn.execute(select(alerts_t).where(alerts_t.c.id == inserted["id"])).one()
    return dict(row._mapping)


def _save(conn: Connection, state: dict[str, Any]) -> None:
    fields = (
        "status",
        "severity",
        "fired_at",
        "last_violation_at",
        "evaluated_until",
        "last_value",
        "peak_value",
        "violations",
        "message",
        "resolved_at",
        "resolved_by",
        "clear_since",
    )
    state["version"] = save(
        conn, state["id"], state["version"], {f: state[f] for f in fields if f in state}
    )
