from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, status
from pydantic import AwareDatetime, BaseModel, Field, model_validator
from sqlalchemy import delete, insert, or_, select

from monitor import audit
from monitor.api.deps import InspectorDep, PrincipalDep, SessionDep
from monitor.api.filters import IdPath
from monitor.api.scope import devices_in_scope, district_clause
from monitor.core.exceptions import InvalidInput, NotFound
from monitor.core.models import Device, MaintenanceWindow, Site, table, utcnow

router = APIRouter(prefix="/maintenance", tags=["maintenance"])
windows = table(MaintenanceWindow)
devices = table(Device)
sites = table(Site)


class MaintenanceCreate(BaseModel):
    device_id: str | None = Field(None, description="One device...")
    site_id: str | None = Field(None, description="...or every device of a site")
    starts_at: AwareDatetime
    ends_at: AwareDatetime
    reason: str = Field(min_length=1, max_length=2000)

    @model_validator(mode="after")
    def _one_target(self) -> MaintenanceCreate:
        if (self.device_id is None) == (self.site_id is None):
            raise ValueError("device_id: give a device_id or a site_id, not both")
        if self.ends_at <= self.starts_at:
            raise ValueError("ends_at: must be after starts_at")
        return self


class MaintenanceRead(BaseModel):
    id: int
    device_id: str | None
    site_id: str | None
    starts_at: datetime
    ends_at: datetime
    reason: str
    created_by: str
    created_at: datetime


def _scoped(principal: PrincipalDep) -> object:
    in_sites = select(sites.c.id).where(district_clause(principal, sites.c.district))
    return or_(
        windows.c.device_id.in_(devices_in_scope(principal)), windows.c.site_id.in_(in_sites)
    )


@router.get("", response_model=list[MaintenanceRead])
def list_windows(session: SessionDep, principal: PrincipalDep) -> list[MaintenanceRead]:
    """Maintenance windows in the caller's scope that have not ended, soonest first."""
    q = (
        select(windows)
        .where(windows.c.ends_at > utcnow(), _scoped(principal))  # type: ignore[arg-type]
        .order_by(windows.c.starts_at)
    )
    return [MaintenanceRead.model_validate(r._mapping) for r in session.execute(q)]


@router.post("", response_model=MaintenanceRead, status_code=status.HTTP_201_CREATED)
def create_window(
    session: SessionDep, inspector: InspectorDep, body: MaintenanceCreate
) -> MaintenanceRead:
    """Plan work on a device or a site: alerts opened during it are kept but marked
    suppressed, and not notified."""
    if body.device_id is not None:
        found = session.execute(
            devices_in_scope(inspector).where(devices.c.id == body.device_id)
        ).first()
        if found is None:
            raise InvalidInput(f"device {body.device_id!r} does not exist", field="device_id")
    else:
        found = session.execute(
            select(sites.c.id).where(
                sites.c.id == body.site_id, district_clause(inspector, sites.c.district)
            )
        ).first()
        if found is None:
            raise InvalidInput(f"site {body.site_id!r} does not exist", field="site_id")
    window_id = session.execute(
        insert(windows)
        .values(**body.model_dump(), created_by=inspector.actor, created_at=utcnow())
        .returning(windows.c.id)
    ).scalar_one()
    audit.record(
        session.connection(),
        inspector.actor,
        "maintenance.create",
        f"maintenance:{window_id}",
        body.model_dump(mode="json"),
    )
    row = session.execute(select(windows).where(windows.c.id == window_id)).one()
    return MaintenanceRead.model_validate(row._mapping)


@router.delete("/{window_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_window(session: SessionDep, inspector: InspectorDep, window_id: IdPath) -> None:
    """Cancel a maintenance window."""
    done = session.connection().execute(
        delete(windows).where(windows.c.id == window_id, _scoped(inspector))  # type: ignore[arg-type]
    )
    if done.rowcount == 0:
        raise NotFound(f"maintenance window {window_id} does not exist", field="path.window_id")
    audit.record(
        session.connection(), inspector.actor, "maintenance.delete", f"maintenance:{window_id}"
    )
