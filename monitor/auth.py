"""People and their API keys: who may do what, in which district. Never commits.

A key is `envmon_<prefix>_<secret>`; the database keeps the prefix (to find the row) and a
SHA-256 of the whole key. Keys are 256-bit random strings, so a fast hash is enough (a slow
password hash protects guessable secrets; these are not guessable).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Connection, delete, insert, select, update

from monitor.core.exceptions import Conflict, EnvmonError, NotFound
from monitor.core.models import ApiKey, AuthEpoch, Role, User, table, utcnow

users_t = table(User)
keys_t = table(ApiKey)
epoch_t = table(AuthEpoch)

KEY_PREFIX = "envmon_"


class Unauthenticated(EnvmonError):
    status_code = 401
    title = "Unauthenticated"


class Forbidden(EnvmonError):
    status_code = 403
    title = "Forbidden"


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller. `district` None means every district."""

    user_id: int
    name: str
    role: Role
    district: str | None
    key_id: int

    @property
    def actor(self) -> str:
        return f"user:{self.name}"

    def require(self, *roles: Role) -> None:
        if self.role not in roles:
            allowed = " or ".join(r.value for r in roles)
            raise Forbidden(f"this needs the {allowed} role; {self.name} is {self.role.value}")


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")
    role: Role
    district: str | None = Field(
        None, max_length=100, description="Scope; unset = every district (admins must be unset)"
    )


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_user(conn: Connection, user: UserCreate) -> int:
    if user.role == Role.admin and user.district is not None:
        raise Conflict("an admin is city-wide: leave district unset", field="district")
    exists = conn.execute(select(users_t.c.id).where(users_t.c.name == user.name)).first()
    if exists is not None:
        raise Conflict(f"user {user.name!r} exists already", field="name")
    result = conn.execute(
        insert(users_t)
        .values(
            name=user.name,
            role=user.role.value,
            district=user.district,
            disabled=False,
            created_at=utcnow(),
        )
        .returning(users_t.c.id)
    )
    return int(result.scalar_one())


def find_user(conn: Connection, name: str) -> Any:
    row = conn.execute(select(users_t).where(users_t.c.name == name)).first()
    if row is None:
        raise NotFound(f"user {name!r} does not exist", field="name")
    return row


def create_key(
    conn: Connection, user_id: int, *, label: str | None = None, demo: bool = False
) -> tuple[int, str]:
    """A new key for a user: (key id, the key). The key is shown this once, never stored."""
    prefix = secrets.token_hex(4)
    token = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    result = conn.execute(
        insert(keys_t)
        .values(
            user_id=user_id,
            prefix=prefix,
            hash=_digest(token),
            label=label,
            demo=demo,
            created_at=utcnow(),
        )
        .returning(keys_t.c.id)
    )
    return int(result.scalar_one()), token


def revoke_key(conn: Connection, key_id: int) -> None:
    done = conn.execute(
        update(keys_t)
        .where(keys_t.c.id == key_id, keys_t.c.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    if done.rowcount == 0:
        raise NotFound(f"no active key {key_id}", field="key_id")


def set_disabled(conn: Connection, name: str, disabled: bool) -> None:
    find_user(conn, name)
    conn.execute(update(users_t).where(users_t.c.name == name).values(disabled=disabled))


def authenticate(
    conn: Connection,
    token: str | None,
    *,
    production: bool,
    cache: PrincipalCache | None = None,
) -> Principal:
    """The principal behind a bearer token, checked against the database on every call (or
    against a cache that the auth epoch empties), so a revoked key or a disabled user stops
    working at once."""
    if not token:
        raise Unauthenticated("send an API key: Authorization: Bearer envmon_...")
    parts = token.split("_")
    if len(parts) < 3 or not token.startswith(KEY_PREFIX):
        raise Unauthenticated("malformed API key")
    if parts[1].startswith(SESSION_PREFIX):  # a browser session's row, never a bearer key
        raise Unauthenticated("unknown API key")
    digest = _digest(token)
    epoch = 0
    if cache is not None:
        # the epoch is read before the key row: a principal cached under an epoch was read
        # no earlier than that epoch, so a revocation committed since has moved it
        epoch = cache.check(conn)
        hit = cache.get(epoch, digest)
        if hit is not None:
            return hit[1]
    row = conn.execute(_key_query().where(keys_t.c.prefix == parts[1])).first()
    if row is None or not hmac.compare_digest(row.hash, digest):
        raise Unauthenticated("unknown API key")
    principal = _principal(row, production)
    if cache is not None:
        cache.put(epoch, digest, row.hash, principal)
    return principal


def read_epoch(conn: Connection) -> int:
    """The auth epoch: moved by a trigger on every update or delete of users and api_keys."""
    return int(conn.execute(select(epoch_t.c.epoch).where(epoch_t.c.id == 1)).scalar_one())


class PrincipalCache:
    """Principals of one API worker, valid while the auth epoch stands still.

    Each request reads the epoch (one row by primary key) instead of the key joined to its
    user; a revocation, a disabled user or any hand-made change to those tables moves the
    epoch, and every worker empties its cache at its next request. Bounded (least recently
    used out); thread-safe, as FastAPI runs sync dependencies in a thread pool.
    """

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._epoch: int | None = None
        self._entries: OrderedDict[object, tuple[str, Principal]] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, conn: Connection) -> int:
        """Read the epoch in this transaction; empty the cache when it moved forward (a
        request reading an older epoch, from an older snapshot, never moves it back)."""
        epoch = read_epoch(conn)
        with self._lock:
            if self._epoch is None or epoch > self._epoch:
                self._entries.clear()
                self._epoch = epoch
        return epoch

    def get(self, epoch: int, key: object) -> tuple[str, Principal] | None:
        """The cached principal, only for a request that read the current epoch."""
        with self._lock:
            if epoch != self._epoch:
                return None
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
            return hit

    def put(self, epoch: int, key: object, key_hash: str, principal: Principal) -> None:
        with self._lock:
            if epoch != self._epoch:
                return  # read under an epoch that has moved on since
            self._entries[key] = (key_hash, principal)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


def _key_query() -> Any:
    return select(
        keys_t, users_t.c.name, users_t.c.role, users_t.c.district, users_t.c.disabled
    ).join(users_t, users_t.c.id == keys_t.c.user_id)


def _principal(row: Any, production: bool) -> Principal:
    if row.revoked_at is not None:
        raise Unauthenticated("this API key was revoked")
    if row.disabled:
        raise Unauthenticated(f"user {row.name} is disabled")
    if production and row.demo:
        raise Unauthenticated("demo keys are refused when ENVMON_ENV=production")
    return Principal(row.user_id, row.name, Role(row.role), row.district, row.id)


# --- browser sessions -------------------------------------------------------------------
# A browser session is a credential of its own, kept as a row of api_keys beside the key it
# was opened with (a `w` prefix marks it; no bearer token can match its hash). Its cookie
# names the key, the session row and a secret; the row's hash is an HMAC of that secret under
# the key's stored hash, so the session is bound to that key. Every request re-reads both
# rows: revoking the key, disabling its user, signing out (the row is deleted) or revoking the
# session row itself ends the session at once, for every copy of the cookie.

SESSION_PREFIX = "w"
SESSION_LABEL = "web session of key {key_id}"


def _sign(key_hash: str, purpose: str, *parts: object) -> str:
    msg = ":".join([purpose, *map(str, parts)]).encode()
    return hmac.new(key_hash.encode(), msg, hashlib.sha256).hexdigest()


def open_session(conn: Connection, token: str, *, production: bool, max_age: timedelta) -> str:
    """Check a key as `authenticate` does, store a new session, return its cookie value.
    The key's expired sessions are deleted on the way (a browser closed without signing out
    leaves its row behind)."""
    principal = authenticate(conn, token, production=production)
    key_hash = _digest(token)
    now = utcnow()
    conn.execute(
        delete(keys_t).where(
            keys_t.c.label == SESSION_LABEL.format(key_id=principal.key_id),
            keys_t.c.prefix.startswith(SESSION_PREFIX),
            keys_t.c.created_at < now - max_age,
        )
    )
    secret = secrets.token_urlsafe(24)
    session_id = conn.execute(
        insert(keys_t)
        .values(
            user_id=principal.user_id,
            prefix=SESSION_PREFIX + secrets.token_hex(7),
            hash=_sign(key_hash, "session", secret),
            label=SESSION_LABEL.format(key_id=principal.key_id),
            demo=False,
            created_at=now,
        )
        .returning(keys_t.c.id)
    ).scalar_one()
    return f"{principal.key_id}.{session_id}.{secret}"


def _session_row(conn: Connection, cookie: str | None) -> tuple[Any, int, str]:
    parts = (cookie or "").split(".")
    if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
        raise Unauthenticated("sign in again: no valid session")
    key_id, session_id, secret = int(parts[0]), int(parts[1]), parts[2]
    s = keys_t.alias("web_session")
    row = conn.execute(
        _key_query()
        .add_columns(
            s.c.hash.label("session_hash"),
            s.c.revoked_at.label("session_revoked_at"),
            s.c.created_at.label("session_created_at"),
        )
        .join(s, (s.c.id == session_id) & (s.c.user_id == keys_t.c.user_id))
        .where(keys_t.c.id == key_id, s.c.prefix.startswith(SESSION_PREFIX))
    ).first()
    if row is None or not hmac.compare_digest(_sign(row.hash, "session", secret), row.session_hash):
        raise Unauthenticated("sign in again: no valid session")
    return row, session_id, secret


def authenticate_session(
    conn: Connection, cookie: str | None, *, production: bool, max_age: timedelta
) -> tuple[Principal, str]:
    """The principal behind a session cookie, and the session's CSRF token. Not cached: the
    session's own row (ended at sign-out, expired by age) is read at every request."""
    row, session_id, secret = _session_row(conn, cookie)
    if row.session_revoked_at is not None:
        raise Unauthenticated("sign in again: this session was ended")
    if row.session_created_at < utcnow() - max_age:
        raise Unauthenticated("sign in again: the session is over")
    return _principal(row, production), _sign(row.hash, "csrf", session_id, secret)


def end_session(conn: Connection, cookie: str | None) -> None:
    """Sign out: delete the session's row, so that no copy of the cookie works again."""
    try:
        _, session_id, _ = _session_row(conn, cookie)
    except Unauthenticated:
        return  # nothing to end
    conn.execute(delete(keys_t).where(keys_t.c.id == session_id))
