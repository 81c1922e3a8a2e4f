"""Errors as RFC 9457 problem objects; every 4xx names the offending field."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException

from monitor.core.exceptions import EnvmonError

log = logging.getLogger(__name__)
PROBLEM = "application/problem+json"


def problem(
    status: int,
    title: str,
    detail: str,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    # keep the location: "query.start" tells the caller where to look
    return ".".join(str(p) for p in loc)


def install(app: FastAPI) -> None:
    @app.exception_handler(EnvmonError)
    async def _domain(_: Request, exc: EnvmonError) -> JSONResponse:
        errors = [{"field": exc.field, "message": exc.message}] if exc.field else None
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return problem(exc.status_code, exc.title, exc.message, errors, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": _field(e["loc"]), "message": e["msg"]} for e in exc.errors()]
        fields = ", ".join(e["field"] for e in errors)
        return problem(422, "Invalid request", f"invalid value for {fields}", errors)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        # keep the exception's headers: a 405 must say Allow (RFC 9110), a 401 WWW-Authenticate
        headers = dict(exc.headers) if exc.headers else None
        if exc.status_code == 405:
            # Starlette's Allow names the methods of the first route of the path only (GET
            # and POST /v1/devices are two routes): name every method the OpenAPI documents
            allowed = _allowed(app, request.url.path)
            if allowed:
                headers = {**(headers or {}), "Allow": ", ".join(allowed)}
        return problem(exc.status_code, str(exc.detail), str(exc.detail), headers=headers)

    @app.exception_handler(DataError)
    async def _data(request: Request, exc: DataError) -> JSONResponse:
        # SQLSTATE class 22 (a number out of range, a text too long for its column): a value
        # the request sent that a bound in the API missed; the caller's error, not a 500
        log.warning(
            "database refused a value on %s %s: %s",
            request.method,
            request.url.path,
            str(exc.orig)[:200],
        )
        return problem(422, "Invalid value", "a value is out of the range the database stores")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(500, "Internal error", "an unexpected error occurred; it has been logged")


def _allowed(app: FastAPI, path: str) -> list[str]:
    """The methods the OpenAPI documents for the path template(s) `path` matches."""
    table: list[tuple[re.Pattern[str], list[str]]] | None = getattr(app.state, "allow", None)
    if table is None:
        table = [
            (
                re.compile(
                    "^" + "([^/]+)".join(map(re.escape, re.split(r"\{[^/}]+\}", template))) + "$"
                ),
                [m.upper() for m in ops if m in HTTP_METHODS],
            )
            for template, ops in app.openapi().get("paths", {}).items()
        ]
        app.state.allow = table
    matches = [(p.groups, methods) for p, methods in table if p.match(path)]
    # a literal path beats a template it also fits (/v1/alerts/acknowledge, not {alert_id})
    fewest = min((n for n, _ in matches), default=0)
    return sorted({m for n, methods in matches if n == fewest for m in methods})


HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "An RFC 9457 problem object; `errors[].field` names each offending field.",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "example": "about:blank"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {
                    "field": {"type": ["string", "null"]},
                    "message": {"type": "string"},
                },
            },
        },
    },
}
ANSWERS = {
    400: "Malformed request (e.g. a Content-Length that is not a number)",
    401: "No API key, or one that is unknown, revoked or disabled",
    403: "The caller's role may not do this",
    404: "No such resource in the caller's scope",
    409: "Conflicts with the current state (a duplicate name, an alert already resolved)",
    411: "A body without Content-Length",
    413: "The body is larger than the limit",
    422: "Invalid parameters or body; `errors[].field` names each",
}


# query parameters that name one object: an unknown one is a 404 (the reports), not an empty list
NAMING_QUERIES = frozenset({"site", "site_id", "device_id", "dma"})


def _answers(route: APIRoute) -> set[int]:
    """The error statuses a route can send, read from what it depends on."""
    from monitor.api.deps import get_principal

    dependants = [route.dependant, *_flat(route.dependant)]
    calls = [d.call for d in dependants]
    methods = route.methods or set()
    inputs = any(
        d.path_params or d.query_params or d.header_params or d.body_params for d in dependants
    )
    codes: set[int] = set()
    if get_principal in calls:
        codes.add(401)
    # the role check of deps._role
    if any(getattr(c, "__qualname__", "").startswith("_role.") for c in calls):
        codes.add(403)
    names = {p.alias for d in dependants for p in d.query_params}
    if route.dependant.path_params or names & NAMING_QUERIES:
        codes.add(404)
    if methods & {"POST", "PUT", "PATCH"}:
        codes |= {400, 411, 413}
    if methods & {"POST", "PUT", "PATCH", "DELETE"} and 401 in codes:
        codes.add(409)
    if inputs:
        codes.add(422)
    return codes


def _flat(dependant: Dependant) -> list[Dependant]:
    out: list[Dependant] = []
    for dep in dependant.dependencies:
        out.append(dep)
        out.extend(_flat(dep))
    return out


def _routes(app: FastAPI) -> Iterator[tuple[str, APIRoute]]:
    """Each API route with its full path."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI copies the included routes, prefix applied
        for route in app.routes:
            if isinstance(route, APIRoute):
                yield route.path_format, route
        return
    # newer FastAPI keeps an included router as one lazy route; its contexts carry the prefix
    for context in iter_route_contexts(app.routes):
        if isinstance(context.original_route, APIRoute) and context.path_format:
            yield context.path_format, context.original_route


def document(app: FastAPI) -> None:
    """Make the OpenAPI list each route's error answers as they are sent: problem+json."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components["Problem"] = PROBLEM_SCHEMA
        ref = {"$ref": "#/components/schemas/Problem"}
        for path, route in _routes(app):
            for method in route.methods or ():
                op = schema["paths"].get(path, {}).get(method.lower())
                if op is None:
                    continue
                responses = op.setdefault("responses", {})
                for code in sorted(_answers(route)):
                    responses[str(code)] = {
                        "description": ANSWERS[code],
                        "content": {PROBLEM: {"schema": ref}},
                    }
        for unused in ("HTTPValidationError", "ValidationError"):
            components.pop(unused, None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
