"""The YAML config file, read into frozen dataclasses; every error names file, key and reason."""

from __future__ import annotations

import difflib
import errno
import ipaddress
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from resolver.errors import ConfigError

CONFIG_ENV = "SINKHOLE_CONFIG"
DB_ENV = "SINKHOLE_DB"
DEFAULT_LISTEN = ("127.0.0.1:1053",)
DEFAULT_ALLOW_NETWORKS = (
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fc00::/7",
    "fe80::/10",
)
SINKHOLE_MODES = ("null", "ip", "nxdomain", "nodata", "refused")
PRIVACY_MODES = ("ip", "hashed", "group", "none")
LOG_LEVELS = ("debug", "info", "warning", "error")
#: resolver.i18n.LANGUAGES, repeated so that reading a config never imports Babel.
REPORT_LANGUAGES = ("en", "fr")
RESOLV_CONF = "/etc/resolv.conf"


@dataclass(frozen=True)
class SinkholeConfig:
    """How a blocked name is answered."""

    mode: str = "null"
    ipv4: str = "0.0.0.0"
    ipv6: str = "::"
    ttl: int = 10


@dataclass(frozen=True)
class ClientGroup:
    """A labelled set of client networks, optionally exempt from some services."""

    name: str
    networks: tuple[str, ...]
    exempt: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClientsConfig:
    groups: dict[str, ClientGroup] = field(default_factory=dict)


@dataclass(frozen=True)
class PrivacyConfig:
    clients: str = "ip"
    retention_days: int = 90


@dataclass(frozen=True)
class CacheConfig:
    size: int = 100_000
    min_ttl: int = 0
    max_ttl: int = 86_400
    negative_ttl: int = 3_600
    serve_stale: bool = True
    stale_ttl: int = 86_400
    prefetch: bool = True


#: Keys a SIGHUP does not apply: the sockets, the processes, the database file, the
#: metrics listener and the user are set up once, before privileges are dropped. Every
#: other key reaches the running server at a reload (`lists` is read at the first start
#: only: after that the database holds the administrator's choices).
RESTART_KEYS = ("listen", "workers", "database", "metrics_listen", "user")


def restart_changes(old: Config, new: Config) -> list[str]:
    """The keys of RESTART_KEYS whose value differs between two configs."""
    return [k for k in RESTART_KEYS if getattr(old, k) != getattr(new, k)]


@dataclass(frozen=True)
class RateLimitConfig:
    per_client: int = 1000
    window: int = 60
    exempt: tuple[str, ...] = ()


@dataclass(frozen=True)
class TcpConfig:
    max_connections: int = 256
    idle_timeout: float = 10.0


DEFAULT_WEB_LISTEN = "127.0.0.1:8053"


@dataclass(frozen=True)
class WebConfig:
    """The dashboard (`sinkhole web`): its address, TLS or a proxy, sessions, login throttle."""

    listen: str = DEFAULT_WEB_LISTEN
    tls_cert: str | None = None
    tls_key: str | None = None
    #: A reverse proxy terminates TLS and sends X-Forwarded-For/-Proto from `proxy_ips`.
    behind_proxy: bool = False
    proxy_ips: tuple[str, ...] = ("127.0.0.1", "::1")
    session_hours: int = 12
    #: Failed logins: free ones, then slowed (login_delay doubling), refused from refuse_after.
    login_free: int = 3
    login_refuse_after: int = 10
    login_delay: float = 1.0
    login_window: int = 900

    @property
    def secure(self) -> bool:
        """Browsers reach the dashboard over HTTPS (cookies get the Secure flag)."""
        return bool(self.tls_cert) or self.behind_proxy


SITE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")


@dataclass(frozen=True)
class CentralConfig:
    """The central store on PostgreSQL (issue 14, resolver/central): this site's name in it,
    how to reach it, and how much the local outbox may hold before the oldest rows go."""

    dsn: str
    site: str
    password_file: str | None = None
    #: Rows sent to PostgreSQL per transaction.
    batch_rows: int = 5_000
    #: Unshipped hits the local database keeps at most; past it retention deletes the
    #: oldest even unshipped (counted in settings, logged, shown by `sinkhole sites`).
    outbox_cap_rows: int = 5_000_000


@dataclass(frozen=True)
class ReportConfig:
    """`report:` the weekly report's and its mail's language."""

    lang: str = "en"


@dataclass(frozen=True)
class Config:
    """The whole configuration; every field has a working default."""

    path: str | None = None
    listen: tuple[str, ...] = DEFAULT_LISTEN
    upstreams: tuple[str, ...] = ()
    upstream_timeout: float = 2.0
    database: str = "sinkhole.db"
    sinkhole: SinkholeConfig = field(default_factory=SinkholeConfig)
    lists: tuple[str, ...] = ("ai-chatbots", "bypass")
    allow_networks: tuple[str, ...] = DEFAULT_ALLOW_NETWORKS
    clients: ClientsConfig = field(default_factory=ClientsConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)
    tcp: TcpConfig = field(default_factory=TcpConfig)
    workers: int | str = 1
    metrics_listen: str = "127.0.0.1:9153"
    log_level: str = "info"
    timezone: str | None = None
    smtp: dict[str, Any] | None = None
    user: str | None = None
    version_string: str | None = None
    catalog: str | None = None
    web: WebConfig = field(default_factory=WebConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    #: None: SQLite alone, as ever.
    central: CentralConfig | None = None

    def with_overrides(self, **changes: Any) -> Config:
        """A copy with the given top-level fields replaced (CLI options)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def upstream_addresses(self) -> list[tuple[str, int]]:
        """The upstreams as (host, port); /etc/resolv.conf when none are configured."""
        entries = self.upstreams or tuple(resolv_conf_nameservers())
        if not entries:
            raise ConfigError(
                f"{self.path or '<defaults>'}: upstreams: none configured and no nameserver "
                f"in {RESOLV_CONF}"
            )
        return [parse_hostport(e, 53, "upstreams") for e in entries]

    def listen_addresses(self) -> list[tuple[str, int]]:
        return [parse_hostport(e, 53, "listen") for e in self.listen]


def resolv_conf_nameservers(path: str = RESOLV_CONF) -> list[str]:
    """The `nameserver` lines of resolv.conf, in order."""
    try:
        text = Path(path).read_text()
    except OSError:
        return []
    servers = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            servers.append(parts[1].split("%")[0])
    return servers


def format_hostport(host: str, port: int) -> str:
    """(host, port) -> 'host:port', or '[host]:port' for IPv6: the inverse of parse_hostport."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


#: A duration as typed on the command line or in a query string: 90s, 30m, 24h, 7d, 2w.
DURATION = re.compile(r"^(\d+)\s*([smhdw])$")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_duration(text: str) -> int:
    """'90s', '30m', '24h', '7d', '2w' -> seconds.

    Raises:
        ValueError: not a number followed by one of the units.
    """
    m = DURATION.match(text.strip().lower())
    if not m:
        raise ValueError(f"{text!r} is not a duration like 90s, 30m, 24h, 7d, 2w")
    return int(m.group(1)) * DURATION_UNITS[m.group(2)]


def bind_error_reason(exc: OSError) -> str:
    """Why a socket could not be bound, in words an administrator can act on."""
    if exc.errno == errno.EADDRINUSE:
        return "address already in use (another server running?)"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "no such address on this machine"
    return exc.strerror or str(exc)


def parse_hostport(text: str, default_port: int, key: str = "address") -> tuple[str, int]:
    """'1.2.3.4', '1.2.3.4:53', '[::1]:53', '::1' -> (host, port).

    Raises:
        ConfigError: the text is not an IP address with an optional port.
    """
    text = str(text).strip()
    host, port = text, default_port
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ConfigError(f"{text!r} is missing ']'", where=key)
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(f"{text!r} is not [ADDRESS]:PORT", where=key)
            port = _port(rest[1:], key, text)
    elif text.count(":") == 1:
        host, p = text.split(":")
        port = _port(p, key, text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(
            f"{text!r} is not an IP address (with optional :port)", where=key
        ) from None
    return host, port


def _port(text: str, key: str, whole: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise ConfigError(f"{whole!r} has an invalid port", where=key)
    return int(text)


class _Reader:
    """Validates one mapping of the YAML document, collecting the key path for errors."""

    def __init__(self, source: str, data: Any, prefix: str = "") -> None:
        self.source = source
        self.prefix = prefix
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.fail(prefix.rstrip(".") or "(top level)", "must be a mapping")
        self.data: dict = data
        self.seen: set[str] = set()

    def fail(self, key: str, reason: str) -> None:
        raise ConfigError(reason, where=self.source, key=key)

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def get(self, name: str, default: Any) -> Any:
        self.seen.add(name)
        return self.data.get(name, default)

    def has(self, name: str) -> bool:
        return name in self.data

    def integer(self, name: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
        value = self.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(self.key(name), f"must be a whole number (got {value!r})")
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
            self.fail(self.key(name), f"must be {bound} (got {value})")
        return value

    def number(self, name: str, default: float, minimum: float = 0.0) -> float:
        value = self.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= minimum:
            self.fail(self.key(name), f"must be a number > {minimum} (got {value!r})")
        return float(value)

    def boolean(self, name: str, default: bool) -> bool:
        value = self.get(name, default)
        if not isinstance(value, bool):
            self.fail(self.key(name), f"must be true or false (got {value!r})")
        return value

    def string(self, name: str, default: str | None, allow_none: bool = False) -> str | None:
        value = self.get(name, default)
        if value is None and allow_none:
            return None
        if not isinstance(value, str):
            self.fail(self.key(name), f"must be a string (got {value!r})")
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.get(name, default)
        if value is None and "null" in choices:
            value = "null"
        if value not in choices:
            self.fail(self.key(name), f"must be one of {', '.join(choices)} (got {value!r})")
        return value

    def strings(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.get(name, default)
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            self.fail(self.key(name), "must be a list of strings")
        return tuple(value)

    def networks(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        values = self.strings(name, default)
        for i, v in enumerate(values):
            try:
                ipaddress.ip_network(v, strict=False)
            except ValueError:
                self.fail(f"{self.key(name)}[{i}]", f"{v!r} is not a network (like 10.0.0.0/8)")
        return values

    def section(self, name: str) -> _Reader:
        return _Reader(self.source, self.get(name, None), f"{self.prefix}{name}.")

    def finish(self) -> None:
        unknown = [k for k in self.data if k not in self.seen]
        if unknown:
            k = str(unknown[0])
            hint = difflib.get_close_matches(k, sorted(self.seen), n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            self.fail(self.key(k), f"unknown key{extra}")


def load_config(path: str | os.PathLike | None = None) -> Config:
    """Read and validate a config file; no path (and no $SINKHOLE_CONFIG) gives the defaults.

    Raises:
        ConfigError: the file is missing, not YAML, or a key is wrong; the message
            names the file, the key and the reason.
    """
    if path is None:
        path = os.environ.get(CONFIG_ENV) or None
    if path is None:
        return Config()
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "(top level)"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{source}: {where}: invalid YAML: {problem}") from None
    return parse_config(data, source)


def check_config(path: str | os.PathLike) -> list[str]:
    """Every problem of a config file, one line each (load_config stops at the first)."""
    try:
        load_config(path)
    except ConfigError as exc:
        first = str(exc)
    else:
        return []
    source = str(path)
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return [first]
    if not isinstance(data, dict):
        return [first]
    problems = []
    # Top-level keys are independent: validating each alone finds every bad one.
    for key, value in data.items():
        try:
            parse_config({key: value}, source)
        except ConfigError as exc:
            problems.append(str(exc))
    return problems or [first]


def parse_config(data: Any, source: str = "<config>") -> Config:
    """Validate a parsed YAML document into a Config."""
    top = _Reader(source, data)
    listen = top.strings("listen", DEFAULT_LISTEN)
    if not listen:
        top.fail("listen", "needs at least one address")
    for i, entry in enumerate(listen):
        _check_hostport(top, f"listen[{i}]", entry, 53)
    upstreams = top.strings("upstreams", ())
    for i, entry in enumerate(upstreams):
        _check_hostport(top, f"upstreams[{i}]", entry, 53)
    upstream_timeout = top.number("upstream_timeout", 2.0)
    database = top.string("database", "sinkhole.db")
    sink = top.section("sinkhole")
    sinkhole = SinkholeConfig(
        mode=sink.choice("mode", "null", SINKHOLE_MODES),
        ipv4=_address(sink, "ipv4", "0.0.0.0", 4),
        ipv6=_address(sink, "ipv6", "::", 6),
        ttl=sink.integer("ttl", 10, 0, 604_800),
    )
    sink.finish()
    lists = top.strings("lists", ("ai-chatbots", "bypass"))
    allow_networks = top.networks("allow_networks", DEFAULT_ALLOW_NETWORKS)
    clients_r = top.section("clients")
    groups_r = clients_r.section("groups")
    groups: dict[str, ClientGroup] = {}
    for label in list(groups_r.data):
        g = groups_r.section(str(label))
        networks = g.networks("networks", ())
        if not networks:
            g.fail(g.key("networks"), "needs at least one network")
        groups[str(label)] = ClientGroup(str(label), networks, g.strings("exempt", ()))
        g.finish()
    clients_r.finish()
    priv = top.section("privacy")
    privacy = PrivacyConfig(
        clients=priv.choice("clients", "ip", PRIVACY_MODES),
        retention_days=priv.integer("retention_days", 90, 1, 36_500),
    )
    priv.finish()
    c = top.section("cache")
    cache = CacheConfig(
        size=c.integer("size", 100_000, 0),
        min_ttl=c.integer("min_ttl", 0, 0),
        max_ttl=c.integer("max_ttl", 86_400, 0),
        negative_ttl=c.integer("negative_ttl", 3_600, 0),
        serve_stale=c.boolean("serve_stale", True),
        stale_ttl=c.integer("stale_ttl", 86_400, 0),
        prefetch=c.boolean("prefetch", True),
    )
    if cache.min_ttl > cache.max_ttl:
        c.fail("cache.min_ttl", f"must not exceed cache.max_ttl ({cache.max_ttl})")
    c.finish()
    r = top.section("rate_limit")
    rate_limit = RateLimitConfig(
        per_client=r.integer("per_client", 1000, 0),
        window=r.integer("window", 60, 1),
        exempt=r.networks("exempt", ()),
    )
    r.finish()
    t = top.section("tcp")
    tcp = TcpConfig(
        max_connections=t.integer("max_connections", 256, 1),
        idle_timeout=t.number("idle_timeout", 10.0),
    )
    t.finish()
    workers = top.get("workers", 1)
    if workers != "auto" and (isinstance(workers, bool) or not isinstance(workers, int)):
        top.fail("workers", f"must be a whole number or 'auto' (got {workers!r})")
    if isinstance(workers, int) and not 1 <= workers <= 64:
        top.fail("workers", f"must be from 1 to 64 (got {workers})")
    metrics_listen = top.string("metrics_listen", "127.0.0.1:9153", allow_none=True) or ""
    if metrics_listen:
        _check_hostport(top, "metrics_listen", metrics_listen, 9153)
    log_level = top.choice("log_level", "info", LOG_LEVELS)
    timezone = top.string("timezone", None, allow_none=True)
    if timezone:
        _check_timezone(top, timezone)
    smtp = top.get("smtp", None)
    if smtp is not None:
        s = _Reader(source, smtp, "smtp.")
        s.string("host", None)
        s.integer("port", 25, 1, 65535)
        s.boolean("starttls", False)
        s.string("user", None, allow_none=True)
        s.string("password_file", None, allow_none=True)
        s.string("from", "sinkhole@localhost")
        s.finish()
    user = top.string("user", None, allow_none=True)
    version_string = top.string("version_string", None, allow_none=True)
    catalog = top.string("catalog", None, allow_none=True)
    web = _web_config(top.section("web"))
    rep = top.section("report")
    report = ReportConfig(lang=rep.choice("lang", "en", REPORT_LANGUAGES))
    rep.finish()
    central = (
        _central_config(top.section("central")) if top.get("central", None) is not None else None
    )
    top.finish()
    return Config(
        path=source,
        listen=listen,
        upstreams=upstreams,
        upstream_timeout=upstream_timeout,
        database=database,
        sinkhole=sinkhole,
        lists=lists,
        allow_networks=allow_networks,
        clients=ClientsConfig(groups),
        privacy=privacy,
        cache=cache,
        rate_limit=rate_limit,
        tcp=tcp,
        workers=workers,
        metrics_listen=metrics_listen,
        log_level=log_level,
        timezone=timezone,
        smtp=smtp,
        user=user,
        version_string=version_string,
        catalog=catalog,
        web=web,
        report=report,
        central=central,
    )


def _central_config(c: _Reader) -> CentralConfig:
    dsn = c.string("dsn", None, allow_none=True)
    if not dsn:
        c.fail(c.key("dsn"), "is required (like postgresql://sinkhole@db.example.org/sinkhole)")
    assert dsn is not None
    if not (dsn.startswith(("postgresql://", "postgres://")) or "=" in dsn):
        c.fail(c.key("dsn"), f"{dsn!r} is not a PostgreSQL URI (postgresql://user@host/db)")
    if _dsn_has_password(dsn):
        c.fail(
            c.key("dsn"),
            "must not hold the password: use central.password_file or PGPASSWORD/PGPASSFILE",
        )
    site = c.string("site", None, allow_none=True)
    if not site:
        c.fail(c.key("site"), "is required: this resolver's name, like hotel-de-ville")
    assert site is not None
    if len(site) > 63 or not set(site) <= SITE_CHARS:
        c.fail(
            c.key("site"),
            f"{site!r} must be 1 to 63 of a-z, 0-9, '-', '_', '.' (like hotel-de-ville)",
        )
    password_file = c.string("password_file", None, allow_none=True)
    if password_file:
        try:
            mode = os.stat(password_file).st_mode
        except OSError as exc:
            c.fail(c.key("password_file"), f"cannot read {password_file}: {exc.strerror}")
        if mode & 0o004:
            c.fail(
                c.key("password_file"),
                f"{password_file} is world-readable: chmod o-r it (0600 or 0640)",
            )
    central = CentralConfig(
        dsn=dsn,
        site=site,
        password_file=password_file or None,
        batch_rows=c.integer("batch_rows", 5_000, 1, 1_000_000),
        outbox_cap_rows=c.integer("outbox_cap_rows", 5_000_000, 1_000),
    )
    c.finish()
    return central


def _dsn_has_password(dsn: str) -> bool:
    if dsn.startswith(("postgresql://", "postgres://")):
        from urllib.parse import parse_qs, urlsplit

        parts = urlsplit(dsn)
        return parts.password is not None or "password" in parse_qs(parts.query)
    return any(word.split("=", 1)[0].strip() == "password" for word in dsn.split())


def _web_config(w: _Reader) -> WebConfig:
    listen = w.string("listen", DEFAULT_WEB_LISTEN)
    _check_hostport(w, w.key("listen"), listen, 8053)
    cert = w.string("tls_cert", None, allow_none=True)
    key = w.string("tls_key", None, allow_none=True)
    if bool(cert) != bool(key):
        w.fail(w.key("tls_key" if cert else "tls_cert"), "tls_cert and tls_key go together")
    behind_proxy = w.boolean("behind_proxy", False)
    proxy_ips = w.strings("proxy_ips", ("127.0.0.1", "::1"))
    for i, ip in enumerate(proxy_ips):
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            w.fail(f"{w.key('proxy_ips')}[{i}]", f"{ip!r} is not an IP address")
    web = WebConfig(
        listen=listen,
        tls_cert=cert,
        tls_key=key,
        behind_proxy=behind_proxy,
        proxy_ips=proxy_ips,
        session_hours=w.integer("session_hours", 12, 1, 24 * 30),
        login_free=w.integer("login_free", 3, 0, 100),
        login_refuse_after=w.integer("login_refuse_after", 10, 1, 1000),
        login_delay=w.number("login_delay", 1.0),
        login_window=w.integer("login_window", 900, 1, 86_400),
    )
    host, _ = parse_hostport(listen, 8053)
    if not ipaddress.ip_address(host).is_loopback and not (cert or behind_proxy):
        # Passwords and the evidence would cross the office network in clear text.
        w.fail(
            w.key("listen"),
            f"{listen!r} is not a loopback address: set web.tls_cert and web.tls_key, "
            "or web.behind_proxy: true for a reverse proxy that terminates TLS",
        )
    w.finish()
    return web


def _check_hostport(reader: _Reader, key: str, value: str, default_port: int) -> None:
    try:
        parse_hostport(value, default_port, key)
    except ConfigError as exc:
        reader.fail(key, exc.reason)


def _address(reader: _Reader, name: str, default: str, version: int) -> str:
    value = reader.string(name, default)
    try:
        ok = ipaddress.ip_address(value).version == version
    except ValueError:
        ok = False
    if not ok:
        reader.fail(reader.key(name), f"must be an IPv{version} address (got {value!r})")
    return value


def _check_timezone(reader: _Reader, name: str) -> None:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        reader.fail("timezone", f"unknown time zone {name!r} (like Europe/Paris)")
