"""The desktop client's settings: flags with ``CHAT_*`` environment fallbacks.

Declared with the one settings helper (legacy_socket_server/settings.py), with
the core's defaults, so ``python chatapp.py`` reaches a local core.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass

from ..settings import SettingsParser, add_log_level, port

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5050


def _port(value: str) -> int:
    number = port(value)
    if number == 0:  # a client must name the server's port
        raise argparse.ArgumentTypeError("expected a port number 1-65535, got '0'")
    return number


@dataclass(frozen=True)
class Config:
    host: str
    port: int
    #: Test hook: a JSON dump of the model and window, rewritten when it changes.
    state_file: str | None = None
    username: str = ""
    log_level: str = "WARNING"


def build_parser(env: Mapping[str, str] | None = None) -> SettingsParser:
    p = SettingsParser(
        prog="chatapp.py",
        description="The desktop chat client. Every flag has an env fallback.",
        env=env,
    )
    p.add_setting("--host", env="CHAT_HOST", default=DEFAULT_HOST, help="core server address")
    p.add_setting(
        "--port", env="CHAT_PORT", type=_port, default=DEFAULT_PORT, help="core server TCP port"
    )
    p.add_setting(
        "--user", env="CHAT_USER", default="", help="user name to pre-fill on the login form"
    )
    p.add_setting(
        "--state-file",
        env="CHAT_DESKTOP_STATE_FILE",
        default=None,
        help="test hook: dump the client state as JSON here on each change",
    )
    add_log_level(p, default="WARNING")
    return p


def parse_args(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    args = build_parser(env).parse_args(argv)
    return Config(
        host=args.host,
        port=args.port,
        state_file=args.state_file or None,
        username=args.user,
        log_level=args.log_level,
    )
