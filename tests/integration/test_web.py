"""The inspectors' web page in a real browser: Debian's Chromium driven by Playwright, against
the app served by uvicorn on 127.0.0.1 with a fresh PostgreSQL database. Screenshots of every
page at phone and tablet widths go to test-output/web/ (ENVMON_TEST_OUTPUT to move them)."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Route, sync_playwright
from sqlalchemy import Engine, insert, select, update

from alerts.evaluator import Touched, evaluate_batch
from ingest.repository import insert_readings
from ingest.validate import Row
from monitor import auth
from monitor.api.app import create_app
from monitor.core.models import Alert, ApiKey, Device, DmaDay, Rule, Site, table
from monitor.core.settings import Settings
from monitor.web.rules_zh import RULES_ZH
from tests.conftest import bearer, make_key, register, serve

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",  # Chromium runs as root here
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
OUTPUT = Path(os.environ.get("ENVMON_TEST_OUTPUT", "test-output")) / "web"
WIDTHS = (390, 1024)
T0 = (datetime.now(UTC) - timedelta(hours=3)).replace(second=0, microsecond=0)
RULE = {
    "name": "pm10-raw",
    "device_kind": "dust_monitor",
    "metric": "pm10",
    "warn_above": 150,
    "alarm_above": 250,
    "quiet_s": 0,
    "basis": "GB 3095-2012 test thresholds",
}


def feed(engine: Engine, device: str, values: list[float]) -> None:
    rows = [
        Row(device, "pm10", T0 + timedelta(minutes=i), v, "N", T0) for i, v in enumerate(values)
    ]
    with engine.begin() as conn:
        insert_readings(conn, rows)
        evaluate_batch(conn, [Touched(device, "pm10", rows[0].ts)])


@dataclass
class Web:
    base: str
    engine: Engine
    admin: str
    inspector: str
    alerts: dict[str, int]  # device id -> its alert id
    outside: list[str] = field(default_factory=list)  # requests that tried to leave 127.0.0.1


@pytest.fixture
def web(pg_url: str, pg_engine: Engine) -> Iterator[Web]:
    """The app on a free port with two districts: Lanshan (d-ls, d-ls2) and Hedong (d-hd),
    each device with a firing PM10 alert."""
    register(
        pg_engine,
        site="cs-ls",
        district="Lanshan",
        devices={"d-ls": "dust_monitor", "d-ls2": "dust_monitor"},
    )
    with pg_engine.begin() as conn:
        conn.execute(update(table(Site)).values(latitude=35.05, longitude=118.33))
        # the default rules stay off while the test's own rule makes the alerts
        conn.execute(update(table(Rule)).values(enabled=False))
        conn.execute(
            insert(table(Site)).values(
                id="cs-hd",
                name="cs-hd",
                district="Hedong",
                kind="construction_site",
                latitude=35.10,
                longitude=118.40,
                created_at=T0,
            )
        )
        conn.execute(
            insert(table(Device)).values(
                id="d-hd", site_id="cs-hd", kind="dust_monitor", status="active", created_at=T0
            )
        )
    admin = make_key(pg_engine)
    inspector = make_key(pg_engine, "li.ming", "inspector", "Lanshan")
    with serve(create_app(Settings(database_url=pg_url))) as base:
        # the API commits before it answers (test_api: committed before the response)
        assert httpx.post(f"{base}/v1/rules", json=RULE, headers=bearer(admin)).status_code == 201
        for device in ("d-ls", "d-ls2", "d-hd"):
            feed(pg_engine, device, [120, 180, 300, 310, 290, 260, 255])
        with pg_engine.connect() as conn:
            ids = {r.device_id: r.id for r in conn.execute(select(table(Alert)))}
        assert set(ids) == {"d-ls", "d-ls2", "d-hd"}
        with pg_engine.begin() as conn:  # the reports judge by them; nothing is fed after this
            conn.execute(update(table(Rule)).values(enabled=True))
        yield Web(base, pg_engine, admin, inspector, ids)


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def context_for(browser: Browser, web: Web, locale: str = "zh-CN") -> BrowserContext:
    """A browser context whose every request must stay on 127.0.0.1 (others are aborted and
    recorded)."""
    ctx = browser.new_context(
        base_url=web.base, locale=locale, viewport={"width": 1024, "height": 800}
    )

    def guard(route: Route) -> None:
        host = urlparse(route.request.url).hostname
        if host != "127.0.0.1":
            web.outside.append(route.request.url)
            route.abort()
        else:
            route.continue_()

    ctx.set_default_timeout(10_000)
    ctx.route("**/*", guard)
    return ctx


def sign_in(page: Page, key: str) -> None:
    page.goto("/")
    page.fill("input[name=key]", key)
    page.press("input[name=key]", "Enter")  # submitted by Enter, as a person would
    page.wait_for_selector("#signout")


def wait_js(page: Page, expression: str, timeout_s: float = 10.0) -> None:
    """page.wait_for_function compiles its predicate with eval, which the page's CSP refuses;
    page.evaluate is not subject to it."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"still false after {timeout_s}s: {expression}"
        time.sleep(0.1)


def shoot(page: Page, name: str) -> None:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 800})
        page.screenshot(path=str(OUTPUT / f"{name}-{width}.png"), full_page=True)
    page.set_viewport_size({"width": 1024, "height": 800})


def test_inspector_works_alerts_of_own_district_only_offline(web: Web, browser: Browser) -> None:
    ctx = context_for(browser, web)
    page = ctx.new_page()
    page.goto("/")
    assert page.locator("input[name=key]").count() == 1
    shoot(page, "signin")
    sign_in(page, web.inspector)

    # overview: Chinese by default, only Lanshan
    assert "总览" in page.content()
    assert "Lanshan" in page.inner_text("#open-alerts")
    assert "Hedong" not in page.content() and "d-hd" not in page.content()
    shoot(page, "overview")

    # alert list: the district's alerts; acknowledge one in place, no reload
    page.goto("/alerts")
    page.wait_for_selector("#live:not([hidden])")  # the alert stream is connected
    rows = page.locator("#alert-rows tr")
    assert sorted(rows.evaluate_all("rs => rs.map(r => r.dataset.alertId)")) == sorted(
        str(web.alerts[d]) for d in ("d-ls", "d-ls2")
    )
    assert "d-hd" not in page.content()
    shoot(page, "alerts")
    page.evaluate("window.__noReload = true")
    ack = web.alerts["d-ls"]
    page.click(f"#alert-{ack} button.ack")
    page.wait_for_selector(f"#alert-{ack}[data-status=acknowledged]")
    assert page.evaluate("window.__noReload") is True

    # live: an action by someone else (over the API) appears without reload
    other = web.alerts["d-ls2"]
    r = httpx.post(
        f"{web.base}/v1/alerts/{other}/resolve", json={"note": "by API"}, headers=bearer(web.admin)
    )
    assert r.status_code == 200
    page.wait_for_selector(f"#alert-{other}[data-status=resolved]", timeout=10_000)
    assert page.evaluate("window.__noReload") is True

    # bulk acknowledge by filter, refused without the page's token
    forged = ctx.request.post("/alerts/acknowledge?district=Hedong", form={"note": "x"})
    assert forged.status == 403
    # filters: the API's, applied on the page
    page.goto("/alerts?status=acknowledged")
    assert rows.evaluate_all("rs => rs.map(r => r.dataset.alertId)") == [str(ack)]

    # alert page: rule, basis, events, a chart of the readings around it, comment in place
    page.goto(f"/alerts/{ack}")
    assert "GB 3095-2012" in page.inner_text("#alert-body")
    wait_js(page, "window.envmon.charts['alert-chart'].data[0].length > 0")
    # the readings and the rule's two tiers (warning 150, alarm 250)
    assert page.evaluate("window.envmon.charts['alert-chart'].series.length") == 4
    page.fill("form[hx-post$='/comment'] input[name=note]", "洒水车已到场")
    page.click("#do-comment")
    page.wait_for_selector("#events >> text=洒水车已到场")
    assert page.locator("header.top").count() == 1  # the body was swapped, not a page nested
    shoot(page, "alert")

    # device page: trend chart with points from /v1/readings (cookie-authenticated GET)
    page.goto("/devices/d-ls")
    wait_js(page, "!!window.envmon.charts.trend && window.envmon.charts.trend.data[0].length > 0")
    points = page.evaluate("window.envmon.charts.trend.data[1]")
    assert points == [120, 180, 300, 310, 290, 260, 255]
    assert page.locator("#latest tr").count() >= 2
    shoot(page, "device")

    # map: the district's site, coloured by its worst open alert (acknowledged is still open)
    page.goto("/map")
    sites = page.locator("#map circle.site")
    assert sites.evaluate_all("cs => cs.map(c => [c.dataset.site, c.dataset.worst])") == [
        ["cs-ls", "alarm"]
    ]
    shoot(page, "map")

    # reports, with CSV downloads of the API's reports
    page.goto("/reports")
    href = page.get_attribute("#dust-csv", "href") or ""
    assert href.startswith("/v1/reports/dust-compliance")
    csv = ctx.request.get(href)
    assert csv.status == 200 and csv.headers["content-type"].startswith("text/csv")
    assert "cs-hd" not in csv.text() and "cs-hd" not in page.content()
    # DMA leakage (GET /v1/reports/leakage) as a table with its CSV: a DMA in each district,
    # a day of figures each; the inspector sees Lanshan's
    day = datetime.now(UTC).date() - timedelta(days=2)  # inside the page's default 7 days
    with web.engine.begin() as conn:
        for dma, district, leaked in (("dma-ls", "Lanshan", 12.0), ("dma-hd", "Hedong", 99.0)):
            conn.execute(
                insert(table(Site)).values(
                    id=dma, name=dma, district=district, kind="dma", created_at=T0
                )
            )
            conn.execute(
                insert(table(DmaDay)).values(
                    site_id=dma,
                    day=day,
                    valid=True,
                    coverage=1.0,
                    night_coverage=1.0,
                    night_use_m3h=0.5,
                    inlet_m3=1000.0,
                    inlet_source="slots",
                    mnf_m3h=2.0,
                    net_night_flow_m3h=1.5,
                    ndf_h=leaked / 1.5,
                    leakage_m3=leaked,
                    leakage_pct=leaked / 10,
                )
            )
    page.goto("/reports")
    leakage = page.locator("#leakage tbody tr")
    assert leakage.count() == 1
    cells = leakage.first.locator("td").all_inner_texts()
    assert cells[:3] == ["dma-ls", "Lanshan", day.isoformat()]
    assert cells[6:] == ["12.0", "1.2%", "是"]
    assert "dma-hd" not in page.content()
    href = page.get_attribute("#leakage-csv", "href") or ""
    assert href.startswith("/v1/reports/leakage")
    csv = ctx.request.get(href)
    assert csv.status == 200 and csv.headers["content-type"].startswith("text/csv")
    assert "dma-ls" in csv.text() and "dma-hd" not in csv.text()
    shoot(page, "reports")

    # the other district's objects are absent, on pages and through the page's API
    for path in (f"/alerts/{web.alerts['d-hd']}", "/devices/d-hd"):
        assert ctx.request.get(path).status == 404
    assert "d-hd" not in ctx.request.get("/v1/readings?device_id=d-hd").text()
    page.goto("/alerts?district=Hedong")
    assert page.locator("#alert-rows tr").count() == 0

    # the API docs page, from local assets
    page.goto("/v1/docs")
    page.wait_for_selector(".swagger-ui .info")
    shoot(page, "docs")

    # English when asked
    page.goto("/?lang=en")
    assert "Overview" in page.content()

    # signing out ends the session (test_signing_out_ends_every_copy_of_the_session: on the
    # server too)
    page.click("#signout")
    page.wait_for_selector("input[name=key]")  # only the sign-in form has it: no race
    page.goto("/alerts")
    assert page.locator("input[name=key]").count() == 1
    assert ctx.request.get("/v1/alerts").status == 401

    assert web.outside == []
    ctx.close()


def test_revoked_key_disabled_user_and_csrf_less_posts_end_or_refused(
    web: Web, browser: Browser
) -> None:
    ctx = context_for(browser, web)
    page = ctx.new_page()
    sign_in(page, web.inspector)
    alert = web.alerts["d-ls"]

    # a state-changing request with the cookie but without the page's token is refused
    for path in (f"/alerts/{alert}/acknowledge", f"/v1/alerts/{alert}/acknowledge"):
        r = ctx.request.post(path, form={"note": "forged"})
        assert r.status == 403, path
        assert "CSRF" in r.text()
    assert (
        httpx.get(f"{web.base}/v1/alerts/{alert}", headers=bearer(web.admin)).json()["status"]
        == "firing"
    )

    # bulk acknowledge by filter: within the key's scope only
    def status(device: str) -> str:
        url = f"{web.base}/v1/alerts/{web.alerts[device]}"
        return str(httpx.get(url, headers=bearer(web.admin)).json()["status"])

    # each click's POST and its redirect finish before the next step (the URL after the
    # redirect is the one the page already had, so waiting for the URL would not wait)
    page.goto("/alerts?district=Hedong")
    with page.expect_navigation():
        page.click("#bulk-ack button")
    assert status("d-hd") == "firing"
    page.goto("/alerts")
    with page.expect_navigation():
        page.click("#bulk-ack button")
    page.wait_for_selector(f"#alert-{web.alerts['d-ls2']}[data-status=acknowledged]")
    assert (status("d-ls"), status("d-ls2"), status("d-hd")) == (
        "acknowledged",
        "acknowledged",
        "firing",
    )

    # disabling the user ends the session at once; enabling it brings it back
    with web.engine.begin() as conn:
        auth.set_disabled(conn, "li.ming", True)
    page.goto("/alerts")
    assert page.locator("input[name=key]").count() == 1
    with web.engine.begin() as conn:
        auth.set_disabled(conn, "li.ming", False)
    page.goto("/alerts")
    assert page.locator("#alert-rows").count() == 1

    # revoking the key ends it for good
    with web.engine.begin() as conn:
        key_id = auth.authenticate(conn, web.inspector, production=False).key_id
        auth.revoke_key(conn, key_id)
    page.goto("/alerts")
    assert page.locator("input[name=key]").count() == 1
    assert ctx.request.get("/v1/alerts").status == 401
    assert web.outside == []
    ctx.close()


def test_sign_in_is_throttled_and_the_cookie_is_strict(web: Web) -> None:
    with httpx.Client(base_url=web.base) as c:
        r = c.post("/signin", data={"key": web.inspector})
        assert r.status_code == 303
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert "secure" not in cookie  # plain http here; Secure behind TLS
        for _ in range(5):
            assert c.post("/signin", data={"key": "envmon_00000000_wrong"}).status_code == 401
        assert c.post("/signin", data={"key": web.inspector}).status_code == 429
    # bearer-key API calls are unchanged
    assert httpx.get(f"{web.base}/v1/alerts", headers=bearer(web.inspector)).status_code == 200


def session_cookie(ctx: BrowserContext) -> str:
    return next(c["value"] for c in ctx.cookies() if c["name"] == "envmon_session")


def session_rows(engine: Engine) -> list[Any]:
    keys = table(ApiKey)
    with engine.connect() as conn:
        return list(conn.execute(select(keys).where(keys.c.prefix.startswith("w"))))


def test_signing_out_ends_every_copy_of_the_session_not_other_sign_ins(
    web: Web, browser: Browser
) -> None:
    ctx, other = context_for(browser, web), context_for(browser, web)
    page, other_page = ctx.new_page(), other.new_page()
    sign_in(page, web.inspector)
    sign_in(other_page, web.inspector)  # the same key in a second browser
    copied = session_cookie(ctx)
    assert copied != session_cookie(other)

    def replay(path: str) -> httpx.Response:
        """The copied cookie, sent from outside the browser."""
        with httpx.Client(base_url=web.base, cookies={"envmon_session": copied}) as c:
            return c.get(path)

    # the copy works while the session lasts (so its refusal below is the sign-out's doing)
    assert 'id="alert-rows"' in replay("/alerts").text
    assert replay("/v1/alerts").status_code == 200
    assert len(session_rows(web.engine)) == 2

    page.click("#signout")
    page.wait_for_selector("input[name=key]")  # only the sign-in form has it: no race
    refused = replay("/alerts")
    assert refused.status_code == 303 and refused.headers["location"] == "/"
    assert replay("/v1/alerts").status_code == 401
    assert len(session_rows(web.engine)) == 1  # its row is gone from the server

    # the other browser's session, and the key itself, are untouched
    other_page.goto("/alerts")
    assert other_page.locator("#alert-rows").count() == 1
    assert httpx.get(f"{web.base}/v1/alerts", headers=bearer(web.inspector)).status_code == 200

    # a session lasts ENVMON_WEB_SESSION_HOURS (12) at most
    keys = table(ApiKey)
    with web.engine.begin() as conn:
        conn.execute(
            update(keys)
            .where(keys.c.prefix.startswith("w"))
            .values(created_at=datetime.now(UTC) - timedelta(hours=12, minutes=1))
        )
    other_page.goto("/alerts")
    assert other_page.locator("input[name=key]").count() == 1
    assert web.outside == []
    ctx.close()
    other.close()


def test_a_session_row_is_no_bearer_key(web: Web) -> None:
    with httpx.Client(base_url=web.base) as c:
        assert c.post("/signin", data={"key": web.inspector}).status_code == 303
        _key_id, _session_id, secret = c.cookies["envmon_session"].split(".")
    (row,) = session_rows(web.engine)
    forged = f"envmon_{row.prefix}_{secret}"
    assert httpx.get(f"{web.base}/v1/alerts", headers=bearer(forged)).status_code == 401


def test_assign_to_a_person_who_can_act_in_the_district(web: Web, browser: Browser) -> None:
    make_key(web.engine, "wang.fang", "inspector", "Lanshan")
    make_key(web.engine, "zhao.lei", "inspector", "Hedong")  # another district
    make_key(web.engine, "sun.li", "viewer", "Lanshan")  # may only read
    ctx = context_for(browser, web)
    page = ctx.new_page()
    sign_in(page, web.inspector)
    alert = web.alerts["d-ls"]
    page.goto(f"/alerts/{alert}")
    options = page.locator("#assignee option").evaluate_all("os => os.map(o => o.value)")
    assert options == ["", "admin", "li.ming", "wang.fang"]
    assert page.inner_text("#alert-assignee") == "无"

    def assignee() -> str | None:
        url = f"{web.base}/v1/alerts/{alert}"
        value = httpx.get(url, headers=bearer(web.admin)).json()["assignee"]
        return None if value is None else str(value)

    page.select_option("#assignee", "wang.fang")
    page.click("#do-assign")
    page.wait_for_selector("#alert-assignee >> text=wang.fang")  # the swapped body
    assert page.locator("header.top").count() == 1
    assert "指派给 wang.fang" in page.inner_text("#events")
    assert assignee() == "wang.fang"
    shoot(page, "alert-assigned")

    # refused: without the page's CSRF token, and to someone who cannot act on the alert
    token = page.get_attribute("#assign input[name=csrf]", "value") or ""
    forged = ctx.request.post(f"/alerts/{alert}/assign", form={"assignee": "li.ming"})
    assert forged.status == 403
    for name in ("zhao.lei", "sun.li", "nobody.at.all"):
        r = ctx.request.post(f"/alerts/{alert}/assign", form={"assignee": name, "csrf": token})
        assert r.status == 422, name
        assert r.json()["errors"][0]["field"] == "assignee"
    assert assignee() == "wang.fang"
    # nor to an alert of another district
    hd = web.alerts["d-hd"]
    r = ctx.request.post(f"/alerts/{hd}/assign", form={"assignee": "li.ming", "csrf": token})
    assert r.status == 404

    # a person disabled since the page was drawn: the page says why the server refused
    with web.engine.begin() as conn:
        auth.set_disabled(conn, "wang.fang", True)
    page.select_option("#assignee", "wang.fang")  # still offered by the page drawn before
    page.click("#do-assign")
    page.wait_for_selector("#flash:not([hidden])")
    assert "wang.fang" in page.inner_text("#flash")
    assert page.inner_text("#alert-assignee") == "wang.fang"  # nothing swapped
    # a page drawn now still shows who has it (not silently "nobody", which would unassign)
    page.reload()
    assert page.locator("#assignee").input_value() == "wang.fang"
    with web.engine.begin() as conn:
        auth.set_disabled(conn, "wang.fang", False)

    # unassign
    page.select_option("#assignee", "")
    page.click("#do-assign")
    page.wait_for_selector("#alert-assignee >> text=无")
    assert assignee() is None
    assert web.outside == []
    ctx.close()


def default_rule_alert(web: Web, rule_name: str, device: str) -> tuple[int, dict[str, Any]]:
    """A resolved alert of one of the default rules (the fixture's alerts are its own rule's),
    and that rule's row."""
    rules_t, alerts_t = table(Rule), table(Alert)
    with web.engine.begin() as conn:
        rule = conn.execute(select(rules_t).where(rules_t.c.name == rule_name)).one()._mapping
        at = T0 + timedelta(minutes=30)
        alert_id = conn.execute(
            insert(alerts_t)
            .values(
                rule_id=rule["id"],
                device_id=device,
                site_id="cs-ls",
                status="resolved",
                severity="warning",
                started_at=at,
                fired_at=at,
                last_violation_at=at,
                evaluated_until=at,
                last_value=160.0,
                peak_value=160.0,
                message="pm10 1h mean 160 µg/m³ (warning: > 150 µg/m³)",
                resolved_at=at + timedelta(hours=1),
                resolved_by="li.ming",
            )
            .returning(alerts_t.c.id)
        ).scalar_one()
    return alert_id, dict(rule)


def test_alert_message_in_the_page_language_stored_english_kept(web: Web, browser: Browser) -> None:
    alert = web.alerts["d-ls"]
    stored = httpx.get(f"{web.base}/v1/alerts/{alert}", headers=bearer(web.admin)).json()
    assert stored["message"] == "pm10 310 µg/m³ (alarm: > 250 µg/m³)"  # the engine's English
    default_alert, default_rule = default_rule_alert(web, "dust-pm10-1h", "d-ls2")
    zh_rule = RULES_ZH["dust-pm10-1h"]
    shown = {}
    for locale in ("zh-CN", "en-US"):
        ctx = context_for(browser, web, locale)
        page = ctx.new_page()
        sign_in(page, web.inspector)
        # a default rule in the page's language: its description and basis, and its title in
        # the list; the rule the test created through the API reads as it was written
        page.goto(f"/alerts/{default_alert}")
        description = page.inner_text("#rule-description")
        basis = page.inner_text("#alert-basis")
        page.goto("/alerts")
        listed = page.inner_text(f"#alert-{default_alert} td.rule")
        own = page.inner_text(f"#alert-{alert} td.rule")
        if locale == "zh-CN":
            assert (description, basis) == (zh_rule.description, zh_rule.basis)
            assert listed.split() == [*zh_rule.title.split(), "dust-pm10-1h"]
            assert "GB 3095-2012 二级 24 小时 150 [S]" in basis
        else:
            assert (description, basis) == (default_rule["description"], default_rule["basis"])
            assert listed == "dust-pm10-1h"
        assert own == "pm10-raw"
        page.goto(f"/alerts/{alert}")
        assert page.inner_text("#alert-basis") == "GB 3095-2012 test thresholds"
        shown[locale] = page.inner_text("#alert-message")
        wait_js(page, "!!window.envmon.charts['alert-chart']")
        labels = page.evaluate("window.envmon.charts['alert-chart'].series.map(s => s.label)")
        tiers = {"预警上限 150", "报警上限 250"} if locale == "zh-CN" else None
        assert set(labels[2:]) == (tiers or {"warning above 150", "alarm above 250"})
        opened = page.locator("#events tbody tr").first.inner_text()
        if locale == "zh-CN":
            assert "PM10 180 µg/m³（预警：> 150 µg/m³）" in opened  # the event's own value
        else:
            assert "pm10 180 µg/m³ (warning: > 150 µg/m³)" in opened
        ctx.close()
    assert shown == {
        "zh-CN": "PM10 310 µg/m³（报警：> 250 µg/m³）",
        "en-US": "pm10 310 µg/m³ (alarm: > 250 µg/m³)",
    }
    assert web.outside == []


# a 1x1 grey PNG: what the test's tile server answers for every tile
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360606060000000050001a5f645400000000049454e44ae426082"
)


@pytest.fixture
def tile_server() -> Iterator[tuple[str, list[str]]]:
    """A tile server on another port of 127.0.0.1 (another origin): its base URL and the
    paths asked of it."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    asked: list[str] = []

    class Tiles(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()
            self.wfile.write(PNG)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Tiles)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", asked
    server.shutdown()
    thread.join(5)


def test_map_tiles_from_the_configured_server_only(
    web: Web, browser: Browser, pg_url: str, tile_server: tuple[str, list[str]]
) -> None:
    tiles, asked = tile_server
    # without the setting: no tiles, and the page's CSP names no other server
    ctx = context_for(browser, web)
    page = ctx.new_page()
    sign_in(page, web.inspector)
    response = page.goto("/map")
    assert response is not None
    assert "img-src 'self' data:;" in response.headers["content-security-policy"]
    assert page.locator("#map image.tile").count() == 0
    ctx.close()

    settings = Settings(
        database_url=pg_url,
        map_tiles=tiles + "/{z}/{x}/{y}.png",
        map_tiles_datum="gcj02",
        map_tiles_attribution="审图号 GS(2026)0000号",
    )
    with serve(create_app(settings)) as base:
        tiled = Web(base, web.engine, web.admin, web.inspector, web.alerts)
        ctx = context_for(browser, tiled)
        page = ctx.new_page()
        sign_in(page, web.inspector)
        response = page.goto("/map")
        assert response is not None
        assert f"img-src 'self' data: {tiles};" in response.headers["content-security-policy"]
        hrefs = page.locator("#map image.tile").evaluate_all(
            "ts => ts.map(t => t.getAttribute('href'))"
        )
        assert hrefs and all(
            re.fullmatch(re.escape(tiles) + r"/\d+/\d+/\d+\.png", h) for h in hrefs
        )
        # the browser fetched them: the CSP let that one other origin through
        deadline = time.monotonic() + 10
        while len(set(asked)) < len(hrefs):
            assert time.monotonic() < deadline, f"tiles asked: {asked}, shown: {hrefs}"
            time.sleep(0.1)
        assert {tiles + p for p in asked} == set(hrefs)
        assert page.locator("#map circle.site").count() == 1  # the district's site, on the tiles
        assert "审图号" in (page.text_content("#map text.attribution") or "")
        shoot(page, "map-tiles")
        assert tiled.outside == []
        ctx.close()


def test_a_live_refresh_waits_while_a_form_is_being_filled_in(web: Web, browser: Browser) -> None:
    ctx = context_for(browser, web)
    page = ctx.new_page()
    sign_in(page, web.inspector)
    alert = web.alerts["d-ls"]
    page.goto(f"/alerts/{alert}")
    wait_js(page, "!!window.envmon.stream && window.envmon.stream.readyState === 1")
    page.fill("form[hx-post$='/comment'] input[name=note]", "正在填写")
    # someone else acts meanwhile: the stream brings the event, the refresh is held back
    r = httpx.post(
        f"{web.base}/v1/alerts/{alert}/comment", json={"note": "by API"}, headers=bearer(web.admin)
    )
    assert r.status_code == 200
    wait_js(page, "window.envmon.held > 0")
    assert page.input_value("form[hx-post$='/comment'] input[name=note]") == "正在填写"
    page.click("#do-comment")
    page.wait_for_selector("#events >> text=正在填写")
    events = page.inner_text("#events")
    assert "by API" in events  # the post's answer is the whole, current alert
    assert web.outside == []
    ctx.close()


def test_alert_list_pages_by_100_newest_first_bulk_acknowledge_takes_every_page(
    web: Web,
) -> None:
    alerts = table(Alert)
    with web.engine.begin() as conn:
        template = dict(
            conn.execute(select(alerts).where(alerts.c.id == web.alerts["d-ls2"])).one()._mapping
        )
        del template["id"]
        # 150 earlier episodes of d-ls2, resolved (one open alert per rule and device)
        conn.execute(
            insert(alerts),
            [{**template, "status": "resolved", "resolved_at": T0} for _ in range(150)],
        )
        lanshan = sorted(
            conn.execute(
                select(alerts.c.id).where(alerts.c.device_id.in_(["d-ls", "d-ls2"]))
            ).scalars(),
            reverse=True,
        )
    assert len(lanshan) == 152
    with httpx.Client(base_url=web.base) as c:
        assert c.post("/signin", data={"key": web.inspector}).status_code == 303
        first = c.get("/alerts")
        ids = [int(x) for x in re.findall(r'data-alert-id="(\d+)"', first.text)]
        assert ids == lanshan[:100]  # the newest 100 of the district only
        older = re.search(r'href="([^"]+)" id="older"', first.text)
        assert older is not None and 'id="newest"' not in first.text
        second = c.get(older.group(1).replace("&amp;", "&"))
        ids = [int(x) for x in re.findall(r'data-alert-id="(\d+)"', second.text)]
        assert ids == lanshan[100:]
        assert 'id="older"' not in second.text and 'id="newest"' in second.text
        # the live refresh keeps the page; bulk acknowledge is by the filters, not the page
        refresh = re.search(r'id="alert-rows" hx-get="([^"]+)"', second.text)
        assert refresh is not None and "before=" in refresh.group(1)
        bulk = re.search(r'action="([^"]+)" id="bulk-ack"', second.text)
        assert bulk is not None and "before" not in bulk.group(1)


def test_alert_list_filters_by_local_days_fired(web: Web) -> None:
    """The list's time filter: local days (the city's time zone) the alert fired on, both
    ends included; bulk acknowledge takes the same filter."""
    from zoneinfo import ZoneInfo

    alerts = table(Alert)
    with web.engine.connect() as conn:
        fired = conn.execute(
            select(alerts.c.fired_at).where(alerts.c.id == web.alerts["d-ls"])
        ).scalar_one()
    day = fired.astimezone(ZoneInfo("Asia/Shanghai")).date()
    lanshan = {web.alerts["d-ls"], web.alerts["d-ls2"]}
    with httpx.Client(base_url=web.base) as c:
        assert c.post("/signin", data={"key": web.inspector}).status_code == 303

        def listed(**days: object) -> set[int]:
            page = c.get("/alerts", params={k: str(v) for k, v in days.items()})
            assert page.status_code == 200
            return {int(x) for x in re.findall(r'data-alert-id="(\d+)"', page.text)}

        assert listed(**{"from": day, "to": day}) == lanshan
        assert listed(**{"from": day - timedelta(days=3), "to": day - timedelta(days=1)}) == set()
        assert listed(**{"from": day + timedelta(days=1)}) == set()
        assert listed(to=day) == lanshan
        assert listed(**{"from": "not a day"}) == lanshan  # no filter, not an error
        page = c.get("/alerts", params={"from": str(day), "to": str(day)})
        bulk = re.search(r'action="([^"]+)" id="bulk-ack"', page.text)
        assert bulk is not None and f"from={day}" in bulk.group(1)
