"""Default rule packs shipped as TOML data files, one per domain."""

from __future__ import annotations

import tomllib
from importlib import resources

from sqlalchemy import Connection, func, insert, select

from alerts.schemas import RulePack
from monitor.core.models import Rule, table


def load_packs() -> list[RulePack]:
    packs = []
    for entry in sorted(resources.files(__package__).iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            packs.append(RulePack.model_validate(tomllib.loads(entry.read_text("utf-8"))))
    return packs


def install_default_rules(conn: Connection) -> int:
    """Load the default packs into an empty rules table (first start); edits are kept after."""
    rules = table(Rule)
    if conn.execute(select(func.count()).select_from(rules)).scalar_one():
        return 0
    rows = [
        {**spec.model_dump(), "pack": pack.pack} for pack in load_packs() for spec in pack.rules
    ]
    conn.execute(insert(rules), rows)
    return len(rows)
