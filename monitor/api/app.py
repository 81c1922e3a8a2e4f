"""The FastAPI application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from prometheus_client import make_asgi_app

from monitor import __version__
from monitor.api import errors
from monitor.api.routes import alerts, dead_letters, devices, health, readings, rules, sites
from monitor.core.db import make_engine, make_sessionmaker
from monitor.core.settings import Settings, get_settings

DESCRIPTION = """
envmon stores readings from construction-dust monitors, water-quality probes and pipe-leak
meters, and raises alerts from thresholds drawn from the dust-control and water-supply
standards. Inspectors list, acknowledge and resolve alerts here.

Lists use cursor pagination (`next_cursor`), and errors are `application/problem+json`
objects whose `errors[].field` names the offending field.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.sqlalchemy_url)
        app.state.settings = settings
        app.state.sessionmaker = make_sessionmaker(engine)
        try:
            yield
        finally:
            engine.dispose()

    app = FastAPI(
        title="envmon",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_url="/v1/openapi.json",
        docs_url="/v1/docs",
        redoc_url=None,
    )
    errors.install(app)
    v1 = APIRouter(prefix="/v1")
    for module in (health, sites, devices, readings, alerts, dead_letters, rules):
        v1.include_router(module.router)
    app.include_router(v1)
    # Prometheus text format; in `envmon up` this includes the ingestor's metrics
    app.mount("/metrics", make_asgi_app())
    return app
