"""Core throughput and latency, side by side with a bare framed router, or TLS vs plaintext.

N clients connect (``resume``), a set of senders route messages to random
peers while every client receives by long-poll (``wait_ms``) or by polling
every 100 ms. For each target it prints messages/s, send→delivery latency
p50/p99, lost messages and the CPU the target and this load generator used
while the senders ran.

``--transport plain`` (the default) measures the core, then
``baseline_router.py``; the core/baseline ratio is the figure to compare
(machines here are shared). ``--transport both`` measures the core over
plaintext and over TLS instead (one core process listening on both ports,
the two runs alternating plain, TLS, TLS, plain, … for ``--repeats`` rounds
so drift on a shared machine hits both alike) and prints TLS/plain ratios of
messages/s and of messages per core CPU-second. The second ratio is the
fairer one when the load generator (Python, on the same cores) is the
bottleneck: it says what TLS costs the core per message, whoever ran out of
CPU first. It still moves a little with load (a loop that wakes less often
handles more per wake-up), so at a fixed ``--rate`` the two transports are
compared at exactly the same load. ``--transport tls`` measures TLS alone.
The baseline has no TLS, so it runs only with ``plain``. The handshake storm
is ``bench/tls_handshakes.py``.

    python bench/core_load.py                    # N = 2, 100, 1000; both modes
    python bench/core_load.py --clients 100 --mode longpoll --seconds 5
    python bench/core_load.py --transport both --mode longpoll --clients 100 1000

Talks only to 127.0.0.1; every run is bounded by --seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import random
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _setup import (
    cpu_seconds,
    machine_cpu,
    make_data_dir,
    raise_fd_limit,
    start_baseline,
    start_core,
    start_core_tls,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from legacy_socket_server.client import CoreClient, CoreUnavailable  # noqa: E402
from legacy_socket_server.tls import ClientTLS  # noqa: E402

#: Clients connect in batches of this many: a listen backlog is finite.
CONNECT_BATCH = 100


@dataclass(frozen=True)
class SharedContextTLS(ClientTLS):
    """A pinned-fingerprint :class:`ClientTLS` that builds its SSL context once.

    ``ClientTLS.context()`` builds a new one per connection (~0.2 ms of client
    CPU); the load generator shares the machine's cores with the core, so it
    keeps one. Sessions are not resumed (asyncio passes no ``session=``), so
    every connection is still a full handshake.
    """

    @functools.cached_property
    def _shared(self) -> ssl.SSLContext:
        return super().context()

    def context(self) -> ssl.SSLContext:
        return self._shared


def p_ms(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` (seconds), in ms; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


@dataclass
class Stats:
    sent: int = 0
    acked: int = 0
    #: (send time, send→delivery latency), both perf_counter seconds: the send time
    #: lets bench/tls_handshakes.py split one run into phases.
    samples: list[tuple[float, float]] = field(default_factory=list)
    seen_ids: set[int] = field(default_factory=set)
    dupes: int = 0
    resets: int = 0


@dataclass
class Result:
    """One run against one target. CPU figures cover the window the senders ran."""

    msgs_per_s: float
    p50_ms: float
    p99_ms: float
    lost: int
    dupes: int
    resets: int
    elapsed: float
    acked: int
    #: The target's CPU seconds in the window (NaN when its pid is unknown).
    target_cpu_s: float
    #: This load generator's CPU seconds in the window.
    gen_cpu_s: float
    #: Share of the whole machine's CPU that was busy in the window (0..1).
    machine_busy: float
    #: perf_counter when the senders started, and every (send time, latency).
    t0: float = 0.0
    samples: list[tuple[float, float]] = field(default_factory=list, repr=False)
    #: What the ``side`` coroutine of :func:`run_target` returned.
    side: Any = None

    @property
    def others_cores(self) -> float:
        """Cores' worth of CPU that neither the target nor this generator used in the window:
        other processes on a shared machine (the noise in the figures)."""
        busy = self.machine_busy * (os.cpu_count() or 1)
        return busy - (self.target_cpu_s + self.gen_cpu_s) / self.elapsed

    @property
    def msgs_per_cpu_s(self) -> float:
        """Messages per CPU-second of the target: its cost per message, whoever was the
        bottleneck (fairest between runs at the same offered ``--rate``)."""
        return self.acked / self.target_cpu_s if self.target_cpu_s > 0 else float("nan")


async def receiver(c: CoreClient, me: str, mode: str, stats: Stats) -> None:
    """Receive until cancelled (after the senders stop it drains what is left)."""
    cursor = None
    try:
        while True:
            wait = 1000 if mode == "longpoll" else 0
            r = await c.poll(cursor, wait_ms=wait)
            cursor = r.get("cursor")
            stats.resets += bool(r.get("reset"))
            now = time.perf_counter()
            for ev in r["events"]:
                if ev.get("type") != "message":
                    continue
                m = ev["message"]
                if m["to"] != me:
                    continue
                if m["id"] in stats.seen_ids:
                    stats.dupes += 1
                    continue
                stats.seen_ids.add(m["id"])
                sent = float(m["text"].split()[1])
                stats.samples.append((sent, now - sent))
            if mode == "poll":
                await asyncio.sleep(0.1)
    except CoreUnavailable:
        pass


async def sender(
    c: CoreClient, me: str, peers: list[str], rate: float, stats: Stats, stop: asyncio.Event
) -> None:
    rng = random.Random(me)
    interval = 1 / rate if rate else 0
    nxt = time.perf_counter()
    while not stop.is_set():
        to = rng.choice(peers)
        while to == me:
            to = rng.choice(peers)
        stats.sent += 1
        await c.send_message(to, f"t= {time.perf_counter():.6f} load")
        stats.acked += 1
        if interval:
            nxt += interval
            delay = nxt - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)


async def connect_clients(
    port: int, tokens: dict[str, str], names: list[str], tls: ClientTLS | None = None
) -> dict[str, CoreClient]:
    """Connect and ``resume`` every name, in batches (over TLS when ``tls`` is given)."""
    clients: dict[str, CoreClient] = {}
    for i in range(0, len(names), CONNECT_BATCH):
        batch = names[i : i + CONNECT_BATCH]
        conns = await asyncio.gather(
            *(CoreClient.connect("127.0.0.1", port, tls=tls) for _ in batch)
        )
        await asyncio.gather(*(c.resume(tokens[nm]) for c, nm in zip(conns, batch, strict=True)))
        clients.update(zip(batch, conns, strict=True))
    return clients


async def run_target(
    port: int,
    tokens: dict[str, str],
    n: int,
    mode: str,
    seconds: float,
    senders: int,
    rate: float,
    *,
    tls: ClientTLS | None = None,
    target_pid: int | None = None,
    side: Callable[[float], Awaitable[Any]] | None = None,
) -> Result:
    """Chat with ``n`` clients for ``seconds``; ``side(t0)``, when given, runs beside the
    senders from their start (t0, perf_counter) and its result lands in ``Result.side``."""
    names = list(tokens)[:n]
    clients = await connect_clients(port, tokens, names, tls)
    stats = Stats()
    stop = asyncio.Event()
    tasks = [asyncio.create_task(receiver(c, nm, mode, stats)) for nm, c in clients.items()]
    # Let the login burst settle (each client first drains n presence events)
    # so the figures describe steady chatting, not the arrival.
    await asyncio.sleep(min(3.0, 0.5 + n / 1000))
    send_names = names[: max(1, min(senders, n))]
    per_sender = rate / len(send_names) if rate else 0
    cpu0 = cpu_seconds(target_pid) if target_pid else float("nan")
    gen0 = time.process_time()
    busy0, total0 = machine_cpu()
    t0 = time.perf_counter()
    stasks = [
        asyncio.create_task(sender(clients[nm], nm, names, per_sender, stats, stop))
        for nm in send_names
    ]
    side_task = asyncio.create_task(side(t0)) if side is not None else None
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*stasks, return_exceptions=True)
    elapsed = time.perf_counter() - t0
    target_cpu = cpu_seconds(target_pid) - cpu0 if target_pid else float("nan")
    gen_cpu = time.process_time() - gen0
    busy1, total1 = machine_cpu()
    side_result = await side_task if side_task is not None else None
    deadline = time.monotonic() + 5
    while len(stats.seen_ids) < stats.acked and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*(c.close() for c in clients.values()), return_exceptions=True)
    lat = [latency for _, latency in stats.samples]
    return Result(
        msgs_per_s=stats.acked / elapsed,
        p50_ms=statistics.median(lat) * 1000 if lat else float("nan"),
        p99_ms=p_ms(lat, 0.99),
        lost=stats.acked - len(stats.seen_ids),
        dupes=stats.dupes,
        resets=stats.resets,
        elapsed=elapsed,
        acked=stats.acked,
        target_cpu_s=target_cpu,
        gen_cpu_s=gen_cpu,
        machine_busy=(busy1 - busy0) / max(1, total1 - total0),
        t0=t0,
        samples=stats.samples,
        side=side_result,
    )


def loop_runner() -> tuple[Callable[[Coroutine[Any, Any, Any]], Any], bool]:
    """uvloop's runner when installed (the core uses it too), else asyncio's."""
    try:
        import uvloop

        return uvloop.run, True
    except ImportError:
        return asyncio.run, False


def describe(label: str, r: Result) -> str:
    """One run as a log line: throughput, latency, and who used the CPU."""
    return (
        f"{label} {r.msgs_per_s:9.0f} msg/s  p50 {r.p50_ms:7.1f} ms  p99 {r.p99_ms:7.1f} ms  "
        f"lost {r.lost}  dup {r.dupes}  resets {r.resets}  "
        f"cpu {r.target_cpu_s:.1f} s ({r.target_cpu_s / r.elapsed:.0%})  "
        f"gen {r.gen_cpu_s / r.elapsed:.0%}  others {r.others_cores:.1f} cores  "
        f"{r.msgs_per_cpu_s:6.0f} msg/cpu-s"
    )


def median_of(results: list[Result], attr: str) -> float:
    return statistics.median(getattr(r, attr) for r in results)


def print_baseline_table(groups: dict[tuple[str, int], dict[str, list[Result]]]) -> None:
    """The core vs baseline table (``--transport plain``; medians when repeated)."""
    print(
        "\n| mode | clients | core msg/s | baseline msg/s | ratio | core p50/p99 ms | "
        "baseline p50/p99 ms | lost |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for (mode, n), by in groups.items():
        c, b = by["core"], by["baseline"]
        print(
            f"| {mode} | {n} | {median_of(c, 'msgs_per_s'):.0f} | "
            f"{median_of(b, 'msgs_per_s'):.0f} | "
            f"{median_of(c, 'msgs_per_s') / median_of(b, 'msgs_per_s'):.2f} | "
            f"{median_of(c, 'p50_ms'):.1f} / {median_of(c, 'p99_ms'):.1f} | "
            f"{median_of(b, 'p50_ms'):.1f} / {median_of(b, 'p99_ms'):.1f} | "
            f"{sum(r.lost for r in c)} |"
        )


def print_tls_table(groups: dict[tuple[str, int], dict[str, list[Result]]]) -> None:
    """TLS vs plaintext against the same core: medians over the rounds, and the ratio of
    the medians with the range of the per-round ratios (round i's TLS / round i's plain)."""
    print(
        "\nTLS vs plaintext, same core process; medians of the rounds, ratio = TLS/plain "
        "(per-round range in brackets); cpu = the core's CPU while the senders ran; others = "
        "cores' worth used by other processes (noise)"
    )
    print(
        "| mode | clients | rounds | plain msg/s | TLS msg/s | ratio | plain msg/cpu-s | "
        "TLS msg/cpu-s | ratio | plain p50/p99 ms | TLS p50/p99 ms | core cpu plain/TLS | "
        "gen cpu plain/TLS | others plain/TLS | lost |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")

    def ratio(attr: str, plain: list[Result], tls: list[Result]) -> str:
        per_round = [getattr(t, attr) / getattr(p, attr) for p, t in zip(plain, tls, strict=True)]
        mid = median_of(tls, attr) / median_of(plain, attr)
        return f"{mid:.2f} ({min(per_round):.2f}–{max(per_round):.2f})"

    def share(results: list[Result], attr: str) -> str:
        return f"{statistics.median(getattr(r, attr) / r.elapsed for r in results):.0%}"

    for (mode, n), by in groups.items():
        plain, tls = by["plain"], by["tls"]
        print(
            f"| {mode} | {n} | {len(plain)} | {median_of(plain, 'msgs_per_s'):.0f} | "
            f"{median_of(tls, 'msgs_per_s'):.0f} | {ratio('msgs_per_s', plain, tls)} | "
            f"{median_of(plain, 'msgs_per_cpu_s'):.0f} | {median_of(tls, 'msgs_per_cpu_s'):.0f} | "
            f"{ratio('msgs_per_cpu_s', plain, tls)} | "
            f"{median_of(plain, 'p50_ms'):.1f} / {median_of(plain, 'p99_ms'):.1f} | "
            f"{median_of(tls, 'p50_ms'):.1f} / {median_of(tls, 'p99_ms'):.1f} | "
            f"{share(plain, 'target_cpu_s')} / {share(tls, 'target_cpu_s')} | "
            f"{share(plain, 'gen_cpu_s')} / {share(tls, 'gen_cpu_s')} | "
            f"{median_of(plain, 'others_cores'):.1f} / {median_of(tls, 'others_cores'):.1f} | "
            f"{sum(r.lost for r in plain + tls)} |"
        )


def print_tls_only_table(groups: dict[tuple[str, int], dict[str, list[Result]]]) -> None:
    print("\n| mode | clients | rounds | TLS msg/s | msg/cpu-s | p50/p99 ms | core cpu | lost |")
    print("|---|---|---|---|---|---|---|---|")
    for (mode, n), by in groups.items():
        rs = by["tls"]
        cpu = statistics.median(r.target_cpu_s / r.elapsed for r in rs)
        print(
            f"| {mode} | {n} | {len(rs)} | {median_of(rs, 'msgs_per_s'):.0f} | "
            f"{median_of(rs, 'msgs_per_cpu_s'):.0f} | {median_of(rs, 'p50_ms'):.1f} / "
            f"{median_of(rs, 'p99_ms'):.1f} | {cpu:.0%} | {sum(r.lost for r in rs)} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="*", default=[2, 100, 1000])
    ap.add_argument("--mode", choices=["longpoll", "poll", "both"], default="both")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--senders", type=int, default=50, help="clients that send (closed loop)")
    ap.add_argument(
        "--rate", type=float, default=0, help="long-poll: total msgs/s (0: as fast as acked)"
    )
    ap.add_argument(
        "--poll-rate", type=float, default=1000, help="100 ms polling: total msgs/s offered"
    )
    ap.add_argument("--fsync", default="everysec")
    ap.add_argument(
        "--transport",
        choices=["plain", "tls", "both"],
        default="plain",
        help="plain: the core vs the baseline router; tls: the core over TLS; "
        "both: the core over plaintext vs over TLS (alternating runs, same process)",
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="rounds per configuration (default: 1 with plain, 2 with tls/both)",
    )
    args = ap.parse_args()
    modes = ["longpoll", "poll"] if args.mode == "both" else [args.mode]
    repeats = args.repeats or (1 if args.transport == "plain" else 2)
    loop_run, has_uvloop = loop_runner()
    # One socket per client, plus the core's and the baseline's own (separate processes).
    raise_fd_limit(max(args.clients) + 64)

    groups: dict[tuple[str, int], dict[str, list[Result]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tokens = make_data_dir(Path(tmp), max(args.clients))
        procs = []
        # (label, port, tokens, pid, tls) per target; the baseline resumes by name.
        targets: dict[str, tuple[int, dict[str, str], int, ClientTLS | None]] = {}
        try:
            if args.transport == "plain":
                core, core_port = start_core(Path(tmp), args.fsync)
                base, base_port = start_baseline(uvloop=has_uvloop)
                procs += [core, base]
                targets["core"] = (core_port, tokens, core.pid, None)
                targets["baseline"] = (base_port, {n: n for n in tokens}, base.pid, None)
            else:
                tcore = start_core_tls(Path(tmp), args.fsync)
                procs.append(tcore.proc)
                tls = SharedContextTLS(fingerprint=tcore.fingerprint)
                if args.transport == "both":
                    targets["plain"] = (tcore.port, tokens, tcore.proc.pid, None)
                targets["tls"] = (tcore.tls_port, tokens, tcore.proc.pid, tls)
            for mode in modes:
                for n in args.clients:
                    group = groups.setdefault((mode, n), {label: [] for label in targets})
                    for rnd in range(repeats):
                        # plain, TLS, TLS, plain, …: a drifting machine hits both alike.
                        order = list(targets) if rnd % 2 == 0 else list(reversed(targets))
                        for label in order:
                            port, toks, pid, client_tls = targets[label]
                            r = loop_run(
                                run_target(
                                    port,
                                    toks,
                                    n,
                                    mode,
                                    args.seconds,
                                    args.senders,
                                    args.rate if mode == "longpoll" else args.poll_rate,
                                    tls=client_tls,
                                    target_pid=pid,
                                )
                            )
                            group[label].append(r)
                            print(describe(f"{mode:8} n={n:5} {label:8}", r), flush=True)
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(30)

    if args.transport == "plain":
        print_baseline_table(groups)
    elif args.transport == "both":
        print_tls_table(groups)
    else:
        print_tls_only_table(groups)


if __name__ == "__main__":
    main()
