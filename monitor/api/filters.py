"""Query parameters shared by the list endpoints."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import Query
from pydantic import AwareDatetime

from monitor.core.catalogue import DeviceKind
from monitor.core.exceptions import InvalidInput

Start = Annotated[
    AwareDatetime | None, Query(description="From this instant (ISO 8601 with offset), inclusive")
]
End = Annotated[
    AwareDatetime | None, Query(description="Until this instant (ISO 8601 with offset), exclusive")
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
