"""The servers bench/system_load.py measures, started and stopped as one thing.

- :func:`single`: one core (history in files, or in PostgreSQL at ``database_url``) and one
  web app, the load generator talking to each directly;
- :func:`cluster`: ``cores`` cores and ``webs`` web apps on one PostgreSQL database behind
  one real HAProxy (bench/_haproxy.py): desktop clients and the web apps reach the cores
  through its TCP port, browsers the web apps through its HTTP port, balanced on the
  session cookie as deploy/haproxy.cfg does (any web app could serve any session: the
  web apps keep sessions in the database).

Either way the load generator gets two ports, and the CPU of each role is the sum over
its processes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import _gc_probe
from _haproxy import Frontend, HAProxy
from _setup import free_port, start_core

#: The core's framed ping and what its answer holds: HAProxy's health check of a core.
CORE_PING = ('$18{"purpose":"ping"}$', '"ok":true')


@dataclass
class Topology:
    #: Where the load generator sends desktop clients and browsers.
    core_port: int
    web_port: int
    #: role ("core", "web", "lb") -> the pids whose CPU counts for it
    pids: dict[str, list[int]]
    #: The (first) web app under the GC probe, for its pause and memory figures.
    probe: _gc_probe.Probe
    _stops: list[Callable[[], None]] = field(default_factory=list)

    def stop(self) -> None:
        for stop in reversed(self._stops):
            try:
                stop()
            except Exception as exc:  # the others must stop all the same
                print(f"# stopping a server failed: {exc!r}", flush=True)


def _stop_core(proc) -> Callable[[], None]:  # noqa: ANN001 - a Popen
    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(60)
        except Exception:
            print("# core still running 60 s after SIGTERM: killed", flush=True)
            proc.kill()
            proc.wait(10)

    return stop


def single(
    data_dir: Path, database_url: str | None, web_extra: list[str], tracemalloc: int = 0
) -> Topology:
    core, core_port = start_core(data_dir, database_url=database_url)
    stops = [_stop_core(core)]
    try:
        probe = _gc_probe.start_web(core_port, *web_extra, tracemalloc_frames=tracemalloc)
    except BaseException:
        stops[0]()
        raise
    stops.append(probe.stop)
    return Topology(core_port, probe.port, {"core": [core.pid], "web": [probe.pid]}, probe, stops)


def cluster(
    data_dir: Path,
    database_url: str,
    web_extra: list[str],
    cores: int = 2,
    webs: int = 2,
    tracemalloc: int = 0,
) -> Topology:
    """``cores`` + ``webs`` behind HAProxy; ``data_dir``'s users and tokens are the
    database's (the first core takes them in: the database has none yet)."""
    stops: list[Callable[[], None]] = []
    topo: Topology | None = None
    try:
        core_ports, core_pids = [], []
        for i in range(cores):
            where = data_dir if i == 0 else data_dir / f"core{i + 1}"
            where.mkdir(exist_ok=True)
            proc, port = start_core(where, database_url=database_url)
            stops.append(_stop_core(proc))
            core_ports.append(port)
            core_pids.append(proc.pid)
        web_ports = [free_port() for _ in range(webs)]
        lb = HAProxy(
            [
                Frontend(
                    "core", "tcp", [f"127.0.0.1:{p}" for p in core_ports], tcp_check=CORE_PING
                ),
                # As deploy/haproxy.cfg: affinity by the session cookie (for speed;
                # any web app could serve any session).
                Frontend(
                    "web",
                    "http",
                    [f"127.0.0.1:{p}" for p in web_ports],
                    balance="hash req.cook(chat_session)",
                    extra=["hash-type consistent"],
                ),
            ],
            # A web app busy with a login storm may answer /healthz late: lenient checks,
            # as deploy/haproxy.cfg's, or HAProxy takes every web app out at once.
            # Every desktop client and every browser session's core connection passes here
            # (two sockets each): room for 5,000 users within this machine's 20,000 fds.
            maxconn=9000,
            check_interval=2.0,
            fall=3,
            timeout_connect=2.0,
        ).start()
        stops.append(lb.stop)
        lb.wait_up("core")
        probes = []
        for port in web_ports:
            extra = [*web_extra, "--port", str(port), "--database-url", database_url]
            probe = _gc_probe.start_web(
                lb.ports["core"], *extra, tracemalloc_frames=tracemalloc if not probes else 0
            )
            stops.append(probe.stop)
            probes.append(probe)
        lb.wait_up("web")
        assert lb.proc is not None
        pids = {"core": core_pids, "web": [p.pid for p in probes], "lb": [lb.proc.pid]}
        topo = Topology(lb.ports["core"], lb.ports["web"], pids, probes[0], stops)
        return topo
    finally:
        if topo is None:
            Topology(0, 0, {}, None, stops).stop()  # type: ignore[arg-type]
