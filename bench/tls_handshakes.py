"""The core's TLS handshake rate, idle and while 1,000 clients chat over TLS.

A storm opens connections to the core as fast as it can, ``--concurrency``
at a time: TCP connect, full TLS handshake (the pinned certificate checked),
one ``ping`` request/reply, close. It runs in a separate process, so its
client-side handshakes do not stall the chat clients' event loop (they still
share the machine's cores, and this is reported). Every round, against one
core process:

1. ``idle tls``:   the storm alone, over TLS;
2. ``idle plain``: the same storm over plaintext, for reference (what a
   connection costs without TLS);
3. chat: ``--clients`` clients chat over TLS (long-poll, ``--senders`` senders
   offering ``--rate`` msgs/s in all, as ``core_load.py``) for 5 × ``--seconds``:
   quiet, TLS storm, quiet, plaintext storm, quiet. The chat's msgs/s and
   p50/p99 are split by send time into those phases; the plaintext storm tells
   whether what the chat suffers (or the storm gets) is TLS's doing or the
   busy loop's.

The core's CPU per connection is the fair figure: the storm worker, the chat
clients and the core are three Python processes on the same cores, and the
storm's rate is often the worker's limit, not the core's.

    python bench/tls_handshakes.py                        # 1,000 chatting, 2 rounds
    python bench/tls_handshakes.py --rate 0               # the chat saturating the core
    python bench/tls_handshakes.py --clients 100 --seconds 3 --rounds 1

Talks only to 127.0.0.1; every phase is bounded by --seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _setup import (
    TLSCore,
    cpu_seconds,
    machine_cpu,
    make_data_dir,
    raise_fd_limit,
    start_core_tls,
)
from core_load import Result, SharedContextTLS, loop_runner, p_ms, run_target

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from legacy_socket_server.client import CoreClient, CoreUnavailable  # noqa: E402


# -- the storm worker (a separate process) -------------------------------------------------
async def storm(
    port: int,
    fingerprint: str | None,
    core_pid: int,
    start_at: float,
    seconds: float,
    concurrency: int,
) -> dict[str, Any]:
    """From ``start_at`` (wall clock; 0: now) for ``seconds``: connect, ``ping``, close, with
    ``concurrency`` in flight. Returns counts, timings and CPU (its own and the core's)."""
    tls = SharedContextTLS(fingerprint=fingerprint) if fingerprint else None
    await asyncio.sleep(max(0.0, start_at - time.time()))
    latencies: list[float] = []
    #: Where the time goes: connect (TCP + TLS handshake), ping, close.
    parts: tuple[list[float], list[float], list[float]] = ([], [], [])
    errors: list[str] = []
    core0, gen0, (busy0, total0) = cpu_seconds(core_pid), time.process_time(), machine_cpu()
    wall0, t0 = time.time(), time.perf_counter()
    end = t0 + seconds

    async def loop() -> None:
        while time.perf_counter() < end:
            t = time.perf_counter()
            try:
                c = await CoreClient.connect("127.0.0.1", port, tls=tls, timeout=15)
                t1 = time.perf_counter()
                reply = await c.request("ping", timeout=15)
                t2 = time.perf_counter()
                await c.close()
            except (CoreUnavailable, OSError) as exc:
                errors.append(str(exc))
                continue
            if not reply.get("ok"):
                errors.append(repr(reply))
                continue
            t3 = time.perf_counter()
            latencies.append(t3 - t)
            for part, value in zip(parts, (t1 - t, t2 - t1, t3 - t2), strict=True):
                part.append(value)

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    # Connections started before the end finish after it: the rate counts them over
    # the whole time they took.
    elapsed = time.perf_counter() - t0
    busy1, total1 = machine_cpu()
    return {
        "conns": len(latencies),
        "elapsed": elapsed,
        "wall_start": wall0,
        "wall_end": wall0 + elapsed,
        "core_cpu_s": cpu_seconds(core_pid) - core0,
        "worker_cpu_s": time.process_time() - gen0,
        "machine_busy": (busy1 - busy0) / max(1, total1 - total0),
        "p50_ms": p_ms(latencies, 0.5),
        "p99_ms": p_ms(latencies, 0.99),
        "parts_p50_ms": [p_ms(part, 0.5) for part in parts],
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
    }


def worker_main(spec: str) -> None:
    """Storm once the start time (wall clock) arrives on stdin; print the result as JSON.

    The start comes after the imports: a worker started early does its start-up
    (a good part of a CPU-second) before the phase it measures, not in it."""
    raise_fd_limit(1024)
    start_at = float(sys.stdin.readline())
    run, _ = loop_runner()
    print(json.dumps(run(storm(start_at=start_at, **json.loads(spec)))), flush=True)


def start_worker(
    port: int, fingerprint: str | None, core_pid: int, seconds: float, concurrency: int
) -> subprocess.Popen[bytes]:
    """A storm worker, waiting for its start time on stdin (see :func:`worker_main`)."""
    spec = {
        "port": port,
        "fingerprint": fingerprint,
        "core_pid": core_pid,
        "seconds": seconds,
        "concurrency": concurrency,
    }
    args = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    return subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def finish_worker(label: str, proc: subprocess.Popen[bytes], start_at: float) -> StormResult:
    """Give ``proc`` its start time and wait for its result (blocking)."""
    out, _ = proc.communicate(f"{start_at}\n".encode(), timeout=300)
    if proc.returncode:
        raise RuntimeError(f"storm worker exited with {proc.returncode}")
    return StormResult(label=label, **json.loads(out.decode().strip().splitlines()[-1]))


# -- the orchestrator ------------------------------------------------------------------------
@dataclass
class StormResult:
    label: str
    conns: int
    elapsed: float
    core_cpu_s: float
    worker_cpu_s: float
    machine_busy: float
    p50_ms: float
    p99_ms: float
    #: Median connect (TCP + TLS handshake), ping and close times.
    parts_p50_ms: list[float]
    errors: int
    first_error: str
    wall_start: float
    wall_end: float
    #: The core's CPU share spent on other work meanwhile (the chat, as measured in its
    #: quiet phases): subtracted, so the cost per connection is the storm's alone. None:
    #: unknown (a closed-loop chat takes whatever CPU the storm leaves it).
    background_cpu: float | None = 0.0

    @property
    def per_s(self) -> float:
        return self.conns / self.elapsed

    @property
    def core_ms_per_conn(self) -> float:
        if self.background_cpu is None or not self.conns:
            return float("nan")
        return (self.core_cpu_s - self.background_cpu * self.elapsed) / self.conns * 1000

    def line(self) -> str:
        err = f"  errors {self.errors} ({self.first_error[:80]})" if self.errors else ""
        return (
            f"{self.label:20} {self.per_s:7.0f} conns/s  connect+ping+close p50 "
            f"{self.p50_ms:6.1f} ms p99 {self.p99_ms:6.1f} ms "
            f"(p50 connect/ping/close {'/'.join(f'{v:.1f}' for v in self.parts_p50_ms)})  core cpu "
            f"{self.core_cpu_s / self.elapsed:4.0%} ({self.core_ms_per_conn:.2f} ms/conn net, "
            f"{1000 / self.core_ms_per_conn:5.0f} conns per core-cpu-s)  worker cpu "
            f"{self.worker_cpu_s / self.elapsed:4.0%}  machine {self.machine_busy:4.0%}{err}"
        )


def idle_storm(
    label: str, port: int, fingerprint: str | None, core_pid: int, seconds: float, conc: int
) -> StormResult:
    """The storm with nothing else running (this process only waits)."""
    return finish_worker(label, start_worker(port, fingerprint, core_pid, seconds, conc), 0)


@dataclass
class Phase:
    name: str
    msgs_per_s: float
    p50_ms: float
    p99_ms: float
    #: The core's CPU share in the phase (quiet phases: the average over all quiet time).
    core_cpu: float


def split_phases(chat: Result, storms: list[StormResult], open_loop: bool) -> list[Phase]:
    """The chat's figures by send time: quiet, then each storm followed by a quiet phase.

    With an ``open_loop`` chat (a fixed offered rate) its CPU share in the quiet phases is
    what it also takes during a storm, so the storms' own CPU can be told apart."""
    # Messages carry perf_counter stamps, the worker reports wall clock: one offset.
    offset = time.time() - time.perf_counter()
    storm_s = sum(st.elapsed for st in storms)
    quiet_cpu = (chat.target_cpu_s - sum(st.core_cpu_s for st in storms)) / (chat.elapsed - storm_s)
    bounds: list[tuple[str, float, float, float]] = []
    at = chat.t0
    for i, st in enumerate(storms):
        st.background_cpu = quiet_cpu if open_loop else None
        s0, s1 = st.wall_start - offset, st.wall_end - offset
        bounds.append((f"quiet {i}", at, s0, quiet_cpu))
        bounds.append(
            (st.label.replace(" during chat", " storm"), s0, s1, st.core_cpu_s / st.elapsed)
        )
        at = s1
    bounds.append((f"quiet {len(storms)}", at, chat.t0 + chat.elapsed, quiet_cpu))
    phases = []
    for name, a, b, cpu in bounds:
        lat = [latency for sent, latency in chat.samples if a <= sent < b]
        phases.append(
            Phase(name, len(lat) / max(1e-9, b - a), p_ms(lat, 0.5), p_ms(lat, 0.99), cpu)
        )
    return phases


def chat_with_storms(
    core: TLSCore, tokens: dict[str, str], args: argparse.Namespace, tls_first: bool
) -> tuple[Result, list[StormResult]]:
    """``args.clients`` chat over TLS for 5 × ``args.seconds``: quiet, storm, quiet, storm,
    quiet; one storm over TLS, one over plaintext (the reference: is what the chat suffers,
    or a slow accept, TLS's doing or the busy loop's?), in the order given."""
    s = args.seconds
    pid = core.proc.pid
    storms = [
        ("tls during chat", core.tls_port, core.fingerprint),
        ("plain during chat", core.port, None),
    ]
    if not tls_first:
        storms.reverse()
    # Started now, so their start-up is over before the chat is measured.
    workers = [
        (label, start_worker(port, fp, pid, s, args.concurrency), at)
        for (label, port, fp), at in zip(storms, (s, 3 * s), strict=True)
    ]

    async def side(t0: float) -> list[StormResult]:
        wall_t0 = time.time() - (time.perf_counter() - t0)
        return list(
            await asyncio.gather(
                *(
                    asyncio.to_thread(finish_worker, label, proc, wall_t0 + at)
                    for label, proc, at in workers
                )
            )
        )

    run, _ = loop_runner()
    try:
        chat = run(
            run_target(
                core.tls_port,
                tokens,
                args.clients,
                "longpoll",
                5 * s,
                args.senders,
                args.rate,
                tls=SharedContextTLS(fingerprint=core.fingerprint),
                target_pid=pid,
                side=side,
            )
        )
    finally:
        # A chat that failed before the storms never gave them a start: do not leave
        # them waiting on stdin.
        for _, proc, _ in workers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return chat, chat.side


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        worker_main(sys.argv[2])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=1000, help="chatting over TLS")
    ap.add_argument("--senders", type=int, default=50, help="chat clients that send")
    ap.add_argument(
        "--rate",
        type=float,
        default=1000,
        help="chat msgs/s offered in all (0: closed loop, as fast as acked, which saturates "
        "the core and leaves the storm only what the loop's turns give it)",
    )
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each phase")
    ap.add_argument("--concurrency", type=int, default=16, help="storm connections in flight")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--fsync", default="everysec")
    args = ap.parse_args()
    raise_fd_limit(args.clients + args.concurrency + 64)

    storms: list[tuple[int, StormResult]] = []
    chats: list[tuple[int, Result, list[Phase]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        tokens = make_data_dir(Path(tmp), args.clients)
        core = start_core_tls(Path(tmp), args.fsync)
        try:
            for rnd in range(1, args.rounds + 1):
                for label, port, fp in (
                    ("idle tls", core.tls_port, core.fingerprint),
                    ("idle plain", core.port, None),
                ):
                    st = idle_storm(label, port, fp, core.proc.pid, args.seconds, args.concurrency)
                    storms.append((rnd, st))
                    print(f"round {rnd} {st.line()}", flush=True)
                # Alternate which storm comes first: a drifting machine hits both alike.
                chat, during = chat_with_storms(core, tokens, args, tls_first=rnd % 2 == 1)
                phases = split_phases(chat, during, open_loop=args.rate > 0)
                chats.append((rnd, chat, phases))
                for st in during:
                    storms.append((rnd, st))
                    print(f"round {rnd} {st.line()}", flush=True)
                for ph in phases:
                    print(
                        f"round {rnd} chat {args.clients} tls {ph.name:11} {ph.msgs_per_s:7.0f} "
                        f"msg/s  p50 {ph.p50_ms:6.1f} ms  p99 {ph.p99_ms:6.1f} ms  "
                        f"core cpu {ph.core_cpu:4.0%}",
                        flush=True,
                    )
                print(
                    f"round {rnd} chat lost {chat.lost} dup {chat.dupes} resets {chat.resets}  "
                    f"gen cpu {chat.gen_cpu_s / chat.elapsed:.0%}  "
                    f"others {chat.others_cores:.1f} cores",
                    flush=True,
                )
        finally:
            core.proc.terminate()
            core.proc.wait(30)

    print(
        f"\nConnection storms (connect + handshake + ping + close, {args.concurrency} in flight; "
        f"'during chat' = while {args.clients} clients chat over TLS)"
    )
    print(
        "| round | storm | conns/s | p50/p99 ms | core cpu | core ms/conn* | "
        "conns per core-cpu-s* | worker cpu | errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for rnd, st in storms:
        print(
            f"| {rnd} | {st.label} | {st.per_s:.0f} | {st.p50_ms:.1f} / {st.p99_ms:.1f} | "
            f"{st.core_cpu_s / st.elapsed:.0%} | {st.core_ms_per_conn:.2f} | "
            f"{1000 / st.core_ms_per_conn:.0f} | {st.worker_cpu_s / st.elapsed:.0%} | "
            f"{st.errors} |"
        )
    print(
        "* during chat: net of the chat's own CPU (the core's share in the quiet phases); "
        "nan with a closed-loop chat, which takes whatever CPU the storm leaves"
    )
    rate = f"{args.rate:.0f} msg/s offered" if args.rate else "closed loop"
    print(
        f"\nChat ({args.clients} clients over TLS, long-poll, {args.senders} senders, {rate}) "
        "by phase"
    )
    print("| round | phase | msg/s | p50 ms | p99 ms | core cpu |")
    print("|---|---|---|---|---|---|")
    for rnd, _, phases in chats:
        for ph in phases:
            print(
                f"| {rnd} | {ph.name} | {ph.msgs_per_s:.0f} | {ph.p50_ms:.1f} | "
                f"{ph.p99_ms:.1f} | {ph.core_cpu:.0%} |"
            )
    if chats:
        by_name: dict[str, list[float]] = {}
        for _, _, phases in chats:
            for ph in phases:
                key = "quiet" if ph.name.startswith("quiet") else ph.name
                by_name.setdefault(key, []).append(ph.p99_ms)
        quiet = statistics.median(by_name.pop("quiet"))
        moved = ", ".join(
            f"{statistics.median(v):.1f} ms during the {k} (x{statistics.median(v) / quiet:.1f})"
            for k, v in by_name.items()
        )
        print(f"\nchat p99 (medians over rounds): {quiet:.1f} ms quiet, {moved}")


if __name__ == "__main__":
    main()
