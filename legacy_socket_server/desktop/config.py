"""Command-line flags with environment fallbacks (ARCHITECTURE.md principle 6)."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

#: Same defaults as the core server, so ``python chatapp.py`` reaches a local core.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5050


@dataclass(frozen=True)
class Config:
    host: str
    port: int
    #: Test hook: a JSON dump of the model and window, rewritten when it changes.
    state_file: str | None = None
    username: str = ""


def parse_args(argv: list[str] | None = None, env: dict[str, str] | None = None) -> Config:
    env = dict(os.environ) if env is None else env
    parser = argparse.ArgumentParser(
        prog="chatapp.py",
        description="The desktop chat client. Every flag has an env fallback.",
    )
    parser.add_argument(
        "--host",
        default=env.get("CHAT_HOST", DEFAULT_HOST),
        help=f"core server address (env CHAT_HOST; default {DEFAULT_HOST})",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(env.get("CHAT_PORT", DEFAULT_PORT)),
        help=f"core server TCP port (env CHAT_PORT; default {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--user",
        default=env.get("CHAT_USER", ""),
        help="user name to pre-fill on the login form (env CHAT_USER)",
    )
    parser.add_argument(
        "--state-file",
        default=env.get("CHAT_DESKTOP_STATE_FILE") or None,
        help="test hook: dump the client state as JSON here on each change "
        "(env CHAT_DESKTOP_STATE_FILE)",
    )
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port must be 1-65535, got {args.port}")
    return Config(host=args.host, port=args.port, state_file=args.state_file, username=args.user)
