"""A real HAProxy on loopback with a generated configuration, for tests and benchmarks.

Debian's ``haproxy`` runs in the foreground (``haproxy -f CFG -db``) as a subprocess,
its configuration and admin socket in a temporary directory. Each :class:`Frontend`
listens on one loopback port and balances over its servers:

- ``mode="http"`` (browsers to web apps): ``balance roundrobin``, health checks
  ``GET /healthz`` expecting 200 (the web app answers 200 while its core answers), and
  retries: a request that could not reach a server, or got no answer at all from one
  that died, goes to another (``retry-on conn-failure empty-response``, ``option
  redispatch 1``). The web app's sends carry ``client_msg_id``, so a replay is safe.
- ``mode="tcp"`` (desktop clients to cores): ``balance leastconn`` (connections are
  long-lived), a TCP connect as health check unless ``tcp_check`` gives a request and the
  answer to expect, and connection retries on another server.

Timeouts: a short ``timeout connect`` (a dead server is left quickly), long
``timeout client/server`` (held polls last up to 30 s) and ``timeout tunnel`` (WebSockets
and TCP sessions). Health checks run every ``check_interval`` s, a server is marked down
after ``fall`` failures and up after ``rise`` successes.

Use::

    from _haproxy import Frontend, HAProxy
    with HAProxy([Frontend("web", "http", {"web1": "127.0.0.1:8081", "web2": "127.0.0.1:8082"}),
                  Frontend("core", "tcp", ["127.0.0.1:5051", "127.0.0.1:5052"])]) as lb:
        lb.url("web")              # http://127.0.0.1:PORT
        lb.ports["core"]           # the desktop clients' port
        lb.wait_up("web", {"web1", "web2"})   # until the health checks see them
        lb.server_states()         # {"web": {"web1": "UP", "web2": "DOWN"}, ...}
        lb.set_server("web", "web1", "maint") # drain / maint / ready, over the admin socket

Everything waits on conditions with deadlines, never on a fixed sleep. ``stop()``
ends the process and removes the directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from _setup import free_port

#: Where Debian installs it (``/usr/sbin`` is not on every user's PATH).
DEBIAN_HAPROXY = "/usr/sbin/haproxy"


def find_haproxy() -> str | None:
    """The ``haproxy`` executable: on PATH, else Debian's; None if not installed."""
    found = shutil.which("haproxy")
    if found is not None:
        return found
    return DEBIAN_HAPROXY if os.access(DEBIAN_HAPROXY, os.X_OK) else None


@dataclass
class Frontend:
    """One listening port and the servers it balances over.

    ``servers``: ``"host:port"`` strings (named ``s1``, ``s2``… in order) or a mapping of
    name to ``"host:port"``. A server need not be running yet: it is marked down until
    its health check passes (start it later on a port chosen with ``free_port()``).
    """

    name: str
    mode: Literal["http", "tcp"]
    servers: Sequence[str] | Mapping[str, str]
    #: The port on ``host``; 0 picks a free one (see :attr:`HAProxy.ports`).
    port: int = 0
    host: str = "127.0.0.1"
    #: HAProxy's algorithm; None: ``roundrobin`` for http, ``leastconn`` for tcp.
    #: (``"hash req.cook(chat_session)"`` would keep a browser on one web app.)
    balance: str | None = None
    #: http: the health check's path (a 200 means up).
    health_path: str = "/healthz"
    #: tcp: ``(send, expect)``: a request written on the health check's connection and
    #: a string the answer must contain, e.g. the core's framed ping
    #: ``('$18{"purpose":"ping"}$', '"ok":true')``. None: a TCP connect is the check.
    tcp_check: tuple[str, str] | None = None
    #: http: what a failed request may be retried on (another server, ``redispatch``).
    retry_on: str = "conn-failure empty-response"
    #: Extra lines for the backend section, as HAProxy reads them.
    extra: list[str] = field(default_factory=list)

    def named_servers(self) -> dict[str, str]:
        if isinstance(self.servers, Mapping):
            return dict(self.servers)
        return {f"s{i}": address for i, address in enumerate(self.servers, 1)}


class HAProxy:
    """HAProxy in front of the given frontends: ``start()``, :attr:`ports`, ``stop()``."""

    def __init__(
        self,
        frontends: Iterable[Frontend],
        *,
        binary: str | None = None,
        base_dir: str | None = None,
        check_interval: float = 0.5,
        fall: int = 2,
        rise: int = 1,
        timeout_connect: float = 1.0,
        timeout_client: float = 120.0,
        timeout_server: float = 120.0,
        timeout_tunnel: float = 3600.0,
        retries: int = 3,
        maxconn: int = 4096,
        log_requests: bool = False,
    ) -> None:
        self.frontends = list(frontends)
        names = [f.name for f in self.frontends]
        if len(set(names)) != len(names):
            raise ValueError(f"frontend names must differ: {names}")
        self.binary = binary
        self.base_dir = base_dir
        self.check_interval = check_interval
        self.fall, self.rise = fall, rise
        self.timeouts = {
            "connect": timeout_connect,
            "client": timeout_client,
            "server": timeout_server,
            "tunnel": timeout_tunnel,
            "check": max(timeout_connect, check_interval),
        }
        self.retries = retries
        self.maxconn = maxconn
        self.log_requests = log_requests
        #: Frontend name -> the port it listens on (filled by :meth:`start`).
        self.ports: dict[str, int] = {}
        self.root: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    # -- files -------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self._dir / "haproxy.cfg"

    @property
    def log_path(self) -> Path:
        """HAProxy's output: alerts, warnings and (with ``log_requests``) one line a request."""
        return self._dir / "haproxy.log"

    @property
    def admin_socket(self) -> Path:
        return self._dir / "admin.sock"

    @property
    def _dir(self) -> Path:
        if self.root is None:
            raise RuntimeError("HAProxy is not started")
        return self.root

    def config(self) -> str:
        """The configuration as written (the ports must be chosen: :meth:`start` does)."""
        ms = lambda seconds: f"{max(1, round(seconds * 1000))}ms"  # noqa: E731
        lines = [
            "global",
            f"    maxconn {self.maxconn}",
            f"    stats socket {self.admin_socket} mode 600 level admin",
            *(["    log stdout format raw daemon"] if self.log_requests else []),
            "",
            "defaults",
            # Each frontend's own cap too: left unset it is far below the global one, and a
            # full frontend queues new connections (health checks through it time out).
            f"    maxconn {self.maxconn}",
            *(["    log global"] if self.log_requests else []),
            *(f"    timeout {name} {ms(value)}" for name, value in self.timeouts.items()),
            f"    retries {self.retries}",
            "    option redispatch 1",
            f"    default-server inter {ms(self.check_interval)} fall {self.fall} rise {self.rise}",
        ]
        for f in self.frontends:
            lines += ["", *self._sections(f)]
        return "\n".join(lines) + "\n"

    def _sections(self, f: Frontend) -> list[str]:
        http = f.mode == "http"
        balance = f.balance or ("roundrobin" if http else "leastconn")
        front = [
            f"frontend {f.name}",
            f"    mode {f.mode}",
            f"    bind {f.host}:{self.ports[f.name]}",
            f"    option {'httplog' if http else 'tcplog'}",
            *(["    option forwardfor"] if http else []),
            f"    default_backend {f.name}_servers",
        ]
        back = [f"backend {f.name}_servers", f"    mode {f.mode}", f"    balance {balance}"]
        if http:
            back += [
                f"    option httpchk GET {f.health_path}",
                "    http-check expect status 200",
                f"    retry-on {f.retry_on}",
            ]
        elif f.tcp_check is not None:
            send, expect = f.tcp_check
            back += [
                "    option tcp-check",
                f"    tcp-check send {_quoted(send)}",
                f"    tcp-check expect string {_quoted(expect)}",
            ]
        back += [f"    {line}" for line in f.extra]
        back += [f"    server {name} {addr} check" for name, addr in f.named_servers().items()]
        return front + [""] + back

    # -- process -----------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> HAProxy:
        """Write the configuration, start HAProxy and wait until every port accepts."""
        binary = self.binary or find_haproxy()
        if binary is None:
            raise RuntimeError("haproxy is not installed (apt-get install haproxy)")
        self.root = Path(tempfile.mkdtemp(prefix="chat-haproxy-", dir=self.base_dir))
        for f in self.frontends:
            self.ports[f.name] = f.port or free_port()
        self.config_path.write_text(self.config())
        check = subprocess.run(
            [binary, "-c", "-q", "-f", str(self.config_path)], capture_output=True, text=True
        )
        if check.returncode != 0:
            raise RuntimeError(f"haproxy refused its configuration:\n{check.stdout}{check.stderr}")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [binary, "-f", str(self.config_path), "-db"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            for f in self.frontends:
                self._wait(lambda f=f: _accepts(f.host, self.ports[f.name]), timeout, f.name)
            self._wait(self.admin_socket.exists, timeout, "the admin socket")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """End HAProxy (every connection through it drops) and remove its directory."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # -db: a hard stop, at once
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> HAProxy:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url(self, frontend: str) -> str:
        """``http://host:port`` of an http frontend."""
        f = next(f for f in self.frontends if f.name == frontend)
        return f"http://{f.host}:{self.ports[frontend]}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.root is not None else ""

    def _wait(self, condition: Callable[[], object], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited ({self.proc.returncode}):\n{self.log_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"haproxy: {what} not ready within {timeout} s")
            time.sleep(0.02)

    # -- the admin socket --------------------------------------------------------------------
    def command(self, line: str) -> str:
        """One command on the admin socket (see HAProxy's management guide); its answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(self.admin_socket))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def server_states(self) -> dict[str, dict[str, str]]:
        """Frontend -> server -> its state as the health checks see it (``UP``, ``DOWN``,
        ``MAINT``, ``DRAIN``; ``UP 1/2`` while going up…)."""
        header, *rows = self.command("show stat").splitlines()
        columns = header.lstrip("# ").split(",")
        pxname, svname, status = (columns.index(c) for c in ("pxname", "svname", "status"))
        states: dict[str, dict[str, str]] = {f.name: {} for f in self.frontends}
        for row in rows:
            cells = row.split(",")
            if len(cells) <= status or not cells[pxname].endswith("_servers"):
                continue
            if cells[svname] in ("FRONTEND", "BACKEND"):
                continue
            states.setdefault(cells[pxname].removesuffix("_servers"), {})[cells[svname]] = cells[
                status
            ]
        return states

    def wait_up(
        self, frontend: str, servers: Iterable[str] | None = None, timeout: float = 15.0
    ) -> None:
        """Until the health checks see ``servers`` (default: all of the frontend's) UP."""
        wanted = set(servers) if servers is not None else None

        def up() -> bool:
            states = self.server_states()[frontend]
            names = wanted if wanted is not None else set(states)
            return all(states.get(n) == "UP" for n in names)

        self._wait(up, timeout, f"servers of {frontend} up")

    def wait_down(self, frontend: str, server: str, timeout: float = 15.0) -> None:
        """Until the health checks mark ``server`` down (it stopped answering)."""
        self._wait(
            lambda: self.server_states()[frontend].get(server, "").startswith("DOWN"),
            timeout,
            f"{frontend}/{server} down",
        )

    def set_server(self, frontend: str, server: str, state: str) -> None:
        """``ready``, ``drain`` (no new clients) or ``maint`` (none at all) for one server."""
        answer = self.command(f"set server {frontend}_servers/{server} state {state}").strip()
        if answer:
            raise RuntimeError(f"haproxy: {answer}")


def _quoted(text: str) -> str:
    """A single-quoted HAProxy word: no variable expansion, no escapes but ``'``."""
    return "'" + text.replace("'", "'\\''") + "'"


def _accepts(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


@contextlib.contextmanager
def haproxy(frontends: Iterable[Frontend], **options: object) -> Iterator[HAProxy]:
    """``with haproxy([...]) as lb:`` — started, and stopped at the end."""
    lb = HAProxy(frontends, **options)  # type: ignore[arg-type]
    try:
        yield lb.start()
    finally:
        lb.stop()
