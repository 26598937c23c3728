"""Memory per idle logged-in connection, and the loop stall of a login.

    python bench/core_footprint.py [--clients 2000]

Starts the real core, measures its RSS, logs in N idle connections (each
with ``resume``, each holding a long-poll like a real idle client), measures
again. Then times ``ping`` round trips while another connection logs in with
a password, which shows what one argon2 verify costs everyone else.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _setup import make_data_dir, rss_kib, start_core

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from legacy_socket_server.client import CoreClient  # noqa: E402


async def measure(port: int, pid: int, tokens: dict[str, str], n: int) -> None:
    warm = await CoreClient.connect("127.0.0.1", port)
    await warm.resume(tokens[list(tokens)[-1]])
    await asyncio.sleep(0.5)
    before = rss_kib(pid)
    clients = []
    names = list(tokens)[:n]
    for i in range(0, n, 200):
        batch = names[i : i + 200]
        conns = await asyncio.gather(*(CoreClient.connect("127.0.0.1", port) for _ in batch))
        await asyncio.gather(*(c.resume(tokens[nm]) for c, nm in zip(conns, batch, strict=True)))
        clients += conns
    polls = [asyncio.create_task(c.poll(wait_ms=30000)) for c in clients]
    await asyncio.sleep(1.0)
    after = rss_kib(pid)
    print(f"core RSS {before} KiB idle -> {after} KiB with {n} idle logged-in long-polling clients")
    print(f"memory per idle connection: {(after - before) * 1024 / n / 1024:.1f} KiB (aim < 30)")

    # Ping latency while a password login runs: the login's argon2 verify blocks the loop.
    pinger = warm
    quiet = []
    for _ in range(50):
        t0 = time.perf_counter()
        await pinger.request("ping")
        quiet.append(time.perf_counter() - t0)
    worst = []
    for _ in range(10):
        c = await CoreClient.connect("127.0.0.1", port)
        login = asyncio.create_task(c.request("login", username="u0000", password="bench"))
        await asyncio.sleep(0)
        t0 = time.perf_counter()
        await pinger.request("ping")
        worst.append(time.perf_counter() - t0)
        await login
        await c.close()
    print(
        f"ping round trip: idle median {statistics.median(quiet) * 1000:.2f} ms; "
        f"during a password login median {statistics.median(worst) * 1000:.1f} ms, "
        f"max {max(worst) * 1000:.1f} ms"
    )
    for p in polls:
        p.cancel()
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=2000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tokens = make_data_dir(Path(tmp), args.clients + 1)
        core, port = start_core(Path(tmp))
        try:
            asyncio.run(measure(port, core.pid, tokens, args.clients))
        finally:
            core.terminate()
            core.wait(60)


if __name__ == "__main__":
    main()
