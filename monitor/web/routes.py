"""The inspectors' pages. Every query goes through the API's own scope (`district_clause`, the
routes' `_select`s) or calls the API's route functions, so a page never shows what the key
could not read from the API."""

from __future__ import annotations

import hmac
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy import func, or_, select

from monitor.api.deps import CSRF_HEADER, SESSION_COOKIE, SessionDep, SettingsDep
from monitor.api.routes import alerts as alert_routes
from monitor.api.routes import dead_letters as dead_letter_routes
from monitor.api.routes import devices as device_routes
from monitor.api.routes import reports as report_routes
from monitor.api.schemas import AlertAction
from monitor.api.scope import district_clause
from monitor.auth import (
    Forbidden,
    Principal,
    Unauthenticated,
    authenticate_session,
    end_session,
    open_session,
)
from monitor.core.catalogue import DeviceKind, metrics_for
from monitor.core.exceptions import EnvmonError, InvalidInput, NotFound
from monitor.core.models import AlertStatus, Role, Severity, User, table
from monitor.core.settings import Environment, MapDatum, Settings
from monitor.web import geo, messages, rules_zh
from monitor.web.i18n import LANG_COOKIE, WORDS, language

router = APIRouter(include_in_schema=False)
users_t = table(User)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def security_headers(settings: Settings) -> dict[str, str]:
    """Nothing but this server (the page must work with the outside network cut), and the
    map's tile server when one is set, for images only."""
    tiles = f" {settings.map_tiles_origin}" if settings.map_tiles else ""
    csp = (
        "default-src 'self'; style-src 'self' 'unsafe-inline'; "
        f"img-src 'self' data:{tiles}; frame-ancestors 'none'; form-action 'self'"
    )
    return {"Content-Security-Policy": csp, **SECURITY_HEADERS}


class SignInThrottle:
    """At most `attempts` failed sign-ins per client address in `window_s` seconds."""

    def __init__(self, attempts: int = 5, window_s: float = 60.0) -> None:
        self.attempts = attempts
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float]:
        q = self._failures.setdefault(client, deque())
        while q and now - q[0] > self.window_s:
            q.popleft()
        return q

    def blocked(self, client: str) -> bool:
        with self._lock:
            return len(self._recent(client, time.monotonic())) >= self.attempts

    def failed(self, client: str) -> None:
        with self._lock:
            now = time.monotonic()
            self._recent(client, now).append(now)
            if len(self._failures) > 10_000:  # bounded: forget the quietest clients
                for k in [k for k, v in self._failures.items() if not v]:
                    del self._failures[k]


@dataclass(frozen=True, slots=True)
class WebUser:
    principal: Principal
    csrf: str

    @property
    def can_act(self) -> bool:
        return self.principal.role in (Role.admin, Role.inspector)


def _production(settings: Settings) -> bool:
    return settings.env == Environment.production


def optional_user(request: Request, session: SessionDep, settings: SettingsDep) -> WebUser | None:
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    try:
        principal, csrf = authenticate_session(
            session.connection(),
            cookie,
            production=_production(settings),
            max_age=settings.web_session_max_age,
        )
    except Unauthenticated:
        return None
    return WebUser(principal, csrf)


OptionalUser = Annotated[WebUser | None, Depends(optional_user)]


class SignInNeeded(Exception):
    """A signed-out browser asked for a page: send it to the sign-in form."""


def signed_in(user: OptionalUser) -> WebUser:
    if user is None:
        raise SignInNeeded
    return user


UserDep = Annotated[WebUser, Depends(signed_in)]


async def form_data(request: Request) -> dict[str, str]:
    """An urlencoded form body (the page's only form encoding), last value per name."""
    body = (await request.body()).decode("utf-8", "replace")
    return {k: v[-1] for k, v in parse_qs(body, keep_blank_values=True).items()}


FormDep = Annotated[dict[str, str], Depends(form_data)]


def check_csrf(request: Request, user: WebUser, form: dict[str, str]) -> None:
    sent = request.headers.get(CSRF_HEADER) or form.get("csrf", "")
    if not hmac.compare_digest(sent, user.csrf):
        raise Forbidden("this form needs the page's CSRF token; reload the page")


# --- formatting ------------------------------------------------------------------------------


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def render(
    request: Request,
    name: str,
    settings: Settings,
    user: WebUser | None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    lang = language(request)
    words = WORDS[lang]
    tz = ZoneInfo(settings.timezone)

    def local(value: datetime | None) -> str:
        if value is None:
            return "–"
        return _aware(value).astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")

    def age(value: datetime | None) -> str:
        if value is None:
            return words["never"]
        s = max(0, int((datetime.now(UTC) - _aware(value)).total_seconds()))
        for size, unit in ((86400, "days"), (3600, "hours_short"), (60, "minutes")):
            if s >= size:
                return f"{s // size} {words[unit]}"
        return f"{s} {words['seconds']}"

    response = templates.TemplateResponse(
        request,
        name,
        {
            "t": words,
            "lang": lang,
            "user": user,
            "local": local,
            "age": age,
            "tzname": settings.timezone,
            **context,
        },
        status_code=status_code,
    )
    response.headers.update(security_headers(settings))
    if request.query_params.get("lang"):
        response.set_cookie(LANG_COOKIE, lang, samesite="strict", max_age=365 * 86400)
    return response


def _choice(enum: Any, value: str | None) -> Any:
    try:
        return enum(value) if value else None
    except ValueError:
        return None


# --- sign-in ---------------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
def overview(
    request: Request, session: SessionDep, settings: SettingsDep, user: OptionalUser
) -> HTMLResponse:
    """The overview, or the sign-in form for a signed-out browser."""
    if user is None:
        return render(request, "signin.html", settings, None)
    p = user.principal
    a, d, s, r = alert_routes.alerts, alert_routes.devices, alert_routes.sites, alert_routes.rules
    kind = alert_routes.DEVICE_KIND
    open_alerts = session.execute(
        select(s.c.district, kind, a.c.status, func.count())
        .select_from(
            a.join(r, r.c.id == a.c.rule_id)
            .outerjoin(d, d.c.id == a.c.device_id)
            .join(s, s.c.id == a.c.site_id)
        )
        .where(
            district_clause(p, s.c.district),
            a.c.status.in_([AlertStatus.firing, AlertStatus.acknowledged]),
        )
        .group_by(s.c.district, kind, a.c.status)
        .order_by(s.c.district, kind)
    ).all()
    table: dict[tuple[str, str], dict[str, int]] = {}
    for district, kind, status, n in open_alerts:
        table.setdefault((district, kind), {})[status] = int(n)
    return render(
        request,
        "overview.html",
        settings,
        user,
        open_alerts=sorted(table.items()),
        **_device_health(session, settings, p),
    )


OVERVIEW_OFFLINE = 50  # offline devices listed by name (all are counted)
OVERVIEW_STALEST = 20  # devices with the oldest last reading


def _device_health(session: Any, settings: Settings, p: Principal) -> dict[str, Any]:
    """Devices in scope: how many, which are offline, whose last reading is oldest, counted
    and picked by the database (a city has thousands of devices). Offline is the API's rule
    (devices._read): unseen, disconnected, or unseen for longer than its interval allows;
    the reporting intervals in use are few, so the rule is one bound per interval."""
    d, s = device_routes.devices, device_routes.sites
    scope = district_clause(p, s.c.district)
    joined = d.join(s, s.c.id == d.c.site_id)
    # the counts need the sites only to keep to a district (each join of the devices to the
    # sites is a scan and hash of both: the overview's largest cost, docs/benchmarks.md)
    in_scope = joined if p.district is not None else d
    now = datetime.now(UTC)
    # every device's intervals, not only those in scope: a bound no device in scope has
    # matches nothing, and the devices alone are read without the sites
    intervals = session.execute(select(d.c.interval_s).distinct()).scalars()
    stale = [
        (d.c.interval_s == i)
        & (d.c.last_seen_at < now - device_routes.offline_after(int(i), settings.offline_after_s))
        for i in intervals
    ]
    offline_clause = or_(d.c.last_seen_at.is_(None), d.c.connection == "offline", *stale)
    counts = session.execute(
        select(func.count(), func.count().filter(offline_clause)).select_from(in_scope).where(scope)
    ).one()
    columns = (
        d.c.id,
        d.c.site_id,
        s.c.district,
        d.c.last_seen_at,
        offline_clause.label("offline"),
    )
    stalest = (d.c.last_seen_at.asc().nulls_first(), d.c.id)

    def rows(q: Any, n: int) -> list[dict[str, Any]]:
        out = []
        for r in session.execute(q.order_by(*stalest).limit(n)):
            out.append({**r._mapping, "online": not r.offline})
        return out

    base = select(*columns).select_from(joined).where(scope)
    return {
        "device_count": int(counts[0]),
        "offline_count": int(counts[1]),
        "offline": rows(base.where(offline_clause), OVERVIEW_OFFLINE),
        "devices": rows(base, OVERVIEW_STALEST),
    }


@router.post("/signin", response_model=None)
def sign_in(
    request: Request, session: SessionDep, settings: SettingsDep, form: FormDep
) -> Response:
    """Turn an API key into a session cookie."""
    throttle: SignInThrottle = request.app.state.signin_throttle
    client = request.client.host if request.client else "?"
    if throttle.blocked(client):
        return render(request, "signin.html", settings, None, 429, error="throttled")
    try:
        cookie = open_session(
            session.connection(),
            form.get("key", "").strip(),
            production=_production(settings),
            max_age=settings.web_session_max_age,
        )
    except Unauthenticated:
        throttle.failed(client)
        return render(request, "signin.html", settings, None, 401, error="bad_key")
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.post("/signout")
def sign_out(
    request: Request, session: SessionDep, user: UserDep, form: FormDep
) -> RedirectResponse:
    """End the session on the server (every copy of its cookie), and forget the cookie."""
    check_csrf(request, user, form)
    end_session(session.connection(), request.cookies.get(SESSION_COOKIE))
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


# --- alerts ----------------------------------------------------------------------------------


def _alert_filter(request: Request, settings: Settings) -> alert_routes.AlertFilter:
    q = request.query_params
    tz = ZoneInfo(settings.timezone)
    first, last = _local_day(q.get("from")), _local_day(q.get("to"))
    if first and last and last < first:
        first, last = last, first
    return alert_routes.AlertFilter(
        status=_choice(AlertStatus, q.get("status")),
        severity=_choice(Severity, q.get("severity")),
        kind=_choice(DeviceKind, q.get("kind")),
        site_id=q.get("site") or None,
        district=q.get("district") or None,
        device_id=q.get("device_id") or None,
        rule_id=None,
        # fired on local days [from, to], in the city's time zone
        start=datetime.combine(first, clock(0), tz) if first else None,
        end=datetime.combine(last + timedelta(days=1), clock(0), tz) if last else None,
    )


def _local_day(value: str | None) -> date | None:
    """A `YYYY-MM-DD` of the filter form; anything else is no filter."""
    try:
        return date.fromisoformat(value) if value else None
    except ValueError:
        return None


LIST_PAGE = 100  # alerts per page of the list, newest first (as the API's default page)


def _alert_rows(
    session: Any, settings: Settings, p: Principal, f: Any, before: int | None = None
) -> tuple[list[Any], int | None]:
    """A page of the list, and the id to continue from (None on the last page)."""
    a = alert_routes.alerts
    q = f.apply(alert_routes._select(p), settings).order_by(a.c.id.desc()).limit(LIST_PAGE + 1)
    if before is not None:
        q = q.where(a.c.id < before)
    rows = [r._mapping for r in session.execute(q)]
    more = len(rows) > LIST_PAGE
    return rows[:LIST_PAGE], (rows[LIST_PAGE - 1]["id"] if more else None)


def _rule_texts(session: Any, rows: list[Any], lang: str) -> dict[int, rules_zh.RuleText]:
    """The rules of these alert rows in the page's language, by rule id (a handful of rows
    of the rules table: the list shows each alert's rule by its title)."""
    r = alert_routes.rules
    ids = {row["rule_id"] for row in rows}
    if not ids:
        return {}
    q = select(r.c.id, r.c.name, r.c.description, r.c.basis).where(r.c.id.in_(ids))
    return {row.id: rules_zh.rule_text(row._mapping, lang) for row in session.execute(q)}


def _districts(session: Any, p: Principal) -> list[str]:
    s = alert_routes.sites
    q = select(s.c.district).distinct().where(district_clause(p, s.c.district))
    return sorted(r[0] for r in session.execute(q))


@router.get("/alerts", response_class=HTMLResponse)
def alert_list(
    request: Request, session: SessionDep, settings: SettingsDep, user: UserDep
) -> HTMLResponse:
    """Alerts with the API's filters; the rows refresh from the alert stream."""
    f = _alert_filter(request, settings)
    before = request.query_params.get("before", "")
    start = int(before) if before.isdigit() and len(before) < 12 else None
    rows, older = _alert_rows(session, settings, user.principal, f, start)
    template = "alert_rows.html" if request.query_params.get("rows") else "alerts.html"
    query = {k: v for k, v in request.query_params.items() if k in FILTERS and v}
    page = {"before": str(start)} if start is not None else {}
    return render(
        request,
        template,
        settings,
        user,
        rows=rows,
        rules=_rule_texts(session, rows, language(request)),
        f=f,
        districts=_districts(session, user.principal),
        statuses=list(AlertStatus),
        severities=list(Severity),
        kinds=list(DeviceKind),
        day_from=_local_day(request.query_params.get("from")) or "",
        day_to=_local_day(request.query_params.get("to")) or "",
        rows_url="/alerts?" + urlencode({**query, **page, "rows": "1"}),
        # every firing alert the filters match, not this page's only
        bulk_url="/alerts/acknowledge?" + urlencode(query),
        older_url="/alerts?" + urlencode({**query, "before": older}) if older else None,
        newest_url="/alerts?" + urlencode(query) if start is not None else None,
    )


FILTERS = ("status", "severity", "district", "kind", "site", "from", "to", "lang")


@router.post("/alerts/acknowledge", response_model=None)
def acknowledge_matching(
    request: Request, session: SessionDep, settings: SettingsDep, user: UserDep, form: FormDep
) -> Response:
    """Acknowledge every firing alert the list's filters match, as the API's bulk route."""
    check_csrf(request, user, form)
    p = user.principal
    p.require(Role.admin, Role.inspector)
    f = _alert_filter(request, settings)
    alert_routes.acknowledge_by_filter(
        session, settings, p, f, AlertAction(note=form.get("note") or None)
    )
    query = {k: v for k, v in request.query_params.items() if k in FILTERS and v}
    return RedirectResponse("/alerts?" + urlencode(query), status_code=303)


@router.get("/alerts/{alert_id}", response_class=HTMLResponse)
def alert_page(
    request: Request, session: SessionDep, settings: SettingsDep, user: UserDep, alert_id: int
) -> HTMLResponse:
    """One alert: what fired, its rule and basis, its readings and events, the actions."""
    template = "alert_body.html" if request.query_params.get("body") else "alert.html"
    return _render_alert(request, session, settings, user, alert_id, template)


def _render_alert(
    request: Request,
    session: Any,
    settings: Settings,
    user: WebUser,
    alert_id: int,
    template: str,
) -> HTMLResponse:
    detail = alert_routes.get_alert(session, user.principal, alert_id)
    r = alert_routes.rules
    rule = session.execute(select(r).where(r.c.id == detail.rule_id)).first()
    lang, fields = language(request), (rule._mapping if rule is not None else None)
    return render(
        request,
        template,
        settings,
        user,
        a=detail,
        message=messages.alert_message(detail, fields, lang),
        rule=rules_zh.rule_text(fields, lang)
        if fields is not None
        else rules_zh.RuleText(detail.rule_name, "", detail.basis),
        note=lambda event: messages.event_note(event, fields, lang),
        chart=_alert_chart(detail, rule, WORDS[lang]),
        assignees=_assignees(session, detail.district) if user.can_act else [],
    )


def _assignees(session: Any, district: str) -> list[str]:
    """Who may be given an alert of this district: the enabled users who could act on it
    themselves (inspectors and admins whose scope covers the district)."""
    u = users_t
    q = (
        select(u.c.name)
        .where(
            u.c.disabled.is_(False),
            u.c.role.in_([Role.admin.value, Role.inspector.value]),
            or_(u.c.district.is_(None), u.c.district == district),
        )
        .order_by(u.c.name)
    )
    return [str(name) for name in session.execute(q).scalars()]


TIERS = ("warn_above", "alarm_above", "warn_below", "alarm_below")


def _alert_chart(detail: Any, rule: Any, words: dict[str, str]) -> dict[str, Any]:
    """The readings around the alert, and the rule's tiers to draw across them."""
    m = rule._mapping if rule is not None else {}
    tiers = {t: m[t] for t in TIERS if m.get(t) is not None}
    return {
        "x": [_aware(r.ts).timestamp() for r in detail.readings],
        "y": [r.value for r in detail.readings],
        "label": detail.metric,
        "tiers": tiers,
        "tier_labels": {t: f"{words[t]} {tiers[t]:g}" for t in tiers},
    }


ACTIONS = ("acknowledge", "resolve", "comment", "assign")


@router.post("/alerts/{alert_id}/{action}", response_model=None)
def alert_action(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    user: UserDep,
    form: FormDep,
    alert_id: int,
    action: str,
) -> Response:
    """Acknowledge, resolve, comment or assign, through the API's own route functions."""
    check_csrf(request, user, form)
    if action not in ACTIONS:
        raise NotFound(f"no action {action!r}", field="path.action")
    p = user.principal
    p.require(Role.admin, Role.inspector)
    note = form.get("note", "").strip() or None
    if action == "acknowledge":
        alert_routes.acknowledge_alert(session, p, alert_id, AlertAction(note=note))
    elif action == "resolve":
        alert_routes.resolve_alert(session, p, alert_id, AlertAction(note=note))
    elif action == "assign":
        detail = alert_routes.get_alert(session, p, alert_id)  # in scope, or 404
        assignee = form.get("assignee", "").strip() or None
        if assignee is not None and assignee not in _assignees(session, detail.district):
            raise InvalidInput(
                f"{assignee!r} cannot act on alerts of {detail.district}", field="assignee"
            )
        alert_routes.assign_alert(
            session, p, alert_id, alert_routes.AssignBody(assignee=assignee, note=note)
        )
    else:
        alert_routes.comment_alert(session, p, alert_id, alert_routes.CommentBody(note=note or ""))
    if not request.headers.get("HX-Request"):
        return RedirectResponse(f"/alerts/{alert_id}", status_code=303)
    if form.get("row"):
        q = alert_routes._select(p).where(alert_routes.alerts.c.id == alert_id)
        rows = [r._mapping for r in session.execute(q)]
        rules = _rule_texts(session, rows, language(request))
        return render(request, "alert_rows.html", settings, user, rows=rows, rules=rules)
    # only the alert's body: htmx swaps it in place
    return _render_alert(request, session, settings, user, alert_id, "alert_body.html")


# --- devices ---------------------------------------------------------------------------------


@router.get("/devices/{device_id}", response_class=HTMLResponse)
def device_page(
    request: Request, session: SessionDep, settings: SettingsDep, user: UserDep, device_id: str
) -> HTMLResponse:
    """A device: online state, clock skew, latest values and a trend chart of any metric."""
    p = user.principal
    device = device_routes.get_device(session, settings, p, device_id)
    latest = device_routes.latest_readings(session, settings, p, device_id)
    dead = dead_letter_routes.list_dead_letters(
        session, settings, p, None, device_id, None, None, 20, None
    )
    metrics = [m.name for m in metrics_for(DeviceKind(device.kind))]
    return render(
        request,
        "device.html",
        settings,
        user,
        d=device,
        latest=latest.readings,
        dead_letters=dead.items,
        metrics=metrics,
        # a metric it reports, not merely one its kind could report
        metric=request.query_params.get("metric")
        or next((r.metric for r in latest.readings), metrics[0] if metrics else ""),
    )


# --- map ------------------------------------------------------------------------------------

SEVERITY_RANK = {Severity.warning.value: 1, Severity.alarm.value: 2}
MAP_W, MAP_H, MAP_PAD = 1000, 700, 40


@router.get("/map", response_class=HTMLResponse)
def map_page(
    request: Request, session: SessionDep, settings: SettingsDep, user: UserDep
) -> HTMLResponse:
    """The sites in scope on a plain coordinate grid, coloured by their worst open alert."""
    p = user.principal
    a, s = alert_routes.alerts, alert_routes.sites
    worst: dict[str, int] = {}
    for site_id, severity in session.execute(
        select(a.c.site_id, a.c.severity)
        .join(s, s.c.id == a.c.site_id)
        .where(
            district_clause(p, s.c.district),
            a.c.status.in_([AlertStatus.firing, AlertStatus.acknowledged]),
        )
        .distinct()
    ):
        worst[site_id] = max(worst.get(site_id, 0), SEVERITY_RANK.get(severity, 1))
    placed = [
        r
        for r in session.execute(select(s).where(district_clause(p, s.c.district)).order_by(s.c.id))
        if r.latitude is not None and r.longitude is not None
    ]
    if settings.map_tiles:
        layout = _tiled_layout(placed, worst, settings)
    else:
        layout = _layout(placed, worst)
    return render(request, "map.html", settings, user, **layout)


LEVEL = {0: "none", 1: "warning", 2: "alarm"}


def _point(r: Any, worst: dict[str, int], x: float, y: float) -> dict[str, Any]:
    return {
        "id": r.id,
        "name": r.name,
        "district": r.district,
        "x": x,
        "y": y,
        "worst": LEVEL[worst.get(r.id, 0)],
    }


def _tiled_layout(placed: list[Any], worst: dict[str, int], settings: Settings) -> dict[str, Any]:
    """The sites on the tile server's Web Mercator tiles, moved into the tiles' datum."""
    out: dict[str, Any] = {"points": [], "grid": [], "tiles": [], "w": MAP_W, "h": MAP_H}
    out["attribution"] = settings.map_tiles_attribution
    if not placed:
        return out
    gcj = settings.map_tiles_datum == MapDatum.gcj02
    at = [
        geo.wgs84_to_gcj02(r.latitude, r.longitude) if gcj else (r.latitude, r.longitude)
        for r in placed
    ]
    view = geo.fit(at, MAP_W, MAP_H, MAP_PAD)
    out["tiles"] = geo.tiles(view, settings.map_tiles, MAP_W, MAP_H)
    out["points"] = [
        _point(r, worst, *view.place(lat, lon)) for r, (lat, lon) in zip(placed, at, strict=True)
    ]
    return out


def _layout(placed: list[Any], worst: dict[str, int]) -> dict[str, Any]:
    """Equirectangular placement in an SVG box, with grid lines on round degrees."""
    if not placed:
        return {"points": [], "grid": [], "w": MAP_W, "h": MAP_H}
    lats = [r.latitude for r in placed]
    lons = [r.longitude for r in placed]
    lat0, lat1 = min(lats) - 0.005, max(lats) + 0.005
    lon0, lon1 = min(lons) - 0.005, max(lons) + 0.005
    span = max(lat1 - lat0, lon1 - lon0)
    step = next(g for g in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0) if span / g <= 10)

    def x(lon: float) -> float:
        return float(MAP_PAD + (lon - lon0) / (lon1 - lon0) * (MAP_W - 2 * MAP_PAD))

    def y(lat: float) -> float:
        return float(MAP_H - MAP_PAD - (lat - lat0) / (lat1 - lat0) * (MAP_H - 2 * MAP_PAD))

    grid: list[dict[str, Any]] = []
    g = (lon0 // step + 1) * step
    while g < lon1:
        grid.append({"x1": x(g), "y1": 0, "x2": x(g), "y2": MAP_H, "label": f"{g:.2f}°E"})
        g += step
    g = (lat0 // step + 1) * step
    while g < lat1:
        grid.append({"x1": 0, "y1": y(g), "x2": MAP_W, "y2": y(g), "label": f"{g:.2f}°N"})
        g += step
    points = [_point(r, worst, x(r.longitude), y(r.latitude)) for r in placed]
    return {"points": points, "grid": grid, "w": MAP_W, "h": MAP_H}


# --- reports ---------------------------------------------------------------------------------


@router.get("/reports", response_class=HTMLResponse)
def reports_page(
    request: Request, session: SessionDep, settings: SettingsDep, user: UserDep
) -> HTMLResponse:
    """The dust and water compliance reports and the DMA leakage figures, as tables with
    their CSV downloads (each the API's own report, so the key's scope holds)."""
    today = datetime.now(ZoneInfo(settings.timezone)).date()
    start = _day(request.query_params.get("start"), today - timedelta(days=6))
    end = _day(request.query_params.get("end"), today)
    if end < start or (end - start).days >= report_routes.MAX_DAYS:
        start, end = today - timedelta(days=6), today
    p = user.principal
    tables: dict[str, list[Any]] = {}
    problems: dict[str, str] = {}
    for name, report in (
        ("dust", report_routes.dust_compliance),
        ("water", report_routes.water_compliance),
    ):
        try:
            tables[name] = getattr(report(session, settings, p, start, end), "items", [])
        except EnvmonError as exc:  # e.g. no rule to judge by: say so, show the other one
            tables[name], problems[name] = [], str(exc)
    leakage: Any = None
    try:
        leakage = report_routes.leakage(
            session, settings, p, start, end, None, None, report_routes.ReportFormat.json
        )
    except EnvmonError as exc:
        problems["leakage"] = str(exc)
    span = {"start": start.isoformat(), "end": end.isoformat()}
    return render(
        request,
        "reports.html",
        settings,
        user,
        start=start,
        end=end,
        dust=tables["dust"],
        water=tables["water"],
        problems=problems,
        dust_csv="/v1/reports/dust-compliance?" + urlencode({**span, "format": "csv"}),
        water_csv="/v1/reports/water-compliance?" + urlencode({**span, "format": "csv"}),
        leakage=leakage,
        leakage_csv="/v1/reports/leakage?" + urlencode({**span, "format": "csv"}),
    )


def _day(value: str | None, default: date) -> date:
    try:
        return date.fromisoformat(value) if value else default
    except ValueError:
        return default


def install(app: Any) -> None:
    """Mount the pages on the app, with their sign-in redirect."""
    from fastapi.staticfiles import StaticFiles

    app.state.signin_throttle = SignInThrottle()
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")

    async def to_sign_in(request: Request, exc: Exception) -> Response:
        return RedirectResponse("/", status_code=303)

    app.add_exception_handler(SignInNeeded, to_sign_in)
