"""Settings from command-line flags with ``CHAT_*`` environment fallbacks, and ``main``.

One helper for the core, the web app, the desktop client and the admin CLIs
(docs/architecture.md#configuration): each setting is declared once with its
flag, its variable and its type, and a bad value in either place gets
argparse's one-line usage error naming where it came from, with exit status 2,
never a traceback. :func:`run_main` is the one entry-point wrapper: logging to
stderr, the event loop (uvloop when installed), and exit codes.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .storage_files import StoreError

#: The checkout this code runs from: the shipped seed files live here.
REPO_ROOT = Path(__file__).resolve().parent.parent
#: Where a laptop run keeps its state: ignored by git, so a run leaves the
#: checkout clean. Seeded from the shipped users.json/history.json (datadir.py).
DEFAULT_DATA_DIR = REPO_ROOT / "data"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def boolean(value: str) -> bool:
    """An on/off value: 1/true/yes/on or 0/false/no/off (any case)."""
    word = value.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected 1 or 0 (true/false, yes/no, on/off), got {value!r}")


def _number(value: str, kind: type[int] | type[float], what: str) -> Any:
    try:
        number = kind(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}") from None
    return number


def port(value: str) -> int:
    """A TCP port; 0 asks the OS for any free one."""
    number = _number(value, int, "a port number 0-65535")
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {value!r}")
    return number


def positive_int(value: str) -> int:
    number = _number(value, int, "a whole number of at least 1")
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {value!r}")
    return number


def positive_float(value: str) -> float:
    number = _number(value, float, "a positive number")
    if not 0 < number < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}")
    return number


def non_negative_float(value: str) -> float:
    number = _number(value, float, "a number of at least 0")
    if not 0 <= number < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of at least 0, got {value!r}")
    return number


def log_level(value: str) -> str:
    level = value.strip().upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return level


def host_port(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` works too) into a pair."""
    host, sep, number = value.rpartition(":")
    if not sep or not host or not number.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), port(number)


@dataclass(frozen=True)
class _Setting:
    dest: str
    flag: str
    env: str
    convert: Callable[[str], Any]
    choices: tuple[str, ...] | None
    #: No default (None): an empty variable means "not set", as ``${NAME:-}`` in compose gives.
    optional: bool


class SettingsParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose settings also read ``CHAT_*`` variables.

    Precedence: flag, then variable, then default. Variables are converted
    and checked exactly like flags, and the help of each setting names its
    variable and its default, so ``--help``, the README and the compose file
    say the same thing.
    """

    def __init__(self, *args: Any, env: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._settings: list[_Setting] = []
        self._checks: list[Callable[[argparse.Namespace], str | None]] = []
        self.env: Mapping[str, str] = os.environ if env is None else env

    def add_setting(
        self,
        flag: str,
        *,
        env: str,
        default: Any,
        help: str,
        type: Callable[[str], Any] = str,
        choices: Sequence[str] | None = None,
        metavar: str | None = None,
        switch: bool = False,
    ) -> None:
        """One setting: ``--flag VALUE`` (or a bare ``--flag`` when ``switch``) and ``env``."""
        if isinstance(default, bool):
            shown: Any = ("on" if default else "off") if switch else int(default)
        else:
            shown = default
        text = (
            f"{help} (env {env}; default {shown})"
            if shown not in (None, "")
            else (f"{help} (env {env})")
        )
        if switch:
            action = self.add_argument(flag, action="store_true", default=default, help=text)
            convert: Callable[[str], Any] = boolean
        else:
            action = self.add_argument(
                flag, type=type, default=default, choices=choices, metavar=metavar, help=text
            )
            convert = type
        self._settings.append(
            _Setting(
                action.dest,
                flag,
                env,
                convert,
                tuple(choices) if choices else None,
                optional=default is None,
            )
        )

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        for s in self._settings:
            raw = self.env.get(s.env)
            if raw is None or (s.optional and not raw.strip()):
                continue
            try:
                value = s.convert(raw)
            except (ValueError, argparse.ArgumentTypeError) as exc:
                # A URL may hold a password: not echoed (the converter's message hides it).
                shown = s.env if "://" in raw else f"{s.env}={raw!r}"
                self.error(f"{shown} (for {s.flag}): {exc}")
            if s.choices is not None and value not in s.choices:
                self.error(f"{s.env}={raw!r} (for {s.flag}): choose from {', '.join(s.choices)}")
            self.set_defaults(**{s.dest: value})
        parsed = super().parse_args(args, namespace)
        for check in self._checks:
            problem = check(parsed)
            if problem:
                self.error(problem)
        return parsed

    def add_check(self, check: Callable[[argparse.Namespace], str | None]) -> None:
        """A rule across settings: ``check(args)`` returns what is wrong, or None."""
        self._checks.append(check)


def add_storage(parser: SettingsParser, note: str = "") -> None:
    """``--data-dir`` and ``--fsync``: the core's, also the web app's embedded core's."""
    parser.add_setting(
        "--data-dir",
        env="CHAT_DATA_DIR",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help=f"{note}users.json, history.json, journal and tokens; the default data/ "
        "is created from the repository's seed files",
    )
    parser.add_setting(
        "--fsync",
        env="CHAT_FSYNC",
        choices=["always", "everysec"],
        default="everysec",
        help=f"{note}journal flush policy",
    )


def database_url(value: str) -> str:
    if not value.startswith(("postgresql://", "postgres://")):
        raise argparse.ArgumentTypeError(
            f"expected postgresql://USER:PASSWORD@HOST:PORT/DB, got {value.split('@')[-1]!r}"
        )
    return value


def add_database_url(parser: SettingsParser, what: str) -> None:
    """``--database-url``: the core's, and the import's (``migrate``)."""
    parser.add_setting(
        "--database-url",
        env="CHAT_DATABASE_URL",
        type=database_url,
        default=None,
        metavar="URL",
        help=f"postgresql://USER:PASSWORD@HOST:PORT/DB{what}",
    )


def add_log_level(parser: SettingsParser, default: str = "INFO") -> None:
    parser.add_setting(
        "--log-level",
        env="CHAT_LOG_LEVEL",
        default=default,
        type=log_level,
        help="DEBUG, INFO, WARNING or ERROR",
    )


def setup_logging(level: str) -> None:
    """One line an event, to stderr, with its level."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


async def wait_for_stop_signal() -> None:
    """Return on SIGINT or SIGTERM (the graceful-shutdown trigger of both servers)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    await stop.wait()


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` on uvloop when it is installed, else on asyncio's loop."""
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def run_main(coro: Coroutine[Any, Any, Any], logger: str) -> int:
    """Run a server until it stops; the exit code says why it stopped.

    0: stopped on a signal. 2: the data directory or the TLS certificate
    refused to load (nothing was changed; the message says what to fix). 1: the OS refused (port in
    use, permissions).
    """
    from .tls import TLSSetupError  # noqa: PLC0415 - tls.py imports this module

    log = logging.getLogger(logger)
    try:
        run(coro)
    except (StoreError, TLSSetupError) as exc:
        log.error("refusing to start: %s", exc)
        return 2
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0
