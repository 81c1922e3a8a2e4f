"""Query parameters shared by the list endpoints."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import AwareDatetime, BeforeValidator, Field

from monitor.core.catalogue import DeviceKind
from monitor.core.exceptions import InvalidInput

# Ids are INTEGER: 32 bits on PostgreSQL (SQLite's are 64), so a larger value would be out of
# range in the database (a 500) instead of being refused here with the field's name.
MAX_ID = 2**31 - 1
BoundedId = Annotated[int, Field(ge=1, le=MAX_ID)]
IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]

_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]")


def _date_time_text(value: Any) -> Any:
    # pydantic's lax mode reads a number ("0.5") as Unix seconds; the OpenAPI says date-time
    if isinstance(value, str) and not _DATE_TIME.match(value):
        raise ValueError("not an ISO 8601 date-time, e.g. 2026-11-25T08:00:00Z")
    if isinstance(value, int | float):
        raise ValueError("not an ISO 8601 date-time, e.g. 2026-11-25T08:00:00Z")
    return value


DateTime = Annotated[AwareDatetime, BeforeValidator(_date_time_text)]
Start = Annotated[
    DateTime | None, Query(description="From this instant (ISO 8601 with offset), inclusive")
]
End = Annotated[
    DateTime | None, Query(description="Until this instant (ISO 8601 with offset), exclusive")
]
SiteId = Annotated[str | None, Query(alias="site", description="Only this site")]
District = Annotated[str | None, Query(description="Only sites in this district")]
Kind = Annotated[DeviceKind | None, Query(description="Only this device kind")]


def check_range(
    start: AwareDatetime | None, end: AwareDatetime | None, max_days: int | None = None
) -> None:
    if start is not None and end is not None and end <= start:
        raise InvalidInput("end must be after start", field="query.end")
    if (
        max_days
        and start is not None
        and end is not None
        and end - start > timedelta(days=max_days)
    ):
        raise InvalidInput(
            f"the range may span {max_days} days at most; page through shorter ranges",
            field="query.end",
        )
