"""HJ 212 facts a logger reports about itself, kept on its device: the tolerated field
deviations it sends, the RtdInterval it answered (1061), its last equipment status (2021).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 01:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("hj212_deviations", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("hj212_rtd_interval_s", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("hj212_equipment", sa.JSON(), nullable=True))
        batch_op.add_column(
            sa.Column("hj212_equipment_at", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_column("hj212_equipment_at")
        batch_op.drop_column("hj212_equipment")
        batch_op.drop_column("hj212_rtd_interval_s")
        batch_op.drop_column("hj212_deviations")
