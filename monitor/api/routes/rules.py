from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from monitor.api.deps import PrincipalDep, SessionDep
from monitor.api.schemas import RuleRead
from monitor.core.models import Rule, table

router = APIRouter(prefix="/rules", tags=["rules"])
rules = table(Rule)


@router.get("", response_model=list[RuleRead])
def list_rules(session: SessionDep, principal: PrincipalDep) -> list[RuleRead]:
    """Every rule with its thresholds and the standard it cites."""
    rows = session.execute(select(rules).order_by(rules.c.pack, rules.c.name)).all()
    return [RuleRead.model_validate(r._mapping) for r in rows]
