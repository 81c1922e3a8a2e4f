from __future__ import annotations

from fastapi import APIRouter, status
from sqlalchemy import select, update

from monitor import audit
from monitor.api.deps import AdminDep, PrincipalDep, SessionDep
from monitor.api.filters import District
from monitor.api.pagination import Cursor, Limit, Page, decode_cursor, encode_cursor
from monitor.api.schemas import SiteRead, SiteUpdate
from monitor.api.scope import district_clause
from monitor.core.catalogue import SiteKind
from monitor.core.exceptions import InvalidInput, NotFound
from monitor.core.models import Site, table
from monitor.registry import SiteCreate, upsert_site

router = APIRouter(prefix="/sites", tags=["sites"])
sites = table(Site)


@router.get("", response_model=Page[SiteRead])
def list_sites(
    session: SessionDep,
    principal: PrincipalDep,
    district: District = None,
    kind: SiteKind | None = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Page[SiteRead]:
    """Sites, by id; filter by district and kind."""
    q = (
        select(sites)
        .where(district_clause(principal, sites.c.district))
        .order_by(sites.c.id)
        .limit(limit + 1)
    )
    if district:
        q = q.where(sites.c.district == district)
    if kind:
        q = q.where(sites.c.kind == kind)
    if cursor:
        q = q.where(sites.c.id > decode_cursor(cursor, 1)[0])
    rows = session.execute(q).all()
    items = [SiteRead.model_validate(r._mapping) for r in rows[:limit]]
    nxt = encode_cursor([items[-1].id]) if len(rows) > limit else None
    return Page(items=items, next_cursor=nxt)


@router.post("", response_model=SiteRead, status_code=status.HTTP_201_CREATED)
def create_site(session: SessionDep, admin: AdminDep, body: SiteCreate) -> SiteRead:
    """Register a site, or update the one with this id (admin)."""
    upsert_site(session.connection(), body)
    audit.record(
        session.connection(),
        admin.actor,
        "site.upsert",
        f"site:{body.id}",
        body.model_dump(mode="json"),
    )
    return get_site(session, admin, body.id)


@router.get("/{site_id}", response_model=SiteRead)
def get_site(session: SessionDep, principal: PrincipalDep, site_id: str) -> SiteRead:
    """One site."""
    row = session.execute(
        select(sites).where(sites.c.id == site_id, district_clause(principal, sites.c.district))
    ).first()
    if row is None:
        raise NotFound(f"site {site_id!r} does not exist", field="path.site_id")
    return SiteRead.model_validate(row._mapping)


REQUIRED = ("name", "district")


@router.patch("/{site_id}", response_model=SiteRead)
def update_site(session: SessionDep, admin: AdminDep, site_id: str, body: SiteUpdate) -> SiteRead:
    """Change a site's name, district, position or DMA parameters (admin)."""
    current = get_site(session, admin, site_id)
    values = body.model_dump(mode="json", exclude_unset=True)
    for key in REQUIRED:
        if key in values and values[key] is None:
            raise InvalidInput(f"{key}: required, not null", field=key)
    night_from = values.get("night_from", current.night_from)
    night_to = values.get("night_to", current.night_to)
    if night_from and night_to and night_to <= night_from:
        raise InvalidInput("night_to must be after night_from, within one day", field="night_to")
    if values:
        session.execute(update(sites).where(sites.c.id == site_id).values(values))
        audit.record(session.connection(), admin.actor, "site.update", f"site:{site_id}", values)
    return get_site(session, admin, site_id)
