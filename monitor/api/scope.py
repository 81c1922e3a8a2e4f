"""District scope: a principal bound to a district sees only that district's sites, devices,
readings, alerts and dead letters, through every endpoint and filter. Out-of-scope objects
are reported as absent (404), not forbidden, so their existence does not leak."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Select, select, true

from monitor.auth import Principal
from monitor.core.models import Device, Site, table

devices = table(Device)
sites = table(Site)


def district_clause(principal: Principal, district_column: Any) -> ColumnElement[bool]:
    """Where-clause limiting a query that has the sites' district column to the scope."""
    if principal.district is None:
        return true()
    return district_column == principal.district  # type: ignore[no-any-return]


def devices_in_scope(principal: Principal) -> Select[Any]:
    """The ids of the devices the principal may see (a subquery)."""
    return (
        select(devices.c.id)
        .join(sites, sites.c.id == devices.c.site_id)
        .where(district_clause(principal, sites.c.district))
    )
