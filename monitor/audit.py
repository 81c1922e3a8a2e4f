"""The audit log of configuration changes. Never commits: an entry shares the change's
transaction, so there is no change without its entry and no entry without its change."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, insert

from monitor.core.models import AuditEntry, table, utcnow

audit = table(AuditEntry)


def record(
    conn: Connection, actor: str, action: str, obj: str, detail: dict[str, Any] | None = None
) -> None:
    conn.execute(
        insert(audit).values(at=utcnow(), actor=actor, action=action, object=obj, detail=detail)
    )
