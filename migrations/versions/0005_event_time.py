"""Alert engine on event time: a version per alert (optimistic check between the evaluator and
the inspectors' actions), who resolved it, each device's event-time watermark, and the
`retracted` state (an alert that later data shows never happened) outside the one-open rule.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 22:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPEN_BEFORE = "status <> 'resolved'"
OPEN_NOW = "status NOT IN ('resolved', 'retracted')"


def _open_index(where: str) -> None:
    op.create_index(
        "uq_alerts_open_rule_device",
        "alerts",
        ["rule_id", "device_id"],
        unique=True,
        sqlite_where=sa.text(where),
        postgresql_where=sa.text(where),
    )


def upgrade() -> None:
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("version", sa.Integer(), nullable=False, server_default="1"))
        batch_op.add_column(sa.Column("resolved_by", sa.String(length=100), nullable=True))
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("watermark_at", sa.DateTime(timezone=True), nullable=True))
    op.drop_index("uq_alerts_open_rule_device", table_name="alerts")
    _open_index(OPEN_NOW)
    # alerts resolved before this revision were resolved by the evaluator or a person; the
    # events say which
    op.execute(
        "UPDATE alerts SET resolved_by = (SELECT e.actor FROM alert_events e "
        "WHERE e.alert_id = alerts.id AND e.kind = 'resolved' ORDER BY e.id DESC LIMIT 1) "
        "WHERE status = 'resolved'"
    )
    op.execute(
        "UPDATE devices SET watermark_at = (SELECT max(r.ts) FROM readings r "
        "WHERE r.device_id = devices.id)"
    )


def downgrade() -> None:
    op.execute("UPDATE alerts SET status = 'resolved' WHERE status = 'retracted'")
    op.drop_index("uq_alerts_open_rule_device", table_name="alerts")
    _open_index(OPEN_BEFORE)
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_column("watermark_at")
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.drop_column("resolved_by")
        batch_op.drop_column("version")
