"""Site-subject alerts (a DMA's leakage rules judge the site, not a device), DMA slots.

An alert's subject is a device (device_id set) or a site (device_id null). Every alert
carries its site (a device alert its device's site), so scope, notifications and exports
join one way. One open alert per (rule, device), and per (rule, site) for site alerts.
`dma_slots` keeps each DMA's 15-minute net inflow and zone pressure, the burst rule's series.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 01:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPEN_SITE = "device_id IS NULL AND status NOT IN ('resolved', 'retracted')"


def upgrade() -> None:
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("site_id", sa.String(length=64), nullable=True))
    op.execute(
        "UPDATE alerts SET site_id = "
        "(SELECT d.site_id FROM devices d WHERE d.id = alerts.device_id)"
    )
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.alter_column("site_id", existing_type=sa.String(length=64), nullable=False)
        batch_op.alter_column("device_id", existing_type=sa.String(length=64), nullable=True)
        batch_op.create_foreign_key(
            batch_op.f("fk_alerts_site_id_sites"), "sites", ["site_id"], ["id"]
        )
        batch_op.create_index(batch_op.f("ix_alerts_site_id"), ["site_id"], unique=False)
    op.create_index(
        "uq_alerts_open_rule_site",
        "alerts",
        ["rule_id", "site_id"],
        unique=True,
        sqlite_where=sa.text(OPEN_SITE),
        postgresql_where=sa.text(OPEN_SITE),
    )
    op.create_table(
        "dma_slots",
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("slot_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("net_m3h", sa.Float(), nullable=False),
        sa.Column("azp_mpa", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["site_id"], ["sites.id"], name=op.f("fk_dma_slots_site_id_sites")),
        sa.PrimaryKeyConstraint("site_id", "slot_at", name=op.f("pk_dma_slots")),
    )


def downgrade() -> None:
    op.drop_table("dma_slots")
    op.drop_index("uq_alerts_open_rule_site", table_name="alerts")
    site_alerts = "SELECT id FROM alerts WHERE device_id IS NULL"
    op.execute(f"DELETE FROM notifications WHERE alert_id IN ({site_alerts})")
    op.execute(f"DELETE FROM alert_events WHERE alert_id IN ({site_alerts})")
    op.execute("DELETE FROM alerts WHERE device_id IS NULL")
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_alerts_site_id"))
        batch_op.drop_constraint(batch_op.f("fk_alerts_site_id_sites"), type_="foreignkey")
        batch_op.alter_column("device_id", existing_type=sa.String(length=64), nullable=False)
        batch_op.drop_column("site_id")
