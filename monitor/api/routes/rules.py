from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, status
from pydantic import AwareDatetime, BaseModel, Field, ValidationError
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from alerts.evaluator import Touched, applies, evaluate_batch
from alerts.schemas import RuleSpec, RuleUpdate
from monitor import audit
from monitor.api.deps import AdminDep, InspectorDep, PrincipalDep, SessionDep, SettingsDep
from monitor.api.filters import MAX_ID, IdPath, check_range
from monitor.api.schemas import RuleRead
from monitor.api.scope import district_clause
from monitor.core.exceptions import Conflict, InvalidInput, NotFound
from monitor.core.models import Alert, Device, Reading, Rule, RuleKind, Site, table, utcnow

router = APIRouter(prefix="/rules", tags=["rules"])
rules = table(Rule)
alerts = table(Alert)
devices = table(Device)
sites = table(Site)
readings = table(Reading)


def _invalid(exc: ValidationError) -> InvalidInput:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    message = str(err["msg"]).removeprefix("Value error, ")
    field = loc or message.split(":", 1)[0]
    return InvalidInput(message, field=f"body.{field}")


@router.get("", response_model=list[RuleRead])
def list_rules(
    session: SessionDep,
    principal: PrincipalDep,
    pack: Annotated[str | None, Query(description="Only this rule pack")] = None,
    enabled: bool | None = None,
) -> list[RuleRead]:
    """Every rule with its thresholds and the standard it cites."""
    q = select(rules).order_by(rules.c.pack, rules.c.name)
    if pack:
        q = q.where(rules.c.pack == pack)
    if enabled is not None:
        q = q.where(rules.c.enabled.is_(enabled))
    return [RuleRead.model_validate(r._mapping) for r in session.execute(q)]


@router.get("/{rule_id}", response_model=RuleRead)
def get_rule(session: SessionDep, principal: PrincipalDep, rule_id: IdPath) -> RuleRead:
    """One rule."""
    row = session.execute(select(rules).where(rules.c.id == rule_id)).first()
    if row is None:
        raise NotFound(f"rule {rule_id} does not exist", field="path.rule_id")
    return RuleRead.model_validate(row._mapping)


def _check_parts(session: Session, spec: RuleSpec) -> None:
    """A composite's parts must be rules that exist (and not itself): the evaluator could
    only leave one that names an unknown rule unjudged."""
    if spec.kind != RuleKind.composite:
        return
    names = list((spec.params or {}).get("rules", []))
    known = set(session.execute(select(rules.c.name).where(rules.c.name.in_(names))).scalars())
    missing = [n for n in names if n not in known or n == spec.name]
    if missing:
        raise InvalidInput(
            f"a composite combines existing rules other than itself; not so: {missing}",
            field="body.params.rules",
        )


@router.post("", response_model=RuleRead, status_code=status.HTTP_201_CREATED)
def create_rule(session: SessionDep, admin: AdminDep, body: RuleSpec) -> RuleRead:
    """Create a rule (admin)."""
    exists = session.execute(select(rules.c.id).where(rules.c.name == body.name)).first()
    if exists is not None:
        raise Conflict(f"a rule named {body.name!r} exists", field="body.name")
    _check_parts(session, body)
    now = utcnow()
    rule_id = session.execute(
        insert(rules)
        .values(**body.model_dump(), pack=None, created_at=now, updated_at=now)
        .returning(rules.c.id)
    ).scalar_one()
    audit.record(
        session.connection(),
        admin.actor,
        "rule.create",
        f"rule:{body.name}",
        body.model_dump(mode="json"),
    )
    return get_rule(session, admin, rule_id)


@router.patch("/{rule_id}", response_model=RuleRead)
def update_rule(
    session: SessionDep, admin: AdminDep, rule_id: IdPath, body: RuleUpdate
) -> RuleRead:
    """Change a rule, e.g. its thresholds, or disable it with {"enabled": false} (admin).
    The changed rule is validated as a whole. `null` clears a field that may be empty (a
    tier, a selector) and resets one that may not to its default (description "", for_s 0)."""
    current = get_rule(session, admin, rule_id).model_dump()
    changes = body.model_dump(exclude_unset=True)
    for name, value in list(changes.items()):
        spec_field = RuleSpec.model_fields.get(name)
        if value is None and spec_field is not None and spec_field.default is not None:
            changes[name] = spec_field.get_default(call_default_factory=True)
    merged = {k: v for k, v in {**current, **changes}.items() if k in RuleSpec.model_fields}
    try:
        spec = RuleSpec.model_validate(merged)
    except ValidationError as exc:
        raise _invalid(exc) from exc
    _check_parts(session, spec)
    session.execute(
        update(rules)
        .where(rules.c.id == rule_id)
        .values(**spec.model_dump(include=set(changes)), updated_at=utcnow())
    )
    audit.record(
        session.connection(),
        admin.actor,
        "rule.update",
        f"rule:{spec.name}",
        RuleUpdate.model_validate(changes).model_dump(mode="json", exclude_unset=True),
    )
    return get_rule(session, admin, rule_id)


@router.delete("/{rule_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_rule(session: SessionDep, admin: AdminDep, rule_id: IdPath) -> None:
    """Delete a rule that never raised an alert (admin); one with alerts is evidence: disable
    it instead."""
    rule = get_rule(session, admin, rule_id)
    used = session.execute(
        select(func.count()).select_from(alerts).where(alerts.c.rule_id == rule_id)
    ).scalar_one()
    if used:
        raise Conflict(
            f"rule {rule.name!r} has {used} alerts; disable it instead", field="path.rule_id"
        )
    session.execute(delete(rules).where(rules.c.id == rule_id))
    audit.record(session.connection(), admin.actor, "rule.delete", f"rule:{rule.name}")


class BacktestRequest(BaseModel):
    rule_id: int | None = Field(None, ge=1, le=MAX_ID, description="An existing rule")
    rule: RuleSpec | None = Field(None, description="Or a rule not saved yet")
    start: AwareDatetime
    end: AwareDatetime


class WouldBeAlert(BaseModel):
    device_id: str
    severity: str
    status: str
    started_at: datetime
    fired_at: datetime
    last_violation_at: datetime
    peak_value: float
    violations: int
    message: str


class BacktestResult(BaseModel):
    rule: str
    devices: int
    alerts: list[WouldBeAlert]


@router.post("/backtest", response_model=BacktestResult)
def backtest(
    session: SessionDep, settings: SettingsDep, inspector: InspectorDep, body: BacktestRequest
) -> BacktestResult:
    """The alerts a rule would have raised over a past range, on the stored readings, without
    raising them (nothing is kept, nothing is notified)."""
    check_range(body.start, body.end, settings.api_max_range_days)
    if (body.rule_id is None) == (body.rule is None):
        raise InvalidInput("give either rule_id or rule", field="body.rule_id")
    spec = body.rule or RuleSpec.model_validate(
        {
            k: v
            for k, v in get_rule(session, inspector, body.rule_id).model_dump().items()  # type: ignore[arg-type]
            if k in RuleSpec.model_fields
        }
    )
    if spec.kind in (RuleKind.no_data, RuleKind.composite):
        raise InvalidInput(f"a {spec.kind} rule cannot be backtested", field="body.rule.kind")
    conn = session.connection()
    scope = (
        select(
            devices.c.id,
            devices.c.kind,
            devices.c.site_id,
            devices.c.interval_s,
            sites.c.kind.label("site_kind"),
            sites.c.district,
        )
        .join(sites, sites.c.id == devices.c.site_id)
        .where(district_clause(inspector, sites.c.district))
    )
    temp = {**spec.model_dump(), "name": f"backtest-{uuid.uuid4().hex[:12]}", "enabled": True}
    targets = [d for d in conn.execute(scope) if applies(_Row(temp), d)]
    found: list[WouldBeAlert] = []
    # Everything below happens in a savepoint that is rolled back: a throw-away copy of the
    # rule (so the real rule's alerts and watermarks play no part) and the alerts it opens.
    with conn.begin_nested() as savepoint:
        now = utcnow()
        rule_id = conn.execute(
            insert(rules)
            .values(**temp, pack=None, created_at=now, updated_at=now)
            .returning(rules.c.id)
        ).scalar_one()
        conn.execute(update(rules).where(rules.c.id != rule_id).values(enabled=False))
        metric_q = (
            select(readings.c.device_id, readings.c.metric)
            .where(
                readings.c.ts >= body.start,
                readings.c.ts < body.end,
                readings.c.device_id.in_([d.id for d in targets]),
            )
            .distinct()
        )
        if spec.metric != "*":
            metric_q = metric_q.where(readings.c.metric == spec.metric)
        touched = [Touched(d, m, body.start) for d, m in conn.execute(metric_q)]
        evaluate_batch(conn, touched)
        for a in conn.execute(
            select(alerts)
            .where(
                alerts.c.rule_id == rule_id,
                alerts.c.fired_at >= body.start,
                alerts.c.fired_at < body.end,
            )
            .order_by(alerts.c.fired_at)
        ):
            found.append(WouldBeAlert.model_validate(a._mapping))
        savepoint.rollback()
    return BacktestResult(rule=spec.name, devices=len(targets), alerts=found)


class _Row:
    """A rule dict seen as a row, for `applies`."""

    def __init__(self, values: dict[str, Any]) -> None:
        self._mapping = values
