"""The ingestor's device registry: unknown ids cost no scan of the devices table each."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import event

from ingest.registry import DeviceRegistry
from monitor.core.db import make_engine
from tests.conftest import register


def test_unknown_ids_cost_no_scan_and_one_lookup_per_miss_ttl(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    register(engine, devices={"dust-1": "dust_monitor"}, rules=False)
    scans: list[str] = []
    lookups: list[str] = []

    def count(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        if "FROM devices" in statement:
            (lookups if "WHERE" in statement else scans).append(statement)

    event.listen(engine, "before_cursor_execute", count)
    registry = DeviceRegistry(engine, miss_ttl_s=0.5)
    try:
        assert registry("dust-1") is not None
        for i in range(200):
            assert registry(f"ghost-{i}") is None
            assert registry("ghost-0") is None
        assert (len(scans), len(lookups)) == (1, 200)

        # a device registered a moment ago is seen at once, without a scan
        register(engine, site="cs-2", devices={"dust-2": "dust_monitor"}, rules=False)
        assert registry("dust-2") is not None
        assert registry("dust-2") is not None
        assert (len(scans), len(lookups)) == (1, 201)

        time.sleep(0.6)  # a miss is asked again only once its TTL is over
        assert registry("ghost-0") is None
        assert (len(scans), len(lookups)) == (1, 202)
    finally:
        engine.dispose()


def test_a_retired_devices_last_seen_series_is_dropped_at_the_next_refresh(
    sqlite_url: str,
) -> None:
    """The per-device Prometheus series are as many as the active fleet, not every id ever."""
    from prometheus_client import REGISTRY
    from sqlalchemy import update

    from ingest import metrics
    from monitor.core.models import Device, table

    def series(device_id: str) -> float | None:
        return REGISTRY.get_sample_value(
            "envmon_device_last_seen_timestamp_seconds", {"device_id": device_id}
        )

    engine = make_engine(sqlite_url)
    register(engine, devices={"keep-1": "dust_monitor", "retire-1": "dust_monitor"})
    registry = DeviceRegistry(engine, ttl_s=0.0)
    metrics.devices_seen({"keep-1": 1.0, "retire-1": 1.0, "deleted-1": 1.0})
    assert series("retire-1") == 1.0
    with engine.begin() as conn:
        conn.execute(
            update(table(Device)).where(table(Device).c.id == "retire-1").values(status="retired")
        )
    registry("keep-1")  # ttl 0: refreshes
    assert series("keep-1") == 1.0
    assert series("retire-1") is None and series("deleted-1") is None
    engine.dispose()
