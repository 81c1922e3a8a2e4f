"""The inspectors' pages under load: a signed-in browser session (the cookie of one sign-in)
shared by N closed-loop clients, page by page, against a database of many alerts. Server
time as a client on the same machine sees it: the full HTML page, not its scripts."""

from __future__ import annotations

import http.client
import random
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from bench.apiload import measure
from bench.services import Api, BenchError, Database

LIST_ROWS = 100  # the alert list page shows the newest 100 (monitor/web/routes.py)
ROW = re.compile(rb'data-alert-id="(\d+)"')


def sign_in(api: Api, token: str) -> str:
    """POST the API key to the sign-in form, as the page does; the session cookie's value."""
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=30)
    try:
        body = urlencode({"key": token})
        conn.request(
            "POST",
            "/signin",
            body=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        resp = conn.getresponse()
        resp.read()
        cookie = resp.getheader("set-cookie") or ""
    finally:
        conn.close()
    if resp.status != 303 or not cookie.startswith("envmon_session="):
        raise BenchError(f"web sign-in refused: HTTP {resp.status}")
    return cookie.split(";", 1)[0].split("=", 1)[1]


def pages(first_id: int, last_id: int) -> dict[str, Callable[[random.Random], str]]:
    """Name -> a function drawing the next page's path."""
    return {
        "overview": lambda _: "/",
        "alert list page (newest 100)": lambda _: "/alerts",
        "alert page (any alert)": lambda rng: f"/alerts/{rng.randint(first_id, last_id)}",
    }


def _get(api: Api, path: str, cookie: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=30)
    try:
        conn.request("GET", path, headers={"Cookie": f"envmon_session={cookie}"})
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    if resp.status != 200:
        raise BenchError(f"web {path}: HTTP {resp.status}")
    return body


def check(api: Api, cookie: str, first_id: int, last_id: int, alerts: int) -> None:
    """The pages show what the database holds before they are timed: a full list, newest
    first, and the alert asked for (a sign-in page or an empty list would be fast and wrong)."""
    ids = [int(x) for x in ROW.findall(_get(api, "/alerts", cookie))]
    if len(ids) != min(LIST_ROWS, alerts) or ids[0] != last_id:
        raise BenchError(f"web alert list: {len(ids)} rows from {ids[:1]}, expected newest")
    if f"#{first_id} ".encode() not in _get(api, f"/alerts/{first_id}", cookie):
        raise BenchError(f"web alert page: alert {first_id} not shown")


def run(db: Database, api: Api, *, alerts: int, clients: int, seconds: float) -> dict[str, Any]:
    first_id = db.scalar("SELECT min(id) FROM alerts")
    last_id = db.scalar("SELECT max(id) FROM alerts")
    cookie = sign_in(api, db.api_token)
    check(api, cookie, first_id, last_id, alerts)
    headers = {"Cookie": f"envmon_session={cookie}", "Accept-Language": "zh-CN"}
    return measure(
        db,
        api,
        pages(first_id, last_id),
        headers,
        clients=clients,
        seconds=seconds,
        what="web",
    )
