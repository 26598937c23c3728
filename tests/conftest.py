"""Shared fixtures: a real core server in a subprocess on an ephemeral port."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
from core_helpers import FakeClock, make_service, seed_users
from desktop_helpers import Peer
from waiting import wait_for

from legacy_socket_server.chat import ChatService
from legacy_socket_server.server import CoreServer, ServerConfig

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from _pg_server import PgServer, create_database, find_bin  # noqa: E402

DEMO_USERS = {"Alice": "123", "Bob": "456", "Charlie": "789"}
IN_CI = bool(os.environ.get("CI"))


def missing(msg: str) -> NoReturn:
    """A tool the test needs is not here: skip on a laptop, fail in CI (``CI`` set)."""
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg, allow_module_level=True)


def require_tool(name: str, why: str) -> str:
    """Return the path of executable ``name``; skip on a laptop, fail in CI."""
    path = shutil.which(name)
    if path is None:
        missing(f"{name} not found ({why}); install it (see .ci/run)")
    return path


_LISTEN_RE = re.compile(r"listening on (\S+):(\d+)")
_TLS_RE = re.compile(r"TLS on (\S+):(\d+), certificate (sha256:[0-9a-f]{64})")


class CoreProcess:
    """The real core (``python -m legacy_socket_server``) as a subprocess."""

    def __init__(self, data_dir: Path, extra_args: list[str] | None = None) -> None:
        self.data_dir = data_dir
        self.extra_args = extra_args or []
        self.host = "127.0.0.1"
        self.port = 0
        #: With ``--tls-port`` in ``extra_args``: the TLS port and certificate fingerprint.
        self.tls_port = 0
        self.fingerprint = ""
        self.proc: subprocess.Popen[str] | None = None
        self.log_path = data_dir / "core.log"

    def start(self, port: int | None = None) -> CoreProcess:
        """Start (or restart, by default on the same ports) and wait until listening."""
        port = self.port if port is None else port
        if self.tls_port and "--tls-port" in self.extra_args:  # a restart keeps the TLS port
            at = self.extra_args.index("--tls-port") + 1
            self.extra_args[at] = str(self.tls_port)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "a")  # noqa: SIM115 - the child owns it
        start_offset = self.log_path.stat().st_size
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "legacy_socket_server",
                "--host",
                self.host,
                "--port",
                str(port),
                "--data-dir",
                str(self.data_dir),
                "--log-level",
                "INFO",
                *self.extra_args,
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            text=True,
        )
        log.close()

        tls = "--tls-port" in self.extra_args

        def listening() -> tuple[re.Match[str], re.Match[str] | None] | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"core exited early:\n{self.log_path.read_text()}")
            with open(self.log_path) as f:
                f.seek(start_offset)
                text = f.read()
            plain, secure = _LISTEN_RE.search(text), _TLS_RE.search(text)
            return (plain, secure) if plain and (secure or not tls) else None

        plain, secure = wait_for(listening, timeout=20, what="the core to listen")
        self.port = int(plain.group(2))
        if secure is not None:
            self.tls_port, self.fingerprint = int(secure.group(2)), secure.group(3)
        return self

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, no compaction."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> int:
        """SIGTERM: graceful shutdown; returns the exit code."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            return self.proc.wait(20)
        return self.proc.returncode if self.proc else 0

    def restart(self) -> CoreProcess:
        self.stop()
        return self.start()

    def log_text(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


@pytest.fixture
def core_proc(
    tmp_path: Path, store_kind: str, request: pytest.FixtureRequest
) -> Iterator[CoreProcess]:
    """A running core with the demo users (Alice/123, Bob/456, Charlie/789); with
    ``store_kind`` ``"postgres"``, on a fresh database."""
    args: list[str] = []
    if store_kind == "postgres":
        server: PgServer = request.getfixturevalue("pg_server")
        url = server.create_database_now(f"proc_{os.getpid()}_{next(_databases)}")
        args = ["--database-url", url]
    core = CoreProcess(tmp_path / "data", args).start(port=0)
    yield core
    core.stop()


@pytest.fixture
def tls_core(tmp_path: Path) -> Iterator[CoreProcess]:
    """A core with the demo users, plaintext and TLS (a generated self-signed certificate)."""
    core = CoreProcess(tmp_path / "data", ["--tls-port", "0"]).start(port=0)
    yield core
    core.stop()


@pytest.fixture
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``$XDG_CONFIG_HOME`` (the desktop client's known hosts) in tmp, here and in children."""
    home = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    return home


@pytest.fixture
def bob_peer(core_proc: CoreProcess) -> Iterator[Peer]:
    """Bob logged in to ``core_proc`` on a plain blocking socket."""
    peer = Peer(core_proc.host, core_proc.port)
    peer.login("Bob", DEMO_USERS["Bob"])
    yield peer
    peer.close()


# -- in-process cores (CoreServer on this test's loop) ---------------------------------------
StartCore = Callable[..., Awaitable[CoreServer]]


def start_postgres() -> PgServer:
    """A throwaway PostgreSQL (bench/_pg_server.py); skip on a laptop without it, fail in CI."""
    if find_bin() is None:
        missing("PostgreSQL's initdb not found (apt-get install postgresql; see .ci/run)")
    # In the system's temp dir: the server's user must reach it (pytest's are private).
    return PgServer().start()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One throwaway PostgreSQL for the whole run; tests get databases (``new_database``)."""
    server = start_postgres()
    yield server
    server.stop()


_databases = itertools.count(1)


async def new_database(server: PgServer) -> str:
    """A new, empty database on ``server``; its URL."""
    return await create_database(server, f"chat_{os.getpid()}_{next(_databases)}")


@pytest.fixture
def store_kind() -> str:
    """Where in-process cores keep their history; a module may parametrize it with
    ``"postgres"`` to run its tests against both stores (docs/scaling.md)."""
    return "files"


@pytest.fixture
async def start_core(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    store_kind: str,
    request: pytest.FixtureRequest,
) -> AsyncIterator[StartCore]:
    """Start in-process cores on port 0 with the demo users: ``await start_core(data=None,
    **ServerConfig overrides)``. Each gets a fresh data dir (and, with ``store_kind``
    ``"postgres"``, a fresh database) unless ``data`` is given (the same dir again is a
    restart, on the same database). Those still running at the end are stopped."""
    servers: list[CoreServer] = []
    databases: dict[Path, str] = {}

    async def start(data: Path | None = None, **overrides: Any) -> CoreServer:
        data = data or tmp_path / f"data{len(servers)}"
        seed_users(data, tmp_path_factory.getbasetemp() / "users-template")
        if store_kind == "postgres" and "database_url" not in overrides:
            if data not in databases:
                databases[data] = await new_database(request.getfixturevalue("pg_server"))
            overrides["database_url"] = databases[data]
        server = await CoreServer.start(ServerConfig(port=0, data_dir=data, **overrides))
        servers.append(server)
        return server

    yield start
    for server in servers:
        if not server.service.closing:  # a test may have stopped it (a restart)
            await server.stop()


@pytest.fixture
async def core(start_core: StartCore) -> CoreServer:
    """One in-process core with default settings."""
    return await start_core()


# -- ChatService fixtures (tests/test_service*.py): a real service, no sockets ----------------
@pytest.fixture
def data_dir(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path / "data"
    seed_users(d, tmp_path_factory.getbasetemp() / "users-template")
    return d


@pytest.fixture
def clock() -> FakeClock:
    """The service's clock (real time plus an offset the test moves)."""
    return FakeClock()


StartService = Callable[..., ChatService]


@pytest.fixture
async def start_svc(data_dir: Path, clock: FakeClock) -> AsyncIterator[StartService]:
    """Services on ``data_dir`` (``make_service`` keywords; the ``clock`` fixture's clock
    unless given). Closing one and starting another is a clean restart; those still
    open at the end are closed."""
    services: list[ChatService] = []

    def start(**kwargs: Any) -> ChatService:
        kwargs.setdefault("clock", clock.monotonic)
        services.append(make_service(data_dir, **kwargs))
        return services[-1]

    yield start
    for s in services:
        if not s.closing:
            s.close()


@pytest.fixture
async def svc(start_svc: StartService) -> ChatService:
    return start_svc()
