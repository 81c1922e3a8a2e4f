"""Who a logger is: its MN and PW checked against the registered devices, with throttling.

A wrong PW and an unknown MN get the same treatment on the wire (no answer), so the port
cannot be used to find out which MNs are registered; repeated failures from one address or
for one MN are locked out for a while, since an HJ 212 PW is only six characters.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import NamedTuple

from sqlalchemy import Engine, select
from sqlalchemy.exc import OperationalError

from ingest.hj212.convert import RULES_FROM_RTD, Device
from ingest.validate import Reason
from monitor.broker_auth import verify_password
from monitor.core.models import Device as DeviceTable
from monitor.core.models import DeviceStatus, table

log = logging.getLogger(__name__)
devices = table(DeviceTable)

MAX_FAILURES = 5  # for one MN within FAILURE_WINDOW_S, then locked out for LOCKOUT_S
# Loggers behind a carrier's NAT share an address: one misconfigured logger must not lock
# out its neighbours at the first few failures, so an address is allowed more.
MAX_ADDRESS_FAILURES = 20
FAILURE_WINDOW_S = 600.0
LOCKOUT_S = 900.0


class Registered(NamedTuple):
    device: Device  # one per registered device, shared by all its connections
    password_hash: str | None
    active: bool


class Refused(NamedTuple):
    reason: Reason
    detail: str


class Throttle:
    """Failures per key (an address, an MN) in a sliding window; a key with too many is
    locked out until the lockout passes."""

    def __init__(self, max_failures: int = MAX_FAILURES) -> None:
        self._max = max_failures
        self._failures: dict[str, deque[float]] = {}
        self._locked_until: dict[str, float] = {}

    def locked(self, key: str, now: float) -> bool:
        until = self._locked_until.get(key)
        if until is None:
            return False
        if now >= until:
            del self._locked_until[key]
            return False
        return True

    def fail(self, key: str, now: float) -> None:
        q = self._failures.setdefault(key, deque())
        q.append(now)
        while q and q[0] < now - FAILURE_WINDOW_S:
            q.popleft()
        if len(q) >= self._max:
            self._locked_until[key] = now + LOCKOUT_S
            q.clear()
        if len(self._failures) > 100_000:  # bounded: forget the oldest keys
            for k in list(self._failures)[:50_000]:
                del self._failures[k]


class Identities:
    """MN -> registered device, refreshed from the devices table every `ttl_s` (and at most
    every `miss_ttl_s` for an unknown MN)."""

    def __init__(self, engine: Engine, *, ttl_s: float = 30.0, miss_ttl_s: float = 5.0) -> None:
        self._engine = engine
        self._ttl = ttl_s
        self._miss_ttl = miss_ttl_s
        self._known: dict[str, Registered] = {}
        self._loaded_at = float("-inf")
        self._missed_at = float("-inf")
        # MN -> (the PW, the hash it matched): a PW checked once against a hash is not run
        # through PBKDF2 again for every frame (one entry per MN, not per PW tried)
        self._verified: dict[str, tuple[str, str]] = {}
        self._devices: dict[str, Device] = {}
        self._lock = threading.Lock()
        self.throttle = Throttle()  # per MN
        self.address_throttle = Throttle(MAX_ADDRESS_FAILURES)

    def _refresh(self, now: float) -> None:
        cols = devices.c
        try:
            with self._engine.connect() as conn:
                rows = conn.execute(
                    select(
                        cols.id,
                        cols.hj212_mn,
                        cols.hj212_password_hash,
                        cols.hj212_unit,
                        cols.status,
                        cols.interval_s,
                        cols.hj212_rtd_interval_s,
                        cols.hj212_rules_from,
                    ).where(cols.hj212_mn.is_not(None))
                ).all()
        except OperationalError:
            if self._loaded_at == float("-inf"):
                raise  # nothing known yet: the connection fails and the logger retries
            # the database is away: keep identifying loggers from what we knew, so their
            # frames reach the writer and its spool (and get answered from there)
            log.warning("devices table unreachable; HJ 212 identities from the cache")
            self._loaded_at = now
            return
        self._known = {
            r.hj212_mn: Registered(
                self._device(
                    Device(
                        r.id,
                        r.hj212_unit,
                        r.interval_s,
                        r.hj212_rtd_interval_s,
                        r.hj212_rules_from or RULES_FROM_RTD,
                    )
                ),
                r.hj212_password_hash,
                r.status == DeviceStatus.active,
            )
            for r in rows
        }
        self._verified = {mn: secret for mn, secret in self._verified.items() if mn in self._known}
        self._loaded_at = now

    def _device(self, device: Device) -> Device:
        """The Device object already held for an unchanged registration (a refresh does not
        make 10,000 new ones for the connections to hold)."""
        held = self._devices.get(device.device_id)
        if held == device:
            return held
        self._devices[device.device_id] = device
        return device

    def _lookup(self, mn: str, now: float) -> Registered | None:
        if now - self._loaded_at > self._ttl:
            self._refresh(now)
        found = self._known.get(mn)
        if found is None and now - self._missed_at > self._miss_ttl:
            self._missed_at = now
            self._refresh(now)
            found = self._known.get(mn)
        return found

    def check(self, mn: str, pw: str | None, address: str) -> Device | Refused:
        """The device an (MN, PW) logs in as, or why not. Blocking (database, PBKDF2)."""
        with self._lock:
            result = self._check(mn, pw, address, time.monotonic(), blocking=True)
        assert result is not None  # a blocking check always decides
        return result

    def check_cached(self, mn: str, pw: str | None, address: str) -> Device | Refused | None:
        """`check` when it needs neither the database nor PBKDF2 (a logged-in logger's next
        frame, within the cache's lifetime): answered on the caller's thread. None when it
        does need them (or another thread holds the cache): then call `check` on a thread."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            return self._check(mn, pw, address, time.monotonic(), blocking=False)
        finally:
            self._lock.release()

    def _check(
        self, mn: str, pw: str | None, address: str, now: float, *, blocking: bool
    ) -> Device | Refused | None:
        if self.address_throttle.locked(address, now) or self.throttle.locked(mn, now):
            return Refused(Reason.hj212_wrong_password, "locked out after repeated failures")
        if not blocking:
            found = self._known.get(mn) if now - self._loaded_at <= self._ttl else None
            if found is None or pw is None or self._verified.get(mn) != (pw, found.password_hash):
                return None
        else:
            found = self._lookup(mn, now)
        if found is None:
            self.address_throttle.fail(address, now)
            return Refused(Reason.hj212_unknown_mn, f"MN {mn[:64]!r} is not registered")
        if not found.active:
            return Refused(Reason.hj212_unknown_mn, f"device {found.device.device_id!r} is retired")
        if not self._password_ok(mn, pw, found):
            self.address_throttle.fail(address, now)
            self.throttle.fail(mn, now)
            return Refused(Reason.hj212_wrong_password, f"wrong PW for MN {mn[:64]!r}")
        return found.device

    def _password_ok(self, mn: str, pw: str | None, found: Registered) -> bool:
        if pw is None or found.password_hash is None:
            return False
        if self._verified.get(mn) == (pw, found.password_hash):
            return True  # checked before against this very hash: no PBKDF2 per frame
        if not verify_password(pw, found.password_hash):
            return False
        self._verified[mn] = (pw, found.password_hash)
        return True
