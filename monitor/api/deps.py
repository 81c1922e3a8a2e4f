"""Request-scoped dependencies: one session (one transaction) per request, and the caller."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import contextmanager_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from monitor.auth import (
    Forbidden,
    Principal,
    PrincipalCache,
    authenticate,
    authenticate_session,
)
from monitor.core.db import WRITING
from monitor.core.models import Role
from monitor.core.settings import Environment, Settings


@contextmanager
def _transaction(request: Request) -> Iterator[Session]:
    factory = request.app.state.sessionmaker
    with factory() as session:
        with session.begin():
            if request.method not in SAFE_METHODS:
                # a change reads, then writes: on SQLite, the write lock from the start
                session.connection(execution_options=WRITING)
            yield session
        # work that must see the committed state (the embedded broker re-reading accounts)
        for hook in session.info.pop("after_commit", []):
            hook()


async def get_session(request: Request) -> AsyncIterator[Session]:
    """One session per request: a transaction, committed before the answer is sent.

    A read (GET, HEAD, OPTIONS) on PostgreSQL runs in autocommit instead: no BEGIN and no
    COMMIT round trip, and nothing left to send at the end, so opening and closing its
    session stay on the event loop rather than a thread-pool hand-off each way (the API's
    profile, docs/benchmarks.md). What it reads is the same: at PostgreSQL's READ COMMITTED
    each statement takes its own snapshot inside a transaction as well, and no read route
    writes. SQLite keeps its transaction (its BEGIN recipe, monitor/core/db.py)."""
    reads = getattr(request.app.state, "read_sessionmaker", None)
    if reads is not None and request.method in SAFE_METHODS:
        session = reads()
        try:
            yield session
        finally:
            session.close()  # the connection back to the pool: no statement in autocommit
        return
    async with contextmanager_in_threadpool(_transaction(request)) as session:
        yield session


# `async def`: FastAPI runs a plain `def` dependency in its thread pool, a hand-off to a
# worker thread and back for each one (docs/benchmarks.md: the API's profile); what does no
# I/O runs on the event loop instead
async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


# scope="function": the transaction commits before the response is sent, so a client that
# got its 201 sees the row on its next request (and a commit that fails is a 5xx, not a
# success that was never stored). FastAPI's default runs the exit code after the response.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]

bearer = HTTPBearer(auto_error=False, description="An API key: `envmon keys create USER`")


SESSION_COOKIE = "envmon_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def get_principal(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    production = settings.env == Environment.production
    cache: PrincipalCache = request.app.state.principals
    cookie = request.cookies.get(SESSION_COOKIE)
    if credentials is None and cookie:
        # the web page's fetches and its EventSource, which cannot send a bearer header
        principal, csrf = authenticate_session(
            session.connection(),
            cookie,
            production=production,
            max_age=settings.web_session_max_age,
        )
        if request.method not in SAFE_METHODS and not hmac.compare_digest(
            request.headers.get(CSRF_HEADER, ""), csrf
        ):
            raise Forbidden(f"a cookie-authenticated {request.method} needs the {CSRF_HEADER}")
        return principal
    token = credentials.credentials if credentials else None
    return authenticate(session.connection(), token, production=production, cache=cache)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def _role(*roles: Role) -> object:
    async def check(principal: PrincipalDep) -> Principal:  # no I/O: on the event loop
        principal.require(*roles)
        return principal

    return Depends(check)


AdminDep = Annotated[Principal, _role(Role.admin)]
InspectorDep = Annotated[Principal, _role(Role.admin, Role.inspector)]
