"""Request-scoped dependencies: one session (one transaction) per request, and the caller."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from monitor.auth import Principal, authenticate
from monitor.core.models import Role
from monitor.core.settings import Environment, Settings


def get_session(request: Request) -> Iterator[Session]:
    factory = request.app.state.sessionmaker
    with factory() as session:
        with session.begin():
            yield session
        # work that must see the committed state (the embedded broker re-reading accounts)
        for hook in session.info.pop("after_commit", []):
            hook()


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]

bearer = HTTPBearer(auto_error=False, description="An API key: `envmon keys create USER`")


def get_principal(
    session: SessionDep,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    token = credentials.credentials if credentials else None
    return authenticate(
        session.connection(), token, production=settings.env == Environment.production
    )


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def _role(*roles: Role) -> object:
    def check(principal: PrincipalDep) -> Principal:
        principal.require(*roles)
        return principal

    return Depends(check)


AdminDep = Annotated[Principal, _role(Role.admin)]
InspectorDep = Annotated[Principal, _role(Role.admin, Role.inspector)]
