"""HJ 212 identity of a device: its MN (unique) and its PW, hashed.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 22:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("hj212_mn", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("hj212_password_hash", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("hj212_unit", sa.String(length=16), nullable=True))
        batch_op.create_unique_constraint(batch_op.f("uq_devices_hj212_mn"), ["hj212_mn"])


def downgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_devices_hj212_mn"), type_="unique")
        batch_op.drop_column("hj212_unit")
        batch_op.drop_column("hj212_password_hash")
        batch_op.drop_column("hj212_mn")
