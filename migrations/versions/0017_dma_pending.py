"""`dma_pending`: DMA days owed a recomputation, so an ingestor that is behind may defer it.

Recomputing a DMA day re-reads the whole day's readings of its meters; while an ingestor
drains a backlog, every batch touched the same few hundred DMA days and recomputed them, a
quarter of its time (docs/benchmarks.md, "DMA days deferred while behind"). Now a batch
stores a mark per (DMA, day) it changed, in its own transaction, and the recomputation
(`alerts.dma.claim_pending`) takes the marks, any ingestor's, and deletes them in the
transaction that writes the figures: a crash in between leaves them for the next one.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07 14:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dma_pending",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dma_pending")),
    )


def downgrade() -> None:
    op.drop_table("dma_pending")
