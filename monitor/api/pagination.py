"""Cursor (keyset) pagination: the cursor is an opaque token for the last item's sort key."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Annotated, Any, Generic, TypeVar

import orjson
from fastapi import Query, Response
from pydantic import BaseModel
from sqlalchemy import Select
from sqlalchemy.orm import Session

from monitor.core.exceptions import InvalidInput

MAX_LIMIT = 1000

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Items per page")]
Cursor = Annotated[str | None, Query(description="`next_cursor` of the previous page")]


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


def page_json(items: list[dict[str, Any]], next_cursor: str | None) -> Response:
    """A `Page` as JSON, for the hot list endpoints: their rows already have the schema's
    fields and types (the route keeps `response_model` for OpenAPI), so neither building
    models nor FastAPI's check of the return value is paid per item; both cost more than
    the query for a page of 100 alerts or 720 hourly means. Times are written as pydantic
    writes them (RFC 3339, `Z` for UTC)."""
    body = orjson.dumps(
        {"items": items, "next_cursor": next_cursor},
        option=orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC,
    )
    return Response(body, media_type="application/json")


def plain_rows(session: Session, q: Select[Any]) -> Sequence[Any]:
    """The rows of a hot list as the driver hands them out: tuples in the select's column
    order. On PostgreSQL that skips SQLAlchemy's row objects and per-value processing, which
    would give back the same values (times already come in UTC, monitor/core/db.py) and cost
    about as much as the rest of a 720-row answer (the API's profile, docs/benchmarks.md);
    elsewhere the rows go through SQLAlchemy, which also makes SQLite's naive times aware."""
    result = session.execute(q)
    if session.get_bind().dialect.name != "postgresql":
        return [tuple(r) for r in result]
    try:
        return result.cursor.fetchall()  # type: ignore[attr-defined,no-any-return]
    finally:
        result.close()


def encode_cursor(key: list[Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(key)).decode().rstrip("=")


def decode_cursor(cursor: str, arity: int) -> list[Any]:
    try:
        key = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, orjson.JSONDecodeError) as exc:
        raise InvalidInput("cursor is not one this API issued", field="query.cursor") from exc
    if (
        not isinstance(key, list)
        or len(key) != arity
        # a forged integer past 64 bits would overflow in the driver: a 500, not a 422
        or any(isinstance(k, int) and not -(2**63) <= k < 2**63 for k in key)
    ):
        raise InvalidInput("cursor is not one this API issued", field="query.cursor")
    return key
