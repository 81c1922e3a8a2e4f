"""A DMA day's slots as arrays in its `dma_days` row; `dma_slots` goes.

One row per 15-minute slot was most of a large recomputation's cost: for 1,000 DMAs x 30
days, 2.88M rows inserted into `dma_slots`, three quarters of that its primary-key index,
and the two concurrent parts' inserts contended on the WAL (docs/benchmarks.md, "Issue 12,
leakage stage: leak6"). The slots are only ever written and read a day at a time, so each
DMA day now holds its own: `slot_index` (the slot's number from local midnight),
`slot_net_m3h` and `slot_azp_mpa` (null entries where no zone pressure), the day's defined
slots in slot order, and `net_mean_m3h`, the mean net inflow over them (the burst rule's
mean flow). 30,000 rows instead of 2.88M, in the days' own upsert.

The upgrade moves every stored slot into its day, grouped by the local day of the slot's
start in the configured time zone (`ENVMON_TIMEZONE`, the one `recompute_days` cut the days
by), so the burst rule keeps its 14-day baseline across the upgrade; days without slots get
empty arrays, as a recomputation gives them. A slot whose day has no row (possible only after
a site was deleted by hand, migration 0015) goes with the table. The downgrade recreates
`dma_slots` as 0015 left it (no foreign key) and fills it from the arrays.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 14:00:00
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from alembic import op

from monitor.core.settings import get_settings

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SLOT_S = 900
ARRAYS = (
    ("slot_index", sa.Integer),
    ("slot_net_m3h", sa.Float),
    ("slot_azp_mpa", sa.Float),
)

# local midnight of a dma_days row's day, as an instant
_MIDNIGHT = "(CAST(d.day AS timestamp) AT TIME ZONE :tz)"
_PG_UP = f"""
UPDATE dma_days d
SET slot_index = s.i, slot_net_m3h = s.net, slot_azp_mpa = s.azp, net_mean_m3h = s.mean
FROM (
    SELECT d.site_id, d.day,
           array_agg(CAST(date_part('epoch', d.slot_at - {_MIDNIGHT}) / {SLOT_S} AS int)
                     ORDER BY d.slot_at) AS i,
           array_agg(d.net_m3h ORDER BY d.slot_at) AS net,
           array_agg(d.azp_mpa ORDER BY d.slot_at) AS azp,
           avg(d.net_m3h) AS mean
    FROM (SELECT *, CAST(slot_at AT TIME ZONE :tz AS date) AS day FROM dma_slots) d
    GROUP BY d.site_id, d.day
) s
WHERE d.site_id = s.site_id AND d.day = s.day
"""
_PG_DOWN = f"""
INSERT INTO dma_slots (site_id, slot_at, net_m3h, azp_mpa)
SELECT d.site_id, {_MIDNIGHT} + u.i * interval '{SLOT_S} seconds', u.net, u.azp
FROM dma_days d
CROSS JOIN LATERAL unnest(d.slot_index, d.slot_net_m3h, d.slot_azp_mpa) AS u(i, net, azp)
"""

_slots = sa.table(
    "dma_slots",
    sa.column("site_id", sa.String()),
    sa.column("slot_at", sa.DateTime()),  # naive UTC on SQLite, as the models store it
    sa.column("net_m3h", sa.Float()),
    sa.column("azp_mpa", sa.Float()),
)
_days = sa.table(
    "dma_days",
    sa.column("site_id", sa.String()),
    sa.column("day", sa.Date()),
    *(sa.column(name, sa.JSON()) for name, _ in ARRAYS),
    sa.column("net_mean_m3h", sa.Float()),
)


def _tz() -> str:
    return get_settings().timezone


def _midnight(day: date, tz: ZoneInfo) -> datetime:
    """The UTC instant of the day's local midnight."""
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)


def upgrade() -> None:
    with op.batch_alter_table("dma_days", schema=None) as batch_op:
        for name, item in ARRAYS:
            batch_op.add_column(
                sa.Column(name, sa.ARRAY(item()).with_variant(sa.JSON(), "sqlite"), nullable=True)
            )
        batch_op.add_column(sa.Column("net_mean_m3h", sa.Float(), nullable=True))
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        bind.execute(sa.text(_PG_UP), {"tz": _tz()})
        bind.execute(
            sa.text(
                "UPDATE dma_days SET slot_index = '{}', slot_net_m3h = '{}', "
                "slot_azp_mpa = '{}' WHERE slot_index IS NULL"
            )
        )
    else:
        _sqlite_up(bind, ZoneInfo(_tz()))
    op.drop_table("dma_slots")


def _sqlite_up(bind: Any, tz: ZoneInfo) -> None:
    by_day: dict[tuple[str, date], list[Any]] = defaultdict(list)
    for row in bind.execute(sa.select(_slots).order_by(_slots.c.site_id, _slots.c.slot_at)):
        at = row.slot_at.replace(tzinfo=UTC)
        by_day[(row.site_id, at.astimezone(tz).date())].append((at, row.net_m3h, row.azp_mpa))
    values = [
        _day_arrays(site, day, slots, _midnight(day, tz)) for (site, day), slots in by_day.items()
    ]
    if values:
        names = [name for name, _ in ARRAYS] + ["net_mean_m3h"]
        bind.execute(
            _days.update()
            .where(_days.c.site_id == sa.bindparam("b_site"), _days.c.day == sa.bindparam("b_day"))
            .values({n: sa.bindparam(f"b_{n}") for n in names}),
            values,
        )
    bind.execute(
        _days.update().where(_days.c.slot_index.is_(None)).values({name: [] for name, _ in ARRAYS})
    )


def _day_arrays(site: str, day: date, slots: list[Any], t0: datetime) -> dict[str, Any]:
    """The update parameters of one day from its (start, net, azp) slots in time order."""
    return {
        "b_site": site,
        "b_day": day,
        "b_slot_index": [int((at - t0).total_seconds()) // SLOT_S for at, _, _ in slots],
        "b_slot_net_m3h": [net for _, net, _ in slots],
        "b_slot_azp_mpa": [azp for _, _, azp in slots],
        "b_net_mean_m3h": math.fsum(net for _, net, _ in slots) / len(slots),
    }


def downgrade() -> None:
    op.create_table(
        "dma_slots",
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("slot_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("net_m3h", sa.Float(), nullable=False),
        sa.Column("azp_mpa", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("site_id", "slot_at", name=op.f("pk_dma_slots")),
    )
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        bind.execute(sa.text(_PG_DOWN), {"tz": _tz()})
    else:
        tz = ZoneInfo(_tz())
        rows = []
        for d in bind.execute(sa.select(_days).where(_days.c.slot_index.is_not(None))):
            t0 = _midnight(d.day, tz).replace(tzinfo=None)
            rows += [
                {
                    "site_id": d.site_id,
                    "slot_at": t0 + timedelta(seconds=i * SLOT_S),
                    "net_m3h": net,
                    "azp_mpa": azp,
                }
                for i, net, azp in zip(d.slot_index, d.slot_net_m3h, d.slot_azp_mpa, strict=True)
            ]
        if rows:
            bind.execute(_slots.insert(), rows)
    with op.batch_alter_table("dma_days", schema=None) as batch_op:
        for name in ("net_mean_m3h", *(name for name, _ in reversed(ARRAYS))):
            batch_op.drop_column(name)
