"""PostgreSQL: a partial index of the leak meters' N-flagged flow, pressure and totaliser
readings that carries their values (`ix_readings_dma`), so the DMA days and the burst rule
read them by index-only scans.

A DMA day's figures (alerts/dma_pg.py) read each meter's flow readings of the day and its
totaliser over the days asked; the burst rule reads 14 days of flow and pressure windows.
By the primary key each reading cost a heap fetch: in the leakage stage (1,000 DMAs x 30
days, 17.33M readings) the heap reads were a third of the statement, and that on a table the
loader wrote device by device; the writer interleaves every device's readings by time, so in
production a meter's day lies on as many heap pages as it has readings. From this index a
meter's day is two or three adjacent leaf pages (docs/benchmarks.md, "Issue 12, leakage
stage: index-only reads"). The predicate keeps it to those three metrics (leak meters only,
monitor/core/catalogue.py), so the rest of the fleet's readings pay nothing for it; the queries
name the metrics so the planner can prove the predicate.

Built by a plain CREATE INDEX (CONCURRENTLY is refused on TimescaleDB hypertables): writes to
readings wait while it builds, 26 s for 17.33M readings here; the ingestors' QoS 1 sessions
and spool keep what arrives meanwhile. SQLite has no INCLUDE and keeps its key alone.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-08 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        "CREATE INDEX ix_readings_dma ON readings (device_id, metric, ts) INCLUDE (value) "
        "WHERE quality = 'N' AND metric IN ('flow', 'pressure', 'totaliser')"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP INDEX ix_readings_dma")
