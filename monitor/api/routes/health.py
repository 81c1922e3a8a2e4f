from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from monitor import __version__
from monitor.api.deps import SessionDep
from monitor.api.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health)
def health(session: SessionDep) -> Health:
    """Liveness and database reachability."""
    session.execute(text("SELECT 1"))
    dialect = session.get_bind().dialect.name
    timescale = False
    if dialect == "postgresql":
        timescale = bool(
            session.execute(text("SELECT 1 FROM pg_extension WHERE extname='timescaledb'")).first()
        )
    return Health(status="ok", database=dialect, version=__version__, timescaledb=timescale)
