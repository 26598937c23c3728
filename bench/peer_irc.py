"""Our core next to ngircd (a C IRC server): closed-loop direct messages between pairs.

Each pair is two clients, A and B. A sends B a direct message; the moment B sees it,
B sends the next one to A, and so on: every pair has exactly one message in flight, so
throughput is set by how fast the server turns a message around. IRC clients register
(NICK/USER, then wait for the end of the MOTD) and send ``PRIVMSG peer :ping``. Core
clients ``resume`` with a ready-made token, keep one held ``poll`` (sent again with the
new cursor after every reply, as the desktop client does) and send ``send_message``; a
message counts as seen when it reaches the recipient's poll reply. Latency is send → seen.
Core clients send with ``"echo": false``, as the desktop client does (the send's reply
carries the message, so the sender's held poll is not woken by it). The clients are in
bench/_peer_clients.py; this file runs the servers, measures and reports.

Over a measured window (after a warm-up; logins excluded) it reports messages/s, messages
per server CPU-second (utime+stime from /proc/PID/stat at both ends of the window), p50/p99
latency, this process's CPU (the clients': near 1.00 means the clients were a limit too),
and the share of the machine's CPU time stolen by its hypervisor meanwhile (a shared
virtual machine: a round with much stolen time was measured on a disturbed machine).
With two or more CPUs the server runs on CPU 0 and the clients on CPU 1.
``--rounds N`` runs ngircd, core, ngircd, core, … and adds the medians. Both servers stay
up for the whole run (the core's history grows run after run).

    python bench/peer_irc.py                                   # 50 and 500 pairs
    python bench/peer_irc.py --pairs 50 --seconds 10 --rounds 3
    python bench/peer_irc.py --only core --core-args="--fsync always"
    python bench/peer_irc.py --pairs 50 --rounds 3 --router   # + bench/baseline_router.py
    python bench/peer_irc.py --python-core    # + the core on its Python modules (not compiled)

ngircd runs in the foreground from a config generated in a temp dir (127.0.0.1, a free
port, penalties and connection limits off); the core runs as ``server.py --send-rate 0``,
compiled first if its modules are not (``--no-build``: as they are).
Talks only to 127.0.0.1; every wait has a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _peer_clients import Meter, connect_all, hang_up, make_clients
from _setup import cpu_seconds, free_port, make_data_dir, raise_fd_limit, start_process

from legacy_socket_server import native

try:  # the core runs on uvloop when it is installed; the clients should not be slower
    from uvloop import run as run_loop
except ImportError:
    from asyncio import run as run_loop

NGIRCD = "/usr/sbin/ngircd"
SERVER_CPU, CLIENT_CPU = 0, 1
CONNECT_BATCH = 100  # a listen backlog is finite
# ngircd listens with a backlog of 10 (`ss -ltn`): more connects at once overflow its accept
# queue, and a dropped handshake's retransmits (1, 3, 7, 15, 31 s) can outlast the deadline.
NGIRCD_CONNECT_BATCH = 10
WARMUP_S = 2.0
STOP_DEADLINE_S = 10.0
# Pins itself, then execs the server: the pid stays the server's (for /proc), and threads
# the server starts later inherit the CPU, which pinning it after the start would miss.
_PINNED_EXEC = (
    "import os,sys; os.sched_setaffinity(0,{int(sys.argv[1])}); os.execvp(sys.argv[2],sys.argv[2:])"
)

# Started as root, ngircd drops to "nobody" after reading this; it writes no file (no
# PidFile) and logs to stdout. IncludeDir points at an empty dir so /etc/ngircd's
# snippets cannot change the setup; MaxPenaltyTime = 0 turns flood penalties off.
NGIRCD_CONF = """[Global]
Name = bench.irc
Info = peer_irc benchmark
AdminInfo1 = bench
AdminInfo2 = bench
AdminEMail = bench@localhost
Listen = 127.0.0.1
Ports = {port}
MotdPhrase = bench
HelpFile = {dir}/help.txt
[Limits]
MaxConnections = 0
MaxConnectionsIP = 0
MaxJoins = 0
MaxPenaltyTime = 0
PingTimeout = 3600
PongTimeout = 3600
[Options]
PAM = no
Ident = no
DNS = no
IncludeDir = {dir}/conf.d
"""


@dataclass
class Result:
    server: str
    pairs: int
    seen: float
    elapsed: float
    server_cpu: float
    client_cpu: float
    p50_ms: float
    p99_ms: float
    errors: int
    #: Share of the machine's CPU time (all CPUs) the hypervisor gave to other guests
    #: during the window: a round with much of it was measured on a disturbed machine.
    stolen: float = 0.0

    @property
    def msgs_per_s(self) -> float:
        return self.seen / self.elapsed

    @property
    def per_cpu_s(self) -> float:
        return self.seen / self.server_cpu if self.server_cpu > 0 else float("nan")


def stolen_seconds() -> float:
    """CPU time taken by the hypervisor for other guests, summed over CPUs (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()  # cpu user nice system idle iowait irq softirq steal
    return int(fields[8]) / os.sysconf("SC_CLK_TCK")


def quantile_ms(samples: list[int], q: float) -> float:
    """The ``q`` quantile of ``samples`` (ns), in ms; NaN when empty."""
    if not samples:
        return float("nan")
    samples.sort()
    return samples[min(len(samples) - 1, int(len(samples) * q))] / 1e6


async def run_once(
    server: str, port: int, pid: int, pairs: int, seconds: float, tokens: dict[str, str]
) -> Result:
    """Log in ``2 * pairs`` clients, start every pair, warm up, then measure ``seconds``."""
    meter = Meter()
    batch = NGIRCD_CONNECT_BATCH if server == "ngircd" else CONNECT_BATCH
    protocols = await connect_all(port, make_clients(server, pairs, meter, tokens), batch)
    try:
        for a in protocols[::2]:
            a.send()
        await asyncio.sleep(WARMUP_S)
        seen0, cpu0, mine0 = meter.seen, cpu_seconds(pid), time.process_time()
        stolen0 = stolen_seconds()
        t0 = time.perf_counter()
        meter.measuring = True
        await asyncio.sleep(seconds)
        meter.measuring = False
        elapsed = time.perf_counter() - t0
        seen, server_cpu = meter.seen - seen0, cpu_seconds(pid) - cpu0
        client_cpu = time.process_time() - mine0
        stolen = (stolen_seconds() - stolen0) / elapsed / (os.cpu_count() or 1)
    finally:
        await hang_up(protocols)
    for why in sorted(set(meter.errors))[:5]:
        print(f"  {server}: {why}", file=sys.stderr)
    p50, p99 = quantile_ms(meter.samples, 0.50), quantile_ms(meter.samples, 0.99)
    errors = len(meter.errors)
    return Result(server, pairs, seen, elapsed, server_cpu, client_cpu, p50, p99, errors, stolen)


def log_tail(pid: int, lines: int = 15) -> str:
    """The end of a server's log (its stdout is a temp file, bench/_setup.py)."""
    try:
        text = Path(os.readlink(f"/proc/{pid}/fd/1")).read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def compiled_core(build: bool) -> str:
    """The "core" row measures the build ``make run`` runs (legacy_socket_server/native.py):
    compiled first if it is missing or stale, as ``make`` would; else the status says why
    the Python modules run."""
    # start_core sets the variable per row; a value from the shell must not hide the build.
    os.environ.pop(native.PURE_ENV, None)
    status = native.check()
    if build and not status.active:
        print(f"core modules: {status}; compiling them (about a minute)...", flush=True)
        native.build()  # on failure it says why; the status below says what runs
        status = native.check()
    return str(status)


def pinned(args: list[str], cpu: int | None) -> list[str]:
    return args if cpu is None else [sys.executable, "-c", _PINNED_EXEC, str(cpu), *args]


def start_ngircd(tmp: Path, cpu: int | None) -> tuple[subprocess.Popen, int]:
    """Write the config into ``tmp``, check it with ``--configtest``, start ngircd."""
    (tmp / "conf.d").mkdir(parents=True)
    (tmp / "help.txt").write_text("peer_irc benchmark\n")
    conf = tmp / "ngircd.conf"
    conf.write_text(NGIRCD_CONF.format(port=free_port(), dir=tmp))
    check = subprocess.run(
        [NGIRCD, "--configtest", "-f", str(conf)], capture_output=True, text=True, timeout=30
    )
    if check.returncode != 0:
        raise RuntimeError(f"ngircd --configtest failed:\n{check.stdout}{check.stderr}")
    pattern = r"Now listening on \[127\.0\.0\.1\]:(\d+)"
    return start_process(pinned([NGIRCD, "-n", "-f", str(conf)], cpu), pattern)


def start_core(
    data_dir: Path, extra: list[str], cpu: int | None, python: bool = False
) -> tuple[subprocess.Popen, int]:
    """The core from this tree: its compiled build if current, or (``python``) its Python
    modules (legacy_socket_server/native.py)."""
    args = [sys.executable, "server.py", "--host", "127.0.0.1", "--port", "0"]
    args += ["--data-dir", str(data_dir), "--send-rate", "0", *extra]
    env = {**os.environ, "TEAMCHAT_PURE_PYTHON": "1" if python else ""}
    return start_process(pinned(args, cpu), env=env)


def start_router(cpu: int | None) -> tuple[subprocess.Popen, int]:
    args = [sys.executable, "bench/baseline_router.py", "0", "--uvloop"]
    return start_process(pinned(args, cpu), r"baseline listening on \S+:(\d+)")


def stop(name: str, proc: subprocess.Popen) -> None:
    """SIGTERM (both servers shut down cleanly on it), SIGKILL after a deadline."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_DEADLINE_S)
    if proc.returncode != 0:
        print(f"warning: {name} exited with {proc.returncode}", file=sys.stderr)


def settle(pid: int, deadline_s: float = 10.0) -> None:
    """Wait until a server is idle again: both share CPU 0, so one still closing a
    thousand connections would take CPU from the other's next run."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        before = cpu_seconds(pid)
        time.sleep(0.3)
        if cpu_seconds(pid) - before < 0.03:
            return


def pin_self() -> int | None:
    """Put this process on CLIENT_CPU; return the CPU for the servers (None: no pinning)."""
    cpus = os.sched_getaffinity(0)
    if not {SERVER_CPU, CLIENT_CPU} <= cpus:
        print(f"CPU pinning: off ({len(cpus)} CPU available)")
        return None
    os.sched_setaffinity(0, {CLIENT_CPU})
    print(f"CPU pinning: servers on CPU {SERVER_CPU}, clients (this process) on CPU {CLIENT_CPU}")
    return SERVER_CPU


def row(label: str, r: Result) -> str:
    return (
        f"| {label} | {r.pairs} | {r.msgs_per_s:,.0f} | {r.per_cpu_s:,.0f} | "
        f"{r.server_cpu / r.elapsed:.2f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | "
        f"{r.client_cpu / r.elapsed:.2f} | {r.errors} | {r.stolen:.0%} |"
    )


def median_result(rs: list[Result]) -> Result:
    """Per-column medians, as a Result over a one-second window."""
    med = statistics.median
    rate, per_cpu = med(r.msgs_per_s for r in rs), med(r.per_cpu_s for r in rs)
    client = med(r.client_cpu / r.elapsed for r in rs)
    p50, p99 = med(r.p50_ms for r in rs), med(r.p99_ms for r in rs)
    errors, stolen = sum(r.errors for r in rs), med(r.stolen for r in rs)
    return Result(
        rs[0].server, rs[0].pairs, rate, 1.0, rate / per_cpu, client, p50, p99, errors, stolen
    )


def report(results: list[Result], rounds: int, pairs_list: list[int]) -> None:
    print(
        "\n| server | pairs | messages/s | messages per server CPU-second | server CPU | "
        "p50 ms | p99 ms | client CPU | errors | stolen |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    medians: dict[tuple[str, int], Result] = {}
    for n in pairs_list:
        for server in ("ngircd", "core", "core-py", "router"):
            rs = [r for r in results if r.server == server and r.pairs == n]
            for i, r in enumerate(rs, 1):
                print(row(f"{server} #{i}" if rounds > 1 else server, r))
            if rs:
                medians[server, n] = median_result(rs)
                if rounds > 1:
                    print(row(f"{server} median", medians[server, n]))
    print(
        "\nCPU columns: CPU-seconds per second of the window (1.00 = one CPU busy). "
        "stolen: the share of the machine's CPU time its hypervisor gave other guests "
        "meanwhile (/proc/stat steal); rounds with much of it ran on a disturbed machine."
    )
    for n, server in ((n, s) for n in pairs_list for s in ("core", "core-py", "router")):
        if (server, n) in medians and ("ngircd", n) in medians:
            c, i = medians[server, n], medians["ngircd", n]
            print(
                f"- {n} pairs, {server}/ngircd: messages per server CPU-second "
                f"{c.per_cpu_s / i.per_cpu_s:.3f} (ngircd {i.per_cpu_s / c.per_cpu_s:.1f}x); "
                f"messages/s {c.msgs_per_s / i.msgs_per_s:.3f} "
                f"(ngircd {i.msgs_per_s / c.msgs_per_s:.1f}x)"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, nargs="+", default=[50, 500])
    ap.add_argument("--seconds", type=float, default=10.0, help="measured window per run")
    ap.add_argument("--rounds", type=int, default=1, help="ngircd, core, ngircd, core, …")
    ap.add_argument("--only", choices=["core", "ircd"], help="run one server (profiling)")
    ap.add_argument(
        "--router",
        action="store_true",
        help="also run bench/baseline_router.py (no rules, no journal): Python's ceiling",
    )
    ap.add_argument(
        "--python-core",
        action="store_true",
        help="also run the core on its Python modules (core-py), beside the compiled build",
    )
    ap.add_argument("--core-args", default="", help='e.g. --core-args="--fsync always"')
    ap.add_argument(
        "--no-build",
        action="store_true",
        help="do not compile the core's modules when they are missing or stale (as make does)",
    )
    args = ap.parse_args()
    servers = {"core": ["core"], "ircd": ["ngircd"], None: ["ngircd", "core"]}[args.only]
    if "ngircd" in servers and not os.access(NGIRCD, os.X_OK):
        sys.exit(f"{NGIRCD} not found: apt-get install ngircd (or run --only core)")
    if args.python_core:
        servers.append("core-py")
    if args.router:
        servers.append("router")
    server_cpu = pin_self()
    n_clients = 2 * max(args.pairs)
    raise_fd_limit(n_clients + 64)  # before the servers start: they inherit it
    print(f"event loop: {run_loop.__module__}; warm-up {WARMUP_S} s, window {args.seconds} s")
    if "core" in servers:
        print("core modules:", compiled_core(build=not args.no_build))

    procs: dict[str, tuple[subprocess.Popen, int]] = {}
    results: list[Result] = []
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="peer-irc-") as tmp_name:
        tmp = Path(tmp_name)
        saved_tempdir, tempfile.tempdir = tempfile.tempdir, tmp_name  # server logs go in tmp
        try:
            cores = [s for s in servers if s.startswith("core")]
            tokens = make_data_dir(tmp / "core", n_clients) if cores else {}
            if "ngircd" in servers:
                procs["ngircd"] = start_ngircd(tmp / "ngircd", server_cpu)
            for core in cores[1:]:  # one data dir each, with the same users and tokens
                shutil.copytree(tmp / "core", tmp / core)
            for core in cores:
                extra = shlex.split(args.core_args)
                procs[core] = start_core(tmp / core, extra, server_cpu, python=core == "core-py")
            if "router" in servers:
                procs["router"] = start_router(server_cpu)
            for n in args.pairs:
                for _ in range(args.rounds):
                    for server in servers:
                        proc, port = procs[server]
                        try:
                            r = run_loop(run_once(server, port, proc.pid, n, args.seconds, tokens))
                        except (TimeoutError, RuntimeError, OSError) as exc:
                            # One failed round must not lose the others: reported, left out.
                            print(f"{server}, {n} pairs: round failed: {exc!r}", file=sys.stderr)
                            print(log_tail(proc.pid), file=sys.stderr)
                            failed.append(f"{server} at {n} pairs: {exc!r}")
                            continue
                        results.append(r)
                        print(row(server, r), flush=True)
                        settle(proc.pid)
        except KeyboardInterrupt:
            print("interrupted: the runs so far follow", file=sys.stderr)
        finally:
            for name, (proc, _) in procs.items():
                stop(name, proc)
            tempfile.tempdir = saved_tempdir
    report(results, args.rounds, args.pairs)
    for why in failed:
        print(f"- a round left out (failed): {why}")


if __name__ == "__main__":
    main()
