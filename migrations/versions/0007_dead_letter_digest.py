"""Dead letters: a digest, unique, so a redelivered message is kept once.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 23:05:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # existing rows keep a NULL digest (NULLs never conflict): only new ones are deduplicated
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.add_column(sa.Column("digest", sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint(batch_op.f("uq_dead_letters_digest"), ["digest"])


def downgrade() -> None:
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_dead_letters_digest"), type_="unique")
        batch_op.drop_column("digest")
