"""Evaluate rules on each stored batch, in the batch's transaction.

For every (rule, device) the batch touched, the evaluator reads the N-flagged readings the
rule's window and "for" duration need, runs `evaluation.evaluate`, and folds the steps after
the alert's watermark (`evaluated_until`) into the alert: a redelivered or late reading is
never counted twice.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Row, func, insert, select, update

from alerts.evaluation import RANK, Point, Step, evaluate, more_extreme
from alerts.service import SYSTEM_ACTOR, record_event
from monitor.core.catalogue import METRICS
from monitor.core.models import (
    Alert,
    AlertEventKind,
    AlertStatus,
    Device,
    Reading,
    Rule,
    Severity,
    Site,
    table,
    utcnow,
)

log = logging.getLogger(__name__)

rules_t = table(Rule)
alerts_t = table(Alert)
readings_t = table(Reading)
devices_t = table(Device)
sites_t = table(Site)


@dataclass(frozen=True, slots=True)
class Touched:
    """Earliest event time a batch added for one (device, metric)."""

    device_id: str
    metric: str
    earliest: datetime


@dataclass(slots=True)
class Outcome:
    opened: int = 0
    escalated: int = 0
    resolved: int = 0


def _applies(rule: Row[Any], device: Any) -> bool:
    r = rule._mapping
    d = device._mapping
    return (
        r["device_kind"] == d["kind"]
        and (not r["site_kinds"] or d["site_kind"] in r["site_kinds"])
        and (not r["site_ids"] or d["site_id"] in r["site_ids"])
        and (not r["device_ids"] or d["id"] in r["device_ids"])
    )


def evaluate_batch(conn: Connection, touched: Iterable[Touched]) -> Outcome:
    """Apply every enabled rule to what a stored batch touched."""
    earliest: dict[tuple[str, str], datetime] = {}
    for t in touched:
        key = (t.device_id, t.metric)
        if key not in earliest or t.earliest < earliest[key]:
            earliest[key] = t.earliest
    outcome = Outcome()
    if not earliest:
        return outcome
    metrics = {m for _, m in earliest}
    rules = conn.execute(
        select(rules_t).where(rules_t.c.enabled.is_(True), rules_t.c.metric.in_(metrics))
    ).all()
    if not rules:
        return outcome
    device_ids = {d for d, _ in earliest}
    devices = {
        row.id: row
        for row in conn.execute(
            select(
                devices_t.c.id,
                devices_t.c.kind,
                devices_t.c.site_id,
                sites_t.c.kind.label("site_kind"),
            )
            .join(sites_t, sites_t.c.id == devices_t.c.site_id)
            .where(devices_t.c.id.in_(device_ids))
        )
    }
    for rule in rules:
        targets = {
            d: since
            for (d, m), since in earliest.items()
            if m == rule.metric and d in devices and _applies(rule, devices[d])
        }
        if targets:
            _evaluate_rule(conn, rule, targets, outcome)
    return outcome


def _evaluate_rule(
    conn: Connection,
    rule: Row[Any],
    targets: Mapping[str, datetime],
    outcome: Outcome,
) -> None:
    r = rule._mapping
    lookback = timedelta(seconds=int(r["window_s"]) + int(r["for_s"]))
    lo = min(targets.values()) - lookback
    series: dict[str, list[Point]] = defaultdict(list)
    for row in conn.execute(
        select(readings_t.c.device_id, readings_t.c.ts, readings_t.c.value)
        .where(
            readings_t.c.metric == r["metric"],
            readings_t.c.device_id.in_(list(targets)),
            readings_t.c.ts >= lo,
            readings_t.c.quality == "N",
        )
        .order_by(readings_t.c.device_id, readings_t.c.ts)
    ):
        series[row.device_id].append(Point(row.ts, row.value))

    open_alerts = {
        row.device_id: row
        for row in conn.execute(
            select(alerts_t).where(
                alerts_t.c.rule_id == r["id"],
                alerts_t.c.device_id.in_(list(targets)),
                alerts_t.c.status != AlertStatus.resolved,
            )
        )
    }
    watermarks: dict[str, datetime] = {
        device_id: until
        for device_id, until in conn.execute(
            select(alerts_t.c.device_id, func.max(alerts_t.c.evaluated_until))
            .where(alerts_t.c.rule_id == r["id"], alerts_t.c.device_id.in_(list(targets)))
            .group_by(alerts_t.c.device_id)
        )
    }
    for device_id, since in targets.items():
        steps = evaluate(rule, series.get(device_id, []))
        mark = watermarks.get(device_id)
        fresh = [s for s in steps if s.ts >= since and (mark is None or s.ts > mark)]
        if fresh:
            _fold(conn, rule, device_id, open_alerts.get(device_id), fresh, outcome)


def _describe(rule: Row[Any], severity: str, value: float) -> str:
    r = rule._mapping
    unit = METRICS[str(r["metric"])].unit
    how = "" if r["aggregate"] == "raw" else f" {int(r['window_s']) // 60}-min mean"
    limits = []
    prefix = "alarm" if severity == Severity.alarm else "warn"
    if r[f"{prefix}_above"] is not None:
        limits.append(f"> {r[f'{prefix}_above']:g}")
    if r[f"{prefix}_below"] is not None:
        limits.append(f"< {r[f'{prefix}_below']:g}")
    return f"{r['metric']}{how} {value:.4g} {unit} ({severity}: {' or '.join(limits)} {unit})"


def _fold(
    conn: Connection,
    rule: Row[Any],
    device_id: str,
    alert: Row[Any] | None,
    steps: list[Step],
    outcome: Outcome,
) -> None:
    r = rule._mapping
    state = dict(alert._mapping) if alert is not None else None
    changed = False
    for step in steps:
        if state is None:
            if step.held is None:
                continue
            now = utcnow()
            values = {
                "rule_id": r["id"],
                "device_id": device_id,
                "status": AlertStatus.firing,
                "severity": step.held,
                "started_at": step.since or step.ts,
                "fired_at": step.ts,
                "last_violation_at": step.ts,
                "evaluated_until": step.ts,
                "last_value": step.value,
                "peak_value": step.value,
                "violations": 1,
                "message": _describe(rule, step.held, step.value),
                "created_at": now,
                "updated_at": now,
            }
            alert_id = conn.execute(insert(alerts_t).values(values).returning(alerts_t.c.id))
            state = {**values, "id": alert_id.scalar_one()}
            record_event(
                conn,
                state["id"],
                AlertEventKind.opened,
                SYSTEM_ACTOR,
                note=state["message"],
                severity=step.held,
                value=step.value,
            )
            outcome.opened += 1
            changed = False
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
            state["message"] = _describe(rule, step.held, step.value)
            record_event(
                conn,
                state["id"],
                AlertEventKind.escalated,
                SYSTEM_ACTOR,
                note=state["message"],
                severity=step.held,
                value=step.value,
            )
            outcome.escalated += 1
        if step.level is None and r["auto_resolve"]:
            since = state.get("clear_since") or step.ts
            state["clear_since"] = since
            if step.ts - since >= timedelta(seconds=int(r["quiet_s"])):
                state["status"] = AlertStatus.resolved
                state["resolved_at"] = utcnow()
                record_event(
                    conn,
                    state["id"],
                    AlertEventKind.resolved,
                    SYSTEM_ACTOR,
                    note=f"condition clear since {since.isoformat()}: {r['metric']} "
                    f"back to {step.value:.4g}",
                    value=step.value,
                )
                outcome.resolved += 1
                _save(conn, state)
                state, changed = None, False
    if state is not None and changed:
        _save(conn, state)


def _save(conn: Connection, state: dict[str, object]) -> None:
    fields = (
        "status",
        "severity",
        "last_violation_at",
        "evaluated_until",
        "last_value",
        "peak_value",
        "violations",
        "message",
        "resolved_at",
        "clear_since",
    )
    conn.execute(
        update(alerts_t)
        .where(alerts_t.c.id == state["id"])
        .values({**{f: state[f] for f in fields if f in state}, "updated_at": utcnow()})
    )
