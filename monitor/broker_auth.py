"""Broker authentication for Mosquitto: per-device passwords, the password file and the ACL.

Every device logs in with its own account (username = device id, a random password shown
once and stored only as a hash). The hash is in the format of Mosquitto 2.x's own
`mosquitto_passwd`, so the broker's password file is written straight from the database:

    $7$<iterations>$<base64 salt>$<base64 hash>

`7` is Mosquitto's PBKDF2-HMAC-SHA512; the salt is 12 random bytes (the broker rejects any
other length) and the hash the 64-byte derived key, both in standard base64 with padding.
`mosquitto_passwd` 2.0 uses 101 iterations, and so do we: a password from `new_password()`
has 192 random bits, so a slower hash would add nothing against guessing and would only cost
the broker CPU on every login (a fleet reconnecting at once after an outage).

The ACL lets a device publish only under `{prefix}/v1/devices/{its id}/` and read nothing;
the ingestor's account is the only reader. docs/security.md describes the model.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import re
import secrets
import tempfile
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import Connection, select

from monitor.core.models import Device, DeviceStatus, table

log = logging.getLogger(__name__)

PBKDF2_ITERATIONS = 101  # mosquitto_passwd 2.0's default (PW_DEFAULT_ITERATIONS)
SALT_BYTES = 12  # Mosquitto 2.0 refuses a password-file line whose salt has another length
HASH_BYTES = 64  # SHA-512
PASSWORD_BYTES = 24  # 192 bits of randomness, 32 URL-safe characters

PASSWD_FILE = "passwd"
ACL_FILE = "acl"

# What Mosquitto can hold as a username in both files and substitute for %u in the ACL:
# ':' ends the name in the password file, whitespace is trimmed or splits ACL lines, and
# Mosquitto denies every ACL check to a name with '+' or '#'; '/' would add topic levels.
_BAD_USERNAME = re.compile(r"[:+#/\s\x00-\x1f\x7f]")
_BAD_PREFIX = re.compile(r"[+#%\s\x00-\x1f\x7f]")


def new_password() -> str:
    """A fresh device password: 192 random bits, URL-safe (fits an `mqtt://` URL as is)."""
    return secrets.token_urlsafe(PASSWORD_BYTES)


def _pbkdf2(password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, HASH_BYTES)


def _check_password(password: str) -> None:
    # Mosquitto hashes strlen(password) bytes: a NUL would silently cut the password short.
    if not password or "\x00" in password:
        raise ValueError("a password must be non-empty and hold no NUL character")


def hash_password(password: str, *, iterations: int = PBKDF2_ITERATIONS) -> str:
    """`password` hashed as `mosquitto_passwd` 2.x does: `$7$101$<salt>$<hash>`."""
    _check_password(password)
    if iterations < 1:
        raise ValueError("iterations must be at least 1")
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _pbkdf2(password, salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def _parse_hash(hashed: str) -> tuple[str, int, bytes, bytes] | None:
    """(kind, iterations, salt, digest) of a Mosquitto hash, or None if it is not one.

    Kind 7 is PBKDF2-SHA512 (`$7$iter$salt$hash`); kind 6 is Mosquitto 1.x's single salted
    SHA-512 (`$6$salt$hash`), still read by Mosquitto 2 and `mosquitto_passwd -H sha512`.
    """
    parts = hashed.split("$")
    try:
        if len(parts) == 5 and parts[0] == "" and parts[1] == "7":
            iterations = int(parts[2])
            salt = base64.b64decode(parts[3], validate=True)
            digest = base64.b64decode(parts[4], validate=True)
            if iterations < 1 or not parts[2].isdigit():
                return None
            kind = "7"
        elif len(parts) == 4 and parts[0] == "" and parts[1] == "6":
            iterations = 1
            salt = base64.b64decode(parts[2], validate=True)
            digest = base64.b64decode(parts[3], validate=True)
            kind = "6"
        else:
            return None
    except (ValueError, binascii.Error):
        return None
    if len(salt) != SALT_BYTES or len(digest) != HASH_BYTES:
        return None
    return kind, iterations, salt, digest


def is_mosquitto_hash(hashed: str) -> bool:
    """Whether Mosquitto 2.x would accept `hashed` in its password file."""
    return _parse_hash(hashed) is not None


def verify_password(password: str, hashed: str) -> bool:
    """Whether `password` matches a Mosquitto hash (`$7$...` or the older `$6$...`)."""
    parsed = _parse_hash(hashed)
    if parsed is None or not password or "\x00" in password:
        return False
    kind, iterations, salt, digest = parsed
    if kind == "7":
        candidate = _pbkdf2(password, salt, iterations)
    else:
        candidate = hashlib.sha512(password.encode() + salt).digest()
    return hmac.compare_digest(candidate, digest)


def check_username(username: str) -> str:
    """`username` if Mosquitto can use it as an account name (and for %u), else ValueError.

    Device ids may hold ':' (ingest.contract.DEVICE_ID_PATTERN), which a password file cannot:
    such a device cannot be given MQTT credentials.
    """
    if not username or _BAD_USERNAME.search(username):
        raise ValueError(
            f"{username!r} cannot be a broker account: it must be non-empty and hold no ':', "
            "'+', '#', '/', whitespace or control character"
        )
    return username


def render_passwd(entries: Iterable[tuple[str, str]]) -> str:
    """A Mosquitto password file: one `username:hash` line per account, sorted by username.

    ValueError on an unusable username, a hash Mosquitto would not read, or a username given
    twice (two hashes for one account would be ambiguous, so it is never settled silently).
    """
    accounts: dict[str, str] = {}
    for username, hashed in entries:
        check_username(username)
        if not is_mosquitto_hash(hashed):
            raise ValueError(f"the hash of {username!r} is not in Mosquitto's format")
        if username in accounts:
            raise ValueError(f"account {username!r} is given twice")
        accounts[username] = hashed
    return "".join(f"{name}:{accounts[name]}\n" for name in sorted(accounts))


def _check_prefix(prefix: str) -> str:
    if not prefix or _BAD_PREFIX.search(prefix) or "" in prefix.split("/"):
        raise ValueError(
            f"topic prefix {prefix!r} must be non-empty, without empty levels, wildcards, "
            "'%' or whitespace"
        )
    return prefix


def render_acl(prefix: str, ingest_user: str) -> str:
    """The Mosquitto ACL: devices write their own two topics, the ingestor reads them all."""
    _check_prefix(prefix)
    check_username(ingest_user)
    root = f"{prefix}/v1/devices"
    return f"""\
# Generated by envmon (monitor/broker_auth.py) from the device registry; do not edit, it is
# overwritten. Mosquitto allows nothing that no line below allows: no client may publish or
# receive on any other topic, and anonymous clients may do nothing at all.

# Devices: the MQTT username is the device id (%u), so each device may publish its own
# telemetry and status, and nothing else: not another device's topics, not its own subtopics.
# These lines grant no read access, so a device receives nothing, whatever it subscribes to.
# (Patterns apply to every account, the ingestor's too; a message it published under its own
# name would be a dead letter at the ingestor, as no device has that id.)
pattern write {root}/%u/telemetry
pattern write {root}/%u/status

# The ingestor: the only reader of device topics. It publishes only its catch-up markers to
# itself (ingest/contract.py marker_topic).
# $SYS/broker/uptime is for the compose health check, which logs in with this account.
user {ingest_user}
topic read {root}/+/telemetry
topic read {root}/+/status
topic readwrite {prefix}/v1/ingest/#
topic read $SYS/broker/uptime
"""


def _write_atomic(path: Path, text: str, mode: int) -> None:
    """Write `text` to `path` so that a reader sees the old file or the new one, never half."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_broker_auth(
    conn: Connection,
    out_dir: Path,
    *,
    prefix: str,
    ingest_user: str,
    ingest_password_hash: str,
) -> tuple[Path, Path]:
    """Write `passwd` (mode 0600) and `acl` for Mosquitto into `out_dir`; return their paths.

    The password file holds the ingestor's account and every ACTIVE device that has
    credentials; retired devices and devices without a hash are left out, so they cannot log
    in. Each file is replaced atomically. Nothing is written if any entry is unusable.
    Mosquitto reads the files again on SIGHUP (`EmbeddedBroker.reload()`).
    """
    devices = table(Device)
    rows = conn.execute(
        select(devices.c.id, devices.c.mqtt_password_hash)
        .where(devices.c.status == DeviceStatus.active)
        .where(devices.c.mqtt_password_hash.is_not(None))
        .order_by(devices.c.id)
    ).all()
    entries = [(ingest_user, ingest_password_hash), *((r.id, r.mqtt_password_hash) for r in rows)]
    passwd_text = render_passwd(entries)
    acl_text = render_acl(prefix, ingest_user)
    out_dir.mkdir(parents=True, exist_ok=True)
    passwd, acl = out_dir / PASSWD_FILE, out_dir / ACL_FILE
    # Write the ACL first: a reload between the two files then never lets the new accounts
    # in under an old ACL (the ACL depends only on the prefix and the ingestor's name).
    _write_atomic(acl, acl_text, 0o644)
    _write_atomic(passwd, passwd_text, 0o600)
    log.info("wrote broker auth for %d devices to %s", len(rows), out_dir)
    return passwd, acl
