from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select

from ingest.validate import Reason
from monitor.api.deps import PrincipalDep, SessionDep, SettingsDep
from monitor.api.filters import End, Start, check_range
from monitor.api.pagination import Cursor, Limit, Page, decode_cursor, encode_cursor
from monitor.api.schemas import DeadLetterRead
from monitor.api.scope import devices_in_scope
from monitor.core.models import DeadLetter, table

router = APIRouter(prefix="/dead-letters", tags=["dead letters"])
dead = table(DeadLetter)


@router.get("", response_model=Page[DeadLetterRead])
def list_dead_letters(
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    reason: Reason | None = None,
    device_id: Annotated[str | None, Query(description="Only this device")] = None,
    start: Start = None,
    end: End = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Page[DeadLetterRead]:
    """Messages (or parts of them) that were not stored, newest first, with the reason.

    A district-scoped caller sees those of its own devices only."""
    check_range(start, end, settings.api_max_range_days)
    q = select(dead).order_by(dead.c.id.desc()).limit(limit + 1)
    if principal.district is not None:
        # messages from unregistered ids belong to no district: city-wide principals only
        q = q.where(dead.c.device_id.in_(devices_in_scope(principal)))
    if reason:
        q = q.where(dead.c.reason == reason)
    if device_id:
        q = q.where(dead.c.device_id == device_id)
    if start:
        q = q.where(dead.c.received_at >= start)
    if end:
        q = q.where(dead.c.received_at < end)
    if cursor:
        q = q.where(dead.c.id < int(decode_cursor(cursor, 1)[0]))
    rows = session.execute(q).all()
    items = [DeadLetterRead.model_validate(r._mapping) for r in rows[:limit]]
    nxt = encode_cursor([items[-1].id]) if len(rows) > limit else None
    return Page(items=items, next_cursor=nxt)
