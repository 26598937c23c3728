"""The gateway forwards and the core decides: read events and user lists come from the core.

Two promises the browser's unread counts rest on: every tab of a session hears
of a read marker through the core's own ``read`` event, and a user list's
``cursor`` is the exact poll position its counts hold at, however busy the
session's event stream is.
"""

from __future__ import annotations

import asyncio
from typing import Any

from conftest import DEMO_USERS, CoreProcess
from core_helpers import Client
from waiting import until

from app.config import WebConfig
from app.web import create_app
from legacy_socket_server.chat import ChatService
from legacy_socket_server.client import CoreClient


# -- the core's side: read with echo ----------------------------------------------------------
async def test_read_echo_reaches_the_connection_that_moved_the_marker(svc: ChatService) -> None:
    alice, bob = Client(svc), Client(svc)
    alice.login("Alice")
    bob.login("Bob")
    first = bob.send("Alice", "one")
    second = bob.send("Alice", "two")
    alice.poll_events()
    alice.ok("read", **{"with": "Bob", "up_to": first["id"]})
    assert [e for e in alice.poll_events() if e["type"] == "read"] == []
    alice.ok("read", **{"with": "Bob", "up_to": second["id"], "echo": True})
    assert {"type": "read", "with": "Bob", "up_to": second["id"]} in alice.poll_events()
    alice.err("read", "bad_request", **{"with": "Bob", "up_to": 1, "echo": "yes"})


# -- through the web app ------------------------------------------------------------------------
async def _browser(core: CoreProcess, aiohttp_server: Any, aiohttp_client: Any) -> Any:
    server = await aiohttp_server(create_app(WebConfig(core=(core.host, core.port))))
    client = await aiohttp_client(server)
    resp = await client.post(
        "/api/login", json={"username": "Alice", "password": DEMO_USERS["Alice"]}
    )
    assert resp.status == 200
    return client, (await resp.json())["cursor"]


async def test_every_tab_hears_a_read_marker_from_the_core(
    core_proc: CoreProcess, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    tab, cursor = await _browser(core_proc, aiohttp_server, aiohttp_client)
    bob = await CoreClient.connect(core_proc.host, core_proc.port)
    await bob.login("Bob", DEMO_USERS["Bob"])
    sent = await bob.send_message("Alice", "read me")
    resp = await tab.post("/api/read", json={"with": "Bob", "up_to": sent["id"]})
    assert resp.status == 204
    seen: list[dict[str, Any]] = []

    async def read_event() -> bool:
        nonlocal cursor
        body = await (await tab.get("/api/poll", params={"cursor": cursor, "wait_ms": 500})).json()
        cursor = body["cursor"]
        seen.extend(body["events"])
        return {"type": "read", "with": "Bob", "up_to": sent["id"]} in seen

    await until(read_event, what="the core's read event in the tab that read")
    assert sum(e["type"] == "read" for e in seen) == 1  # the core's, not a second made here
    await bob.close()


async def test_a_user_list_is_exact_at_its_cursor_during_a_burst(
    core_proc: CoreProcess, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    tab, start = await _browser(core_proc, aiohttp_server, aiohttp_client)
    bob = await CoreClient.connect(core_proc.host, core_proc.port)
    await bob.login("Bob", DEMO_USERS["Bob"])
    total = 300

    async def burst() -> None:
        for i in range(total):
            await bob.send_message("Alice", f"m{i}")

    lists: list[tuple[int, int]] = []

    async def fetch_lists() -> None:
        while len(lists) < 200 and not sender.done():
            body = await (await tab.get("/api/users")).json()
            bob_entry = next(u for u in body["users"] if u["username"] == "Bob")
            lists.append((body["cursor"], bob_entry["unread"]))

    sender = asyncio.create_task(burst())
    await asyncio.gather(sender, fetch_lists())
    # Every event of the session, with its position (event i of a reply is at from + i + 1).
    positions: list[int] = []
    cursor = start
    while len(positions) < total:
        body = await (await tab.get("/api/poll", params={"cursor": cursor, "wait_ms": 1000})).json()
        for i, ev in enumerate(body["events"]):
            if ev["type"] == "message" and ev["message"]["from"] == "Bob":
                positions.append(cursor + i + 1)
        cursor = body["cursor"]
    assert len(lists) > 10
    for list_cursor, unread in lists:
        # Alice never reads: Bob's unread is the number of his messages up to the cursor.
        assert unread == sum(p <= list_cursor for p in positions), (list_cursor, unread)
    await bob.close()
