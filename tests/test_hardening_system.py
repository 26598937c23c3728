"""SIGKILL the core in the middle of a burst from every kind of client: nothing is lost.

The clients are the real ones: the desktop ``ChatClient`` model driven by
``tick()``, a ``CoreClient`` (what the gateway and scripts use) and a browser
session through the real web app and gateway. After the core comes back on
the same port: every acknowledged message is in history exactly once, the
desktop model and the gateway reconnect by themselves (the same cookie polls
again), and sends that failed are retried with their ``client_msg_id`` and
stored once, including the ones the core had stored but could not confirm.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient
from conftest import DEMO_USERS, CoreProcess
from core_helpers import whole_history
from waiting import until
from web_helpers import login, poll_until

from app.config import WebConfig
from app.web import COOKIE, create_app
from legacy_socket_server.client import CoreClient, CoreUnavailable
from legacy_socket_server.desktop.model import ChatClient

#: Acknowledged sends each client must have before the kill (so it lands mid-burst).
ACKED_BEFORE_KILL = 20
#: Upper bound on each worker's sends (stays well inside the core's send burst).
MAX_PER_WORKER = 150


class Sender:
    """Acknowledged and failed sends of one kind of client, by client_msg_id."""

    def __init__(self) -> None:
        self.acked: dict[str, dict[str, Any]] = {}  # cmid -> the message the core returned
        self.failed: dict[str, tuple[str, str]] = {}  # cmid -> (to, text)
        self.failed_after_kill = 0

    def all_sent(self) -> dict[str, tuple[str, str]]:
        return {**self.failed, **{c: (m["to"], m["text"]) for c, m in self.acked.items()}}


def post_message(client: TestClient, to: str, text: str, cmid: str) -> Any:
    return client.post("/api/messages", json={"to": to, "text": text, "client_msg_id": cmid})


def cookie_of(client: TestClient) -> str:
    return client.session.cookie_jar.filter_cookies(client.make_url("/"))[COOKIE].value


async def web_worker(client: TestClient, w: int, out: Sender, killed: asyncio.Event) -> None:
    for i in range(MAX_PER_WORKER):
        cmid, to, text = f"web-{w}-{i}", ("Alice", "Charlie")[i % 2], f"web {w}.{i}"
        body: Any = None
        try:
            resp = await post_message(client, to, text, cmid)
            status, body = resp.status, await resp.json()
        except aiohttp.ClientError:
            status = None
        if status == 200:
            out.acked[cmid] = body["message"]
            continue
        assert status is None or (status, body["error"]) == (503, "core_unavailable"), body
        out.failed[cmid] = (to, text)
        if killed.is_set():
            out.failed_after_kill += 1
            return  # the core is down: this burst is over; retried after the restart


async def tcp_worker(client: CoreClient, w: int, out: Sender, killed: asyncio.Event) -> None:
    for i in range(MAX_PER_WORKER):
        cmid, to, text = f"tcp-{w}-{i}", ("Alice", "Bob")[i % 2], f"tcp {w}.{i}"
        try:
            out.acked[cmid] = await client.send_message(to, text, client_msg_id=cmid)
            continue
        except CoreUnavailable:
            out.failed[cmid] = (to, text)
        if killed.is_set() or not client.is_open:
            out.failed_after_kill += 1
            return


async def test_sigkill_mid_burst_loses_nothing_and_every_client_recovers(
    core_proc: CoreProcess, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    host, port = core_proc.host, core_proc.port
    server = await aiohttp_server(create_app(WebConfig(core=(host, port))))
    bob_web = await aiohttp_client(server)
    await login(bob_web, "Bob")
    cookie = cookie_of(bob_web)

    # The desktop model, ticked by a background task as the window's after(100) would.
    alice = ChatClient(host, port)
    desk_texts: list[str] = []
    state = {"ticking": True, "desk_sending": True, "desk_after_kill": 0}
    killed = asyncio.Event()

    async def ticker() -> None:
        while state["ticking"]:
            alice.tick()
            if alice.peer == "Bob" and state["desk_sending"] and len(desk_texts) < MAX_PER_WORKER:
                text = f"desk {len(desk_texts)}"
                assert alice.send(text)
                desk_texts.append(text)
                if killed.is_set():
                    state["desk_after_kill"] += 1  # queued while the core is down
                    state["desk_sending"] = state["desk_after_kill"] < 5
            await asyncio.sleep(0.005)

    alice.login("Alice", DEMO_USERS["Alice"])
    tick_task = asyncio.create_task(ticker())
    charlie = await CoreClient.connect(host, port)
    try:
        await until(lambda: alice.phase == "ready", what="the desktop login")
        token = (await charlie.login("Charlie", DEMO_USERS["Charlie"]))["token"]
        web, tcp = Sender(), Sender()
        workers = [
            *(asyncio.create_task(web_worker(bob_web, w, web, killed)) for w in range(3)),
            *(asyncio.create_task(tcp_worker(charlie, w, tcp, killed)) for w in range(3)),
        ]
        alice.open_conversation("Bob")  # the ticker starts sending from here

        def desk_acked() -> int:
            return len(desk_texts) - alice.pending_count

        await until(
            lambda: min(len(web.acked), len(tcp.acked), desk_acked()) >= ACKED_BEFORE_KILL,
            timeout=20,
            what="every client to be mid-burst",
        )
        await asyncio.to_thread(core_proc.kill)  # the loop (and the burst) keeps running
        killed.set()
        await asyncio.wait_for(asyncio.gather(*workers), 20)
        await until(lambda: alice.phase == "reconnecting", what="the desktop to notice")
        await until(lambda: not state["desk_sending"], what="sends queued while down")
        acked_before = {
            "web": dict(web.acked),
            "tcp": dict(tcp.acked),
            "desk": desk_acked(),
        }
        # Something must have been in flight at the kill (which kind depends on timing).
        assert (web.failed or tcp.failed) and alice.pending_count >= 5
        print(
            f"\nat the kill: web {len(web.acked)} acked / {len(web.failed)} failed, "
            f"tcp {len(tcp.acked)} / {len(tcp.failed)}, desktop {acked_before['desk']} acked / "
            f"{alice.pending_count} pending"
        )

        await asyncio.to_thread(core_proc.start)  # same port, same data dir

        # The gateway resumes the browser session by itself: the same cookie polls again.
        async def polls_again() -> bool:
            return (await bob_web.get("/api/poll")).status == 200

        await until(polls_again, timeout=20, what="the gateway to resume the session")
        assert cookie_of(bob_web) == cookie
        # The desktop model reconnects with its backoff and flushes its outbox itself.
        await until(
            lambda: alice.phase == "ready" and alice.pending_count == 0,
            timeout=30,
            what="the desktop to resume and send its outbox",
        )
        # A CoreClient does not reconnect by itself; it resumes with its token.
        await charlie.close()
        charlie = await CoreClient.connect(host, port)
        await charlie.resume(token)

        # Failed sends the core had stored before dying (reply lost): the retry must
        # return them, not store a second copy.
        bob_tcp = await CoreClient.connect(host, port)
        await bob_tcp.login("Bob", DEMO_USERS["Bob"])

        async def everything() -> list[dict[str, Any]]:
            return [
                *await whole_history(bob_tcp, "Alice"),
                *await whole_history(charlie, "Alice"),
                *await whole_history(charlie, "Bob"),
            ]

        failed = {*web.failed, *tcp.failed}
        unconfirmed = [m for m in await everything() if m.get("client_msg_id") in failed]
        print(f"failed sends already stored before the retry: {len(unconfirmed)}")

        # Retry every failed send with its client_msg_id; retry the acknowledged ones
        # too (a reply lost on the way): each must give back the stored original.
        retried: dict[str, dict[str, Any]] = {}
        for cmid, (to, text) in web.all_sent().items():
            resp = await post_message(bob_web, to, text, cmid)
            assert resp.status == 200, await resp.text()
            retried[cmid] = (await resp.json())["message"]
        for cmid, (to, text) in tcp.all_sent().items():
            retried[cmid] = await charlie.send_message(to, text, client_msg_id=cmid)
        for cmid, msg in [*web.acked.items(), *tcp.acked.items()]:
            assert retried[cmid] == msg, "a retry of an acknowledged send must not store anew"

        # Every conversation, read back from the restarted core.
        stored = await everything()
        await bob_tcp.close()
        for m in unconfirmed:
            assert retried[m["client_msg_id"]] == m
        ids = [m["id"] for m in stored]
        assert len(ids) == len(set(ids))
        by_cmid: dict[str, list[dict[str, Any]]] = {}
        for m in stored:
            by_cmid.setdefault(m.get("client_msg_id", ""), []).append(m)
        # Web and TCP: every cmid ever sent is stored exactly once, acked ones unchanged.
        for sender, prefix, who in ((web, "web", "Bob"), (tcp, "tcp", "Charlie")):
            sent = sender.all_sent()
            for cmid, (to, text) in sent.items():
                copies = by_cmid.get(cmid, [])
                assert len(copies) == 1, (cmid, copies)
                assert (copies[0]["from"], copies[0]["to"], copies[0]["text"]) == (who, to, text)
                assert copies[0] == retried[cmid]
            for cmid, msg in sender.acked.items():
                assert by_cmid[cmid] == [msg]
            assert {c for c in by_cmid if c.startswith(prefix)} == set(sent)
        # Desktop: every text typed (acked before the kill or queued) exactly once.
        desk = [m for m in stored if m["from"] == "Alice"]
        assert sorted(m["text"] for m in desk) == sorted(desk_texts)
        assert len(desk_texts) >= acked_before["desk"] + 5
        assert len(stored) == len(web.acked) + len(web.failed) + len(tcp.acked) + len(
            tcp.failed
        ) + len(desk_texts)
        # The model shows exactly what the core holds, once each.
        await until(lambda: not alice.conv.loading, what="the desktop's history reload")
        shown = [m["id"] for m in alice.visible_messages()]
        assert shown == [m["id"] for m in stored if {m["from"], m["to"]} == {"Alice", "Bob"}]
        assert alice.error is None and alice.drafts == {}

        # Live traffic flows again on every path: core -> browser and core -> desktop.
        cursor = (await (await bob_web.get("/api/poll")).json())["cursor"]
        hello = await charlie.send_message("Bob", "after the restart")
        await poll_until(bob_web, cursor, lambda e: e.get("message", {}).get("id") == hello["id"])
        resp = await bob_web.post("/api/messages", json={"to": "Alice", "text": "welcome back"})
        assert resp.status == 200
        await until(
            lambda: alice.messages and alice.messages[-1]["text"] == "welcome back",
            what="the desktop to receive live",
        )
    finally:
        state["ticking"] = False
        with contextlib.suppress(Exception):
            await tick_task
        await charlie.close()
        alice.close()
