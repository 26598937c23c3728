"""Storage costs: append rate vs history size, startup time, login stall.

    python bench/store_bench.py                 # 1,000 vs 1,000,000 stored messages
    python bench/store_bench.py --big 200000    # quicker

Runs ChatService in process (no sockets) so it measures the rules plus the
journal write of each ``send_message``, nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from legacy_socket_server.chat import ChatService, Session  # noqa: E402
from legacy_socket_server.limits import HashGate  # noqa: E402
from legacy_socket_server.store import HistoryState, HistoryStore, write_snapshot  # noqa: E402
from legacy_socket_server.tokens import TokenStore  # noqa: E402
from legacy_socket_server.users import UserStore  # noqa: E402


def seed(data_dir: Path, n: int) -> None:
    UserStore(data_dir)  # demo users
    names = ["Alice", "Bob", "Charlie"]
    msgs = [
        {
            "id": i,
            "from": names[i % 3],
            "to": names[(i + 1) % 3],
            "text": f"stored message number {i} with some ordinary text in it",
            "ts": "2026-11-24T10:00:00.123Z",
        }
        for i in range(1, n + 1)
    ]
    write_snapshot(data_dir / "history.json", HistoryState(msgs, {}, n + 1, 1))


def open_service(data_dir: Path) -> tuple[ChatService, float]:
    gc.collect()
    t0 = time.perf_counter()
    # An unbounded gate: each login's argon2 check runs inline, which is the stall measured.
    gate = HashGate(burst=float("inf"))
    stores = UserStore(data_dir), HistoryStore(data_dir), TokenStore(data_dir)
    svc = ChatService(*stores, hash_gate=gate)
    return svc, time.perf_counter() - t0


async def append_rate(svc: ChatService, count: int) -> float:
    out: list[dict] = []
    s = Session(out.append)
    svc._start_session(s, "Alice", "t")
    t0 = time.perf_counter()
    for i in range(count):
        r = svc.handle(s, {"purpose": "send_message", "to": "Bob", "text": f"bench {i}"})
        assert r and r["ok"], r
    return count / (time.perf_counter() - t0)


async def login_stall(svc: ChatService, rounds: int = 10) -> list[float]:
    times = []
    for _ in range(rounds):
        s = Session(lambda r: None)
        t0 = time.perf_counter()
        r = svc.handle(s, {"purpose": "login", "username": "Bob", "password": "456"})
        times.append(time.perf_counter() - t0)
        assert r and r["ok"], r
        svc.disconnect(s)
    return times


async def measure(args: argparse.Namespace) -> tuple[dict[int, tuple[float, float]], list[float]]:
    # One loop for all: the service journals at startup (rooms), so it needs one.
    results: dict[int, tuple[float, float]] = {}
    stall: list[float] = []
    for n in (args.small, args.big):
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            seed(d, n)
            svc, startup = open_service(d)
            svc.sends.burst = svc.sends.rate = 1e12  # measure storage, not the throttle
            rates = [await append_rate(svc, args.appends) for _ in range(3)]
            results[n] = (startup, statistics.median(rates))
            if n == args.small:
                stall = await login_stall(svc)
            svc.history.close()
        print(
            f"{n:>9} stored: startup {startup:6.2f} s, append {results[n][1]:8.0f} msg/s",
            flush=True,
        )
    return results, stall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=1_000)
    ap.add_argument("--big", type=int, default=1_000_000)
    ap.add_argument("--appends", type=int, default=20_000)
    args = ap.parse_args()
    results, stall = asyncio.run(measure(args))
    ratio = results[args.big][1] / results[args.small][1]
    print(f"\nappend rate ratio {args.big:,} vs {args.small:,} stored: {ratio:.2f} (aim >= 0.8)")
    print(f"startup with {args.big:,} messages: {results[args.big][0]:.2f} s (aim < 10 s)")
    print(
        f"login (argon2id verify) stalls the loop: median {statistics.median(stall) * 1000:.1f} ms,"
        f" max {max(stall) * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
