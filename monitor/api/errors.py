"""Errors as RFC 9457 problem objects; every 4xx names the offending field."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
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
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail), str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(500, "Internal error", "an unexpected error occurred; it has been logged")
