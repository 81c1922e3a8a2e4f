"""Registered consumption (注册用户用水量) per DMA or supply area and billing period: the Q_a of
CJJ 92. Validated (periods of one site never overlap, volumes never negative). Never commits."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from datetime import date
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from sqlalchemy import Connection, delete, insert, select, update

from monitor import audit
from monitor.core.exceptions import InvalidInput, NotFound
from monitor.core.models import Consumption, Site, table, utcnow

consumption = table(Consumption)
sites = table(Site)


def _not_bool(value: Any) -> Any:
    # pydantic's lax mode reads true/false as 1.0/0.0; the OpenAPI says number (schemathesis)
    if isinstance(value, bool):
        raise ValueError("a number of m³, not true/false")
    return value


Volume = Annotated[float, BeforeValidator(_not_bool)]


class ConsumptionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    period_start: date = Field(description="First local day of the billing period, inclusive")
    period_end: date = Field(description="Last local day of the billing period, inclusive")
    billed_m3: Volume = Field(ge=0, description="Billed authorised consumption, m³")
    unbilled_m3: Volume = Field(0.0, ge=0, description="Unbilled authorised consumption, m³")
    residential_metered_m3: Volume | None = Field(
        None, ge=0, description="Residential metered-to-household (抄表到户) volume, m³ (CJJ 92 R1)"
    )

    @model_validator(mode="after")
    def _ordered(self) -> ConsumptionCreate:
        if self.period_end < self.period_start:
            raise ValueError("period_end must be on or after period_start")
        return self


class ConsumptionUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    period_start: date | None = None
    period_end: date | None = None
    billed_m3: Volume | None = Field(None, ge=0)
    unbilled_m3: Volume | None = Field(None, ge=0)
    residential_metered_m3: Volume | None = Field(None, ge=0)


class ConsumptionRead(ConsumptionCreate):
    model_config = ConfigDict(from_attributes=True)

    id: int
    site_id: str
    registered_m3: float = Field(description="billed + unbilled: CJJ 92's Q_a")
    created_at: Any
    updated_at: Any


def _read(row: Any) -> ConsumptionRead:
    m = dict(row._mapping)
    m["registered_m3"] = m["billed_m3"] + m["unbilled_m3"]
    return ConsumptionRead.model_validate(m)


def _check(conn: Connection, site_id: str, start: date, end: date, exclude: int | None) -> None:
    if end < start:
        raise InvalidInput("period_end must be on or after period_start", field="period_end")
    q = select(consumption.c.id, consumption.c.period_start, consumption.c.period_end).where(
        consumption.c.site_id == site_id,
        consumption.c.period_start <= end,
        consumption.c.period_end >= start,
    )
    if exclude is not None:
        q = q.where(consumption.c.id != exclude)
    clash = conn.execute(q).first()
    if clash is not None:
        raise InvalidInput(
            f"the period overlaps period {clash.id} ({clash.period_start} to {clash.period_end})",
            field="period_start",
        )


def _site_exists(conn: Connection, site_id: str) -> None:
    if conn.execute(select(sites.c.id).where(sites.c.id == site_id)).first() is None:
        raise NotFound(f"site {site_id!r} does not exist", field="site_id")


def create(conn: Connection, actor: str, site_id: str, body: ConsumptionCreate) -> ConsumptionRead:
    _site_exists(conn, site_id)
    _check(conn, site_id, body.period_start, body.period_end, None)
    now = utcnow()
    new_id = conn.execute(
        insert(consumption)
        .values(site_id=site_id, created_at=now, updated_at=now, **body.model_dump())
        .returning(consumption.c.id)
    ).scalar_one()
    audit.record(
        conn,
        actor,
        "consumption.create",
        f"consumption:{new_id}",
        {"site_id": site_id, **body.model_dump(mode="json")},
    )
    return get(conn, site_id, new_id)


def get(conn: Connection, site_id: str, period_id: int) -> ConsumptionRead:
    row = conn.execute(
        select(consumption).where(consumption.c.id == period_id, consumption.c.site_id == site_id)
    ).first()
    if row is None:
        raise NotFound(f"consumption period {period_id} of {site_id!r} does not exist")
    return _read(row)


def list_for(conn: Connection, site_ids: Iterable[str]) -> list[ConsumptionRead]:
    rows = conn.execute(
        select(consumption)
        .where(consumption.c.site_id.in_(list(site_ids)))
        .order_by(consumption.c.site_id, consumption.c.period_start)
    )
    return [_read(r) for r in rows]


def correct(
    conn: Connection, actor: str, site_id: str, period_id: int, body: ConsumptionUpdate
) -> ConsumptionRead:
    current = get(conn, site_id, period_id)
    values = body.model_dump(exclude_unset=True)
    for key in ("period_start", "period_end", "billed_m3", "unbilled_m3"):
        if key in values and values[key] is None:
            raise InvalidInput(f"{key}: required, not null", field=key)
    start = values.get("period_start", current.period_start)
    end = values.get("period_end", current.period_end)
    _check(conn, site_id, start, end, period_id)
    if values:
        conn.execute(
            update(consumption)
            .where(consumption.c.id == period_id)
            .values(updated_at=utcnow(), **values)
        )
        audit.record(
            conn,
            actor,
            "consumption.update",
            f"consumption:{period_id}",
            body.model_dump(mode="json", exclude_unset=True),
        )
    return get(conn, site_id, period_id)


def remove(conn: Connection, actor: str, site_id: str, period_id: int) -> None:
    old = get(conn, site_id, period_id)
    conn.execute(delete(consumption).where(consumption.c.id == period_id))
    audit.record(
        conn, actor, "consumption.delete", f"consumption:{period_id}", old.model_dump(mode="json")
    )


CSV_COLUMNS = ("site_id", "period_start", "period_end", "billed_m3")


def import_csv(conn: Connection, actor: str, path: Path) -> int:
    """Register every period of a CSV file (header: site_id, period_start, period_end,
    billed_m3, and optionally unbilled_m3, residential_metered_m3); all or nothing."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InvalidInput(f"{path}: missing columns {', '.join(missing)}")
        n = 0
        for line, rec in enumerate(reader, start=2):
            site_id = rec.pop("site_id")
            values = {k: v for k, v in rec.items() if v not in (None, "")}
            try:
                body = ConsumptionCreate.model_validate(values)
            except ValidationError as exc:
                err = exc.errors()[0]
                field = ".".join(str(p) for p in err["loc"])
                raise InvalidInput(f"line {line}: {field}: {err['msg']}", field=field) from exc
            try:
                create(conn, actor, site_id, body)
            except (InvalidInput, NotFound) as exc:
                raise InvalidInput(f"line {line}: {exc.message}", field=exc.field) from exc
            n += 1
    return n
