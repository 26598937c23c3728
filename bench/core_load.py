"""Core throughput and latency, side by side with a bare framed router.

N clients connect (``resume``), a set of senders route messages to random
peers while every client receives by long-poll (``wait_ms``) or by polling
every 100 ms. For each target (the core, then ``baseline_router.py``) it
prints messages/s, send→delivery latency p50/p99 and lost messages; the
core/baseline ratio is the figure to compare (machines here are shared).

    python bench/core_load.py                    # N = 2, 100, 1000; both modes
    python bench/core_load.py --clients 100 --mode longpoll --seconds 5

Talks only to 127.0.0.1; every run is bounded by --seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _setup import cpu_seconds, make_data_dir, start_baseline, start_core

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from legacy_socket_server.client import CoreClient, CoreUnavailable  # noqa: E402


class Stats:
    def __init__(self) -> None:
        self.sent = 0
        self.acked = 0
        self.latencies: list[float] = []
        self.seen_ids: set[int] = set()
        self.dupes = 0
        self.resets = 0


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
                stats.latencies.append(now - float(m["text"].split()[1]))
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


async def run_target(
    port: int, tokens: dict[str, str], n: int, mode: str, seconds: float, senders: int, rate: float
) -> dict[str, float]:
    names = list(tokens)[:n]
    clients: dict[str, CoreClient] = {}
    for i in range(0, n, 100):  # connect in batches: a listen backlog is finite
        batch = names[i : i + 100]
        conns = await asyncio.gather(*(CoreClient.connect("127.0.0.1", port) for _ in batch))
        await asyncio.gather(*(c.resume(tokens[nm]) for c, nm in zip(conns, batch, strict=True)))
        clients.update(zip(batch, conns, strict=True))
    stats = Stats()
    stop = asyncio.Event()
    tasks = [asyncio.create_task(receiver(c, nm, mode, stats)) for nm, c in clients.items()]
    # Let the login burst settle (each client first drains n presence events)
    # so the figures describe steady chatting, not the arrival.
    await asyncio.sleep(min(3.0, 0.5 + n / 1000))
    send_names = names[: max(1, min(senders, n))]
    per_sender = rate / len(send_names) if rate else 0
    t0 = time.perf_counter()
    stasks = [
        asyncio.create_task(sender(clients[nm], nm, names, per_sender, stats, stop))
        for nm in send_names
    ]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*stasks, return_exceptions=True)
    elapsed = time.perf_counter() - t0
    deadline = time.monotonic() + 5
    while len(stats.seen_ids) < stats.acked and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*(c.close() for c in clients.values()), return_exceptions=True)
    lat = sorted(stats.latencies) or [float("nan")]
    return {
        "msgs_per_s": stats.acked / elapsed,
        "p50_ms": statistics.median(lat) * 1000,
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000,
        "lost": stats.acked - len(stats.seen_ids),
        "dupes": stats.dupes,
        "resets": stats.resets,
    }


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
    args = ap.parse_args()
    modes = ["longpoll", "poll"] if args.mode == "both" else [args.mode]
    try:
        import uvloop

        loop_run = uvloop.run
        has_uvloop = True
    except ImportError:
        loop_run = asyncio.run
        has_uvloop = False

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tokens = make_data_dir(Path(tmp), max(args.clients))
        core, core_port = start_core(Path(tmp), args.fsync)
        base, base_port = start_baseline(uvloop=has_uvloop)
        base_tokens = {n: n for n in tokens}
        try:
            for mode in modes:
                for n in args.clients:
                    for target, port, toks, pid in (
                        ("core", core_port, tokens, core.pid),
                        ("baseline", base_port, base_tokens, base.pid),
                    ):
                        cpu0 = cpu_seconds(pid)
                        r = loop_run(
                            run_target(
                                port,
                                toks,
                                n,
                                mode,
                                args.seconds,
                                args.senders,
                                args.rate if mode == "longpoll" else args.poll_rate,
                            )
                        )
                        r["cpu_s"] = cpu_seconds(pid) - cpu0
                        rows.append((mode, n, target, r))
                        print(
                            f"{mode:8} n={n:5} {target:8} {r['msgs_per_s']:9.0f} msg/s  "
                            f"p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  "
                            f"lost {r['lost']}  dup {r['dupes']}  resets {r['resets']}  "
                            f"cpu {r['cpu_s']:.1f} s",
                            flush=True,
                        )
        finally:
            core.terminate()
            base.terminate()
            core.wait(30)
            base.wait(30)

    print(
        "\n| mode | clients | core msg/s | baseline msg/s | ratio | core p50/p99 ms | "
        "baseline p50/p99 ms | lost |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for i in range(0, len(rows), 2):
        mode, n, _, c = rows[i]
        _, _, _, b = rows[i + 1]
        print(
            f"| {mode} | {n} | {c['msgs_per_s']:.0f} | {b['msgs_per_s']:.0f} | "
            f"{c['msgs_per_s'] / b['msgs_per_s']:.2f} | {c['p50_ms']:.1f} / {c['p99_ms']:.1f} | "
            f"{b['p50_ms']:.1f} / {b['p99_ms']:.1f} | {c['lost']} |"
        )


if __name__ == "__main__":
    main()
