"""The device registry as the ingestor sees it: a cache in front of the devices table."""

from __future__ import annotations

import threading
import time

from sqlalchemy import Engine, select

from ingest import metrics
from ingest.validate import DeviceInfo
from monitor.core.catalogue import DeviceKind
from monitor.core.models import Device, DeviceStatus, table

devices = table(Device)


MAX_MISSES = 100_000  # remembered unknown ids; a flood of random ids cannot grow it further


class DeviceRegistry:
    """Known devices, refreshed in full every `ttl_s`. An id not among them is looked up alone
    (by primary key: a device registered a moment ago is seen at once) and, if unknown, stays
    a miss for `miss_ttl_s`: a flood from unregistered ids costs no scan of the table, and
    at most one indexed lookup per id per `miss_ttl_s`."""

    def __init__(self, engine: Engine, *, ttl_s: float = 30.0, miss_ttl_s: float = 5.0) -> None:
        self._engine = engine
        self._ttl = ttl_s
        self._miss_ttl = miss_ttl_s
        self._known: dict[str, DeviceInfo] = {}
        self._misses: dict[str, float] = {}
        self._loaded_at = float("-inf")
        self._lock = threading.Lock()

    def _refresh(self) -> None:
        with self._engine.connect() as conn:
            rows = conn.execute(select(devices.c.id, devices.c.kind, devices.c.status)).all()
        self._known = {
            r.id: DeviceInfo(DeviceKind(r.kind), r.status == DeviceStatus.active) for r in rows
        }
        self._loaded_at = time.monotonic()
        metrics.keep_devices({d for d, info in self._known.items() if info.active})
        # forget only the misses that expired: clearing them all would make every unknown
        # id cost a query again right after each refresh
        expired = self._loaded_at - self._miss_ttl
        self._misses = {k: t for k, t in self._misses.items() if t > expired}

    def _lookup(self, device_id: str) -> DeviceInfo | None:
        with self._engine.connect() as conn:
            row = conn.execute(
                select(devices.c.kind, devices.c.status).where(devices.c.id == device_id)
            ).first()
        return (
            None
            if row is None
            else DeviceInfo(DeviceKind(row.kind), row.status == DeviceStatus.active)
        )

    def __call__(self, device_id: str) -> DeviceInfo | None:
        with self._lock:
            now = time.monotonic()
            if now - self._loaded_at > self._ttl:
                self._refresh()
            info = self._known.get(device_id)
            if info is not None:
                return info
            missed = self._misses.get(device_id)
            if missed is not None and now - missed < self._miss_ttl:
                return None
            info = self._lookup(device_id)
            if info is not None:
                self._known[device_id] = info
            else:
                if len(self._misses) >= MAX_MISSES:
                    self._misses.clear()
                self._misses[device_id] = now
            return info
