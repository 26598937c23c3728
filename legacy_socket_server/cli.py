"""The core's command line: ``python server.py`` (or ``python -m legacy_socket_server``).

Its settings (each flag with an environment fallback, README "Settings") become a
:class:`~legacy_socket_server.server.ServerConfig`; the web app reuses the TLS ones for the
core it embeds.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping
from pathlib import Path

from .addresses import parse_networks
from .chat import MAX_SESSIONS_PER_USER
from .limits import MIN_SEND_BURST, MIN_SEND_RATE, SEND_BURST, SEND_RATE
from .protocol import DEFAULT_MAX_FRAME_BYTES
from .server import (
    DEFAULT_MAX_CONNECTIONS,
    LOGIN_TIMEOUT,
    MAX_CONNECTIONS_PER_IP,
    TRUSTED_CLIENTS,
    CoreServer,
    ServerConfig,
)
from .settings import (
    SettingsParser,
    add_database_url,
    add_log_level,
    add_storage,
    boolean,
    non_negative_float,
    port,
    positive_float,
    positive_int,
    run,
    run_main,
    setup_logging,
    wait_for_stop_signal,
)
from .tls import DEFAULT_NAMES, DEFAULT_TLS_PORT, HANDSHAKE_TIMEOUT, TLSListener, parse_names

log = logging.getLogger("legacy_socket_server")


def _raise_fd_limit() -> None:
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


def build_parser(env: Mapping[str, str] | None = None) -> SettingsParser:
    p = SettingsParser(
        prog="python server.py",
        description="The chat core server (framed TCP). Every flag has an env fallback.",
        env=env,
    )
    p.add_setting("--host", env="CHAT_HOST", default="127.0.0.1", help="address to listen on")
    p.add_setting(
        "--port", env="CHAT_PORT", type=port, default=5050, help="TCP port, 0 for any free one"
    )
    add_storage(p)
    p.add_setting(
        "--max-frame-bytes",
        env="CHAT_MAX_FRAME_BYTES",
        type=positive_int,
        default=DEFAULT_MAX_FRAME_BYTES,
        help="largest packet DATA in bytes",
    )
    p.add_setting(
        "--max-connections",
        env="CHAT_MAX_CONNECTIONS",
        type=positive_int,
        default=DEFAULT_MAX_CONNECTIONS,
        help="connection cap; a connection over it gets server_busy",
    )
    p.add_setting(
        "--max-connections-per-ip",
        env="CHAT_MAX_CONNECTIONS_PER_IP",
        type=positive_int,
        default=MAX_CONNECTIONS_PER_IP,
        help="connections one client address may hold (trusted ones: no cap); "
        "one more gets server_busy",
    )
    p.add_setting(
        "--trusted-clients",
        env="CHAT_TRUSTED_CLIENTS",
        type=parse_networks,
        default=TRUSTED_CLIENTS,
        metavar="ADDRS",
        help="comma-separated addresses or CIDRs exempt from the per-address cap "
        "(the web app's); their login may name the browser's address",
    )
    p.add_setting(
        "--login-timeout",
        env="CHAT_LOGIN_TIMEOUT",
        type=positive_float,
        default=LOGIN_TIMEOUT,
        help="seconds a connection may take to log in or resume; then login_timeout, closed",
    )
    p.add_setting(
        "--max-sessions-per-user",
        env="CHAT_MAX_SESSIONS_PER_USER",
        type=positive_int,
        default=MAX_SESSIONS_PER_USER,
        help="sessions one user may have logged in at once; one more gets too_many_sessions",
    )
    p.add_setting(
        "--send-rate",
        env="CHAT_SEND_RATE",
        type=non_negative_float,
        default=SEND_RATE,
        help=f"messages per second one user may send, sustained; 0 = no limit "
        f"(otherwise at least {MIN_SEND_RATE:g})",
    )
    p.add_setting(
        "--send-burst",
        env="CHAT_SEND_BURST",
        type=positive_int,
        default=SEND_BURST,
        help=f"messages one user may send at once (at least {MIN_SEND_BURST})",
    )
    p.add_check(send_limit_problem)
    p.add_setting(
        "--demo-users",
        env="CHAT_DEMO_USERS",
        type=boolean,
        default=True,
        metavar="1|0",
        help="create Alice, Bob and Charlie in a data directory that has no users",
    )
    add_database_url(
        p,
        ": keep the history (messages, rooms, read markers) in PostgreSQL instead of files "
        "in --data-dir (users and tokens stay there); the schema is created on first start",
    )
    add_tls(p)
    add_log_level(p)
    p.add_argument(
        "--healthcheck",
        action="store_true",
        help="send one ping to --host:--port and exit 0 if it answers (docker)",
    )
    return p


def send_limit_problem(args: argparse.Namespace) -> str | None:
    """The contract promises clients a floor for any limit set (docs/protocol.md#limits)."""
    if args.send_rate and args.send_rate < MIN_SEND_RATE:
        return f"--send-rate (CHAT_SEND_RATE) must be 0 (no limit) or at least {MIN_SEND_RATE:g}"
    if args.send_rate and args.send_burst < MIN_SEND_BURST:
        return f"--send-burst (CHAT_SEND_BURST) must be at least {MIN_SEND_BURST}"
    return None


def add_tls(p: SettingsParser, note: str = "") -> None:
    """The TLS listener's settings (docs/deploy.md#tls)."""
    p.add_setting(
        "--tls-port",
        env="CHAT_TLS_PORT",
        type=port,
        default=None,
        help=f"{note}also listen with TLS on this port ({DEFAULT_TLS_PORT} by convention) "
        "for desktop clients across a network; off when not given",
    )
    p.add_setting(
        "--tls-cert",
        env="CHAT_TLS_CERT",
        type=Path,
        default=None,
        help=f"{note}the operator's PEM certificate chain; without it the core generates a "
        "self-signed one in the data directory at its first TLS start",
    )
    p.add_setting(
        "--tls-key",
        env="CHAT_TLS_KEY",
        type=Path,
        default=None,
        help=f"{note}the PEM key of --tls-cert (when it is not in the certificate file)",
    )
    p.add_setting(
        "--tls-names",
        env="CHAT_TLS_NAMES",
        type=parse_names,
        default=DEFAULT_NAMES,
        metavar="NAMES",
        help=f"{note}comma-separated host names and addresses a generated certificate is for",
    )
    p.add_setting(
        "--tls-handshake-timeout",
        env="CHAT_TLS_HANDSHAKE_TIMEOUT",
        type=positive_float,
        default=HANDSHAKE_TIMEOUT,
        help=f"{note}seconds a TLS handshake may take before the connection is cut",
    )
    p.add_check(
        lambda args: (
            "--tls-key (CHAT_TLS_KEY) needs --tls-cert (CHAT_TLS_CERT)"
            if args.tls_key is not None and args.tls_cert is None
            else None
        )
    )


def tls_from_args(args: argparse.Namespace) -> TLSListener | None:
    """The listener :func:`add_tls`'s settings describe (None: TLS off)."""
    if args.tls_port is None:
        return None
    return TLSListener(
        port=args.tls_port,
        cert=args.tls_cert,
        key=args.tls_key,
        names=args.tls_names,
        handshake_timeout=args.tls_handshake_timeout,
    )


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        fsync=args.fsync,
        max_frame_bytes=args.max_frame_bytes,
        max_connections=args.max_connections,
        demo_users=args.demo_users,
        login_timeout=args.login_timeout,
        max_connections_per_ip=args.max_connections_per_ip,
        trusted_clients=args.trusted_clients,
        max_sessions_per_user=args.max_sessions_per_user,
        send_rate=args.send_rate,
        send_burst=args.send_burst,
        tls=tls_from_args(args),
        database_url=args.database_url,
    )


async def serve(config: ServerConfig) -> None:
    server = await CoreServer.start(config)
    await wait_for_stop_signal()
    log.info("shutting down")
    await server.stop()


async def healthcheck(host: str, port: int) -> int:
    from .client import CoreClient, CoreUnavailable

    try:
        client = await CoreClient.connect(
            "127.0.0.1" if host == "0.0.0.0" else host, port, timeout=3
        )
        reply = await client.request("ping", timeout=3)
        await client.close()
    except CoreUnavailable as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    return 0 if reply.get("ok") else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    if args.healthcheck:
        return run(healthcheck(args.host, args.port))
    _raise_fd_limit()
    return run_main(serve(config_from_args(args)), "legacy_socket_server")
