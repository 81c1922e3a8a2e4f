"""Mosquitto credentials and ACL files: the hash format against the real `mosquitto_passwd`,
the password file and ACL as text, and writing both from the device registry."""

from __future__ import annotations

import base64
import re
import shutil
import stat
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import insert

from monitor.broker_auth import (
    PBKDF2_ITERATIONS,
    check_username,
    hash_password,
    new_password,
    render_acl,
    render_passwd,
    verify_password,
    write_broker_auth,
)
from monitor.core.db import make_engine
from monitor.core.models import Device, Site, table

HASH_7 = re.compile(r"^\$7\$101\$[A-Za-z0-9+/]{16}\$[A-Za-z0-9+/]{86}==$")


def mosquitto_passwd() -> str:
    found = shutil.which("mosquitto_passwd") or shutil.which(
        "mosquitto_passwd", path="/usr/bin:/usr/sbin:/usr/local/bin"
    )
    if found is None:
        pytest.fail("mosquitto_passwd is needed (Debian: apt-get install mosquitto)")
    return found


def written_by_mosquitto_passwd(tmp_path: Path, password: str, *options: str) -> str:
    """The hash that the real `mosquitto_passwd -b -c` writes for `password`."""
    path = tmp_path / "passwd"
    subprocess.run(
        [mosquitto_passwd(), *options, "-b", "-c", str(path), "someone", password],
        check=True,
        capture_output=True,
    )
    user, hashed = path.read_text().strip().split(":", 1)
    assert user == "someone"
    return hashed


def test_new_passwords_are_url_safe_random_and_long_enough() -> None:
    passwords = {new_password() for _ in range(100)}
    assert len(passwords) == 100
    for pw in passwords:
        assert re.fullmatch(r"[A-Za-z0-9_-]+", pw)
        assert len(base64.urlsafe_b64decode(pw + "=" * (-len(pw) % 4))) * 8 >= 128


def test_our_hash_has_mosquitto_passwd_s_format() -> None:
    hashed = hash_password("s3cret")
    assert HASH_7.fullmatch(hashed), hashed
    _, kind, iterations, salt, digest = hashed.split("$")
    assert (kind, int(iterations)) == ("7", PBKDF2_ITERATIONS)
    assert len(base64.b64decode(salt)) == 12 and len(base64.b64decode(digest)) == 64
    assert hash_password("s3cret") != hashed, "every hash has its own salt"


def test_mosquitto_passwd_writes_the_same_format_as_ours(tmp_path: Path) -> None:
    theirs = written_by_mosquitto_passwd(tmp_path, "s3cret")
    assert HASH_7.fullmatch(theirs), theirs


def test_verify_accepts_a_hash_written_by_mosquitto_passwd_and_only_for_its_password(
    tmp_path: Path,
) -> None:
    password = new_password()
    theirs = written_by_mosquitto_passwd(tmp_path, password)
    assert verify_password(password, theirs)
    assert not verify_password(password + "x", theirs)
    assert not verify_password(new_password(), theirs)


def test_verify_reads_the_older_sha512_format_too(tmp_path: Path) -> None:
    theirs = written_by_mosquitto_passwd(tmp_path, "old-style", "-H", "sha512")
    assert theirs.startswith("$6$")
    assert verify_password("old-style", theirs)
    assert not verify_password("old-stylE", theirs)


def test_verify_accepts_our_own_hash_and_rejects_garbage() -> None:
    hashed = hash_password("pw-1")
    assert verify_password("pw-1", hashed)
    assert not verify_password("pw-2", hashed)
    assert not verify_password("", hashed)
    for bad in ("", "pw-1", "$7$101$abc$def", "$7$x$" + hashed.split("$", 3)[3], "$5$a$b"):
        assert not verify_password("pw-1", bad)


@pytest.mark.parametrize("password", ["", "with\x00nul"])
def test_hash_refuses_passwords_mosquitto_would_cut_short(password: str) -> None:
    with pytest.raises(ValueError):
        hash_password(password)


def test_password_file_is_sorted_one_line_per_account() -> None:
    a, b = hash_password("a"), hash_password("b")
    assert render_passwd([("dust-2", b), ("dust-1", a)]) == f"dust-1:{a}\ndust-2:{b}\n"
    assert render_passwd([]) == ""


@pytest.mark.parametrize(
    "username", ["", "a:b", "a\nb", "a\rb", "a b", " a", "a\tb", "a+b", "a#", "a/b", "a\x00"]
)
def test_password_file_rejects_usernames_mosquitto_cannot_hold(username: str) -> None:
    with pytest.raises(ValueError, match="cannot be a broker account"):
        render_passwd([(username, hash_password("x"))])
    with pytest.raises(ValueError):
        check_username(username)


def test_password_file_rejects_duplicates_and_hashes_mosquitto_cannot_read() -> None:
    with pytest.raises(ValueError, match="given twice"):
        render_passwd([("dust-1", hash_password("a")), ("dust-1", hash_password("b"))])
    for bad in ("plain-password", "$7$101$short$hash", hash_password("x") + "\nroot:x"):
        with pytest.raises(ValueError, match="format"):
            render_passwd([("dust-1", bad)])


def rules(acl: str) -> list[str]:
    return [line for line in acl.splitlines() if line.strip() and not line.startswith("#")]


def test_acl_lets_devices_write_their_own_topics_and_only_the_ingestor_read() -> None:
    acl = render_acl("envmon", "envmon-ingest")
    assert rules(acl) == [
        "pattern write envmon/v1/devices/%u/telemetry",
        "pattern write envmon/v1/devices/%u/status",
        "user envmon-ingest",
        "topic read envmon/v1/devices/+/telemetry",
        "topic read envmon/v1/devices/+/status",
        "topic readwrite envmon/v1/ingest/#",
        "topic read $SYS/broker/uptime",
    ]
    # the patterns come before any `user` line, and every line explains itself in comments
    assert acl.index("pattern") < acl.index("user ")
    assert acl.count("\n# ") >= 5


def test_acl_follows_the_topic_prefix() -> None:
    assert "pattern write city/envmon/v1/devices/%u/telemetry" in render_acl("city/envmon", "ing")


@pytest.mark.parametrize("prefix", ["", "a/+", "#", "a//b", "/a", "a b", "a%u", "a\nuser x"])
def test_acl_rejects_prefixes_that_would_widen_or_break_it(prefix: str) -> None:
    with pytest.raises(ValueError):
        render_acl(prefix, "envmon-ingest")


def test_acl_rejects_an_unusable_ingest_user() -> None:
    with pytest.raises(ValueError):
        render_acl("envmon", "ingest\ntopic readwrite #")


def test_write_broker_auth_takes_active_devices_with_credentials_only(
    sqlite_url: str, tmp_path: Path
) -> None:
    engine = make_engine(sqlite_url)
    now = datetime.now(UTC)
    hashes = {d: hash_password(new_password()) for d in ("dust-1", "dust-2", "dust-3")}
    with engine.begin() as conn:
        conn.execute(
            insert(table(Site)).values(
                id="cs-1", name="cs-1", district="Lanshan", kind="construction_site"
            )
        )
        for device_id, status, hashed in [
            ("dust-2", "active", hashes["dust-2"]),
            ("dust-1", "active", hashes["dust-1"]),
            ("dust-3", "retired", hashes["dust-3"]),
            ("dust-4", "active", None),
        ]:
            conn.execute(
                insert(table(Device)).values(
                    id=device_id,
                    site_id="cs-1",
                    kind="dust_monitor",
                    status=status,
                    created_at=now,
                    mqtt_password_hash=hashed,
                )
            )
    ingest_hash = hash_password("ingest-pw")
    out = tmp_path / "broker"
    with engine.connect() as conn:
        passwd, acl = write_broker_auth(
            conn,
            out,
            prefix="envmon",
            ingest_user="envmon-ingest",
            ingest_password_hash=ingest_hash,
        )
    assert (passwd, acl) == (out / "passwd", out / "acl")
    assert passwd.read_text() == (
        f"dust-1:{hashes['dust-1']}\ndust-2:{hashes['dust-2']}\nenvmon-ingest:{ingest_hash}\n"
    )
    assert acl.read_text() == render_acl("envmon", "envmon-ingest")
    assert stat.S_IMODE(passwd.stat().st_mode) == 0o600
    assert sorted(p.name for p in out.iterdir()) == ["acl", "passwd"], "no temporary left"

    # a device whose id is the ingestor's name would share its account: nothing is written
    before = passwd.read_text()
    with engine.connect() as conn, pytest.raises(ValueError, match="given twice"):
        write_broker_auth(
            conn, out, prefix="envmon", ingest_user="dust-1", ingest_password_hash=ingest_hash
        )
    assert passwd.read_text() == before
    assert sorted(p.name for p in out.iterdir()) == ["acl", "passwd"]
    engine.dispose()
