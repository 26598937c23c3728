"""PostgreSQL ceilings for scaling the core out (docs/scaling.md).

Measures, each part on its own throwaway PostgreSQL server (``bench/_pg_server.py``:
initdb in a temporary directory, trust auth on 127.0.0.1 only, server defaults
otherwise: ``fsync = on``, ``synchronous_commit = on``) that is deleted at the end
of the part, also on error, Ctrl-C or SIGTERM:

1. Driver choice, asyncpg vs psycopg 3 (``psycopg.AsyncConnection``), one
   connection, closed loop: single-row ``INSERT ... RETURNING id`` of a chat
   message in autocommit (each its own transaction, so each commit waits for
   the WAL fsync), and a point SELECT ("messages of a room after id X",
   served by an index on ``(room, id)``; the table is ``SCHEMA`` below).
2. Insert ceilings with asyncpg: single-row commits from 1, 4 and 16
   connections; batched multi-row INSERTs (10 and 100 rows per transaction,
   ``INSERT ... SELECT FROM unnest(arrays) RETURNING id``); and a reference
   row with ``synchronous_commit = off`` that shows the cost of the fsync.
3. LISTEN/NOTIFY: 4 listener processes (asyncpg, each its own connection and
   process, as the cores would be) all receive every notification of 1 or 4
   publishers, paced or as fast as they go (``NOTIFY_CASES``): the
   ``SELECT pg_notify(chan, '<message id>')`` alone; in one statement with the
   INSERT (``WITH m AS (INSERT ... RETURNING id) SELECT pg_notify(chan, id::text)``);
   or after the INSERT's commit, as its own transaction on a second connection
   with ``synchronous_commit = off``. Latency runs from the moment the (first)
   statement is sent to the listener's callback; lost and duplicated
   notifications are counted per listener.

Latencies are per operation (``time.perf_counter``: CLOCK_MONOTONIC, one clock
for every process, so publish→receive spans processes). CPU comes from
``/proc``: the client (this process, and apart the listeners in part 3), the
server (the postmaster and all its children) and "other" (the machine's busy
time minus those: another load on the machine shows there).

    python bench/pg_ceilings.py                 # all parts, ~5 s per case (~105 s)
    python bench/pg_ceilings.py --parts 2       # one part (each takes 25-45 s)
    python bench/pg_ceilings.py --quick         # 1 s per case, a smoke run

Needs the PostgreSQL server binaries (Debian's ``postgresql``; as root the server
runs as ``postgres``); asyncpg is a dependency, psycopg comes with the ``dev`` extra.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import datetime as dt
import itertools
import multiprocessing as mp
import os
import platform
import signal
import time
from array import array
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import astuple, dataclass
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Literal

import asyncpg
import psycopg
from _pg_server import PgServer, pg_server

try:  # the core runs on uvloop when it is installed, so measure with it too
    from uvloop import run as run_loop
except ImportError:
    from asyncio import run as run_loop
LOOP_NAME = run_loop.__module__.split(".")[0]  # "uvloop" or "asyncio"

CHANNEL = "chat_events"
LISTENERS = 4
ROOMS = 100
TEXT = "a chat message of ordinary length, with a few words in it: hello there"
CLK_TCK = os.sysconf("SC_CLK_TCK")

SCHEMA = """
DROP TABLE IF EXISTS messages;
CREATE TABLE messages (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sender text NOT NULL,
    room text NOT NULL,
    text text NOT NULL,
    ts timestamptz NOT NULL,
    client_msg_id text
);
CREATE INDEX messages_room_id ON messages (room, id);
CREATE UNIQUE INDEX messages_dedup ON messages (sender, client_msg_id)
    WHERE client_msg_id IS NOT NULL;
"""
INSERT_COLS = "INSERT INTO messages (sender, room, text, ts, client_msg_id)"
INSERT_PG = INSERT_COLS + " VALUES ($1, $2, $3, $4, $5) RETURNING id"
INSERT_PS = INSERT_COLS + " VALUES (%s, %s, %s, %s, %s) RETURNING id"
INSERT_BATCH = (
    INSERT_COLS + " SELECT * FROM unnest($1::text[], $2::text[], $3::text[],"
    " $4::timestamptz[], $5::text[]) RETURNING id"
)
SELECT_COLS = "SELECT id, sender, room, text, ts, client_msg_id FROM messages"
SELECT_PG = SELECT_COLS + " WHERE room = $1 AND id > $2 ORDER BY id LIMIT 100"
SELECT_PS = SELECT_COLS + " WHERE room = %s AND id > %s ORDER BY id LIMIT 100"
NOTIFY_PG = "SELECT pg_notify($1, $2)"
INSERT_NOTIFY_PG = "WITH m AS (" + INSERT_PG + ") SELECT id, pg_notify($6, id::text) FROM m"
SEED = """
INSERT INTO messages (sender, room, text, ts, client_msg_id)
SELECT 'user' || (g % 50), 'room' || (g % {rooms}), 'seeded message ' || g, now(), NULL
FROM generate_series(1, {n}) AS g;
ANALYZE messages;
"""


# ---------------------------------------------------------------- CPU and stats


def proc_cpu(pid: int) -> tuple[int, float]:
    """(parent pid, user+system CPU seconds) of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_cpu(root_pid: int) -> float:
    """CPU seconds of a process and its direct children (the postmaster's backends)."""
    total = 0.0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                ppid, cpu = proc_cpu(int(entry.name))
                if int(entry.name) == root_pid or ppid == root_pid:
                    total += cpu
    return total


def machine_busy() -> float:
    """Busy CPU seconds of the whole machine (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = v
    return (user + nice + system + irq + softirq) / CLK_TCK


@dataclass
class Cpu:
    """Wall clock and CPU seconds by party: so far (:meth:`now`), or over a window (b - a)."""

    wall: float
    server: float  # the postmaster and its backends
    client: float  # this process
    listeners: float  # part 3's listener processes
    other: float  # the rest of the machine's busy time: another load shows here

    @classmethod
    def now(cls, server_pid: int, listener_pids: Sequence[int] = ()) -> Cpu:
        wall, server, client = time.perf_counter(), tree_cpu(server_pid), proc_cpu(os.getpid())[1]
        listeners = sum(proc_cpu(p)[1] for p in listener_pids)
        return cls(wall, server, client, listeners, machine_busy() - server - client - listeners)

    def __sub__(self, start: Cpu) -> Cpu:
        d = Cpu(*(b - a for b, a in zip(astuple(self), astuple(start), strict=True)))
        d.other = max(0.0, d.other)  # the counters are read one after the other
        return d


def pct(sorted_vals: Sequence[float], q: float) -> float:
    if not sorted_vals:
        return float("nan")
    return sorted_vals[min(len(sorted_vals) - 1, int(q * len(sorted_vals)))]


def ms(v: float) -> str:
    return f"{v * 1e3:.2f}"


Row = dict[str, object]  # column header -> cell, so each header sits by its value


def md_table(rows: Sequence[Row]) -> str:
    headers = list(rows[0])
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in r.values()) + " |" for r in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------- closed loops

Op = Callable[[], Awaitable[int]]  # run one operation, return the rows written/read
Probe = Callable[[], Awaitable[int]]  # a server counter read before and after a window


@dataclass
class LoopResult:
    ops: int
    rows: int
    wall: float
    lat: list[float]
    cpu: Cpu
    probe: int = 0  # how much the probe's counter rose over the window

    def us_per(self, cpu_s: float, per_rows: bool = False) -> str:
        n = self.rows if per_rows else self.ops
        return f"{cpu_s / max(1, n) * 1e6:.0f}"


async def closed_loop(op: Op, deadline: float, lat: list[float]) -> tuple[int, int]:
    n = rows = 0
    while (t := time.perf_counter()) < deadline:
        rows += await op()
        lat.append(time.perf_counter() - t)
        n += 1
    return n, rows


async def run_loops(
    ops: Sequence[Op], seconds: float, server_pid: int, probe: Probe | None = None
) -> LoopResult:
    """Warm up briefly, then run every op in its own closed loop for ``seconds``."""
    # The warm-up fills the statement caches and the server's buffers, off the clock.
    warm: list[float] = []
    warm_deadline = time.perf_counter() + min(1.0, seconds / 5)
    await asyncio.gather(*(closed_loop(op, warm_deadline, warm) for op in ops))
    p0 = await probe() if probe else 0
    lat: list[float] = []
    start = Cpu.now(server_pid)
    deadline = time.perf_counter() + seconds
    done = await asyncio.gather(*(closed_loop(op, deadline, lat) for op in ops))
    cpu = Cpu.now(server_pid) - start
    p1 = await probe() if probe else 0
    lat.sort()
    ops_n, rows = sum(d[0] for d in done), sum(d[1] for d in done)
    return LoopResult(ops_n, rows, cpu.wall, lat, cpu, p1 - p0)


def message(i: int, tag: str) -> tuple[str, str, str, dt.datetime, str]:
    return f"user{i % 50}", f"room{i % ROOMS}", TEXT, dt.datetime.now(dt.UTC), f"{tag}-{i}"


# ---------------------------------------------------------------- drivers


def insert_op(conn: asyncpg.Connection, batch: int, tag: str) -> Op:
    """``batch`` messages per transaction: one INSERT, or one INSERT of unnest(arrays)."""
    seq = itertools.count()

    async def one() -> int:
        await conn.fetchval(INSERT_PG, *message(next(seq), tag))
        return 1

    async def many() -> int:
        msgs = [message(next(seq), tag) for _ in range(batch)]
        return len(await conn.fetch(INSERT_BATCH, *map(list, zip(*msgs, strict=True))))

    return one if batch == 1 else many


async def asyncpg_op(dsn: str, op_name: str, after: int, tag: str) -> tuple[asyncpg.Connection, Op]:
    conn = await asyncpg.connect(dsn)
    seq = itertools.count()

    async def select() -> int:
        return len(await conn.fetch(SELECT_PG, f"room{next(seq) % ROOMS}", after))

    return conn, insert_op(conn, 1, tag) if op_name == "insert" else select


async def psycopg_op(
    dsn: str, op_name: str, after: int, tag: str
) -> tuple[psycopg.AsyncConnection, Op]:
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    cur = conn.cursor()
    seq = itertools.count()

    async def insert() -> int:
        await cur.execute(INSERT_PS, message(next(seq), tag))
        await cur.fetchone()
        return 1

    async def select() -> int:
        await cur.execute(SELECT_PS, (f"room{next(seq) % ROOMS}", after))
        return len(await cur.fetchall())

    return conn, insert if op_name == "insert" else select


# ---------------------------------------------------------------- part 1


async def create_schema(pg: PgServer, seed_rows: int = 0) -> None:
    conn = await asyncpg.connect(pg.url())
    await conn.execute(SCHEMA)
    if seed_rows:
        await conn.execute(SEED.format(rooms=ROOMS, n=seed_rows))
    await conn.close()


async def last_id(pg: PgServer) -> int:
    conn = await asyncpg.connect(pg.url())
    try:
        return int(await conn.fetchval("SELECT max(id) FROM messages"))
    finally:
        await conn.close()


async def part_drivers(pg: PgServer, seconds: float, seed_rows: int) -> str:
    # Seeded, so that the SELECT walks an index of realistic depth.
    await create_schema(pg, seed_rows)
    pid = pg.postmaster_pid()
    rows: list[Row] = []
    for op_name in ("insert", "select"):
        after = await last_id(pg) - 10 * ROOMS  # so the SELECT finds ~10 rows of its room
        for driver, make in (("asyncpg", asyncpg_op), ("psycopg 3", psycopg_op)):
            conn, op = await make(pg.url(), op_name, after, f"p1{driver[:2]}")
            res = await run_loops([op], seconds, pid)
            await conn.close()
            rows.append(driver_row(driver, op_name, res))
    return md_table(rows)


def driver_row(driver: str, op_name: str, r: LoopResult) -> Row:
    return {
        "driver": driver,
        "operation": "INSERT 1 row (commit)" if op_name == "insert" else "SELECT room after id",
        "ops/s": f"{r.ops / r.wall:,.0f}",
        "p50 ms": ms(pct(r.lat, 0.5)),
        "p99 ms": ms(pct(r.lat, 0.99)),
        "rows/op": f"{r.rows / max(1, r.ops):.1f}",
        "client CPU µs/op": r.us_per(r.cpu.client),
        "server CPU µs/op": r.us_per(r.cpu.server),
        "other load (cores)": f"{r.cpu.other / r.wall:.2f}",
    }


# ---------------------------------------------------------------- part 2


@dataclass
class InsertCase:
    label: str
    conns: int
    batch: int
    sync_commit: bool = True


INSERT_CASES = [
    InsertCase("single-row", 1, 1),
    InsertCase("single-row", 4, 1),
    InsertCase("single-row", 16, 1),
    InsertCase("batch (unnest)", 1, 10),
    InsertCase("batch (unnest)", 1, 100),
    InsertCase("batch (unnest)", 4, 100),
    InsertCase("single-row, synchronous_commit=off (reference)", 1, 1, False),
]


async def wal_syncs(conns: Sequence[asyncpg.Connection], ctl: asyncpg.Connection) -> int:
    """WAL fsyncs so far (pg_stat_wal), after making every backend flush its stats."""
    for c in conns:
        await c.execute("SELECT pg_stat_force_next_flush()")
    await asyncio.sleep(0.05)
    return int(await ctl.fetchval("SELECT wal_sync FROM pg_stat_wal"))


async def insert_case(pg: PgServer, case: InsertCase, seconds: float, idx: int) -> Row:
    conns = [await asyncpg.connect(pg.url()) for _ in range(case.conns)]
    ctl = await asyncpg.connect(pg.url())
    if not case.sync_commit:
        for c in conns:
            await c.execute("SET synchronous_commit = off")
    ops = [insert_op(c, case.batch, f"p2c{idx}w{k}") for k, c in enumerate(conns)]
    res = await run_loops(ops, seconds, pg.postmaster_pid(), lambda: wal_syncs(conns, ctl))
    for c in (*conns, ctl):
        await c.close()
    return {
        "case": case.label,
        "conns": case.conns,
        "rows/tx": case.batch,
        "commits/s": f"{res.ops / res.wall:,.0f}",
        "rows/s": f"{res.rows / res.wall:,.0f}",
        "p50 ms": ms(pct(res.lat, 0.5)),
        "p99 ms": ms(pct(res.lat, 0.99)),
        "client CPU µs/row": res.us_per(res.cpu.client, per_rows=True),
        "server CPU µs/row": res.us_per(res.cpu.server, per_rows=True),
        "server cores": f"{res.cpu.server / res.wall:.2f}",
        "WAL fsyncs/s": f"{res.probe / res.wall:,.0f}",
        "commits per fsync": f"{res.ops / res.probe:.1f}" if res.probe else "–",
        "other load (cores)": f"{res.cpu.other / res.wall:.2f}",
    }


async def part_inserts(pg: PgServer, seconds: float) -> str:
    await create_schema(pg)
    return md_table([await insert_case(pg, c, seconds, i) for i, c in enumerate(INSERT_CASES)])


# ---------------------------------------------------------------- part 3


def listener_main(dsn: str, pipe: Pipe, counter: ctypes.c_longlong) -> None:
    """A listener process: LISTEN, stamp each notification, hand the stamps over."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    run_loop(_listen(dsn, pipe, counter))


async def _listen(dsn: str, pipe: Pipe, counter: ctypes.c_longlong) -> None:
    ids, stamps = array("q"), array("d")

    def on_notify(_c: object, _pid: int, _chan: str, payload: str) -> None:
        stamps.append(time.perf_counter())
        ids.append(int(payload))
        counter.value += 1

    conn = await asyncpg.connect(dsn)
    await conn.add_listener(CHANNEL, on_notify)
    pipe.send("ready")
    loop = asyncio.get_running_loop()
    while await loop.run_in_executor(None, pipe.recv) == "collect":
        pipe.send((ids.tobytes(), stamps.tobytes()))
        del ids[:], stamps[:]
        counter.value = 0
    await conn.close()


@dataclass
class Listeners:
    procs: list[mp.process.BaseProcess]
    pipes: list[Pipe]
    counters: list[ctypes.c_longlong]

    @classmethod
    def start(cls, dsn: str, n: int) -> Listeners:
        ctx = mp.get_context("spawn")
        procs, pipes, counters = [], [], []
        for _ in range(n):
            mine, theirs = ctx.Pipe()
            counter = ctx.Value("q", 0, lock=False)
            p = ctx.Process(target=listener_main, args=(dsn, theirs, counter), daemon=True)
            p.start()
            procs.append(p)
            pipes.append(mine)
            counters.append(counter)
        for pipe in pipes:
            if not pipe.poll(30) or pipe.recv() != "ready":
                raise RuntimeError("a listener did not start")
        return cls(procs, pipes, counters)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    async def drain(self, expected: int, timeout: float) -> None:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if all(c.value >= expected for c in self.counters):
                return
            await asyncio.sleep(0.02)

    def collect(self) -> list[tuple[array, array]]:
        """Per listener, the message ids and receive times since the last collect."""
        out = []
        for pipe in self.pipes:
            pipe.send("collect")
            ids, stamps = pipe.recv()
            out.append((array("q", ids), array("d", stamps)))
        return out

    def stop(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send("stop")
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.terminate()


# notify: pg_notify alone (its own transaction); same_tx: one statement INSERTs the
# message and pg_notify-s its id; after_commit: the INSERT commits, then pg_notify
# runs as its own transaction on a second connection with synchronous_commit = off.
Mode = Literal["notify", "same_tx", "after_commit"]


@dataclass
class NotifyCase:
    label: str
    rate: float | None  # None: as fast as the publisher goes
    mode: Mode = "notify"
    publishers: int = 1  # publishers, each in its own closed loop


NOTIFY_CASES = [
    NotifyCase("pg_notify", None),
    NotifyCase("pg_notify, 4 publishers", None, publishers=4),
    NotifyCase("pg_notify", 200),
    NotifyCase("pg_notify", 2000),
    NotifyCase("INSERT + pg_notify in one tx", 200, "same_tx"),
    NotifyCase("INSERT + pg_notify in one tx, 4 publishers", None, "same_tx", 4),
    NotifyCase("INSERT, then pg_notify (sync commit off), 4 publishers", None, "after_commit", 4),
]


@dataclass
class Publisher:
    conn: asyncpg.Connection  # synchronous_commit = on (the default)
    async_conn: asyncpg.Connection  # synchronous_commit = off: notifies need no fsync

    @classmethod
    async def open(cls, dsn: str) -> Publisher:
        conn, async_conn = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
        await async_conn.execute("SET synchronous_commit = off")
        for c in (conn, async_conn):  # warm the statement (and the listeners)
            await c.execute(NOTIFY_PG, CHANNEL, "-1")
        return cls(conn, async_conn)

    async def close(self) -> None:
        await self.conn.close()
        await self.async_conn.close()

    async def send(self, mode: Mode, n: int, tag: str) -> int:
        """Publish message ``n``; return the id that the listeners will see."""
        if mode == "notify":
            await self.conn.execute(NOTIFY_PG, CHANNEL, str(n))
            return n
        if mode == "same_tx":
            return int(await self.conn.fetchval(INSERT_NOTIFY_PG, *message(n, tag), CHANNEL))
        mid = int(await self.conn.fetchval(INSERT_PG, *message(n, tag)))
        await self.async_conn.execute(NOTIFY_PG, CHANNEL, str(mid))
        return mid


async def publish(
    pubs: Sequence[Publisher], case: NotifyCase, seconds: float, tag: str
) -> dict[int, float]:
    """Publish for ``seconds``; return message id -> time its statement was sent."""
    sent: dict[int, float] = {}
    k = case.publishers
    t0 = time.perf_counter()

    async def publisher(pub: Publisher, j: int) -> None:
        # Publisher j of k sends messages j, j+k, j+2k, ...: at rate/k each when paced,
        # on a fixed schedule from t0 so that a slow statement does not lower the rate.
        i = 0
        while (t := time.perf_counter()) < t0 + seconds:
            if case.rate is not None and (delay := t0 + i * k / case.rate - t) > 0:
                await asyncio.sleep(delay)
                t = time.perf_counter()
            sent[await pub.send(case.mode, i * k + j, tag)] = t
            i += 1

    await asyncio.gather(*(publisher(p, j) for j, p in enumerate(pubs[:k])))
    return sent


async def notify_case(
    pg: PgServer, lst: Listeners, pubs: Sequence[Publisher], case: NotifyCase, seconds: float
) -> Row:
    pid = pg.postmaster_pid()
    start = Cpu.now(pid, lst.pids)
    sent = await publish(pubs, case, seconds, tag=f"p3c{NOTIFY_CASES.index(case)}")
    pub_wall = time.perf_counter() - start.wall
    await lst.drain(len(sent), timeout=max(10.0, seconds * 2))
    cpu = Cpu.now(pid, lst.pids) - start
    got = lst.collect()
    lat, lost, dup, min_rate = deliveries(sent, got)
    n = len(sent)
    return {
        "case": case.label,
        "target/s": "max" if case.rate is None else f"{case.rate:,.0f}",
        "published/s": f"{n / pub_wall:,.0f}",
        "delivered/s per listener (min)": f"{min_rate:,.0f}",
        "publish→receive p50 ms": ms(pct(lat, 0.5)),
        "p99 ms": ms(pct(lat, 0.99)),
        "max ms": ms(lat[-1] if lat else float("nan")),
        "lost / dup (all listeners)": f"{lost} / {dup}",
        "server CPU µs/publish": f"{cpu.server / n * 1e6:.0f}",
        "publisher CPU µs/publish": f"{cpu.client / n * 1e6:.0f}",
        "listener CPU µs/delivery": f"{cpu.listeners / max(1, n * len(got)) * 1e6:.0f}",
        "other load (cores)": f"{cpu.other / cpu.wall:.2f}",
    }


def deliveries(
    sent: dict[int, float], got: list[tuple[array, array]]
) -> tuple[list[float], int, int, float]:
    """Sorted latencies, lost and duplicated notifications (summed over the listeners),
    and the slowest listener's delivery rate since the first publish."""
    lat: list[float] = []
    lost = dup = 0
    rates = []
    t_first = min(sent.values())
    for ids, stamps in got:
        seen = set(ids)
        lost += len(sent.keys() - seen)
        dup += len(ids) - len(seen)
        lat += [s - sent[i] for i, s in zip(ids, stamps, strict=True) if i in sent]
        rates.append(len(ids) / (max(stamps) - t_first) if stamps else 0.0)
    lat.sort()
    return lat, lost, dup, min(rates)


async def part_notify(pg: PgServer, seconds: float) -> str:
    await create_schema(pg)
    lst = Listeners.start(pg.url(), LISTENERS)
    try:
        n_pub = max(c.publishers for c in NOTIFY_CASES)
        pubs = [await Publisher.open(pg.url()) for _ in range(n_pub)]
        await asyncio.sleep(0.2)
        lst.collect()  # drop the warm-up notifications of Publisher.open
        rows = [await notify_case(pg, lst, pubs, c, seconds) for c in NOTIFY_CASES]
        for pub in pubs:
            await pub.close()
    finally:
        lst.stop()
    return md_table(rows)


# ---------------------------------------------------------------- the environment

SETTINGS = ("fsync", "synchronous_commit", "wal_sync_method", "shared_buffers", "max_connections")


def disk_of(path: str) -> str:
    """Device, filesystem and rotational flag of the filesystem holding ``path``."""
    dev = os.stat(path).st_dev
    maj_min = f"{os.major(dev)}:{os.minor(dev)}"
    fs = source = "?"
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            if parts[2] == maj_min:
                after = parts[parts.index("-") + 1 :]
                fs, source = after[0], after[1]
    sys_dev = Path(f"/sys/dev/block/{maj_min}")
    rot, drv = sys_dev / "queue" / "rotational", sys_dev / "device" / "driver"
    info = [f"{source} ({fs})"]
    if rot.exists():
        info.append(f"queue/rotational = {rot.read_text().strip()}")
    if drv.exists():
        info.append(f"driver {drv.resolve().name}")
    return ", ".join(info)


def fdatasync_latency(directory: Path, n: int = 200) -> str:
    """p50/p99 of rewriting 8 kB and fdatasync-ing it there, as a WAL flush does."""
    path = directory / "fsync_probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    lat = []
    try:
        block = b"x" * 8192
        for _ in range(n):
            t = time.perf_counter()
            os.pwrite(fd, block, 0)
            os.fdatasync(fd)
            lat.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        path.unlink()
    lat.sort()
    return f"8 kB write + fdatasync p50 {ms(pct(lat, 0.5))} ms, p99 {ms(pct(lat, 0.99))} ms"


async def environment(pg: PgServer) -> str:
    conn = await asyncpg.connect(pg.url())
    show = {k: await conn.fetchval(f"SHOW {k}") for k in SETTINGS}
    version = await conn.fetchval("SELECT version()")
    await conn.close()
    lines = [
        f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; CPUs: {os.cpu_count()}; "
        f"Python {platform.python_version()}; event loop: {LOOP_NAME}",
        f"- server: {version}",
        f"- drivers: asyncpg {asyncpg.__version__}, psycopg {psycopg.__version__} "
        f"({psycopg.pq.__impl__} implementation, libpq {psycopg.pq.version()})",
        "- settings: " + ", ".join(f"{k} = {v}" for k, v in show.items()),
        f"- data directory on: {disk_of(str(pg.data))}; {fdatasync_latency(pg.root)}",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- main


PARTS: dict[int, str] = {
    1: "Part 1: driver choice (1 connection, closed loop)",
    2: "Part 2: insert ceilings (asyncpg)",
    3: f"Part 3: LISTEN/NOTIFY ({LISTENERS} listener processes, each gets every notification)",
}


async def run_part(part: int, pg: PgServer, args: argparse.Namespace) -> str:
    if part == 1:
        return await part_drivers(pg, args.seconds, args.seed_rows)
    if part == 2:
        return await part_inserts(pg, args.seconds)
    return await part_notify(pg, args.seconds)


def main_part(part: int, args: argparse.Namespace, first: bool) -> None:
    # A fresh server per part, so that no part sees another's rows, WAL or statistics.
    with pg_server(args.base_dir) as pg:
        if first:
            print(run_loop(environment(pg)) + "\n", flush=True)
        t0 = time.perf_counter()
        table = run_loop(run_part(part, pg, args))
        print(f"## {PARTS[part]} — {time.perf_counter() - t0:.0f} s\n\n{table}\n", flush=True)


def _sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds as Ctrl-C does: the server is stopped and deleted


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="measured window per case")
    ap.add_argument("--quick", action="store_true", help="1 s per case, small seed: a smoke run")
    ap.add_argument("--parts", type=int, nargs="+", choices=sorted(PARTS), default=sorted(PARTS))
    ap.add_argument("--seed-rows", type=int, default=100_000, help="rows before part 1's SELECT")
    ap.add_argument("--base-dir", help="where the throwaway cluster goes (default: $TMPDIR)")
    args = ap.parse_args(argv)
    if args.quick:
        args.seconds, args.seed_rows = 1.0, 10_000
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        for k, part in enumerate(args.parts):
            main_part(part, args, first=k == 0)
    except KeyboardInterrupt:
        raise SystemExit("interrupted (the throwaway server is stopped and deleted)") from None


if __name__ == "__main__":
    main()
