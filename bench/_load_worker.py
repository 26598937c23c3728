"""The load generator's worker process for ``bench/system_load.py``.

Each worker owns a share of the simulated users: desktop clients (``CoreClient``
over TCP) and browsers (``_http.Browser`` through the gateway). It reports to
the parent over a pipe at each phase (desktops ready, browsers ready, drained,
result) and measures send→seen latency from the ``perf_counter()`` stamp every
message text carries.

In ``ws`` mode a browser receives over ``GET /api/ws`` (docs/protocol.md#websocket-push):
one aiohttp client WebSocket per browser session, carrying the session cookie and
the site's own Origin as a page would, while its sends stay HTTP requests; its
desktops long-poll, as in ``longpoll`` mode, so the two modes differ only in the
browsers' receiving.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import os
import random
import resource
import sys
import time
from collections.abc import Callable
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
#: A push frame holds at most this many events (the core's and the buffer's page
#: size, legacy_socket_server/contract.py); a shorter one means "caught up".
MAX_FRAME_EVENTS = 500
#: Seconds without a frame after a full one that also mean "caught up": the server
#: sends the next page at once when there is one.
FULL_FRAME_QUIET = 2.0
#: Close codes of /api/ws (app/ws.py): reconnect from the cursor after 1013.
WS_TOO_SLOW = 1013


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
        #: /api/ws sockets that ended other than by our own stop, by close code
        self.ws_closed: collections.Counter[str] = collections.Counter()
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
    # In ws mode the desktops long-poll too: only the browsers' receiving differs.
    wait = LONGPOLL_WAIT_MS if mode in ("longpoll", "ws") else 0
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
            if not wait:
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


async def ws_receive(
    session,
    url: str,
    cookie: str,
    cursor: int,
    on_reply: Callable[[dict[str, Any]], None],
    idle: asyncio.Event,
    stopped: Callable[[], bool],
    errors: collections.Counter[str],
    closed: collections.Counter[str],
) -> None:
    """Receive over ``GET /api/ws`` until ``stopped()``; reconnect from the last cursor if closed.

    The server pushes poll-shaped frames (docs/protocol.md#websocket-push), each
    handed to ``on_reply`` decoded; the first answers ``cursor`` at once. A close
    by the server is counted in ``closed`` by its code; any but 1013 (too slow: the
    protocol's "reconnect from your cursor") is also an error, retried the same way.

    ``idle`` is set once the socket has caught up (the drain's "idle", as an empty
    poll reply is for the pollers): at a frame shorter than a full page, or
    ``FULL_FRAME_QUIET`` s after a full one with nothing behind it (a backlog of
    exactly a whole number of pages ends with a full frame).
    """
    import aiohttp

    quiet: asyncio.TimerHandle | None = None

    origin = url.split("/api/", 1)[0].replace("ws://", "http://", 1)
    headers = {"Cookie": cookie, "Origin": origin}  # a page's socket sends its own origin
    while not stopped():
        try:
            async with session.ws_connect(f"{url}?cursor={cursor}", headers=headers) as ws:
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        continue
                    r = loads(msg.data)
                    cursor = r["cursor"]
                    on_reply(r)
                    if quiet is not None:
                        quiet.cancel()
                        quiet = None
                    if len(r["events"]) < MAX_FRAME_EVENTS:
                        idle.set()
                    elif not idle.is_set():
                        quiet = asyncio.get_running_loop().call_later(FULL_FRAME_QUIET, idle.set)
                code = ws.close_code
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - count and carry on
            if stopped():
                return
            errors[f"browser ws: {type(exc).__name__} {exc}"[:100]] += 1
            await asyncio.sleep(0.5)
            continue
        if stopped():
            return
        closed[str(code)] += 1
        if code != WS_TOO_SLOW:
            errors[f"browser ws closed with {code}"] += 1
            await asyncio.sleep(0.5)


async def ws_loop(session, url: str, cookie: str, me: str, cursor: int, st: W, idle) -> None:
    """A browser receiving over ``GET /api/ws``."""

    def on_reply(r: dict[str, Any]) -> None:
        st.count("ws_frame")
        if r.get("reset"):
            st.resets_window += st.t_start <= time.perf_counter() <= st.t_end
        st.received(me, "B", r["events"])

    await ws_receive(
        session, url, cookie, cursor, on_reply, idle, lambda: st.stop, st.errors, st.ws_closed
    )


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


async def log_everyone_in(conn, cfg: dict[str, Any]):
    """Desktops resume (cheap, in batches), then browsers log in (POST /api/login, bounded
    concurrency), each step reported to the parent and held until it says go on.

    Returns ``(desktops, browsers, recv)``; ``recv()`` awaits the parent's next message.
    """
    loop = asyncio.get_running_loop()
    recv = lambda: loop.run_in_executor(None, conn.recv)  # noqa: E731
    desktops = await resume_desktops(cfg)
    conn.send(("desktops_ready", None))
    await recv()
    browsers = await login_browsers(cfg)
    conn.send(("browsers_ready", None))
    await recv()
    return desktops, browsers, recv


async def worker_main(conn, cfg: dict[str, Any]) -> None:
    st = W()
    mode = cfg["mode"]
    ws_session = None
    # 1-2. desktops resume, browsers log in
    desktops, browsers, recv = await log_everyone_in(conn, cfg)

    # 3. everyone polls (or opens its socket); drain the login storm's presence events
    tasks = []
    idles = []
    for name, c in desktops.items():
        idle = asyncio.Event()
        idles.append(idle)
        tasks.append(asyncio.create_task(desktop_loop(c, name, mode, st, idle)))
    if mode == "ws":
        ws_session = ws_client_session()
        url = f"ws://127.0.0.1:{cfg['web_port']}/api/ws"
    for name, (http, cursor) in browsers.items():
        idle = asyncio.Event()
        idles.append(idle)
        if mode == "ws":
            cookie = await socket_cookie(http)
            loop_ = ws_loop(ws_session, url, cookie, name, cursor, st, idle)
        else:
            loop_ = browser_loop(http, name, cursor, mode, st, idle)
        tasks.append(asyncio.create_task(loop_))
    await wait_drained(idles, st.errors)
    await asyncio.sleep(1.0)  # let everyone settle into its steady rhythm
    # The generator's own hygiene: thousands of clients are long-lived objects; a
    # full collection walking them would stall the generator (and show as latency).
    gc.collect()
    gc.freeze()
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
                "ws_closed": dict(st.ws_closed),
            },
        )
    )
    await asyncio.gather(*(c.close() for c in desktops.values()), return_exceptions=True)
    await asyncio.gather(*(h.close() for h, _ in browsers.values()), return_exceptions=True)
    if ws_session is not None:
        await ws_session.close()


async def socket_cookie(http) -> str:
    """The session cookie of a logged-in ``Browser`` that is to receive over a socket.

    The login's keep-alive connection is not the socket: it is closed, so the
    browser holds its socket and (from its first send) one request connection, as
    a long-polling one holds its poll and its send connection.
    """
    cookie = http.cookie.decode()
    await http.close()
    return cookie


def ws_client_session():
    """One aiohttp client session for all of a worker's sockets.

    Each socket carries its own browser's cookie in its headers, so the session
    keeps no cookie jar (it would mix the browsers' cookies) and no connection limit.
    """
    import aiohttp

    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=None, connect=60),
    )


async def wait_drained(idles: list[asyncio.Event], errors: collections.Counter[str]) -> None:
    """Wait for every client to be caught up, saying every 10 s who is not, and why."""
    while True:
        left = sum(1 for i in idles if not i.is_set())
        if not left:
            return
        try:
            async with asyncio.timeout(10):
                for idle in idles:
                    await idle.wait()
            return
        except TimeoutError:
            left = sum(1 for i in idles if not i.is_set())
            phase(f"{left} clients not yet drained; errors so far {errors.most_common(3)}")


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
