"""Rooms at rest: core memory per room membership, and startup with 1,000,000 room messages.

    python bench/room_memory.py                                  # both parts
    python bench/room_memory.py --part memory --layouts 1000x100 100x1000
    python bench/room_memory.py --part startup --messages 1000000 --rooms 1000 --repeat 2

**Memory** (``--part memory``): for each layout ROOMSxMEMBERS over ``--users``
users, in a fresh process each, ChatService runs in process on a temp data
directory; its ``general`` holds every user (the baseline). Then
ROOMS x MEMBERS memberships are made through ``ChatService.handle`` with
``create_room`` (private rooms, each naming its members; the creating session
is a bare ``Session`` with a user name and no event log, so nothing but the
membership state is built), and the process' RSS and tracemalloc's traced
bytes are compared with the baseline (after ``gc.collect()``). Then the service
is closed (compaction writes ``history.json``) and a fresh process loads that
directory, against a fresh process loading the baseline directory: the state
as it is after a restart. Figures are bytes per added membership.

**Startup** (``--part startup``): writes a ``history.json`` snapshot directly
(``store.write_snapshot`` streaming a generator, the format of
``store._snapshot_chunks``) with ``--users`` users, ``--rooms`` rooms of
``--room-members`` members each (plus ``general`` with everyone, a read marker
for every membership) and ``--messages`` messages spread over the rooms (one in
ten mentions a member), and the same directory with the same messages as direct
messages (each between a sender and the next member of the same room), then
times ``python server.py --data-dir D --port 0`` from spawn to its "listening"
log line, alternating the two ``--repeat`` times. The journal the core starts is
deleted after each run (the core is killed, not stopped, so it does not rewrite
the snapshot). An in-process breakdown (JSON parse, snapshot check, the rest of
``ChatService.__init__``) follows.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing as mp
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from _setup import ROOT, make_data_dir_fast, rss_kib
from system_load import wait_quiet

sys.path.insert(0, str(ROOT))

from legacy_socket_server.chat import ChatService, Session  # noqa: E402
from legacy_socket_server.store import HistoryState, HistoryStore, write_snapshot  # noqa: E402
from legacy_socket_server.tokens import TokenStore  # noqa: E402
from legacy_socket_server.users import UserStore  # noqa: E402

TS = "2026-11-24T10:00:00.123Z"


def in_child(fn, *args: Any) -> Any:
    """Run ``fn(*args)`` in a fresh (spawned) process and return its result."""
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as ex:
        return ex.submit(fn, *args).result()


def by_line() -> dict[str, int]:
    """Traced bytes by the source line that allocated them (when tracing)."""
    import tracemalloc

    if not tracemalloc.is_tracing():
        return {}
    out: dict[str, int] = {}
    for stat in tracemalloc.take_snapshot().statistics("lineno"):
        frame = stat.traceback[0]
        where = f"{Path(frame.filename).name}:{frame.lineno}"
        out[where] = out.get(where, 0) + stat.size
    return out


def top_lines(after: dict[str, int], before: dict[str, int], per: int, n: int = 6) -> str:
    diff = {k: v - before.get(k, 0) for k, v in after.items()}
    best = sorted(diff.items(), key=lambda kv: -kv[1])[:n]
    return ", ".join(f"{k} {v / per:.0f} B" for k, v in best)


def measure() -> tuple[int, int]:
    """(RSS bytes, tracemalloc traced bytes) of this process after a full collection."""
    import tracemalloc

    gc.collect()
    traced = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0
    return rss_kib(os.getpid()) * 1024, traced


def open_service(d: Path) -> ChatService:
    svc = ChatService(UserStore(d), HistoryStore(d), TokenStore(d))
    svc.sends.burst = svc.sends.rate = 1e12  # measure memory, not the throttle
    return svc


# -- memory per membership ------------------------------------------------------------------
def members_of(r: int, users: list[str], m: int) -> list[str]:
    return random.Random(r).sample(users, m)


def live_child(d: str, n_rooms: int, n_members: int, trace: bool) -> dict[str, Any]:
    """Build the rooms in a running ChatService; memory after minus before."""
    import tracemalloc

    if trace:
        tracemalloc.start()

    async def run() -> dict[str, Any]:
        svc = open_service(Path(d))
        users = sorted(svc.users.names())
        before = measure()
        lines_before = by_line()
        t0 = time.perf_counter()
        slowest = 0.0
        for r in range(n_rooms):
            members = members_of(r, users, n_members)
            s = Session(lambda reply: None)
            s.username = members[0]  # a session without an event log: state only
            req = {"purpose": "create_room", "room": f"room{r:04d}", "private": True}
            req["members"] = members[1:]
            t1 = time.perf_counter()
            reply = svc.handle(s, req)
            slowest = max(slowest, time.perf_counter() - t1)
            assert reply and reply["ok"], reply
        build = time.perf_counter() - t0
        after = measure()
        lines = by_line()
        svc.close()  # compaction: history.json now holds the rooms
        return {
            "rss": after[0] - before[0],
            "traced": after[1] - before[1],
            "lines": lines,
            "lines_before": lines_before,
            "build_s": build,
            "slowest_create_s": slowest,
        }

    return asyncio.run(run())


def init_child(d: str) -> None:
    """Open and close a service: ``history.json`` then holds ``general`` with every user."""

    async def run() -> None:
        open_service(Path(d)).close()

    asyncio.run(run())


def load_child(d: str, trace: bool) -> dict[str, Any]:
    """Load a data directory in a fresh process; memory after minus before."""
    import tracemalloc

    if trace:
        tracemalloc.start()

    async def run() -> dict[str, Any]:
        before = measure()
        t0 = time.perf_counter()
        svc = open_service(Path(d))
        load = time.perf_counter() - t0
        after = measure()
        lines = by_line()
        svc.history.close()  # no compaction: leave the directory as it was
        (Path(d) / "history.journal").unlink(missing_ok=True)
        return {
            "rss": after[0] - before[0],
            "traced": after[1] - before[1],
            "load_s": load,
            "lines": lines,
        }

    return asyncio.run(run())


def memory_part(args) -> list[dict[str, Any]]:
    rows = []
    for layout in args.layouts:
        n_rooms, n_members = (int(x) for x in layout.split("x"))
        memberships = n_rooms * n_members
        for rep in range(args.repeat):
            with tempfile.TemporaryDirectory(prefix="room-memory-") as tmp:
                base, rooms = Path(tmp) / "base", Path(tmp) / "rooms"
                make_data_dir_fast(base, args.users)
                # Baseline directory: every user in general, nothing else.
                in_child(init_child, str(base))
                row: dict[str, Any] = {"layout": layout, "memberships": memberships, "rep": rep}
                for trace in (False, True):
                    make_data_dir_fast(rooms, args.users)
                    for f in ("history.json", "history.journal", "tokens.journal"):
                        (rooms / f).unlink(missing_ok=True)
                    live = in_child(live_child, str(rooms), n_rooms, n_members, trace)
                    b = in_child(load_child, str(base), trace)
                    r = in_child(load_child, str(rooms), trace)
                    key = "traced" if trace else "rss"
                    row[f"live_{key}"] = live[key] / memberships
                    row[f"restart_{key}"] = (r[key] - b[key]) / memberships
                    if trace:
                        row["live_where"] = top_lines(
                            live["lines"], live["lines_before"], memberships
                        )
                        row["restart_where"] = top_lines(r["lines"], b["lines"], memberships)
                    else:
                        row["build_s"] = live["build_s"]
                        row["slowest_create_s"] = live["slowest_create_s"]
                        row["load_base_s"], row["load_rooms_s"] = b["load_s"], r["load_s"]
                rows.append(row)
                print(
                    f"{layout:>9} ({memberships} memberships, {args.users} users) rep {rep}: "
                    f"live +{row['live_rss']:.0f} B RSS / +{row['live_traced']:.0f} B traced, "
                    f"after restart +{row['restart_rss']:.0f} B RSS / "
                    f"+{row['restart_traced']:.0f} B traced per membership; built in "
                    f"{row['build_s']:.1f} s (slowest create_room "
                    f"{row['slowest_create_s'] * 1000:.0f} ms); load {row['load_base_s']:.2f} s "
                    f"base, {row['load_rooms_s']:.2f} s rooms",
                    flush=True,
                )
                print(f"    live, traced by line: {row['live_where']}", flush=True)
                print(f"    after restart, traced by line: {row['restart_where']}", flush=True)
    return rows


# -- startup with a million messages ----------------------------------------------------------
def write_big(d: Path, args, kind: str) -> int:
    """users.json + a history.json with ``args.messages`` room or direct messages."""
    make_data_dir_fast(d, args.users)
    users = [f"u{i:04d}" for i in range(args.users)]
    rooms = {f"room{r:04d}": members_of(r, users, args.room_members) for r in range(args.rooms)}
    names = list(rooms)
    n = args.messages
    # Read markers as clients leave them: somewhere in the room's recent past.
    markers: dict[str, dict[str, int]] = {}
    rng = random.Random(1)
    for name, members in rooms.items():
        for u in members:
            markers.setdefault(u, {})[name] = rng.randrange(max(1, n - n // 10), n + 1)
    for u in users:
        markers.setdefault(u, {})["general"] = 0
    state_rooms: dict[str, dict[str, Any]] = {
        name: {"private": False, "members": members} for name, members in rooms.items()
    }
    state_rooms["general"] = {"private": False, "members": users}

    def messages():
        rng = random.Random(2)
        for i in range(1, n + 1):
            name = names[rng.randrange(len(names))]
            members = rooms[name]
            k = rng.randrange(len(members))
            text = f"message {i}: some ordinary text of an ordinary length, about this long"
            if i % 10 == 0:
                text += f" @{members[(k + 3) % len(members)]} what do you think?"
            msg = {"id": i, "from": members[k]}
            if kind == "room":
                msg["room"] = name
            else:
                msg["to"] = members[(k + 1) % len(members)]
            msg["text"] = text
            msg["ts"] = TS
            yield msg

    state = HistoryState(
        messages(),  # type: ignore[arg-type] - streamed: the writer only iterates
        {},
        n + 1,
        1,
        state_rooms,
        markers,
        set(users),
    )
    return write_snapshot(d / "history.json", state)


def time_server(d: Path) -> tuple[float, int]:
    """Seconds from spawning ``server.py`` to its "listening" line; its RSS then (KiB)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "server.py", "--data-dir", str(d), "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if re.search(r"listening on \S+:\d+", line):
                took = time.perf_counter() - t0
                return took, rss_kib(proc.pid)
        raise RuntimeError(f"server exited with {proc.wait()}")
    finally:
        proc.kill()  # not stopped: a clean stop would rewrite the 1M-message snapshot
        proc.wait()
        (d / "history.journal").unlink(missing_ok=True)


def breakdown_child(d: str) -> dict[str, float]:
    """Where the startup time goes, in process: parse, check, the rest of ChatService."""
    from legacy_socket_server.storage_files import load_json_file

    async def run() -> dict[str, float]:
        path = Path(d) / "history.json"
        t0 = time.perf_counter()
        raw = load_json_file(path)
        t1 = time.perf_counter()
        HistoryStore(Path(d))._check_snapshot(raw)
        t2 = time.perf_counter()
        del raw
        gc.collect()
        t3 = time.perf_counter()
        svc = open_service(Path(d))
        t4 = time.perf_counter()
        svc.history.close()
        (Path(d) / "history.journal").unlink(missing_ok=True)
        return {"parse": t1 - t0, "check": t2 - t1, "service": t4 - t3}

    return asyncio.run(run())


def startup_part(args) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="room-startup-") as tmp:
        dirs = {}
        for kind in ("room", "dm"):
            d = Path(tmp) / kind
            t0 = time.perf_counter()
            size = write_big(d, args, kind)
            dirs[kind] = d
            print(
                f"# wrote {kind}: {args.messages} messages, {size / 1e6:.0f} MB snapshot "
                f"in {time.perf_counter() - t0:.0f} s",
                flush=True,
            )
        for rep in range(args.repeat):
            for kind in ("room", "dm"):
                busy = wait_quiet(args.wait_quiet) if args.wait_quiet else float("nan")
                took, rss = time_server(dirs[kind])
                rows.append({"kind": kind, "rep": rep, "startup_s": took, "rss_mib": rss / 1024})
                print(
                    f"{kind:4} rep {rep}: server.py listening after {took:.2f} s, "
                    f"RSS {rss / 1024:.0f} MiB (machine busy before {busy * 100:.0f}%, "
                    f"load {os.getloadavg()[0]:.2f})",
                    flush=True,
                )
        for kind in ("room", "dm"):
            b = in_child(breakdown_child, str(dirs[kind]))
            print(
                f"{kind:4} in process: JSON parse {b['parse']:.2f} s, snapshot check "
                f"{b['check']:.2f} s, ChatService() in all {b['service']:.2f} s",
                flush=True,
            )
            rows.append({"kind": kind, "breakdown": b})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["memory", "startup", "both"], default="both")
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--layouts", nargs="+", default=["1000x100", "100x1000"])
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--rooms", type=int, default=1000)
    ap.add_argument("--room-members", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument(
        "--wait-quiet", type=float, default=60.0, help="startup: wait up to s for a calm machine"
    )
    args = ap.parse_args()
    print(f"# {os.cpu_count()} CPUs, load {os.getloadavg()}", flush=True)
    out: dict[str, Any] = {}
    if args.part in ("memory", "both"):
        out["memory"] = memory_part(args)
    if args.part in ("startup", "both"):
        out["startup"] = startup_part(args)
    print(f"# load after {os.getloadavg()}")
    print(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
