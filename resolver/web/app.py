"""The dashboard: Starlette routes, server-rendered Jinja pages and their JSON API twins.

Views compute, templates stay dumb. Every page and API route but /login and /health
needs a session; every request that changes something needs the session's CSRF token;
only an admin changes the policy, through the same Store methods the CLI calls, with
the audit row under the dashboard user's name.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import wraps
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from resolver import __version__
from resolver import report as rpt
from resolver.admin import hits_since, list_overview
from resolver.catalog import load_catalog, normalize_name
from resolver.config import Config, parse_duration
from resolver.errors import SinkholeError
from resolver.presentation import display_name, strip_controls
from resolver.store import PolicyStore, Store, open_store
from resolver.users import clear_failures as clear_login_failures
from resolver.users import failures, get_user, password_hash, record_failure, verify_password
from resolver.web import charts, data
from resolver.web.auth import (
    CSRF_FIELD,
    CSRF_HEADER,
    IP_REFUSE_FACTOR,
    SAFE_METHODS,
    SESSION_COOKIE,
    Session,
    Sessions,
    csrf_ok,
    login_keys,
    session_secret,
    throttle_of,
)
from resolver.web.i18n import (
    LANG_COOKIE,
    LANGUAGE_NAMES,
    LANGUAGES,
    Formats,
    choose_language,
    translations,
)

log = logging.getLogger("sinkhole.web")

HERE = Path(__file__).parent
#: No inline script or style anywhere: htmx and app.js are files served from 'self'.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-src 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
#: The HTML report in its frame: its own inline CSS and SVG, and no script at all.
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'"
STREAM_POLL = 0.25
STREAM_HEARTBEAT = 15.0
MAX_FORM_BYTES = 64 * 1024
MAX_NAMES = 100
#: Threads for the reports of one overview (the longest sets the page's time).
REPORT_POOL = ThreadPoolExecutor(max_workers=6, thread_name_prefix="sinkhole-report")
REPORT_FORMATS = {
    "json": ("application/json", "json"),
    "html": ("text/html", "html"),
    "text": ("text/plain", "txt"),
    "markdown": ("text/markdown", "md"),
    "csv": ("text/csv", "csv"),
}


class Web:
    """The dashboard's state: config, catalog, templates per language, session signer."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.catalog = load_catalog(Path(config.catalog) if config.catalog else None)
        with self.store() as store:
            store.seed(self.catalog, config.lists)
            secret = session_secret(store)
        self.sessions = Sessions(secret, config.web.session_hours * 3600)
        self.throttle = throttle_of(config.web)
        self.tz = data.site_timezone(config)
        self.envs = {lang: self._env(lang) for lang in LANGUAGES}
        #: Set when the server is asked to stop: the live logs end, so shutdown need not wait.
        self.closing = False
        self.clients_shown = config.privacy.clients in ("ip", "hashed")
        self.groups_shown = config.privacy.clients != "none"
        #: With `central`: the overview's reports while nothing was shipped since.
        self.overview_cache = data.OverviewCache()

    def _env(self, lang: str) -> jinja2.Environment:
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            extensions=["jinja2.ext.i18n"],
            undefined=jinja2.StrictUndefined,
        )
        env.install_gettext_translations(translations(lang), newstyle=True)
        fmt = Formats(lang, data.site_timezone(self.config))
        env.filters.update(
            num=fmt.number,
            pct=fmt.percent,
            when=fmt.datetime,
            clock=fmt.time,
            name=display_name,
            text=strip_controls,
        )
        env.globals.update(
            languages=LANGUAGE_NAMES, lang=lang, version=__version__, fmt=fmt, urlencode=urlencode
        )
        return env

    def store(self) -> Store:
        """This site's database: accounts, the attempts log, and the policy it enforces."""
        return Store(self.config.database)

    def policy_store(self) -> PolicyStore:
        """Where a policy edit goes, as for the CLI (store.open_store): this site's
        database, or with `central` the policy of every site in PostgreSQL (refused in
        one line, nothing changed, while PostgreSQL is away)."""
        store = open_store(self.config)
        store.seed(self.catalog, self.config.lists)
        return store

    def gettext(self, lang: str) -> Callable[[str], str]:
        return translations(lang).gettext


# -- request helpers ------------------------------------------------------------------------


def web_of(request: Request) -> Web:
    return request.app.state.web


def language(request: Request) -> str:
    return choose_language(
        request.query_params.get("lang"),
        request.cookies.get(LANG_COOKIE),
        request.headers.get("accept-language"),
    )


def is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def render(
    request: Request,
    template: str,
    context: dict[str, Any],
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    web = web_of(request)
    lang = language(request)
    session: Session | None = getattr(request.state, "session", None)
    ctx = {
        "request_path": request.url.path,
        "session": session,
        "csrf_token": session.csrf_token if session else "",
        "clients_shown": web.clients_shown,
        "groups_shown": web.groups_shown,
        "tz": web.tz,
        **context,
    }
    body = web.envs[lang].get_template(template).render(ctx)
    response = HTMLResponse(body, status_code=status, headers=headers)
    if request.query_params.get("lang") in LANGUAGES:
        response.set_cookie(
            LANG_COOKIE, lang, max_age=365 * 86400, samesite="lax", secure=web.config.web.secure
        )
    return response


def error(request: Request, status: int, message: str) -> Response:
    if is_api(request) or "application/json" in request.headers.get("accept", ""):
        return JSONResponse({"error": message}, status_code=status)
    return render(request, "error.html", {"status": status, "message": message}, status)


Handler = Callable[[Request], Awaitable[Response]]


def requires(role: str = "viewer") -> Callable[[Handler], Handler]:
    """A logged-in user (admin for role 'admin'), and the CSRF token on every change."""

    def wrap(handler: Handler) -> Handler:
        @wraps(handler)
        async def endpoint(request: Request) -> Response:
            web = web_of(request)
            _ = web.gettext(language(request))
            cookie = request.cookies.get(SESSION_COOKIE)
            session = await run_in_threadpool(_read_session, web, cookie)
            if session is None:
                if is_api(request):
                    return JSONResponse({"error": "login required"}, status_code=401)
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(f"/login?{urlencode({'next': target})}", 303)
            request.state.session = session
            if request.method not in SAFE_METHODS:
                sent = request.headers.get(CSRF_HEADER)
                if sent is None and _is_form(request):
                    form = await _form(request)
                    sent = form.get(CSRF_FIELD)
                if not csrf_ok(session, sent):
                    return error(request, 403, _("Missing or wrong CSRF token."))
                if role == "admin" and not session.is_admin:
                    return error(request, 403, _("Only an administrator may change the policy."))
            return await handler(request)

        return endpoint

    return wrap


def _read_session(web: Web, cookie: str | None) -> Session | None:
    with web.store() as store:
        return web.sessions.read(cookie, store)


def _is_form(request: Request) -> bool:
    ctype = request.headers.get("content-type", "")
    return ctype.startswith(("application/x-www-form-urlencoded", "multipart/form-data"))


async def _form(request: Request) -> dict[str, str]:
    """The posted form (cached on the request), text fields only, size-limited."""
    cached = getattr(request.state, "form", None)
    if cached is not None:
        return cached
    length = request.headers.get("content-length")
    if length and (not length.isdigit() or int(length) > MAX_FORM_BYTES):
        raise HTTPException(413, "request body too large")
    form = await request.form(max_files=0, max_fields=200)
    out = {k: v for k, v in form.items() if isinstance(v, str)}
    request.state.form = out
    return out


async def _body(request: Request) -> dict[str, Any]:
    """The fields of a JSON or form body; {} for none."""
    if _is_form(request):
        return dict(await _form(request))
    raw = await request.body()
    if len(raw) > MAX_FORM_BYTES:
        raise HTTPException(413, "request body too large")
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise HTTPException(400, "the body is not JSON") from None
    if not isinstance(value, dict):
        raise HTTPException(400, "the body must be a JSON object")
    return value


def _comment(fields: dict[str, Any]) -> str | None:
    comment = fields.get("comment")
    if comment is None or comment == "":
        return None
    if not isinstance(comment, str) or len(comment) > 500:
        raise HTTPException(400, "comment: text of at most 500 characters")
    return strip_controls(comment).strip() or None


# -- login ----------------------------------------------------------------------------------


async def login_page(request: Request) -> Response:
    nxt = _safe_next(request.query_params.get("next"))
    return render(request, "login.html", {"next": nxt, "message": None})


def _safe_next(value: str | None) -> str:
    """Only a path of this site: never `//host` or a scheme (an open redirect)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


async def login(request: Request) -> Response:
    web = web_of(request)
    _ = web.gettext(language(request))
    if not _is_form(request):
        return error(request, 415, _("Send the login form."))
    # A cross-site page must not log a browser into our dashboard (login CSRF).
    origin = request.headers.get("origin")
    if origin and origin != "null" and origin != _own_origin(request):
        return error(request, 403, _("Cross-site login refused."))
    form = await _form(request)
    username = form.get("username", "").strip()
    password = form.get("password", "")
    nxt = _safe_next(form.get("next"))
    client_ip = request.client.host if request.client else None
    keys = login_keys(username, client_ip)
    throttle = web.throttle

    def check() -> tuple[str, Any]:
        with web.store() as store:
            recent = failures(store, keys, throttle)
            user_fails, user_wait = recent.get(keys[0], (0, 0))
            ip_fails, ip_wait = recent.get(keys[1], (0, 0))
            if user_fails >= throttle.refuse or ip_fails >= throttle.refuse * IP_REFUSE_FACTOR:
                return "refused", max(user_wait, ip_wait)
            delay = throttle.delay_for(max(user_fails, ip_fails // IP_REFUSE_FACTOR))
            stored = password_hash(store, username) if username else None
            ok = verify_password(password, stored) and stored is not None
            if not ok:
                record_failure(store, keys, throttle)
                return "failed", delay
            user = get_user(store, username)
            if user is None:  # removed between the two reads
                return "failed", delay
            clear_login_failures(store, keys[:1])
            return "ok", user

    outcome, detail = await run_in_threadpool(check)
    if outcome == "refused":
        log.warning("login refused for %r from %s: too many failures", username[:64], client_ip)
        message = _("Too many failed logins. Try again later.")
        headers = {"Retry-After": str(max(1, int(detail)))}
        return render(request, "login.html", {"next": nxt, "message": message}, 429, headers)
    if outcome == "failed":
        if detail:
            await asyncio.sleep(detail)  # slows guessing; other requests go on meanwhile
        log.info("failed login for %r from %s", username[:64], client_ip)
        message = _("Wrong user name or password.")
        return render(request, "login.html", {"next": nxt, "message": message}, 401)
    cookie, _token = web.sessions.issue(detail)
    log.info("login of %s (%s) from %s", detail.name, detail.role, client_ip)
    response = RedirectResponse(nxt, 303)
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=web.sessions.max_age,
        httponly=True,
        samesite="strict",
        secure=web.config.web.secure,
    )
    return response


def _own_origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}"


@requires()
async def logout(request: Request) -> Response:
    response = RedirectResponse("/login", 303)
    response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="strict")
    return response


@requires()
async def api_session(request: Request) -> Response:
    s: Session = request.state.session
    return JSONResponse(
        {
            "user": s.user.name,
            "role": s.user.role,
            "csrf_token": s.csrf_token,
            "lang": language(request),
            "privacy": web_of(request).config.privacy.clients,
        }
    )


async def health(request: Request) -> Response:
    web = web_of(request)

    def check() -> tuple[int, dict[str, Any]]:
        try:
            with web.store() as store:
                version = store.setting("schema_version")
            lag = data.traffic_lag(web.config.database)
        except Exception as exc:  # noqa: BLE001 - whatever it is, health says it
            return 503, {"status": "error", "database": str(exc)}
        return 200, {"status": "ok", "database": "ok", "schema": version, **lag}

    status, body = await run_in_threadpool(check)
    return JSONResponse(body, status_code=status)


# -- overview -------------------------------------------------------------------------------


def _range_key(request: Request) -> str:
    key = request.query_params.get("range", data.DEFAULT_RANGE)
    if key not in data.RANGES:
        raise HTTPException(400, f"range must be one of {', '.join(data.RANGES)}")
    return key


def _overview_reports(
    web: Web, periods: dict[str, tuple[datetime, datetime]], lang: str
) -> dict[str, dict]:
    """The chosen range's report (of the sections the overview shows) and the counters
    of today and this week (`totals` only: with `central` one PostgreSQL query each, no
    report file), each in its own thread with its own connection."""
    config = web.config
    futures = {
        name: (
            REPORT_POOL.submit(
                data.report_for, config, web.catalog, a, b, lang, False, data.OVERVIEW_SECTIONS
            )
            if name == "chosen"
            else REPORT_POOL.submit(data.totals_for, config, web.catalog, a, b, lang)
        )
        for name, (a, b) in periods.items()
    }
    return {name: f.result() for name, f in futures.items()}


def overview_context(web: Web, key: str, lang: str) -> dict[str, Any]:
    start, end = data.range_bounds(key, web.tz)
    periods = {"chosen": (start, end), "today": data.today_bounds(web.tz)}
    if key != "week":
        periods["week"] = data.range_bounds("week", web.tz)
    t0, t1 = int(start.timestamp()), int(end.timestamp())
    config = web.config
    if config.central is not None:
        # With `central`: the sites' table and the hourly trend are read beside the
        # reports, and the reports are kept while nothing was shipped (OverviewCache).
        sites = REPORT_POOL.submit(data.sites_overview, config)
        bars = (
            REPORT_POOL.submit(data.central_hourly_trend, config, t0, t1) if key == "24h" else None
        )
        version = data.central_version(config)
        cache_key = (
            lang,
            tuple(sorted((n, int(a.timestamp())) for n, (a, _) in periods.items())),
            version,
        )
        reports = web.overview_cache.get(cache_key) if version is not None else None
        if reports is None:
            reports = _overview_reports(web, periods, lang)
            if version is not None and not any("central_error" in r for r in reports.values()):
                web.overview_cache.put(cache_key, reports)
        central = sites.result()
        hours = bars.result() if bars is not None else None
    else:
        # Each report has its own connection, and SQLite lets go of the GIL while it
        # reads: on two cores the page takes as long as its longest report, not their sum.
        reports = _overview_reports(web, periods, lang)
        central = None
        hours = data.hourly_trend(config.database, t0, t1) if key == "24h" else None
    chosen, today = reports["chosen"], reports["today"]
    week = reports.get("week", chosen)
    if hours is not None:
        trend = charts.hours_svg(hours, web.tz, lang)
    else:
        trend = charts.days_svg(chosen["days"], lang)
    return {
        "range": key,
        "ranges": data.RANGES,
        "since": start.isoformat(timespec="seconds"),
        "until": end.isoformat(timespec="seconds"),
        "today": today["totals"],
        "week": week["totals"],
        "report": chosen,
        "trend_svg": trend,
        "services_svg": charts.services_svg(chosen["services"][:10], lang),
        "central": central,
    }


@requires()
async def overview(request: Request) -> Response:
    web = web_of(request)
    key = _range_key(request)
    ctx = await run_in_threadpool(overview_context, web, key, language(request))
    template = "_overview.html" if request.headers.get("hx-request") else "overview.html"
    return render(request, template, ctx)


@requires()
async def dns_health(request: Request) -> Response:
    """The DNS server's own /health, read like `sinkhole status` does (a fragment)."""
    web = web_of(request)
    from resolver.status import metrics_url, read_status

    def read() -> dict[str, Any]:
        address = web.config.metrics_listen
        if not address:
            return {"configured": False}
        try:
            st = read_status(metrics_url(address), timeout=1.0)
        except (SinkholeError, OSError) as exc:
            return {"configured": True, "reachable": False, "error": str(exc)}
        return {"configured": True, "reachable": True, **st}

    st = await run_in_threadpool(read)
    lag = await run_in_threadpool(data.traffic_lag, web.config.database)
    return render(request, "_health.html", {"dns": st, "traffic": lag})


# -- attempts -------------------------------------------------------------------------------


def log_filter(request: Request, web: Web) -> data.LogFilter:
    q = request.query_params
    since, until = q.get("since") or "24h", q.get("until") or None
    try:
        start, end = rpt.parse_range(since, until, web.tz)
    except SinkholeError as exc:
        raise HTTPException(400, str(exc)) from None
    flt = data.LogFilter(
        since=int(start.timestamp()), until=int(end.timestamp()) if until else None
    )
    keys = ("service", "group", "client", "name") + (("site",) if web.config.central else ())
    for key in keys:
        value = q.get(key, "").strip()
        if len(value) > 255:
            raise HTTPException(400, f"{key}: at most 255 characters")
        if key == "client" and not web.clients_shown:
            value = ""
        if key == "group" and not web.groups_shown:
            value = ""
        setattr(flt, key, value or None)
        if value:
            flt.params[key] = value
    flt.params["since"] = since
    if until:
        flt.params["until"] = until
    limit = q.get("limit", str(data.LOG_LIMIT))
    if not limit.isdigit() or not 1 <= int(limit) <= 1000:
        raise HTTPException(400, "limit: a number from 1 to 1000")
    flt.limit = int(limit)
    return flt


@requires()
async def attempts_page(request: Request) -> Response:
    web = web_of(request)
    flt = log_filter(request, web)
    rows = await run_in_threadpool(data.log_attempts, web.config, flt)
    last = await run_in_threadpool(data.log_cursor, web.config)
    services = sorted(web.catalog.services.values(), key=lambda s: s.name.lower())
    return render(
        request,
        "attempts.html",
        {
            "rows": rows,
            "filter": flt,
            "last_id": last,
            "live_query": urlencode({**flt.params, "after": _cursor_text(last)}),
            "sites": sorted(last) if isinstance(last, dict) else None,
            "services": services,
            "service_names": {s.id: s.name for s in services},
            "group_names": sorted(web.config.clients.groups),
        },
    )


async def _stream(request: Request, web: Web, flt: data.LogFilter, as_html: bool):
    """Server-sent events: each new hit matching the filter, as JSON or as a table row."""
    env = web.envs[language(request)]
    row_template = env.get_template("_attempt_row.html")
    names = {s.id: s.name for s in web.catalog.services.values()}
    yield b"retry: 1000\n\n"
    last_beat = time.monotonic()
    while not web.closing:
        rows = await run_in_threadpool(data.log_attempts, web.config, flt)
        for row in rows:
            if flt.after_sites is not None:
                site = row["site"]
                flt.after_sites[site] = max(flt.after_sites.get(site, 0), row["id"])
            else:
                flt.after_id = max(flt.after_id, row["id"])
            if as_html:
                html = row_template.render(
                    row=row,
                    central=flt.after_sites is not None,
                    clients_shown=web.clients_shown,
                    groups_shown=web.groups_shown,
                    service_names=names,
                )
                payload = " ".join(html.split("\n"))
            else:
                payload = json.dumps({k: v for k, v in row.items()})
            event_id = _cursor_text(flt.after_sites) if flt.after_sites is not None else row["id"]
            yield f"id: {event_id}\nevent: attempt\ndata: {payload}\n\n".encode()
        if not rows:
            if time.monotonic() - last_beat > STREAM_HEARTBEAT:
                last_beat = time.monotonic()
                yield b": keep-alive\n\n"
            await asyncio.sleep(STREAM_POLL)


def _cursor_text(cursor: int | dict[str, int]) -> str:
    """The live log's cursor in a URL or an SSE id: a hit id, or with central a JSON
    object of each site's last hit id."""
    return json.dumps(cursor, separators=(",", ":")) if isinstance(cursor, dict) else str(cursor)


def _parse_cursor(text: str) -> dict[str, int]:
    try:
        cursor = json.loads(text)
    except ValueError:
        cursor = None
    if (
        not isinstance(cursor, dict)
        or len(cursor) > 1000
        or not all(isinstance(k, str) and type(v) is int and v >= 0 for k, v in cursor.items())
    ):
        raise HTTPException(400, 'after: each site\'s last hit id, as {"site": id}')
    return cursor


def _stream_response(request: Request, as_html: bool) -> Response:
    web = web_of(request)
    flt = log_filter(request, web)
    flt.limit = data.STREAM_BATCH
    after = request.query_params.get("after") or request.headers.get("last-event-id")
    if web.config.central is not None:
        # Every site's log: the cursor is each site's last hit id.
        flt.after_sites = _parse_cursor(after) if after is not None else data.log_cursor(web.config)
    elif after is not None:
        if not after.isdigit():
            raise HTTPException(400, "after: a hit id")
        flt.after_id = int(after)
    else:
        flt.after_id = data.last_hit_id(web.config.database)
    flt.after_id = max(flt.after_id, 0)
    if flt.after_id == 0:
        flt.after_id = -1  # every hit is newer than none; keeps the ORDER BY id form
    return StreamingResponse(
        _stream(request, web, flt, as_html),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@requires()
async def attempts_live(request: Request) -> Response:
    return _stream_response(request, as_html=True)


@requires()
async def api_stream(request: Request) -> Response:
    return _stream_response(request, as_html=False)


@requires()
async def api_sites(request: Request) -> Response:
    """As `sinkhole sites --json`, with each site's shipping lag; 404 without central."""
    web = web_of(request)
    if web.config.central is None:
        raise HTTPException(404, "no central store in the config: one site, no sites")
    overview = await run_in_threadpool(data.sites_overview, web.config)
    if overview["error"]:
        return error(request, 503, overview["error"])
    return JSONResponse(overview["sites"])


@requires()
async def api_attempts(request: Request) -> Response:
    """As `sinkhole hits --since ... --limit ... --json`."""
    web = web_of(request)
    q = request.query_params
    try:
        seconds = parse_duration(q.get("since", "24h"))
    except ValueError:
        raise HTTPException(400, "since: a duration like 90s, 30m, 24h, 7d, 2w") from None
    limit = q.get("limit", "50")
    if not limit.isdigit() or int(limit) < 1:
        raise HTTPException(400, "limit: a whole number >= 1")

    sites = q.getlist("site")
    if sites and web.config.central is None:
        raise HTTPException(400, "site: no central store in the config")

    def read() -> list[dict]:
        return hits_since(web.config, int(time.time()) - seconds, int(limit), sites)

    return JSONResponse(await run_in_threadpool(read))


# -- services and rules ---------------------------------------------------------------------


def services_rows(web: Web) -> list[dict[str, Any]]:
    """The services page: what `sinkhole lists` shows (admin.list_overview), with notes."""
    with web.store() as store:
        rows, _new = list_overview(store, web.catalog)
    services = web.catalog.services
    return [
        {
            "id": r["name"],
            "kind": r["kind"],
            "name": r["title"] or r["name"],
            "category": r["category"],
            "enabled": r["enabled"],
            "domains": r["domains"],
            "api": r.get("api", 0),
            "api_blocked": r.get("api_blocked"),
            "notes": services[r["name"]].notes if r["kind"] == "service" else None,
            "new": bool(r.get("new")),
        }
        for r in rows
    ]


@requires()
async def services_page(request: Request) -> Response:
    rows = await run_in_threadpool(services_rows, web_of(request))
    return render(request, "services.html", {"services": rows})


@requires()
async def api_services(request: Request) -> Response:
    return JSONResponse(await run_in_threadpool(services_rows, web_of(request)))


@requires("admin")
async def api_service_toggle(request: Request) -> Response:
    web = web_of(request)
    sid = request.path_params["sid"]
    verb = request.path_params["verb"]
    if verb not in ("enable", "disable"):
        raise HTTPException(404, "enable or disable")
    fields = await _body(request)
    comment = _comment(fields)
    user = request.state.session.user.name

    def change() -> bool:
        with web.policy_store() as store:
            known = {r["name"] for r in store.lists()}
            if sid not in known:
                return False
            store.set_enabled(
                [sid],
                verb == "enable",
                command=f"web: lists {verb} {sid}",
                comment=comment,
                user=user,
            )
        return True

    if not await run_in_threadpool(change):
        return error(request, 404, f"no service or list {display_name(sid)!r}")
    log.info("%s: lists %s %s", user, verb, sid)
    if request.headers.get("hx-request"):
        rows = await run_in_threadpool(services_rows, web)
        base = sid.removesuffix(":api")
        row = next(r for r in rows if r["id"] == base)
        return render(request, "_service_row.html", {"s": row})
    return JSONResponse({"name": sid, "enabled": verb == "enable"})


RULE_VERBS = {
    "block": ("block", True),
    "unblock": ("block", False),
    "allow": ("allow", True),
    "unallow": ("allow", False),
}


@requires()
async def rules_page(request: Request) -> Response:
    web = web_of(request)

    def read() -> list[dict]:
        with web.store() as store:
            return store.rules()

    return render(request, "rules.html", {"rules": await run_in_threadpool(read), "message": None})


@requires()
async def api_rules(request: Request) -> Response:
    web = web_of(request)

    def read() -> list[dict]:
        with web.store() as store:
            return store.rules()

    return JSONResponse(await run_in_threadpool(read))


@requires("admin")
async def api_rule_change(request: Request) -> Response:
    web = web_of(request)
    verb = request.path_params["verb"]
    if verb not in RULE_VERBS:
        raise HTTPException(404, "block, unblock, allow or unallow")
    action, add = RULE_VERBS[verb]
    fields = await _body(request)
    names = fields.get("names", fields.get("name"))
    if isinstance(names, str):
        names = names.split()
    if not names or not isinstance(names, list) or len(names) > MAX_NAMES:
        raise HTTPException(400, f"name: one to {MAX_NAMES} names")
    patterns = []
    for n in names:
        try:
            patterns.append(normalize_name(n))
        except ValueError as exc:
            raise HTTPException(400, f"{display_name(str(n))}: {exc}") from None
    comment = _comment(fields)
    user = request.state.session.user.name
    command = f"web: {verb} {' '.join(patterns)}"

    def change() -> list[str]:
        with web.policy_store() as store:
            if add:
                store.add_rules(patterns, action, command=command, comment=comment, user=user)
                return []
            return store.remove_rules(patterns, action, command=command, comment=comment, user=user)

    missing = await run_in_threadpool(change)
    log.info("%s: %s %s", user, verb, " ".join(patterns))
    if _is_form(request) and not request.headers.get("hx-request"):
        return RedirectResponse("/rules", 303)
    if missing and len(missing) == len(patterns):
        return error(request, 404, f"no {action} rule for {', '.join(missing)}")
    return JSONResponse({"verb": verb, "patterns": patterns, "missing": missing})


# -- report and audit -----------------------------------------------------------------------


def report_period(request: Request, web: Web) -> tuple[datetime, datetime]:
    q = request.query_params
    week, since, until = q.get("week"), q.get("since"), q.get("until")
    if week and since:
        raise HTTPException(400, "give week or since, not both")
    try:
        if since:
            return rpt.parse_range(since, until, web.tz)
        return rpt.week_bounds(week or None, web.tz)
    except SinkholeError as exc:
        raise HTTPException(400, str(exc)) from None


@requires()
async def api_report(request: Request) -> Response:
    """As `sinkhole report --week/--since ... --format FORMAT` (default json)."""
    web = web_of(request)
    fmt = request.query_params.get("format", "json")
    if fmt not in REPORT_FORMATS:
        raise HTTPException(400, f"format must be one of {', '.join(REPORT_FORMATS)}")
    start, end = report_period(request, web)
    report = await run_in_threadpool(
        data.report_for, web.config, web.catalog, start, end, language(request)
    )
    text = rpt.RENDERERS[fmt](report)
    media, ext = REPORT_FORMATS[fmt]
    label = report["period"]["week"] or report["period"]["start"][:10]
    headers = {}
    if request.query_params.get("download"):
        headers["Content-Disposition"] = f'attachment; filename="report-{label}.{ext}"'
    if fmt == "html":
        headers["Content-Security-Policy"] = REPORT_CSP
    return Response(text, media_type=f"{media}; charset=utf-8", headers=headers)


@requires()
async def report_page(request: Request) -> Response:
    web = web_of(request)
    start, end = report_period(request, web)
    lang = language(request)
    report = await run_in_threadpool(data.report_for, web.config, web.catalog, start, end, lang)
    q = {k: v for k, v in request.query_params.items() if k in ("week", "since", "until")}
    # The report in its frame and the downloads in the page's language.
    q["lang"] = lang
    zi = rpt.zone(web.tz)
    now = datetime.now(zi)
    weeks = []
    for i in range(1, 13):
        d = now - timedelta(weeks=i)
        year, wk, _ = d.isocalendar()
        weeks.append(f"{year}-W{wk:02d}")
    return render(
        request,
        "report.html",
        {
            "report": report,
            "query": urlencode(q),
            "formats": list(REPORT_FORMATS),
            "weeks": weeks,
        },
    )


@requires()
async def audit_page(request: Request) -> Response:
    web = web_of(request)

    def read() -> list[dict]:
        with web.store() as store:
            return store.history(500)

    return render(request, "audit.html", {"rows": await run_in_threadpool(read)})


@requires()
async def api_audit(request: Request) -> Response:
    web = web_of(request)
    limit = request.query_params.get("limit", "50")
    if not limit.isdigit() or int(limit) < 1:
        raise HTTPException(400, "limit: a whole number >= 1")

    def read() -> list[dict]:
        with web.store() as store:
            return store.history(int(limit))

    return JSONResponse(await run_in_threadpool(read))


# -- the application ------------------------------------------------------------------------


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error(request, exc.status_code, str(exc.detail))


async def sinkhole_error(request: Request, exc: Exception) -> Response:
    """Something the administrator can fix (the database, the central store): said in
    one line, as the CLI would, in the page's or the API's form; nothing changed."""
    log.error("%s %s failed: %s", request.method, request.url.path, exc)
    return error(request, 503, str(exc))


async def server_error(request: Request, exc: Exception) -> Response:
    log.error("%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
    return PlainTextResponse("internal error; see the dashboard's log", status_code=500)


class SecurityHeaders:
    """CSP and friends on every answer (pure ASGI, so streams are not buffered)."""

    def __init__(self, app: Starlette, secure: bool) -> None:
        self.app = app
        self.secure = secure
        self.web: Web = app.state.web

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("Content-Security-Policy", CSP)
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Referrer-Policy"] = "same-origin"
                if "frame-ancestors 'self'" not in headers.get("Content-Security-Policy", ""):
                    headers["X-Frame-Options"] = "DENY"
                if not scope["path"].startswith("/static/"):
                    headers.setdefault("Cache-Control", "no-store")
                if self.secure:
                    headers["Strict-Transport-Security"] = "max-age=31536000"
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(config: Config) -> Starlette:
    web = Web(config)
    routes = [
        Route("/", overview),
        Route("/overview/health", dns_health),
        Route("/attempts", attempts_page),
        Route("/attempts/live", attempts_live),
        Route("/services", services_page),
        Route("/rules", rules_page),
        Route("/report", report_page),
        Route("/audit", audit_page),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/health", health),
        Route("/api/session", api_session),
        Route("/api/report", api_report),
        Route("/api/sites", api_sites),
        Route("/api/attempts", api_attempts),
        Route("/api/stream", api_stream),
        Route("/api/services", api_services),
        Route("/api/services/{sid:str}/{verb:str}", api_service_toggle, methods=["POST"]),
        Route("/api/rules", api_rules),
        Route("/api/rules/{verb:str}", api_rule_change, methods=["POST"]),
        Route("/api/audit", api_audit),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            HTTPException: http_error,
            # A class of its own: handled inside the app, so it is not re-raised as a 500.
            SinkholeError: sinkhole_error,
            Exception: server_error,
        },
    )
    app.state.web = web
    app.state.started = datetime.now(UTC)
    return SecurityHeaders(app, config.web.secure)  # type: ignore[return-value]
