"""Settings of the web app: command-line flags with ``CHAT_*`` environment fallbacks.

Declared with the one settings helper (legacy_socket_server/settings.py), so
``python -m app --help``, README.md and docker-compose.yml name the same variables.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from legacy_socket_server.cli import add_tls, tls_from_args
from legacy_socket_server.settings import (
    DEFAULT_DATA_DIR,
    SettingsParser,
    add_database_url,
    add_log_level,
    add_storage,
    host_port,
    port,
    positive_float,
    positive_int,
)
from legacy_socket_server.tls import ClientTLS, TLSListener, parse_fingerprint

from .limits import (
    FAILED_LOGIN_BURST,
    MAX_SESSIONS,
    MAX_SESSIONS_PER_ADDRESS,
    MAX_SESSIONS_PER_USER,
)
from .shared_sessions import REFRESH_EVERY
from .ws import KEEPALIVE, MAX_SEND_BUFFER

#: The browser's ways of getting events (``?transport=`` in the page URL overrides).
TRANSPORTS = ("ws", "longpoll", "poll")

#: A browser session that has not polled for this long is logged out of the
#: core, so closing the tab makes the user go offline (docs/architecture.md#web-app).
IDLE_TIMEOUT = 30.0
#: Events a session's buffer keeps; a tab further behind gets ``reset`` and reloads
#: from history (which holds everything anyway).
BUFFER_EVENTS = 1000
#: Request bodies are at most 256 KiB (docs/protocol.md#http-api).
MAX_BODY_BYTES = 256 * 1024


@dataclass
class WebConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    #: ``(host, port)`` of an external core; ``None`` starts an embedded one.
    core: tuple[str, int] | None = None
    data_dir: Path = field(default_factory=lambda: DEFAULT_DATA_DIR)
    core_port: int = 5050
    secure_cookies: bool = False
    trust_proxy: bool = False
    allowed_origins: frozenset[str] = frozenset()
    #: How browsers get events: pushed over a WebSocket, long-poll, or a poll every 100 ms
    #: (docs/protocol.md#websocket-push); a page falls back by itself when a socket fails.
    transport: str = "ws"
    #: Bytes queued for one browser socket before it is closed as too slow (1013).
    ws_send_buffer: int = MAX_SEND_BUFFER
    #: Seconds a browser socket may go without a frame (an empty one if nothing happens).
    ws_keepalive: float = KEEPALIVE
    idle_timeout: float = IDLE_TIMEOUT
    buffer_events: int = BUFFER_EVENTS
    max_body_bytes: int = MAX_BODY_BYTES
    #: Fsync policy of the embedded core (ignored with ``core``).
    fsync: str = "everysec"
    max_sessions_per_user: int = MAX_SESSIONS_PER_USER
    max_sessions_per_ip: int = MAX_SESSIONS_PER_ADDRESS
    max_sessions: int = MAX_SESSIONS
    failed_logins_per_minute: int = FAILED_LOGIN_BURST
    #: How to verify an external core over TLS (docs/deploy.md#tls); None: plaintext.
    core_tls: ClientTLS | None = None
    #: The embedded core's TLS listener for desktop clients; None: off.
    tls: TLSListener | None = None
    #: PostgreSQL where browser sessions are kept so that any web app can serve any
    #: browser (docs/deploy.md#web-apps-on-postgresql); None: in this process only.
    #: The embedded core keeps its history there too.
    database_url: str | None = None
    #: Seconds between refreshes of the sessions' ``last_seen`` (shared_sessions.py).
    session_refresh: float = REFRESH_EVERY


def build_parser(env: Mapping[str, str] | None = None) -> SettingsParser:
    p = SettingsParser(
        prog="python -m app",
        description=(
            "The chat web app: the browser client and its gateway into the core. "
            "Without --core it also runs the core in the same process. "
            "Every flag has an env fallback."
        ),
        env=env,
    )
    p.add_setting("--host", env="CHAT_WEB_HOST", default="127.0.0.1", help="address to listen on")
    p.add_setting(
        "--port", env="CHAT_WEB_PORT", type=port, default=8080, help="HTTP port, 0 for any free one"
    )
    p.add_setting(
        "--core",
        env="CHAT_CORE",
        type=host_port,
        default=None,
        metavar="HOST:PORT",
        help="use a running core instead of the embedded one",
    )
    p.add_setting(
        "--core-tls",
        env="CHAT_CORE_TLS",
        switch=True,
        default=False,
        help="reach --core over TLS, verified by the system's trust store (or the two below)",
    )
    p.add_setting(
        "--core-cafile",
        env="CHAT_CORE_CAFILE",
        type=Path,
        default=None,
        help="reach --core over TLS, verified by this CA file (implies --core-tls)",
    )
    p.add_setting(
        "--core-fingerprint",
        env="CHAT_CORE_FINGERPRINT",
        type=_fingerprint,
        default=None,
        metavar="sha256:HEX",
        help="reach --core over TLS, pinned to this certificate (implies --core-tls)",
    )
    add_storage(p, note="embedded core: ")
    p.add_setting(
        "--core-port",
        env="CHAT_PORT",
        type=port,
        default=5050,
        help="embedded core: TCP port for desktop clients",
    )
    p.add_setting(
        "--secure-cookies",
        env="CHAT_SECURE_COOKIES",
        switch=True,
        default=False,
        help="always mark the session cookie Secure",
    )
    p.add_setting(
        "--trust-proxy",
        env="CHAT_WEB_TRUST_PROXY",
        switch=True,
        default=False,
        help="honour X-Forwarded-Proto/-Host from a reverse proxy",
    )
    p.add_setting(
        "--allowed-origins",
        env="CHAT_WEB_ALLOWED_ORIGINS",
        default="",
        help="extra origins allowed to POST, comma-separated",
    )
    p.add_setting(
        "--transport",
        env="CHAT_WEB_TRANSPORT",
        choices=TRANSPORTS,
        default="ws",
        help="how browsers get events: ws (pushed over a WebSocket; a page falls back to "
        "longpoll, then poll, by itself), longpoll, or poll (every 100 ms)",
    )
    p.add_setting(
        "--idle-timeout",
        env="CHAT_WEB_IDLE_TIMEOUT",
        type=positive_float,
        default=IDLE_TIMEOUT,
        help="seconds without a poll before a browser session is logged out",
    )
    p.add_setting(
        "--failed-logins-per-minute",
        env="CHAT_WEB_FAILED_LOGINS_PER_MINUTE",
        type=positive_int,
        default=FAILED_LOGIN_BURST,
        help="failed logins one client address may make a minute; then 429 rate_limited "
        "without asking the core",
    )
    p.add_setting(
        "--max-sessions-per-user",
        env="CHAT_WEB_MAX_SESSIONS_PER_USER",
        type=positive_int,
        default=MAX_SESSIONS_PER_USER,
        help="browser sessions one user may have; one more gets 429 too_many_sessions",
    )
    p.add_setting(
        "--max-sessions-per-ip",
        env="CHAT_WEB_MAX_SESSIONS_PER_IP",
        type=positive_int,
        default=MAX_SESSIONS_PER_ADDRESS,
        help="browser sessions one client address may have; one more gets 429",
    )
    p.add_setting(
        "--max-sessions",
        env="CHAT_WEB_MAX_SESSIONS",
        type=positive_int,
        default=MAX_SESSIONS,
        help="browser sessions in all (each is a core connection: keep it under the core's "
        "--max-connections); one more gets 503 server_busy",
    )
    add_database_url(
        p,
        ": keep browser sessions there so that any web app serves any browser (a killed "
        "or replaced web app logs nobody out); the embedded core keeps its history there too",
    )
    add_tls(p, note="embedded core: ")
    add_log_level(p)
    p.add_check(
        lambda args: (
            "--core-tls, --core-cafile and --core-fingerprint need --core HOST:PORT"
            if args.core is None and (args.core_tls or args.core_cafile or args.core_fingerprint)
            else None
        )
    )
    return p


def _fingerprint(value: str) -> str:
    try:
        return parse_fingerprint(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def config_from_args(args: argparse.Namespace) -> WebConfig:
    origins = frozenset(o.strip().rstrip("/") for o in args.allowed_origins.split(",") if o.strip())
    return WebConfig(
        host=args.host,
        port=args.port,
        core=args.core,
        data_dir=args.data_dir,
        core_port=args.core_port,
        fsync=args.fsync,
        secure_cookies=args.secure_cookies,
        trust_proxy=args.trust_proxy,
        allowed_origins=origins,
        transport=args.transport,
        idle_timeout=args.idle_timeout,
        max_sessions_per_user=args.max_sessions_per_user,
        max_sessions_per_ip=args.max_sessions_per_ip,
        max_sessions=args.max_sessions,
        failed_logins_per_minute=args.failed_logins_per_minute,
        core_tls=ClientTLS(args.core_cafile, args.core_fingerprint)
        if args.core_tls or args.core_cafile or args.core_fingerprint
        else None,
        tls=tls_from_args(args),
        database_url=args.database_url,
    )
