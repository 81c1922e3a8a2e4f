"""The device registry as the ingestor sees it: a cache in front of the devices table."""

from __future__ import annotations

import threading
import time

from sqlalchemy import Engine, select

from ingest.validate import DeviceInfo
from monitor.core.catalogue import DeviceKind
from monitor.core.models import Device, DeviceStatus, table

devices = table(Device)


class DeviceRegistry:
    """Known devices, refreshed in full every `ttl_s`; an unknown id is looked up at most
    once per `miss_ttl_s`, so a flood from an unregistered device costs no query per message."""

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
        self._misses.clear()
        self._loaded_at = time.monotonic()

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
            self._refresh()
            info = self._known.get(device_id)
            if info is None:
                self._misses[device_id] = now
            return info
