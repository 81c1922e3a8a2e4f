"""DMA leakage: DMA parameters on sites, a meter's DMA role, registered consumption, daily figures.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 22:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SITE_COLUMNS = (
    ("connections", sa.Integer()),
    ("mains_km", sa.Float()),
    ("night_from", sa.String(length=5)),
    ("night_to", sa.String(length=5)),
    ("night_use_l_per_conn_h", sa.Float()),
    ("special_night_use_m3h", sa.Float()),
    ("leakage_exponent", sa.Float()),
)


def upgrade() -> None:
    with op.batch_alter_table("sites", schema=None) as batch_op:
        for name, type_ in SITE_COLUMNS:
            batch_op.add_column(sa.Column(name, type_, nullable=True))
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("dma_role", sa.String(length=16), nullable=True))

    op.create_table(
        "consumption",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("period_start", sa.Date(), nullable=False),
        sa.Column("period_end", sa.Date(), nullable=False),
        sa.Column("billed_m3", sa.Float(), nullable=False),
        sa.Column("unbilled_m3", sa.Float(), nullable=False),
        sa.Column("residential_metered_m3", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["site_id"], ["sites.id"], name=op.f("fk_consumption_site_id_sites")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consumption")),
    )
    with op.batch_alter_table("consumption", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_consumption_site_id"), ["site_id"], unique=False)

    op.create_table(
        "dma_days",
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("valid", sa.Boolean(), nullable=False),
        sa.Column("coverage", sa.Float(), nullable=False),
        sa.Column("night_coverage", sa.Float(), nullable=False),
        sa.Column("night_use_m3h", sa.Float(), nullable=False),
        sa.Column("inlet_m3", sa.Float(), nullable=True),
        sa.Column("inlet_source", sa.String(length=16), nullable=True),
        sa.Column("mnf_m3h", sa.Float(), nullable=True),
        sa.Column("mnf_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("net_night_flow_m3h", sa.Float(), nullable=True),
        sa.Column("ndf_h", sa.Float(), nullable=True),
        sa.Column("leakage_m3", sa.Float(), nullable=True),
        sa.Column("leakage_pct", sa.Float(), nullable=True),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["site_id"], ["sites.id"], name=op.f("fk_dma_days_site_id_sites")),
        sa.PrimaryKeyConstraint("site_id", "day", name=op.f("pk_dma_days")),
    )


def downgrade() -> None:
    op.drop_table("dma_days")
    with op.batch_alter_table("consumption", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_consumption_site_id"))
    op.drop_table("consumption")
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_column("dma_role")
    with op.batch_alter_table("sites", schema=None) as batch_op:
        for name, _ in reversed(SITE_COLUMNS):
            batch_op.drop_column(name)
