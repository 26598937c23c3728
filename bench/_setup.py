"""Shared benchmark plumbing: data dirs with many users, starting the core.

Users share one argon2 hash (hashing thousands would take minutes) and get
ready-made resume tokens, so N clients connect with ``resume`` instead of N
argon2 logins: the benchmark measures chatting, not logging in.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from legacy_socket_server.users import HASHER, fingerprint  # noqa: E402

_CORE = """
import logging, os, sys
from pathlib import Path
from legacy_socket_server.cli import _raise_fd_limit, run, serve
from legacy_socket_server.server import ServerConfig
from legacy_socket_server.tls import TLSListener
logging.basicConfig(level=logging.WARNING, format="%(message)s")
logging.getLogger("legacy_socket_server").setLevel(logging.INFO)
logging.getLogger("legacy_socket_server.chat").setLevel(logging.WARNING)
_raise_fd_limit()
tls = TLSListener(port=0) if sys.argv[3:] == ["tls"] else None
run(serve(ServerConfig(port=0, data_dir=Path(sys.argv[1]), fsync=sys.argv[2],
                       send_rate=1e9, send_burst=1e9, tls=tls,
                       database_url=os.environ.get("BENCH_DATABASE_URL") or None)))
"""


def make_data_dir(path: Path, n_users: int) -> dict[str, str]:
    """Write users.json and tokens.json for users u0000..; return name -> token."""
    path.mkdir(parents=True, exist_ok=True)
    h = HASHER.hash("bench")
    fp = fingerprint(h)
    names = [f"u{i:04d}" for i in range(n_users)]
    (path / "users.json").write_text(json.dumps({n: {"password_hash": h} for n in names}))
    tokens = {n: f"bench-token-{n}-{os.urandom(8).hex()}" for n in names}
    now = time.time()
    records = {
        hashlib.sha256(t.encode()).hexdigest(): {"user": n, "pw": fp, "used": now}
        for n, t in tokens.items()
    }
    (path / "tokens.json").write_text(json.dumps(records))
    return tokens


def free_port() -> int:
    """A port free on 127.0.0.1 now (for servers that cannot be given port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_and_match(
    args: list[str], pattern: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, re.Match]:
    """Start a server process; return it and the match of ``pattern`` in its log.

    Output goes to a temp file, not a pipe: a pipe nobody drains would block
    the server once its logs fill it.
    """
    import tempfile

    log = tempfile.NamedTemporaryFile("w+", prefix="bench-server-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True, env=env
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {Path(log.name).read_text()}")
        m = re.search(pattern, Path(log.name).read_text(), re.S)
        if m:
            return proc, m
        time.sleep(0.05)
    raise RuntimeError("server did not start in 60 s")


def start_process(
    args: list[str], pattern: str = r"listening on \S+:(\d+)", env: dict[str, str] | None = None
):
    """Start a server process; return (Popen, port) once it logs its port."""
    proc, m = _start_and_match(args, pattern, env)
    return proc, int(m.group(1))


def start_core(data_dir: Path, fsync: str = "everysec", database_url: str | None = None):
    """The core on ``data_dir`` (its history in PostgreSQL at ``database_url`` if given)."""
    env = {**os.environ, "BENCH_DATABASE_URL": database_url or ""}
    return start_process([sys.executable, "-c", _CORE, str(data_dir), fsync], env=env)


@dataclass(frozen=True)
class TLSCore:
    """A core listening on both ports (see :func:`start_core_tls`)."""

    proc: subprocess.Popen
    port: int
    tls_port: int
    #: The generated certificate's ``sha256:`` fingerprint, for ``ClientTLS(fingerprint=...)``.
    fingerprint: str


def start_core_tls(data_dir: Path, fsync: str = "everysec") -> TLSCore:
    """Start a core with plaintext and TLS listeners (one process: the two transports
    share its CPU, so they can be compared against the same core, run after run).

    The certificate is generated into ``data_dir`` at the first start, as in production.
    """
    proc, m = _start_and_match(
        [sys.executable, "-c", _CORE, str(data_dir), fsync, "tls"],
        r"listening on \S+:(\d+).*TLS on \S+:(\d+), certificate (sha256:[0-9a-f]{64})",
    )
    return TLSCore(proc, int(m.group(1)), int(m.group(2)), m.group(3))


def raise_fd_limit(needed: int) -> int:
    """Raise this process's RLIMIT_NOFILE soft limit to its hard limit; return the new soft
    limit. Each client is a socket here, and the usual soft limit (1024) is below 1,000
    clients plus the storm's connections. Warns when even the hard limit is below ``needed``."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # An unlimited hard limit still cannot be set as the soft one (the kernel caps it at
    # fs.nr_open): then ask for what this run needs.
    target = max(soft, needed) if hard == resource.RLIM_INFINITY else hard
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft < needed:
        print(
            f"warning: RLIMIT_NOFILE is {soft}, below the ~{needed} sockets this run opens "
            "(raise the hard limit: ulimit -Hn)",
            file=sys.stderr,
        )
    return soft


def start_baseline(uvloop: bool = True):
    args = [sys.executable, str(ROOT / "bench" / "baseline_router.py"), "0"]
    return start_process(args + (["--uvloop"] if uvloop else []))


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- additions for bench/system_load.py (the whole system: core + web gateway) -------------
#: A deliberately cheap argon2 hash for load-test users who log in through the web
#: gateway (which must use ``login``: there is no HTTP resume). The core verifies
#: with the parameters stored in the hash, so a login costs ~0.1 ms instead of
#: ~30 ms and thousands of browser users log in within seconds. Setup only: the
#: measured phase never logs in.
def cheap_hash(password: str = "bench") -> str:
    from argon2 import PasswordHasher

    return PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(password)


def make_data_dir_fast(path: Path, n_users: int, password: str = "bench") -> dict[str, str]:
    """Like :func:`make_data_dir`, but every user's password ``password`` has a cheap hash."""
    path.mkdir(parents=True, exist_ok=True)
    h = cheap_hash(password)
    fp = fingerprint(h)
    names = [f"u{i:04d}" for i in range(n_users)]
    (path / "users.json").write_text(json.dumps({n: {"password_hash": h} for n in names}))
    tokens = {n: f"bench-token-{n}-{os.urandom(8).hex()}" for n in names}
    now = time.time()
    records = {
        hashlib.sha256(t.encode()).hexdigest(): {"user": n, "pw": fp, "used": now}
        for n, t in tokens.items()
    }
    (path / "tokens.json").write_text(json.dumps(records))
    return tokens


def web_args(core_port: int, *extra: str) -> list[str]:
    """The web app's flags for a benchmark: a free port, the given core, no session caps."""
    return [
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--core",
        f"127.0.0.1:{core_port}",
        "--log-level",
        "WARNING",
        # Every simulated browser comes from 127.0.0.1: the per-address and total
        # session caps are for real deployments, not for the load generator.
        "--max-sessions-per-ip",
        "1000000",
        "--max-sessions",
        "1000000",
        *extra,
    ]


def start_web(core_port: int, *extra: str):
    """Start ``python -m app`` on a free port against the core at 127.0.0.1:core_port."""
    args = [sys.executable, "-m", "app", *web_args(core_port, *extra)]
    return start_process(args, pattern=r"Chat is running: http://[^/\s]*:(\d+)/")


def start_bare_aiohttp():
    return start_process([sys.executable, str(ROOT / "bench" / "bare_aiohttp.py"), "0"])


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return sum(vals) - idle, sum(vals)
