"""The load generator's worker process for ``bench/system_load.py``.

Each worker owns a share of the simulated users: desktop clients (``CoreClient``
over TCP) and browsers (``_http.Browser`` through the gateway). It reports to
the parent over a pipe at each phase (desktops ready, browsers ready, drained,
result) and measures send→seen latency from the ``perf_counter()`` stamp every
message text carries.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

try:
    import orjson

    loads = orjson.loads
except ImportError:  # pragma: no cover
    import json

    loads = json.loads

POLL_INTERVAL = 0.1
LONGPOLL_WAIT_MS = 25_000
PASSWORD = "bench"


class W:
    """Per-worker counters."""

    def __init__(self) -> None:
        self.acked: dict[int, str] = {}  # message id -> recipient
        self.seen: collections.Counter[int] = collections.Counter()
        self.lat: dict[str, list[float]] = collections.defaultdict(list)  # "DB" -> seconds
        self.sent = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.req: collections.Counter[str] = collections.Counter()  # in the window
        self.resets_window = 0
        self.t_start = float("inf")
        self.t_end = float("inf")
        self.stop = False

    def count(self, kind: str) -> None:
        now = time.perf_counter()
        if self.t_start <= now <= self.t_end:
            self.req[kind] += 1

    def received(self, me: str, my_kind: str, events: list[dict[str, Any]]) -> int:
        now = time.perf_counter()
        n = 0
        for ev in events:
            if ev.get("type") != "message":
                continue
            m = ev["message"]
            if m["to"] != me:
                continue
            n += 1
            self.seen[m["id"]] += 1
            if self.seen[m["id"]] == 1:
                ts, kind, _ = m["text"].split(" ", 2)
                self.lat[kind + my_kind].append(now - float(ts))
        return n


async def desktop_loop(c, me: str, mode: str, st: W, idle: asyncio.Event) -> None:
    from legacy_socket_server.client import CoreError, CoreUnavailable

    cursor = None
    wait = LONGPOLL_WAIT_MS if mode == "longpoll" else 0
    while not st.stop:
        try:
            r = await c.poll(cursor, wait_ms=wait if idle.is_set() else 0)
        except (CoreError, CoreUnavailable) as exc:
            st.errors[f"desktop poll: {exc}"] += 1
            await asyncio.sleep(0.5)
            continue
        st.count("core_poll")
        cursor = r["cursor"]
        if r.get("reset"):
            st.resets_window += st.t_start <= time.perf_counter() <= st.t_end
        ev = r["events"]
        st.received(me, "D", ev)
        if not ev:
            idle.set()
            if mode != "longpoll":
                await asyncio.sleep(POLL_INTERVAL)


async def browser_loop(http, me: str, cursor: int, mode: str, st: W, idle) -> None:
    while not st.stop:
        path = f"/api/poll?cursor={cursor}"
        if mode == "longpoll" and idle.is_set():
            path += f"&wait_ms={LONGPOLL_WAIT_MS}"
        try:
            status, body = await http.request("GET", path, lane="poll")
        except Exception as exc:  # noqa: BLE001 - count and carry on
            st.errors[f"browser poll: {type(exc).__name__}"] += 1
            await asyncio.sleep(0.5)
            continue
        st.count("http_poll")
        if status != 200:
            st.errors[f"browser poll HTTP {status} {body[:60]!r}"] += 1
            await asyncio.sleep(0.5)
            continue
        r = loads(body)
        cursor = r["cursor"]
        if r.get("reset"):
            st.resets_window += st.t_start <= time.perf_counter() <= st.t_end
        ev = r["events"]
        st.received(me, "B", ev)
        if not ev:
            idle.set()
            if mode == "poll":
                await asyncio.sleep(POLL_INTERVAL)
            elif mode == "pollmax":
                pass  # closed loop: the throughput baseline


async def sender_loop(send, me: str, kind: str, names: list[str], rate: float, st: W) -> None:
    rng = random.Random(me)
    interval = 1 / rate
    nxt = st.t_start + rng.random() * interval
    n = 0
    while True:
        delay = min(nxt, st.t_end) - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if time.perf_counter() >= st.t_end:
            return
        to = rng.choice(names)
        while to == me:
            to = rng.choice(names)
        n += 1
        text = f"{time.perf_counter():.6f} {kind} from {me}"
        st.sent += 1
        try:
            msg = await send(to, text, f"{me}-{n}")
        except Exception as exc:  # noqa: BLE001
            st.errors[f"{kind} send: {type(exc).__name__} {exc}"[:120]] += 1
        else:
            st.acked[msg["id"]] = to
        nxt += interval
        if nxt < time.perf_counter() - 1:
            nxt = time.perf_counter()  # fell behind by a second: do not burst to catch up


async def resume_desktops(cfg: dict[str, Any]) -> dict[str, Any]:
    """Connect ``cfg["desktops"]`` to the core and resume them with their tokens, 100 at a time."""
    from legacy_socket_server.client import CoreClient

    desktops: dict[str, CoreClient] = {}
    names = cfg["desktops"]
    for i in range(0, len(names), 100):
        batch = names[i : i + 100]
        conns = await asyncio.gather(
            *(CoreClient.connect("127.0.0.1", cfg["core_port"]) for _ in batch)
        )
        replies = await asyncio.gather(
            *(
                c.request("resume", timeout=600, token=cfg["tokens"][n])
                for c, n in zip(conns, batch, strict=True)
            )
        )
        for n, r in zip(batch, replies, strict=True):
            if not r.get("ok"):
                raise RuntimeError(f"resume {n}: {r}")
        desktops.update(zip(batch, conns, strict=True))
    phase(f"{len(desktops)} desktops resumed")
    return desktops


async def login_browsers(cfg: dict[str, Any]) -> dict[str, tuple[Any, int]]:
    """Log ``cfg["browsers"]`` in through the web app (no HTTP resume), bounded concurrency.

    Returns name -> (client, cursor of the login reply).
    """
    from _http import Browser

    browsers: dict[str, tuple[Browser, int]] = {}
    sem = asyncio.Semaphore(cfg["login_concurrency"])

    async def login(name: str) -> None:
        http = Browser("127.0.0.1", cfg["web_port"])
        async with sem:
            for _ in range(100):
                # On the connection the polls will use, as a browser reuses its
                # idle keep-alive connection: aiohttp keeps a connection's last
                # response (the login's, with every user) until its next request.
                status, body = await http.request(
                    "POST", "/api/login", {"username": name, "password": PASSWORD}, lane="poll"
                )
                if status != 429:  # the core's hash gate: come back in a moment
                    break
                await asyncio.sleep(0.2)
            if status != 200:
                raise RuntimeError(f"login {name}: {status} {body[:200]!r}")
        browsers[name] = (http, loads(body)["cursor"])

    await asyncio.gather(*(login(n) for n in cfg["browsers"]))
    phase(f"{len(browsers)} browsers logged in")
    return browsers


async def worker_main(conn, cfg: dict[str, Any]) -> None:
    st = W()
    mode = cfg["mode"]
    loop = asyncio.get_running_loop()
    recv = lambda: loop.run_in_executor(None, conn.recv)  # noqa: E731

    # 1. desktops: connect and resume (cheap), in batches
    desktops = await resume_desktops(cfg)
    conn.send(("desktops_ready", None))
    await recv()

    # 2. browsers: POST /api/login with bounded concurrency
    browsers = await login_browsers(cfg)
    conn.send(("browsers_ready", None))
    await recv()

    # 3. everyone polls; drain the login storm's presence events
    tasks = []
    idles = []
    for name, c in desktops.items():
        idle = asyncio.Event()
        idles.append(idle)
        tasks.append(asyncio.create_task(desktop_loop(c, name, mode, st, idle)))
    for name, (http, cursor) in browsers.items():
        idle = asyncio.Event()
        idles.append(idle)
        tasks.append(asyncio.create_task(browser_loop(http, name, cursor, mode, st, idle)))
    for idle in idles:
        await idle.wait()
    await asyncio.sleep(1.0)  # let everyone settle into its steady rhythm
    phase("drained")
    conn.send(("drained", None))

    # 4. the measured window
    _, (t_start, t_end, drain) = await recv()
    st.t_start, st.t_end = t_start, t_end
    senders = []
    if cfg["rate"] > 0:
        names = cfg["all_names"]
        for name, c in desktops.items():

            async def dsend(to, text, cid, c=c):
                st.count("core_send")
                return await c.send_message(to, text, cid)

            senders.append(
                asyncio.create_task(sender_loop(dsend, name, "D", names, cfg["rate"], st))
            )
        for name, (http, _) in browsers.items():

            async def bsend(to, text, cid, http=http):
                status, body = await http.request(
                    "POST", "/api/messages", {"to": to, "text": text, "client_msg_id": cid}
                )
                if status != 200:
                    raise RuntimeError(f"HTTP {status} {body[:80]!r}")
                st.count("http_send")
                return loads(body)["message"]

            senders.append(
                asyncio.create_task(sender_loop(bsend, name, "B", names, cfg["rate"], st))
            )
    await asyncio.sleep(max(0.0, t_end - time.perf_counter()))
    _, stuck = await asyncio.wait(senders, timeout=30) if senders else (None, set())
    for t in stuck:  # a send without a reply 30 s after the window: count it, move on
        st.errors["send still unanswered 30 s after the window"] += 1
        t.cancel()
    await asyncio.sleep(max(0.0, t_end + drain - time.perf_counter()))
    phase("window and drain over")
    st.stop = True
    for t in tasks:
        t.cancel()
    # A cancellation that aiohttp turns into a connection error is caught by the
    # loops; st.stop ends them anyway. Never wait for ever on a poller.
    _, pending = await asyncio.wait(tasks, timeout=10)
    if pending:
        phase(f"{len(pending)} pollers did not stop within 10 s")
    phase("pollers stopped")
    conn.send(
        (
            "result",
            {
                "acked": st.acked,
                "seen": dict(st.seen),
                "lat": dict(st.lat),
                "sent": st.sent,
                "errors": dict(st.errors),
                "req": dict(st.req),
                "resets": st.resets_window,
            },
        )
    )
    await asyncio.gather(*(c.close() for c in desktops.values()), return_exceptions=True)
    await asyncio.gather(*(h.close() for h, _ in browsers.values()), return_exceptions=True)


def phase(msg: str) -> None:
    print(f"  [gen {os.getpid()} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def worker(conn, cfg: dict[str, Any]) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        if cfg["uvloop"]:
            import uvloop

            uvloop.run(worker_main(conn, cfg))
        else:
            asyncio.run(worker_main(conn, cfg))
    except BaseException as exc:  # noqa: BLE001 - report, do not hang the parent
        import traceback

        conn.send(("failed", traceback.format_exc()))
        raise SystemExit(1) from exc
