"""Room fan-out: one room of N long-polling members, side by side with direct messages.

Every user of a new data directory is a member of ``general``
(docs/protocol.md#rooms). Each simulated member is its own user and holds a
long-poll: a desktop member is a framed-TCP ``CoreClient`` holding ``poll`` with
``wait_ms``; a browser member (gateway configuration) is a lean HTTP client
(``_http.Browser``) holding ``GET /api/poll?wait_ms=...`` through the web app, or,
with ``--browser-transport ws``, an aiohttp client WebSocket on ``GET /api/ws``
(docs/protocol.md#websocket-push; its sends stay HTTP requests).

Two configurations per member count, each on a fresh core (and web app):

* ``core``: all N members are desktop clients of the core alone;
* ``gateway``: N/2 desktops + N/2 browsers through the gateway, once per
  ``--browser-transport`` (``longpoll ws`` runs both, side by side).

In each, after setup (resume with ready-made tokens, browser logins, drain of the
login wave), the same clients go through measured phases of ``--seconds``:

* ``idle``: nothing is sent (the background cost of N held polls);
* ``room``: ``--room-rate`` messages/s into ``general`` from a member (a desktop
  member; in the gateway configuration a desktop and a browser member in turn):
  each is delivered to all N members, the sender's own sessions included;
* ``dm``: pairs of members message each other (member 2i <-> 2i+1, a desktop and
  a browser in the gateway configuration), ``--dm-rate`` messages/s in all
  (default min(N/2, 500)): each is delivered twice (recipient, and the sender's
  own sessions, as the protocol does);

``--rounds`` times room then dm. Per phase: send→seen p50/p99/max over every
delivery (the text carries a ``perf_counter()`` stamp, CLOCK_MONOTONIC, one clock
for every process), lost and duplicated deliveries, CPU of core / web / load
generator from ``/proc/PID/stat`` over the phase (window plus drain), and CPU per
delivered event; the room/dm ratio of those is the figure to compare.

    python bench/room_fanout.py --members 1000 5000 --seconds 10
    python bench/room_fanout.py --members 1000 --core-only
    python bench/room_fanout.py --members 1000 5000 --gateway-only --browser-transport ws longpoll

Setup (not measured), as in ``bench/system_load.py``: users of
``_setup.make_data_dir_fast``; desktops ``resume`` with ready-made tokens and skip
the login wave's presence backlog (their first poll, from cursor 0, is answered
``reset`` with the current cursor); browsers log in through ``POST /api/login``
and drain their buffers; ``--procs`` generator processes share the members.
Load talks only to 127.0.0.1, is bounded by ``--seconds`` and stops by itself.
The web app runs under ``bench/_gc_probe.py``: each phase reports its longest
cyclic-GC pause per generation.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import multiprocessing as mp
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _gc_probe
from _load_worker import (
    loads,
    log_everyone_in,
    phase,
    socket_cookie,
    ws_client_session,
    ws_receive,
)
from _setup import (
    cpu_seconds,
    machine_cpu,
    make_data_dir_fast,
    rss_kib,
    start_core,
)
from system_load import gather, pct, summarize_profile, wait_quiet

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOM = "general"
WAIT_MS = 25_000


# ----------------------------------------------------------------------------------------------
# load-generator worker process
# ----------------------------------------------------------------------------------------------
class Tally:
    """One phase's figures in one worker (keyed by the phase tag the text carries)."""

    def __init__(self) -> None:
        self.acked: dict[int, int] = {}  # message id -> deliveries expected
        self.seen: collections.Counter[int] = collections.Counter()
        self.lat: dict[str, list[float]] = collections.defaultdict(list)  # recipient kind
        self.dupes = 0
        self.sent = 0
        self.errors: collections.Counter[str] = collections.Counter()

    def export(self) -> dict[str, Any]:
        return {
            "acked": self.acked,
            "seen": dict(self.seen),
            "lat": dict(self.lat),
            "dupes": self.dupes,
            "sent": self.sent,
            "errors": dict(self.errors),
        }


class State:
    def __init__(self) -> None:
        self.tags: dict[str, Tally] = collections.defaultdict(Tally)
        #: ``reset`` poll replies, by the phase they came in ("setup" before the first)
        self.resets: collections.Counter[str] = collections.Counter()
        self.current = "setup"
        self.poll_errors: collections.Counter[str] = collections.Counter()
        #: sockets the server closed, by close code
        self.ws_closed: collections.Counter[str] = collections.Counter()
        self.stop = False

    def received(self, kind: str, mine: set[int], events: list[dict[str, Any]]) -> None:
        now = time.perf_counter()
        for ev in events:
            if ev.get("type") != "message":
                continue
            m = ev["message"]
            parts = m["text"].split(" ", 2)
            if len(parts) < 3:
                continue
            t = self.tags[parts[1]]
            mid = m["id"]
            if mid in mine:
                t.dupes += 1
                continue
            mine.add(mid)
            t.seen[mid] += 1
            t.lat[kind].append(now - float(parts[0]))


async def desktop_loop(c, st: State, idle: asyncio.Event) -> None:
    """Drain with plain polls, then hold one long-poll open at all times.

    The long-poll is ``CoreClient.stream_polls`` (as the gateway holds its
    sessions' polls): each reply is handled as it is decoded and the next poll
    is written at once, with no task or timer per poll, so the generator
    spends as little as it can per delivery on the machine it shares.
    """
    from legacy_socket_server.client import CoreError, CoreUnavailable

    # Setup shortcut: cursor 0 is of no boot, so the core answers ``reset`` with its
    # current cursor, and the login wave's presence backlog (N events for each of N
    # desktops) is skipped instead of drained. Setup polls wait long for their reply:
    # on a saturated machine a 10 s timeout and a retry only pile up more requests.
    cursor = 0
    mine: set[int] = set()
    while not st.stop and not idle.is_set():
        try:
            r = await c.request("poll", timeout=600, cursor=cursor, wait_ms=0)
            if not r.get("ok"):
                raise CoreError(r)
        except (CoreError, CoreUnavailable) as exc:
            st.poll_errors[f"desktop poll: {exc}"[:100]] += 1
            await asyncio.sleep(0.5)
            continue
        cursor = r["cursor"]
        if r.get("reset") and st.current != "setup":
            st.resets[st.current] += 1
        if r["events"]:
            st.received("D", mine, r["events"])
        else:
            idle.set()

    def on_reply(r: dict[str, Any]) -> None:
        if r.get("reset"):
            st.resets[st.current] += 1
        if r["events"]:
            st.received("D", mine, r["events"])

    try:
        await c.stream_polls(cursor, WAIT_MS, on_reply)
    except (CoreError, CoreUnavailable) as exc:
        if not st.stop:
            st.poll_errors[f"desktop poll stream: {exc}"[:100]] += 1


async def browser_loop(http, cursor: int, st: State, idle: asyncio.Event) -> None:
    mine: set[int] = set()
    while not st.stop:
        path = f"/api/poll?cursor={cursor}"
        if idle.is_set():
            path += f"&wait_ms={WAIT_MS}"
        try:
            status, body = await http.request("GET", path, lane="poll")
        except Exception as exc:  # noqa: BLE001 - count and carry on
            st.poll_errors[f"browser poll: {type(exc).__name__}"] += 1
            await asyncio.sleep(0.5)
            continue
        if status != 200:
            st.poll_errors[f"browser poll HTTP {status} {body[:60]!r}"] += 1
            await asyncio.sleep(0.5)
            continue
        r = loads(body)
        cursor = r["cursor"]
        if r.get("reset"):
            st.resets[st.current] += 1
        ev = r["events"]
        if ev:
            st.received("B", mine, ev)
        else:
            idle.set()


async def browser_ws_loop(session, url: str, cookie: str, cursor: int, st: State, idle) -> None:
    """A browser member receiving over ``GET /api/ws``."""
    mine: set[int] = set()

    def on_reply(r: dict[str, Any]) -> None:
        if r.get("reset"):
            st.resets[st.current] += 1
        if r["events"]:
            st.received("B", mine, r["events"])

    await ws_receive(
        session, url, cookie, cursor, on_reply, idle, lambda: st.stop, st.poll_errors, st.ws_closed
    )


async def worker_main(conn, cfg: dict[str, Any]) -> None:
    st = State()
    ws_session = None
    # 1-2. desktops resume with ready-made tokens, browsers log in (there is no HTTP resume)
    desktops, browsers, recv = await log_everyone_in(conn, cfg)
    send_locks = {name: asyncio.Lock() for name in browsers}

    # 3. everyone polls; drain the login wave's presence events, then long-poll
    tasks, idles = [], []
    for c in desktops.values():
        idle = asyncio.Event()
        idles.append(idle)
        tasks.append(asyncio.create_task(desktop_loop(c, st, idle)))
    if cfg["transport"] == "ws":
        ws_session = ws_client_session()
        url = f"ws://127.0.0.1:{cfg['web_port']}/api/ws"
    for http, cursor in browsers.values():
        idle = asyncio.Event()
        idles.append(idle)
        if cfg["transport"] == "ws":
            cookie = await socket_cookie(http)
            tasks.append(
                asyncio.create_task(browser_ws_loop(ws_session, url, cookie, cursor, st, idle))
            )
        else:
            tasks.append(asyncio.create_task(browser_loop(http, cursor, st, idle)))
    for idle in idles:
        await idle.wait()
    await asyncio.sleep(1.0)
    # The generator's own hygiene: thousands of clients are long-lived objects; a
    # full collection walking them would stall the generator, not the servers.
    gc.collect()
    gc.freeze()
    phase("drained")
    conn.send(("drained", None))

    # 4. phases
    pending: set[asyncio.Task[None]] = set()

    async def send_one(tag: str, sender: str, field: str, target: str, expect: int, n: int):
        t = st.tags[tag]
        kind = "D" if sender in desktops else "B"
        text = f"{time.perf_counter():.6f} {tag} {kind} from {sender}"
        fields = {field: target, "text": text, "client_msg_id": f"{tag}-{sender}-{n}"}
        t.sent += 1
        try:
            if kind == "D":
                reply = await desktops[sender].call("send_message", **fields)
                msg = reply["message"]
            else:
                http = browsers[sender][0]
                async with send_locks[sender]:
                    status, body = await http.request("POST", "/api/messages", fields)
                if status != 200:
                    raise RuntimeError(f"HTTP {status} {body[:80]!r}")
                msg = loads(body)["message"]
        except Exception as exc:  # noqa: BLE001 - count it; the phase goes on
            t.errors[f"{kind} send: {type(exc).__name__} {exc}"[:120]] += 1
        else:
            t.acked[msg["id"]] = expect

    while True:
        what, val = await recv()
        if what == "finish":
            break
        tag, t_end, drain = val["tag"], val["t_end"], val["drain"]
        st.tags[tag]  # noqa: B018 - exists even if nothing arrives
        st.current = tag
        for n, (at, sender, field, target, expect) in enumerate(val["sends"]):
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(send_one(tag, sender, field, target, expect, n))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.sleep(max(0.0, t_end + drain - time.perf_counter()))
        if pending:
            _, stuck = await asyncio.wait(set(pending), timeout=30)
            for task in stuck:
                st.tags[tag].errors["send unanswered 30 s after the window"] += 1
                task.cancel()
        conn.send(("phase_done", st.tags.pop(tag).export()))

    st.stop = True
    for t in tasks:
        t.cancel()
    await asyncio.wait(tasks, timeout=10)
    conn.send(
        (
            "result",
            {
                "late": {tag: t.export() for tag, t in st.tags.items()},
                "resets": dict(st.resets),
                "poll_errors": dict(st.poll_errors),
                "ws_closed": dict(st.ws_closed),
            },
        )
    )
    await asyncio.gather(*(c.close() for c in desktops.values()), return_exceptions=True)
    await asyncio.gather(*(h.close() for h, _ in browsers.values()), return_exceptions=True)
    if ws_session is not None:
        await ws_session.close()


def worker(conn, cfg: dict[str, Any]) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop

        uvloop.run(worker_main(conn, cfg))
    except BaseException as exc:  # noqa: BLE001 - report, do not hang the parent
        import traceback

        conn.send(("failed", traceback.format_exc()))
        raise SystemExit(1) from exc


# ----------------------------------------------------------------------------------------------
# orchestration (parent process)
# ----------------------------------------------------------------------------------------------
def schedule(kind: str, names: list[str], senders: list[str], t0: float, args) -> list[tuple]:
    """(time, sender, field, target, deliveries expected) for every send of a phase."""
    n = len(names)
    out = []
    if kind == "room":
        for k in range(int(args.seconds * args.room_rate)):
            out.append((t0 + k / args.room_rate, senders[k % len(senders)], "room", ROOM, n))
    elif kind == "dm":
        rate = args.dm_rate or min(n / 2, 500.0)
        pairs = n // 2
        for j in range(int(args.seconds * rate)):
            p, rnd = j % pairs, j // pairs
            a, b = names[2 * p], names[2 * p + 1]
            sender, to = (a, b) if rnd % 2 == 0 else (b, a)
            out.append((t0 + j / rate, sender, "to", to, 2))
    return out


def merge(into: dict[str, Any], part: dict[str, Any]) -> None:
    into["acked"].update(part["acked"])
    for mid, c in part["seen"].items():
        into["seen"][mid] += c
    for k, v in part["lat"].items():
        into["lat"][k].extend(v)
    into["dupes"] += part["dupes"]
    into["sent"] += part["sent"]
    into["errors"].update(part["errors"])


def empty() -> dict[str, Any]:
    return {
        "acked": {},
        "seen": collections.Counter(),
        "lat": collections.defaultdict(list),
        "dupes": 0,
        "sent": 0,
        "errors": collections.Counter(),
    }


def profile(pid: int, out: Path, seconds: float) -> subprocess.Popen:
    exe = Path(sys.executable).parent / "py-spy"  # the venv's, if installed there
    return subprocess.Popen(
        [
            str(exe) if exe.exists() else "py-spy",
            "record",
            "--pid",
            str(pid),
            "-d",
            str(max(1, int(seconds))),
            "-r",
            "100",
        ]
        + ["-f", "raw", "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def run_config(
    args, n: int, gateway: bool, transport: str = "longpoll"
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One fresh core (+ web app), n members, every phase; returns (phase rows, setup info).

    ``transport`` is how the browser members receive: ``longpoll`` or ``ws``.
    """
    busy = wait_quiet(args.wait_quiet) if args.wait_quiet else float("nan")
    config = "gateway" if gateway else "core"
    transport = transport if gateway else "tcp"
    info: dict[str, Any] = {
        "config": config,
        "transport": transport,
        "members": n,
        "busy_before": busy,
        "load_before": os.getloadavg(),
    }
    print(f"# {config}/{transport} n={n}: machine busy before {busy * 100:.0f}%", flush=True)
    rows: list[dict[str, Any]] = []
    web: _gc_probe.Probe | None = None
    with tempfile.TemporaryDirectory(prefix="room-fanout-") as tmp:
        tokens = make_data_dir_fast(Path(tmp), n)
        names = list(tokens)
        t0 = time.perf_counter()
        core, core_port = start_core(Path(tmp))
        info["core_start_s"] = time.perf_counter() - t0
        web_port = None
        if gateway:
            web = _gc_probe.start_web(core_port, "--idle-timeout", "3600")
            web_port = web.port
            desk, brow = names[::2], names[1::2]
            senders = [names[0], names[1]]  # a desktop and a browser member in turn
        else:
            desk, brow = names, []
            senders = [names[0]]
        owner = {}
        ctx = mp.get_context("spawn")
        procs, conns = [], []
        setup_t0 = time.perf_counter()
        try:
            for i in range(args.procs):
                parent, child = ctx.Pipe()
                mine_d, mine_b = desk[i :: args.procs], brow[i :: args.procs]
                owner.update(dict.fromkeys(mine_d + mine_b, i))
                cfg = {
                    "core_port": core_port,
                    "web_port": web_port,
                    "desktops": mine_d,
                    "browsers": mine_b,
                    "tokens": {k: tokens[k] for k in mine_d},
                    "login_concurrency": args.login_concurrency,
                    "transport": transport,
                }
                p = ctx.Process(target=worker, args=(child, cfg), daemon=True)
                p.start()
                procs.append(p)
                conns.append(parent)
            for step in ("desktops_ready", "browsers_ready"):
                gather(conns, step, 900)
                for c in conns:
                    c.send(("go", None))
            gather(conns, "drained", 600)
            info["setup_s"] = time.perf_counter() - setup_t0
            print(f"# setup {info['setup_s']:.0f} s", flush=True)
            plan = [("idle", "idle")]
            for r in range(1, args.rounds + 1):
                plan += [("room", f"room{r}"), ("dm", f"dm{r}")]
            pids = {"core": core.pid, "web": web.pid if web else None}
            gen_pids = [p.pid for p in procs]
            for kind, tag in plan:
                t_start = time.perf_counter() + 0.5
                t_end = t_start + args.seconds
                sends = schedule(kind, names, senders, t_start, args)
                for i, c in enumerate(conns):
                    mine = [s for s in sends if owner[s[1]] == i]
                    cmd = {"tag": tag, "t_end": t_end, "drain": args.drain, "sends": mine}
                    c.send(("phase", cmd))
                time.sleep(max(0.0, t_start - time.perf_counter()))
                profs = []
                if args.profile_dir and tag in ("room1", "dm1"):
                    d = Path(args.profile_dir)
                    d.mkdir(parents=True, exist_ok=True)
                    for role, pid in pids.items():
                        if pid:
                            out = d / f"{config}-{transport}-{n}-{tag}-{role}.txt"
                            profs.append(profile(pid, out, args.seconds))
                cpu0 = {k: cpu_seconds(v) for k, v in pids.items() if v}
                gen0 = sum(cpu_seconds(p) for p in gen_pids)
                m0 = machine_cpu()
                w0 = time.perf_counter()
                if web:
                    web.mark()  # the phase's GC stats start here
                time.sleep(max(0.0, t_end + args.drain - time.perf_counter()))
                cpu1 = {k: cpu_seconds(v) for k, v in pids.items() if v}
                gen1 = sum(cpu_seconds(p) for p in gen_pids)
                m1 = machine_cpu()
                wall = time.perf_counter() - w0
                no_gc = {"count": [0] * 3, "max_ms": [0.0] * 3, "total_ms": [0.0] * 3}
                gc_stats = web.mark() if web else no_gc
                data = empty()
                for part in gather(conns, "phase_done", args.drain + 120):
                    merge(data, part)
                for p in profs:
                    p.wait(60)
                busy_s = (m1[0] - m0[0]) / os.sysconf("SC_CLK_TCK")
                row = {
                    "config": config,
                    "transport": transport,
                    "members": n,
                    "desktops": len(desk),
                    "browsers": len(brow),
                    "phase": tag,
                    "kind": kind,
                    "wall": wall,
                    "cpu_core": cpu1["core"] - cpu0["core"],
                    "cpu_web": (cpu1["web"] - cpu0["web"]) if web else 0.0,
                    "cpu_gen": gen1 - gen0,
                    "machine_busy": (m1[0] - m0[0]) / max(1, m1[1] - m0[1]),
                    "busy_s": busy_s,
                    "web_gc": gc_stats,
                    "data": data,
                }
                row["cpu_other"] = busy_s - row["cpu_core"] - row["cpu_web"] - row["cpu_gen"]
                rows.append(row)
                print(line(summarize(row)), flush=True)
            for c in conns:
                c.send(("finish", None))
            final = gather(conns, "result", 120)
            info["rss_core_mib"] = rss_kib(core.pid) / 1024
            info["rss_web_mib"] = rss_kib(web.pid) / 1024 if web else 0.0
        finally:
            for p in procs:
                p.join(30)
                if p.is_alive():
                    p.kill()
            if web is not None:
                web.stop(120)
            core.terminate()
            try:
                core.wait(120)
            except subprocess.TimeoutExpired:
                core.kill()
                core.wait(10)
    info["resets"] = collections.Counter()
    for f in final:
        info["resets"].update(f["resets"])
    info["poll_errors"] = collections.Counter()
    info["ws_closed"] = collections.Counter()
    for f in final:
        info["poll_errors"].update(f["poll_errors"])
        info["ws_closed"].update(f["ws_closed"])
    late = collections.Counter()
    by_tag = {r["phase"]: r for r in rows}
    for f in final:
        for tag, part in f["late"].items():
            if tag in by_tag:
                merge(by_tag[tag]["data"], part)
                late[tag] += sum(part["seen"].values())
    info["late"] = dict(late)
    info["load_after"] = os.getloadavg()
    return [summarize(r) for r in rows], info


def summarize(r: dict[str, Any]) -> dict[str, Any]:
    d = r["data"]
    expected = sum(d["acked"].values())
    delivered = sum(d["seen"].values())
    lost = sum(max(0, exp - d["seen"].get(mid, 0)) for mid, exp in d["acked"].items())
    all_lat = sorted(x for v in d["lat"].values() for x in v)
    b_lat = sorted(d["lat"].get("B", []))
    out = {k: v for k, v in r.items() if k != "data"}
    out.update(
        sent=d["sent"],
        acked=len(d["acked"]),
        expected=expected,
        delivered=delivered,
        delivered_b=len(b_lat),
        lost=lost,
        dupes=d["dupes"],
        unacked_seen=sum(1 for mid in d["seen"] if mid not in d["acked"]),
        errors=dict(d["errors"]),
        p50=pct(all_lat, 0.5),
        p99=pct(all_lat, 0.99),
        max=all_lat[-1] * 1000 if all_lat else float("nan"),
        p99_by={k: pct(sorted(v), 0.99) for k, v in sorted(d["lat"].items())},
        p50_by={k: pct(sorted(v), 0.5) for k, v in sorted(d["lat"].items())},
    )
    # CPU per delivered event, in microseconds; the web process only carries the
    # browsers' deliveries, so its figure is per browser delivery.
    out["us_core"] = 1e6 * r["cpu_core"] / delivered if delivered else float("nan")
    out["us_web"] = 1e6 * r["cpu_web"] / len(b_lat) if b_lat else float("nan")
    out["us_all"] = 1e6 * (r["cpu_core"] + r["cpu_web"]) / delivered if delivered else float("nan")
    return out


def line(r: dict[str, Any]) -> str:
    by = " ".join(f"{k}:{r['p50_by'][k]:.0f}/{r['p99_by'][k]:.0f}" for k in r["p50_by"])
    g = r["web_gc"]
    return (
        f"{r['config']:7} {r['transport']:8} n={r['members']:5} {r['phase']:5} sent {r['sent']:5} "
        f"delivered {r['delivered']:6}/{r['expected']:6} lost {r['lost']} dup {r['dupes']} "
        f"p50/p99/max {r['p50']:6.1f}/{r['p99']:6.1f}/{r['max']:6.1f} ms (by kind p50/p99 {by})  "
        f"cpu core {r['cpu_core']:.2f} web {r['cpu_web']:.2f} gen {r['cpu_gen']:.2f} "
        f"other {r['cpu_other']:.2f} s in {r['wall']:.1f} s  "
        f"per delivery core {r['us_core']:.1f} us, web/browser delivery {r['us_web']:.1f} us  "
        f"web GC max ms gen0/1/2 {'/'.join(f'{x:.0f}' for x in g['max_ms'])} "
        f"(n {'/'.join(str(x) for x in g['count'])}, in all {sum(g['total_ms']):.0f} ms)  "
        f"err {sum(r['errors'].values())}"
    )


def table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| config | browsers via | members (D+B) | phase | msgs | deliveries (seen / expected) | "
        "p50 / p99 / max ms | p99 to D, B ms | CPU core / web / gen / other s | "
        "core µs per delivery | web µs per browser delivery | web GC max ms | lost | dup |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        pd = r["p99_by"].get("D", float("nan"))
        pb = r["p99_by"].get("B", float("nan"))
        out.append(
            f"| {r['config']} | {r['transport']} | "
            f"{r['members']} ({r['desktops']}+{r['browsers']}) | {r['phase']} | "
            f"{r['acked']} | {r['delivered']} / {r['expected']} | "
            f"{r['p50']:.1f} / {r['p99']:.1f} / {r['max']:.1f} | {pd:.1f}, {pb:.1f} | "
            f"{r['cpu_core']:.2f} / {r['cpu_web']:.2f} / {r['cpu_gen']:.2f} / "
            f"{r['cpu_other']:.2f} | {r['us_core']:.1f} | {r['us_web']:.1f} | "
            f"{max(r['web_gc']['max_ms']):.0f} | {r['lost']} | {r['dupes']} |"
        )
    return "\n".join(out)


def ratios(rows: list[dict[str, Any]]) -> str:
    """Room vs DM CPU per delivery, pairing each room round with the dm round after it."""
    out = [
        "| config | browsers via | members | round | core µs/delivery room / dm | ratio | "
        "web µs/browser delivery room / dm | ratio | core+web µs/delivery room / dm | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    by = {(r["config"], r["transport"], r["members"], r["phase"]): r for r in rows}
    for (config, transport, n, tag), room in by.items():
        if not tag.startswith("room"):
            continue
        dm = by.get((config, transport, n, "dm" + tag[4:]))
        if dm is None:
            continue

        out.append(
            f"| {config} | {transport} | {n} | {tag[4:]} | "
            f"{room['us_core']:.1f} / {dm['us_core']:.1f} | "
            f"{q(room['us_core'], dm['us_core'])} | {room['us_web']:.1f} / {dm['us_web']:.1f} | "
            f"{q(room['us_web'], dm['us_web'])} | {room['us_all']:.1f} / {dm['us_all']:.1f} | "
            f"{q(room['us_all'], dm['us_all'])} |"
        )
    return "\n".join(out)


def q(a: float, b: float) -> str:
    """a / b to two places, or a dash when b is zero or not a number."""
    return f"{a / b:.2f}" if b == b and b else "–"


def transports(rows: list[dict[str, Any]]) -> str:
    """Browser members on the WebSocket against long-poll, phase by phase (gateway only)."""
    by = {(r["transport"], r["members"], r["phase"]): r for r in rows if r["config"] == "gateway"}
    out = [
        "| members | phase | p50 ms ws / longpoll | p99 ms ws / longpoll | "
        "p99 to browsers ms ws / longpoll | web µs per browser delivery ws / longpoll | ratio | "
        "web CPU s ws / longpoll |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (transport, n, tag), ws in by.items():
        lp = by.get(("longpoll", n, tag))
        if transport != "ws" or lp is None or tag == "idle":
            continue
        wb, lb = ws["p99_by"].get("B", float("nan")), lp["p99_by"].get("B", float("nan"))
        out.append(
            f"| {n} | {tag} | {ws['p50']:.1f} / {lp['p50']:.1f} | "
            f"{ws['p99']:.1f} / {lp['p99']:.1f} | "
            f"{wb:.1f} / {lb:.1f} | {ws['us_web']:.1f} / {lp['us_web']:.1f} | "
            f"{q(ws['us_web'], lp['us_web'])} | {ws['cpu_web']:.2f} / {lp['cpu_web']:.2f} |"
        )
    return "\n".join(out) if len(out) > 2 else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, nargs="+", default=[1000, 5000])
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    ap.add_argument("--drain", type=float, default=1.5, help="receive-only seconds per phase")
    ap.add_argument("--rounds", type=int, default=2, help="room + dm phases per configuration")
    ap.add_argument("--room-rate", type=float, default=1.0, help="room messages/s")
    ap.add_argument(
        "--dm-rate", type=float, default=0.0, help="DM messages/s in all (0: min(N/2, 500))"
    )
    ap.add_argument("--core-only", action="store_true", help="skip the gateway configuration")
    ap.add_argument("--gateway-only", action="store_true", help="skip the core configuration")
    ap.add_argument("--procs", type=int, default=2, help="load-generator processes")
    ap.add_argument("--login-concurrency", type=int, default=50)
    ap.add_argument(
        "--wait-quiet", type=float, default=60.0, help="wait up to this many s for a calm machine"
    )
    ap.add_argument(
        "--browser-transport",
        nargs="+",
        choices=["longpoll", "ws"],
        default=["longpoll"],
        help="how browser members receive (gateway configuration); several run side by side",
    )
    ap.add_argument("--profile-dir", help="py-spy record core and web in room1 and dm1")
    args = ap.parse_args()
    print(
        f"# {os.cpu_count()} CPUs; generator {args.procs} processes; phases of {args.seconds} s "
        f"(+{args.drain} s drain); room {args.room_rate} msg/s; load {os.getloadavg()}",
        flush=True,
    )
    configs = [] if args.gateway_only else [(False, "tcp")]
    configs += [] if args.core_only else [(True, t) for t in args.browser_transport]
    rows, infos = [], []
    for n in args.members:
        for gw, transport in configs:
            r, info = run_config(args, n, gw, transport)
            rows += r
            infos.append(info)
            print(
                f"# {info['config']}/{info['transport']} n={n}: core start "
                f"{info['core_start_s']:.1f} s, setup "
                f"{info['setup_s']:.0f} s, RSS core {info['rss_core_mib']:.0f} MiB web "
                f"{info['rss_web_mib']:.0f} MiB, resets {dict(info['resets'])}, poll errors "
                f"{dict(info['poll_errors'])}, sockets closed by the server "
                f"{dict(info['ws_closed'])}, late deliveries {info['late']}, load before "
                f"{info['load_before'][0]:.2f} after {info['load_after'][0]:.2f}",
                flush=True,
            )
            for row in r:
                for k, v in row["errors"].items():
                    print(f"    {row['phase']} error x{v}: {k}", flush=True)
    print()
    print(table(rows))
    print()
    print(ratios(rows))
    if transports(rows):
        print()
        print(transports(rows))
    if args.profile_dir:
        for p in sorted(Path(args.profile_dir).glob("*.txt")):
            print()
            print(summarize_profile(p))


if __name__ == "__main__":
    main()
