"""Registered consumption per DMA (or supply area) and billing period: CJJ 92's Q_a."""

from __future__ import annotations

from datetime import date
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Response, status
from sqlalchemy.orm import Session

from alerts.evaluator import evaluate_sites
from monitor import consumption
from monitor.api.deps import AdminDep, PrincipalDep, SessionDep, SettingsDep
from monitor.api.routes.sites import get_site
from monitor.consumption import ConsumptionCreate, ConsumptionRead, ConsumptionUpdate
from monitor.core.settings import Settings

router = APIRouter(prefix="/sites/{site_id}/consumption", tags=["consumption"])


def _judge(session: Session, settings: Settings, site_id: str, since: date) -> None:
    """Registered consumption moves the DMA's leakage rate from `since` on: its rule judges
    again in the same transaction (a DMA without the rule, or not a DMA, changes nothing)."""
    evaluate_sites(
        session.connection(),
        {site_id: since},
        ZoneInfo(settings.timezone),
        outlet_pressure_mpa=settings.leakage_outlet_pressure_mpa,
        frost_depth_m=settings.leakage_frost_depth_m,
    )


@router.post("", response_model=ConsumptionRead, status_code=status.HTTP_201_CREATED)
def create_period(
    session: SessionDep,
    settings: SettingsDep,
    admin: AdminDep,
    site_id: str,
    body: ConsumptionCreate,
) -> ConsumptionRead:
    """Register a billing period's consumption (admin); periods of a site never overlap."""
    get_site(session, admin, site_id)
    created = consumption.create(session.connection(), admin.actor, site_id, body)
    _judge(session, settings, site_id, created.period_start)
    return created


@router.get("", response_model=list[ConsumptionRead])
def list_periods(
    session: SessionDep, principal: PrincipalDep, site_id: str
) -> list[ConsumptionRead]:
    """The site's billing periods, oldest first."""
    get_site(session, principal, site_id)
    return consumption.list_for(session.connection(), [site_id])


@router.patch("/{period_id}", response_model=ConsumptionRead)
def correct_period(
    session: SessionDep,
    settings: SettingsDep,
    admin: AdminDep,
    site_id: str,
    period_id: int,
    body: ConsumptionUpdate,
) -> ConsumptionRead:
    """Correct a billing period (admin)."""
    get_site(session, admin, site_id)
    before = consumption.get(session.connection(), site_id, period_id)
    after = consumption.correct(session.connection(), admin.actor, site_id, period_id, body)
    _judge(session, settings, site_id, min(before.period_start, after.period_start))
    return after


@router.delete("/{period_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_period(
    session: SessionDep, settings: SettingsDep, admin: AdminDep, site_id: str, period_id: int
) -> Response:
    """Delete a billing period (admin)."""
    get_site(session, admin, site_id)
    before = consumption.get(session.connection(), site_id, period_id)
    consumption.remove(session.connection(), admin.actor, site_id, period_id)
    _judge(session, settings, site_id, before.period_start)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
