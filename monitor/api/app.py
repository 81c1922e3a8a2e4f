"""The FastAPI application."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from monitor import __version__
from monitor.api import errors
from monitor.api.deps import PrincipalDep
from monitor.api.routes import (
    alerts,
    consumption,
    dead_letters,
    devices,
    health,
    maintenance,
    readings,
    reports,
    rules,
    sites,
    users,
)
from monitor.auth import PrincipalCache
from monitor.core.db import make_engine, make_sessionmaker
from monitor.core.gcpace import freeze_startup
from monitor.core.settings import Settings, get_settings
from monitor.web import routes as web


class BodyLimit:
    """Refuse big or unsized request bodies before reading them (bodies here are small JSON
    documents). Plain ASGI: `@app.middleware("http")` costs a task and a stream per request,
    GETs included."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            refusal = self._refusal(Headers(scope=scope))
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _refusal(self, headers: Headers) -> Response | None:
        length = headers.get("content-length")
        if length is None:
            if headers.get("transfer-encoding"):
                return errors.problem(411, "Length required", "send a Content-Length header")
            return None
        if not length.isdigit():
            return errors.problem(400, "Bad Content-Length", f"not a length: {length!r}")
        if int(length) > self.max_bytes:
            return errors.problem(
                413,
                "Body too large",
                f"the body is {length} bytes; the limit is {self.max_bytes}",
                [{"field": "body", "message": "too large"}],
            )
        return None


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
        # reads on PostgreSQL in autocommit (deps.get_session)
        app.state.read_sessionmaker = (
            make_sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT"))
            if engine.dialect.name == "postgresql"
            else None
        )
        app.state.principals = PrincipalCache()
        freeze_startup()
        try:
            yield
        finally:
            engine.dispose()
            # what was frozen is collectable again: an app that is stopped in a process that
            # goes on (tests, `envmon up` stopping) leaves no cycles behind for good
            gc.unfreeze()

    app = FastAPI(
        title="envmon",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_url="/v1/openapi.json",
        docs_url=None,  # served below from the vendored assets, not from a CDN
        redoc_url=None,
    )
    errors.install(app)
    v1 = APIRouter(prefix="/v1")
    for module in (
        health,
        users,
        sites,
        devices,
        readings,
        alerts,
        dead_letters,
        rules,
        maintenance,
        reports,
        consumption,
    ):
        v1.include_router(module.router)
    app.include_router(v1)

    @app.get("/v1/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/v1/openapi.json",
            title="envmon API",
            swagger_js_url="/static/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger-ui/swagger-ui.css",
            swagger_favicon_url="/static/swagger-ui/favicon-32x32.png",
        )

    web.install(app)

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse)
    def metrics(principal: PrincipalDep) -> PlainTextResponse:
        """Prometheus metrics (any authenticated caller); in `envmon up` with the ingestor's."""
        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(BodyLimit, max_bytes=settings.api_max_body_bytes)
    errors.document(app)

    return app
