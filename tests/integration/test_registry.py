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
