"""`sinkhole web`: the dashboard under uvicorn, on web.listen, with TLS or behind a proxy."""

from __future__ import annotations

import logging
import os
import sys

import uvicorn

from resolver.config import Config, format_hostport, parse_hostport
from resolver.errors import ConfigError, SinkholeError

log = logging.getLogger("sinkhole.web")
#: After SIGTERM, requests under way get this long; the live logs end at their next poll.
GRACEFUL_SECONDS = 3


class _Server(uvicorn.Server):
    """uvicorn's server that also ends the live logs when a signal asks it to stop."""

    def __init__(self, config: uvicorn.Config, on_exit) -> None:
        super().__init__(config)
        self.on_exit = on_exit

    def handle_exit(self, sig, frame) -> None:
        self.on_exit()
        super().handle_exit(sig, frame)


def run_web(config: Config) -> int:
    """Serve until SIGTERM or Ctrl-C; returns the exit code.

    Raises:
        ConfigError: the TLS files cannot be read.
    """
    from resolver.web.app import create_app

    web = config.web
    host, port = parse_hostport(web.listen, 8053, "web.listen")
    source = config.path or "<defaults>"
    for key in ("tls_cert", "tls_key"):
        path = getattr(web, key)
        if path and not os.access(path, os.R_OK):
            raise ConfigError(f"{source}: web.{key}: cannot read {path}")
    logging.basicConfig(
        level=getattr(logging, config.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        app = create_app(config)
    except SinkholeError as exc:
        raise SinkholeError(str(exc)) from None
    scheme = "https" if web.tls_cert else "http"
    shown = format_hostport(host, port)
    log.info("dashboard on %s://%s/ (database %s)", scheme, shown, config.database)

    def closing() -> None:
        app.web.closing = True

    server = _Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            ssl_certfile=web.tls_cert,
            ssl_keyfile=web.tls_key,
            proxy_headers=web.behind_proxy,
            forwarded_allow_ips=list(web.proxy_ips) if web.behind_proxy else None,
            server_header=False,
            access_log=config.log_level == "debug",
            log_level=config.log_level,
            timeout_graceful_shutdown=GRACEFUL_SECONDS,
            lifespan="off",
        ),
        closing,
    )
    try:
        server.run()
    except OSError as exc:
        raise SinkholeError(f"web.listen {web.listen}: {exc.strerror or exc}") from None
    return 0 if server.started else 1
