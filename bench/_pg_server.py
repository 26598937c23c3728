"""A throwaway PostgreSQL server on loopback, for the tests and the benchmarks.

``initdb`` in a temporary directory, trust authentication for 127.0.0.1 only, a free
port, its Unix socket in the same directory, then ``pg_ctl start``; ``stop()`` removes
it all. ``initdb`` refuses to run as root, so as root the server runs as the
``postgres`` user (Debian's package creates it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from _setup import free_port

#: The account the server runs as when we are root.
PG_USER = "postgres"


def find_bin() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` are: on PATH, else Debian's versioned directory."""
    on_path = shutil.which("initdb")
    if on_path is not None:
        # Resolved: a link on PATH may stand for initdb alone, not its siblings (createdb).
        return Path(on_path).resolve().parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return versions[-1].parent if versions else None


@dataclass
class PgServer:
    """One cluster: ``start()``, connect with :attr:`url`, ``stop()`` (also removes it)."""

    base_dir: str | None = None
    bin_dir: Path | None = None
    root: Path = field(init=False)
    port: int = field(init=False, default=0)
    started: bool = field(init=False, default=False)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def user(self) -> str:
        return PG_USER if os.geteuid() == 0 else (os.environ.get("USER") or "postgres")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def postmaster_pid(self) -> int:
        """The server's main process; its backends are its children (for CPU accounting)."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def _run(self, *cmd: str) -> None:
        if os.geteuid() == 0:
            cmd = ("runuser", "-u", PG_USER, "--", *cmd)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout}{done.stderr}")

    def create_database_now(self, name: str) -> str:
        """A new, empty database, without an event loop (sync fixtures); its URL."""
        self._run(
            self._tool("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name
        )
        return self.url(name)

    def _tool(self, name: str) -> str:
        bin_dir = self.bin_dir or find_bin()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL's initdb is not installed (apt-get install postgresql)")
        return str(bin_dir / name)

    def start(self) -> PgServer:
        self.root = Path(tempfile.mkdtemp(prefix="chat-pg-", dir=self.base_dir))
        if os.geteuid() == 0:
            shutil.chown(self.root, PG_USER, PG_USER)
        self.port = free_port()
        self._run(
            self._tool("initdb"),
            *("-D", str(self.data), "-U", self.user, "--auth=trust", "--no-locale"),
            *("-E", "UTF8", "--no-sync"),
        )
        (self.data / "pg_hba.conf").write_text("host all all 127.0.0.1/32 trust\n")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.root}'\n"
            )
        self.resume()
        return self

    def resume(self) -> None:
        """Start the server (again, after :meth:`pause`) on the same port and data."""
        log = str(self.root / "log")
        self._run(self._tool("pg_ctl"), "-D", str(self.data), "-l", log, "-w", "start")
        self.started = True

    def pause(self) -> None:
        """Stop the server, keeping its data (for outage tests)."""
        if not self.started:
            return
        try:
            self._run(self._tool("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        except RuntimeError:
            with contextlib.suppress(OSError, ValueError):
                os.kill(self.postmaster_pid(), signal.SIGQUIT)
            time.sleep(1)
        self.started = False

    def stop(self) -> None:
        self.pause()
        if hasattr(self, "root"):
            shutil.rmtree(self.root, ignore_errors=True)


async def create_database(server: PgServer, name: str) -> str:
    """A new, empty database on ``server``; its URL."""
    return await create_database_at(server.url(), name)


@contextlib.contextmanager
def pg_server(base_dir: str | None = None) -> Iterator[PgServer]:
    server = PgServer(base_dir)
    try:
        yield server.start()
    finally:
        server.stop()


async def create_database_at(url: str, name: str) -> str:
    """A new, empty database on the server ``url`` points at (an existing PostgreSQL, the
    account allowed to create databases); the URL of the new one."""
    from urllib.parse import urlsplit, urlunsplit  # noqa: PLC0415

    import asyncpg  # noqa: PLC0415 - only callers that create databases need the driver

    admin = await asyncpg.connect(url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))
