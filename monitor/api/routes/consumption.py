"""Registered consumption per DMA (or supply area) and billing period: CJJ 92's Q_a."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from monitor import consumption
from monitor.api.deps import AdminDep, PrincipalDep, SessionDep
from monitor.api.routes.sites import get_site
from monitor.consumption import ConsumptionCreate, ConsumptionRead, ConsumptionUpdate

router = APIRouter(prefix="/sites/{site_id}/consumption", tags=["consumption"])


@router.post("", response_model=ConsumptionRead, status_code=status.HTTP_201_CREATED)
def create_period(
    session: SessionDep, admin: AdminDep, site_id: str, body: ConsumptionCreate
) -> ConsumptionRead:
    """Register a billing period's consumption (admin); periods of a site never overlap."""
    get_site(session, admin, site_id)
    return consumption.create(session.connection(), admin.actor, site_id, body)


@router.get("", response_model=list[ConsumptionRead])
def list_periods(
    session: SessionDep, principal: PrincipalDep, site_id: str
) -> list[ConsumptionRead]:
    """The site's billing periods, oldest first."""
    get_site(session, principal, site_id)
    return consumption.list_for(session.connection(), [site_id])


@router.patch("/{period_id}", response_model=ConsumptionRead)
def correct_period(
    session: SessionDep, admin: AdminDep, site_id: str, period_id: int, body: ConsumptionUpdate
) -> ConsumptionRead:
    """Correct a billing period (admin)."""
    get_site(session, admin, site_id)
    return consumption.correct(session.connection(), admin.actor, site_id, period_id, body)


@router.delete("/{period_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_period(session: SessionDep, admin: AdminDep, site_id: str, period_id: int) -> Response:
    """Delete a billing period (admin)."""
    get_site(session, admin, site_id)
    consumption.remove(session.connection(), admin.actor, site_id, period_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
