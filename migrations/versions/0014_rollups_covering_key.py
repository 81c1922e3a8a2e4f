"""PostgreSQL: the hourly rollups' primary key carries the values (INCLUDE count, sum, min,
max), so the readings API's hourly query is an index-only scan.

A device's rollups are written hour by hour, interleaved with every other device's, so the
720 hours of a 30-day query sat on 720 heap pages: 10 ms when they were not in the buffer
cache, 1.5 ms when they were. From the key's index alone the same answer reads about 12
pages (0.3 ms, cold). The key keeps its name and columns (the writer's ON CONFLICT is
unchanged); the rollups' updates lose no HOT updates to it, as with a full table page they
were not HOT before either (docs/benchmarks.md, "Read path"). The index is rebuilt under
an exclusive lock: seconds for a few million rollups. SQLite keeps its key as it is.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02 14:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY = "device_id, metric, hour"


def _key(include: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        "ALTER TABLE hourly_rollups DROP CONSTRAINT pk_hourly_rollups, "
        f"ADD CONSTRAINT pk_hourly_rollups PRIMARY KEY ({KEY}){include}"
    )


def upgrade() -> None:
    _key(" INCLUDE (count, sum, min, max)")


def downgrade() -> None:
    _key("")
