"""`dma_slots` without its foreign key to `sites`: derived data, checked where it is written.

The slots are derived data: `alerts.dma.recompute_days` deletes a day's slots and writes them
again from the readings, in the transaction that reads the DMA site's row, and only for sites
it has just read as DMAs; no code path deletes a site. The key's check was a trigger per
inserted row: for 1,000 DMAs x 30 days, 2.88M calls and 12 s of the 54 s the figures took
(docs/benchmarks.md, stage `leakage`). Without it, a slot of a site that no longer exists is
possible only by deleting the site by hand, and then the slot is harmless (nothing reads a
slot without its site's row) and goes with the next recomputation's DELETE or a manual one.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02 17:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("dma_slots", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_dma_slots_site_id_sites"), type_="foreignkey")


def downgrade() -> None:
    op.execute("DELETE FROM dma_slots WHERE site_id NOT IN (SELECT id FROM sites)")
    with op.batch_alter_table("dma_slots", schema=None) as batch_op:
        batch_op.create_foreign_key(
            batch_op.f("fk_dma_slots_site_id_sites"), "sites", ["site_id"], ["id"]
        )
