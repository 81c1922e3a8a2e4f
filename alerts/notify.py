"""Send the notification outbox to a webhook: signed, retried, grouped by site.

`alerts.service.record_event` writes a `notifications` row in the transaction that changes the
alert. The dispatcher sends the rows of one site as one POST, at most once per
`notify_group_s`, and marks them sent in the transaction that claimed them, after the POST
returned. A crash before that commit leaves the rows pending, so the same delivery (same
`delivery_id`, same notification ids) is sent again: delivery is at least once, and the
receiver makes it effectively once by dropping ids it has seen (docs/notifications.md).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import BigInteger, Connection, Engine, cast, func, literal, select, update

from monitor import __version__
from monitor.core.models import (
    Alert,
    AlertEvent,
    Device,
    Notification,
    NotificationStatus,
    Rule,
    Site,
    table,
    utcnow,
)
from monitor.core.settings import Settings

log = logging.getLogger(__name__)

notifications = table(Notification)
alert_events = table(AlertEvent)
alerts = table(Alert)
rules = table(Rule)
devices = table(Device)
sites = table(Site)

MAX_PER_MESSAGE = 500  # a site with more due notifications gets several messages in a row
BACKOFF_CAP_S = 3600.0
POLL_S = 1.0
SIGNATURE_HEADER = "X-Envmon-Signature"
TIMESTAMP_HEADER = "X-Envmon-Timestamp"


@dataclass(frozen=True, slots=True)
class Claimed:
    """An outbox row claimed for one message."""

    id: int
    created_at: datetime
    attempts: int


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    text: str  # the start of the response body, kept as last_error on failure


# (url, body, headers, timeout_s) -> Response; raises OSError on network errors and timeouts
Transport = Callable[[str, bytes, Mapping[str, str], float], Response]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # urllib would follow a 301/302/303 with a GET and no body: the notification would be
    # lost while the sender saw a 2xx. A redirect is a failed delivery instead.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def http_post(url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> Response:
    """POST with the standard library (no HTTP client in the runtime dependencies)."""
    request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
    try:
        with _opener.open(request, timeout=timeout_s) as resp:
            return Response(resp.status, resp.read(1000).decode("utf-8", "replace"))
    except urllib.error.HTTPError as exc:  # a non-2xx answer is a response, not an error
        with exc:
            return Response(exc.code, exc.read(1000).decode("utf-8", "replace"))


def sign(secret: str, body: bytes) -> str:
    """The X-Envmon-Signature value: `sha256=` and the hex HMAC-SHA256 of the raw body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def delivery_id(claimed: Sequence[Claimed]) -> str:
    """Derived from the notifications alone, so a re-send of the same rows has the same id.

    Each row's created_at is included so that ids reused by a recreated database do not make
    a receiver drop new deliveries as repeats.
    """
    keys = sorted((row.id, row.created_at.isoformat()) for row in claimed)
    text = ",".join(f"{nid}@{created}" for nid, created in keys)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def backoff_s(base_s: float, attempts: int) -> float:
    """Delay after the `attempts`-th failed attempt: exponential, capped, with equal jitter."""
    delay = min(BACKOFF_CAP_S, base_s * 2.0 ** max(0, attempts - 1))
    return delay * random.uniform(0.5, 1.0)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _site_lock_key(site_id: str) -> int:
    """The PostgreSQL advisory lock (a bigint) that serialises dispatchers on one site."""
    digest = hashlib.sha256(f"envmon-notify:{site_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class Dispatcher:
    """Sends pending notifications to `settings.webhook_url`, in a thread or pass by pass."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        transport: Transport = http_post,
        poll_s: float = POLL_S,
    ) -> None:
        self._engine = engine
        self._url = settings.webhook_url
        self._secret = settings.webhook_secret or ""
        self._group = timedelta(seconds=settings.notify_group_s)
        self._max_attempts = settings.notify_max_attempts
        self._backoff_s = settings.notify_backoff_s
        self._timeout_s = settings.notify_timeout_s
        self._transport = transport
        self._poll_s = poll_s
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self._url is not None

    def start(self) -> None:
        """Run passes in a thread until `stop()`; without a webhook URL, do nothing."""
        if not self.enabled:
            log.info("ENVMON_WEBHOOK_URL is unset: notifications stay in the outbox")
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="envmon-notify", daemon=True)
        self._thread.start()
        log.info("sending notifications to %s", urlsplit(self._url or "").netloc)

    def stop(self, timeout_s: float | None = None) -> None:
        """Finish the message in flight (its POST and its commit), then stop.

        The default waits as long as one message can take (the request timeout); a message
        cut short is sent again by the next dispatcher, with the same delivery id."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s if timeout_s is not None else self._timeout_s * 3 + 30)
            self._thread = None

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.run_once()
            except Exception:
                # the rows stay pending; the next pass tries again
                log.exception("notification pass failed")
            self._stopping.wait(self._poll_s)

    def run_once(self, now: datetime | None = None) -> int:
        """One pass: send each ripe site's due notifications; return how many were delivered.

        `now` decides what is due and ripe (tests move it forward); `sent_at` and the
        signed timestamp are the real clock."""
        if not self.enabled:
            return 0
        now = now or utcnow()
        delivered = 0
        for site_id in self._ripe_sites(now):
            while not self._stopping.is_set():
                sent, claimed = self._send_site(site_id, now)
                delivered += sent
                if sent == 0 or claimed < MAX_PER_MESSAGE:
                    break
        return delivered

    def _ripe_sites(self, now: datetime) -> list[str]:
        """Sites whose oldest pending notification has waited `notify_group_s`, none of them
        still backing off. A site waiting for a retry holds its newer notifications back, so
        that a receiver never gets a site's changes out of order (a resolve before its open);
        they join the retry."""
        n = notifications.c
        query = (
            select(n.site_id)
            .where(n.status == NotificationStatus.pending)
            .group_by(n.site_id)
            .having(func.max(n.next_attempt_at) <= now, func.min(n.created_at) <= now - self._group)
            .order_by(func.min(n.created_at))
        )
        with self._engine.connect() as conn:
            return [str(site_id) for site_id in conn.execute(query).scalars()]

    def _send_site(self, site_id: str, now: datetime) -> tuple[int, int]:
        """Claim, POST and settle one message of one site; (delivered, claimed)."""
        n = notifications.c
        with self._engine.connect() as conn, conn.begin():
            if conn.dialect.name == "postgresql":
                # one dispatcher per site at a time, so a site's message is never split
                # between two dispatchers (the row locks alone would only prevent repeats)
                key = cast(literal(_site_lock_key(site_id)), BigInteger)
                locked = conn.execute(select(func.pg_try_advisory_xact_lock(key))).scalar_one()
                if not locked:
                    return 0, 0
            # Locked until this transaction ends: a second dispatcher skips these rows, and a
            # crash before the commit below releases them still pending. (SQLite ignores the
            # clause: one process dispatches there.)
            claimed = [
                Claimed(row.id, row.created_at, row.attempts)
                for row in conn.execute(
                    select(n.id, n.created_at, n.attempts)
                    .where(
                        n.site_id == site_id,
                        n.status == NotificationStatus.pending,
                        n.next_attempt_at <= now,
                    )
                    .order_by(n.id)
                    .limit(MAX_PER_MESSAGE)
                    .with_for_update(skip_locked=True)
                )
            ]
            if not claimed or min(r.created_at for r in claimed) > now - self._group:
                return 0, 0
            delivery = delivery_id(claimed)
            timestamp = int(time.time())
            body = self._payload(conn, site_id, claimed, delivery, timestamp)
            response = self._post(body, delivery, timestamp)
            ids = [r.id for r in claimed]
            if isinstance(response, Response) and 200 <= response.status < 300:
                conn.execute(
                    update(notifications)
                    .where(n.id.in_(ids))
                    .values(
                        status=NotificationStatus.sent,
                        sent_at=utcnow(),
                        attempts=n.attempts + 1,
                        last_error=None,
                    )
                )
                log.info(
                    "sent %d notifications of site %s (delivery %s)", len(ids), site_id, delivery
                )
                return len(ids), len(claimed)
            error = (
                f"HTTP {response.status}: {response.text[:200]}"
                if isinstance(response, Response)
                else response
            )
            self._settle_failure(conn, site_id, claimed, delivery, error, now)
            return 0, len(claimed)

    def _post(self, body: bytes, delivery: str, timestamp: int) -> Response | str:
        """The response, or the error that kept us from getting one."""
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"envmon/{__version__}",
            SIGNATURE_HEADER: sign(self._secret, body),
            TIMESTAMP_HEADER: str(timestamp),
            "Idempotency-Key": delivery,
        }
        try:
            return self._transport(self._url or "", body, headers, self._timeout_s)
        except Exception as exc:  # timeouts, refused connections, TLS errors, ...
            return f"{type(exc).__name__}: {exc}"[:300]

    def _settle_failure(
        self,
        conn: Connection,
        site_id: str,
        claimed: Sequence[Claimed],
        delivery: str,
        error: str,
        now: datetime,
    ) -> None:
        n = notifications.c
        ids = [r.id for r in claimed]
        # the whole message retries together, on the schedule of its most-tried row
        attempts = max(r.attempts for r in claimed) + 1
        delay = backoff_s(self._backoff_s, attempts)
        conn.execute(
            update(notifications)
            .where(n.id.in_(ids))
            .values(
                attempts=n.attempts + 1,
                last_error=error,
                next_attempt_at=now + timedelta(seconds=delay),
            )
        )
        exhausted = [r.id for r in claimed if r.attempts + 1 >= self._max_attempts]
        if exhausted:
            conn.execute(
                update(notifications)
                .where(n.id.in_(exhausted))
                .values(status=NotificationStatus.failed)
            )
            log.error(
                "gave up on notifications %s of site %s after %d attempts: %s",
                exhausted,
                site_id,
                self._max_attempts,
                error,
            )
        if len(exhausted) < len(ids):
            log.warning(
                "delivery %s of site %s failed (attempt %d): %s; retrying in %.1f s",
                delivery,
                site_id,
                attempts,
                error,
                delay,
            )

    def _payload(
        self,
        conn: Connection,
        site_id: str,
        claimed: Sequence[Claimed],
        delivery: str,
        timestamp: int,
    ) -> bytes:
        """The JSON body of one message (the timestamp is in it, so the signature covers it)."""
        n, e, a, r, d, s = (
            notifications.c,
            alert_events.c,
            alerts.c,
            rules.c,
            devices.c,
            sites.c,
        )
        rows = conn.execute(
            select(
                n.id,
                n.alert_id,
                n.event_id,
                e.kind,
                e.at,
                e.note,
                e.value,
                func.coalesce(e.severity, a.severity).label("severity"),
                a.message,
                r.name.label("rule"),
                r.metric,
                r.basis,
                a.device_id,
                s.name.label("site_name"),
                s.district,
            )
            # outer joins: every claimed row is in the body it is marked sent for
            .outerjoin(alert_events, e.id == n.event_id)
            .outerjoin(alerts, a.id == n.alert_id)
            .outerjoin(rules, r.id == a.rule_id)
            .outerjoin(devices, d.id == a.device_id)
            .outerjoin(sites, s.id == n.site_id)
            .where(n.id.in_([row.id for row in claimed]))
            .order_by(n.id)
        ).all()
        body = {
            "delivery_id": delivery,
            "timestamp": timestamp,
            "site_id": site_id,
            "notifications": [
                {
                    "id": row.id,
                    "alert_id": row.alert_id,
                    "event_id": row.event_id,
                    "kind": row.kind,
                    "at": _iso(row.at),
                    "rule": row.rule,
                    "metric": row.metric,
                    "basis": row.basis,
                    "device_id": row.device_id,
                    "site_id": site_id,
                    "site_name": row.site_name,
                    "district": row.district,
                    "severity": row.severity,
                    "value": row.value,
                    "message": row.note or row.message,
                }
                for row in rows
            ],
        }
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
