from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, status
from pydantic import BaseModel, Field
from sqlalchemy import select

from monitor import audit, auth
from monitor.api.deps import AdminDep, PrincipalDep, SessionDep
from monitor.api.filters import IdPath
from monitor.core.models import ApiKey, AuditEntry, User, table

router = APIRouter(tags=["users"])
users = table(User)
keys = table(ApiKey)
audit_t = table(AuditEntry)


class UserRead(BaseModel):
    id: int
    name: str
    role: str
    district: str | None
    disabled: bool
    created_at: datetime


class UserUpdate(BaseModel):
    disabled: bool


class KeyCreate(BaseModel):
    label: str | None = Field(None, max_length=100)


class KeyRead(BaseModel):
    id: int
    prefix: str
    label: str | None
    created_at: datetime
    revoked_at: datetime | None


class KeyCreated(KeyRead):
    key: str = Field(description="The API key. Shown this once; only its hash is kept.")


class Me(BaseModel):
    name: str
    role: str
    district: str | None


@router.get("/me", response_model=Me)
def whoami(principal: PrincipalDep) -> Me:
    """Who the API key belongs to, its role and district scope."""
    return Me(name=principal.name, role=principal.role.value, district=principal.district)


class AuditRead(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    object: str
    detail: dict[str, Any] | None


@router.get("/audit", response_model=list[AuditRead])
def audit_log(
    session: SessionDep, admin: AdminDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[AuditRead]:
    """Configuration changes, newest first, with the authenticated actor of each (admin)."""
    rows = session.execute(select(audit_t).order_by(audit_t.c.id.desc()).limit(limit))
    return [AuditRead.model_validate(r._mapping) for r in rows]


@router.get("/users", response_model=list[UserRead])
def list_users(session: SessionDep, admin: AdminDep) -> list[UserRead]:
    """Every user (admin)."""
    rows = session.execute(select(users).order_by(users.c.name)).all()
    return [UserRead.model_validate(r._mapping) for r in rows]


@router.post("/users", response_model=UserRead, status_code=status.HTTP_201_CREATED)
def create_user(session: SessionDep, admin: AdminDep, body: auth.UserCreate) -> UserRead:
    """Create a user with a role and, for inspectors and viewers, a district (admin)."""
    auth.create_user(session.connection(), body)
    audit.record(
        session.connection(),
        admin.actor,
        "user.create",
        f"user:{body.name}",
        body.model_dump(mode="json"),
    )
    return UserRead.model_validate(auth.find_user(session.connection(), body.name)._mapping)


@router.patch("/users/{name}", response_model=UserRead)
def update_user(session: SessionDep, admin: AdminDep, name: str, body: UserUpdate) -> UserRead:
    """Disable or re-enable a user; a disabled user's keys stop working at once (admin)."""
    auth.set_disabled(session.connection(), name, body.disabled)
    audit.record(
        session.connection(),
        admin.actor,
        "user.update",
        f"user:{name}",
        body.model_dump(mode="json"),
    )
    return UserRead.model_validate(auth.find_user(session.connection(), name)._mapping)


@router.get("/users/{name}/keys", response_model=list[KeyRead])
def list_keys(session: SessionDep, admin: AdminDep, name: str) -> list[KeyRead]:
    """A user's API keys, without their secrets (admin)."""
    user = auth.find_user(session.connection(), name)
    rows = session.execute(select(keys).where(keys.c.user_id == user.id).order_by(keys.c.id))
    return [KeyRead.model_validate(r._mapping) for r in rows]


@router.post("/users/{name}/keys", response_model=KeyCreated, status_code=201)
def create_key(session: SessionDep, admin: AdminDep, name: str, body: KeyCreate) -> KeyCreated:
    """Issue an API key for a user; the response is the only time it is shown (admin)."""
    user = auth.find_user(session.connection(), name)
    key_id, token = auth.create_key(session.connection(), user.id, label=body.label)
    audit.record(
        session.connection(),
        admin.actor,
        "key.create",
        f"key:{key_id}",
        {"user": name, "label": body.label},
    )
    row = session.execute(select(keys).where(keys.c.id == key_id)).one()
    return KeyCreated(**row._mapping, key=token)


@router.delete("/keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_key(session: SessionDep, admin: AdminDep, key_id: IdPath) -> None:
    """Revoke an API key; it stops working at once (admin)."""
    auth.revoke_key(session.connection(), key_id)
    audit.record(session.connection(), admin.actor, "key.revoke", f"key:{key_id}")
