"""The desktop client's settings: flags with ``CHAT_*`` environment fallbacks.

Declared with the one settings helper (legacy_socket_server/settings.py), with
the core's defaults, so ``python chatapp.py`` reaches a local core and
``python chatapp.py --tls`` the same core's TLS port.
"""

from __future__ import annotations

import argparse
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..settings import SettingsParser, add_log_level, port
from ..tls import DEFAULT_TLS_PORT, parse_fingerprint
from .trust import TLSOptions

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5050


def _port(value: str) -> int:
    number = port(value)
    if number == 0:  # a client must name the server's port
        raise argparse.ArgumentTypeError("expected a port number 1-65535, got '0'")
    return number


def _fingerprint(value: str) -> str:
    try:
        return parse_fingerprint(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cafile(value: str) -> str:
    """A PEM file of CA certificates, checked now: a typo is a usage error, not a
    failed login later."""
    path = Path(value).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {value!r}")
    try:
        ssl.create_default_context(cafile=str(path))
    except (ssl.SSLError, OSError) as exc:
        raise argparse.ArgumentTypeError(f"not a PEM CA certificate file: {value!r} ({exc})")
    return str(path)


@dataclass(frozen=True)
class Config:
    host: str
    port: int
    #: Test hook: a JSON dump of the model and window, rewritten when it changes.
    state_file: str | None = None
    username: str = ""
    log_level: str = "WARNING"
    tls: bool = False
    cafile: str | None = None
    fingerprint: str | None = None

    @property
    def tls_options(self) -> TLSOptions | None:
        """What the model connects with: None for plaintext."""
        if not self.tls:
            return None
        return TLSOptions(cafile=self.cafile, fingerprint=self.fingerprint)


def build_parser(env: Mapping[str, str] | None = None) -> SettingsParser:
    p = SettingsParser(
        prog="chatapp.py",
        description="The desktop chat client. Every flag has an env fallback.",
        env=env,
    )
    p.add_setting("--host", env="CHAT_HOST", default=DEFAULT_HOST, help="core server address")
    p.add_setting(
        "--port",
        env="CHAT_PORT",
        type=_port,
        default=None,  # None: chosen by --tls below
        help=f"core server TCP port (default {DEFAULT_PORT}, with TLS {DEFAULT_TLS_PORT})",
    )
    p.add_setting(
        "--tls",
        env="CHAT_TLS",
        default=False,
        switch=True,
        help="connect with TLS; a certificate the system does not trust is shown for you to "
        "accept once (then remembered in ~/.config/teamchat/known_hosts)",
    )
    p.add_setting(
        "--cafile",
        env="CHAT_CAFILE",
        type=_cafile,
        default=None,
        metavar="FILE",
        help="verify the server's certificate against the CA certificates in FILE (PEM), "
        "host name included; implies --tls",
    )
    p.add_setting(
        "--fingerprint",
        env="CHAT_FINGERPRINT",
        type=_fingerprint,
        default=None,
        metavar="sha256:HEX",
        help="trust only the server certificate with this SHA-256 fingerprint (the core logs "
        "it; 'python -m legacy_socket_server.tls fingerprint' prints it); implies --tls",
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
    tls = bool(args.tls or args.cafile or args.fingerprint)
    default_port = DEFAULT_TLS_PORT if tls else DEFAULT_PORT
    return Config(
        host=args.host,
        port=args.port if args.port is not None else default_port,
        state_file=args.state_file or None,
        username=args.user,
        log_level=args.log_level,
        tls=tls,
        cafile=args.cafile,
        fingerprint=args.fingerprint,
    )
