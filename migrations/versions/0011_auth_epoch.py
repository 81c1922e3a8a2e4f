"""The auth epoch: one counter that every change to users or api_keys moves, by trigger.

API workers cache the principal behind a key and read only this row per request; a revoked
key or a disabled user moves it, and every worker drops its cache at its next request.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 01:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WATCHED = ("users", "api_keys")
BUMP = "UPDATE auth_epochs SET epoch = epoch + 1 WHERE id = 1"


def upgrade() -> None:
    op.create_table(
        "auth_epochs",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_epochs")),
    )
    op.execute("INSERT INTO auth_epochs (id, epoch) VALUES (1, 0)")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION envmon_bump_auth_epoch() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN {BUMP}; RETURN NULL; END $$"
        )
        for t in WATCHED:
            op.execute(
                f"CREATE TRIGGER {t}_bump_auth_epoch AFTER UPDATE OR DELETE ON {t} "
                "FOR EACH STATEMENT EXECUTE FUNCTION envmon_bump_auth_epoch()"
            )
    else:
        for t in WATCHED:
            for event in ("UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER {t}_{event.lower()}_bump_auth_epoch AFTER {event} ON {t} "
                    f"BEGIN {BUMP}; END"
                )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for t in WATCHED:
            op.execute(f"DROP TRIGGER IF EXISTS {t}_bump_auth_epoch ON {t}")
        op.execute("DROP FUNCTION IF EXISTS envmon_bump_auth_epoch()")
    else:
        for t in WATCHED:
            for event in ("update", "delete"):
                op.execute(f"DROP TRIGGER IF EXISTS {t}_{event}_bump_auth_epoch")
    op.drop_table("auth_epochs")
