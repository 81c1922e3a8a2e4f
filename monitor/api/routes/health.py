from __future__ import annotations

from fastapi import APIRouter, Request
from sqlalchemy import text

from monitor import __version__
from monitor.api.deps import SessionDep
from monitor.api.schemas import GatewayHealth, Health

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health)
def health(request: Request, session: SessionDep) -> Health:
    """Liveness, database reachability, and the HJ 212 gateway where it runs in this process."""
    session.execute(text("SELECT 1"))
    dialect = session.get_bind().dialect.name
    timescale = False
    if dialect == "postgresql":
        timescale = bool(
            session.execute(text("SELECT 1 FROM pg_extension WHERE extname='timescaledb'")).first()
        )
    # set by `envmon up`, which runs the gateway beside the API (the API imports no pipeline)
    status = getattr(request.app.state, "hj212_status", None)
    gateway = GatewayHealth(**status()) if status is not None else None
    return Health(
        status="ok" if gateway is None or gateway.listening else "degraded",
        database=dialect,
        version=__version__,
        timescaledb=timescale,
        hj212=gateway,
    )
