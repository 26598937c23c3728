"""Settings of the web app: command-line flags with ``CHAT_*`` environment fallbacks.

The same names appear in ``python -m app --help``, README.md and docker-compose.yml
(ARCHITECTURE.md principle 6).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

from legacy_socket_server.server import REPO_ROOT

#: A browser session that has not polled for this long is logged out of the core,
#: so closing the tab makes the user go offline (ARCHITECTURE.md principle 3).
IDLE_TIMEOUT = 30.0
#: Events a session's buffer keeps; a tab further behind gets ``reset`` and reloads
#: from history (which holds everything anyway).
BUFFER_EVENTS = 1000
#: PROTOCOL.md section 4: request bodies are at most 256 KiB.
MAX_BODY_BYTES = 256 * 1024


@dataclass
class WebConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    #: ``(host, port)`` of an external core; ``None`` starts an embedded one.
    core: tuple[str, int] | None = None
    data_dir: Path = field(default_factory=lambda: REPO_ROOT)
    core_port: int = 5050
    secure_cookies: bool = False
    trust_proxy: bool = False
    allowed_origins: frozenset[str] = frozenset()
    longpoll: bool = False
    idle_timeout: float = IDLE_TIMEOUT
    buffer_events: int = BUFFER_EVENTS
    max_body_bytes: int = MAX_BODY_BYTES
    #: Fsync policy of the embedded core (ignored with ``core``).
    fsync: str = "everysec"


def parse_core(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` works too) into a pair; raise ValueError otherwise."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def _flag(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog="python -m app",
        description=(
            "The chat web app: the browser client and its gateway into the core. "
            "Without --core it also runs the core in the same process. "
            "Every flag has an env fallback."
        ),
    )
    p.add_argument(
        "--host",
        default=env("CHAT_WEB_HOST", "127.0.0.1"),
        help="address to listen on (env CHAT_WEB_HOST; default 127.0.0.1)",
    )
    p.add_argument(
        "--port",
        type=int,
        default=int(env("CHAT_WEB_PORT", "8080")),
        help="HTTP port, 0 for any free one (env CHAT_WEB_PORT; default 8080)",
    )
    p.add_argument(
        "--core",
        default=env("CHAT_CORE") or None,
        metavar="HOST:PORT",
        help="use a running core instead of the embedded one (env CHAT_CORE)",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path(env("CHAT_DATA_DIR", str(REPO_ROOT))),
        help="embedded core: data directory (env CHAT_DATA_DIR; default the repo root)",
    )
    p.add_argument(
        "--core-port",
        type=int,
        default=int(env("CHAT_PORT", "5050")),
        help="embedded core: TCP port for desktop clients (env CHAT_PORT; default 5050)",
    )
    p.add_argument(
        "--fsync",
        choices=["always", "everysec"],
        default=env("CHAT_FSYNC", "everysec"),
        help="embedded core: journal flush policy (env CHAT_FSYNC; default everysec)",
    )
    p.add_argument(
        "--secure-cookies",
        action="store_true",
        default=_flag(env("CHAT_SECURE_COOKIES", "0")),
        help="always mark the session cookie Secure (env CHAT_SECURE_COOKIES=1)",
    )
    p.add_argument(
        "--trust-proxy",
        action="store_true",
        default=_flag(env("CHAT_WEB_TRUST_PROXY", "0")),
        help="honour X-Forwarded-Proto/-Host from a reverse proxy (env CHAT_WEB_TRUST_PROXY=1)",
    )
    p.add_argument(
        "--allowed-origins",
        default=env("CHAT_WEB_ALLOWED_ORIGINS", ""),
        help="extra origins allowed to POST, comma-separated (env CHAT_WEB_ALLOWED_ORIGINS)",
    )
    p.add_argument(
        "--longpoll",
        action="store_true",
        default=_flag(env("CHAT_WEB_LONGPOLL", "0")),
        help="browser clients long-poll instead of polling every 100 ms (env CHAT_WEB_LONGPOLL)",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=float(env("CHAT_WEB_IDLE_TIMEOUT", str(IDLE_TIMEOUT))),
        help="seconds without a poll before a browser session is logged out "
        "(env CHAT_WEB_IDLE_TIMEOUT; default 30)",
    )
    p.add_argument(
        "--log-level",
        default=env("CHAT_LOG_LEVEL", "INFO"),
        help="DEBUG, INFO, WARNING or ERROR (env CHAT_LOG_LEVEL; default INFO)",
    )
    return p


def config_from_args(args: argparse.Namespace) -> WebConfig:
    try:
        core = parse_core(args.core) if args.core else None
    except ValueError as exc:
        raise SystemExit(f"--core: {exc}")
    origins = frozenset(o.strip().rstrip("/") for o in args.allowed_origins.split(",") if o.strip())
    return WebConfig(
        host=args.host,
        port=args.port,
        core=core,
        data_dir=args.data_dir,
        core_port=args.core_port,
        fsync=args.fsync,
        secure_cookies=args.secure_cookies,
        trust_proxy=args.trust_proxy,
        allowed_origins=origins,
        longpoll=args.longpoll,
        idle_timeout=args.idle_timeout,
    )
