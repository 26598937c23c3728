"""Rooms over HTTP (docs/protocol.md#rooms): every route, its errors and statuses, and a
browser user and a desktop (TCP) user in one room, against a real core."""

from __future__ import annotations

from typing import Any

from web_helpers import (  # noqa: F401 - fixtures
    MakeWeb,
    expect_error,
    fixture_make_web,
    fixture_tcp,
    login,
    poll_until,
)


async def browser(make_web: MakeWeb, aiohttp_client: Any) -> Any:
    return await aiohttp_client(await make_web())


async def test_login_lists_rooms_and_rooms_route_pairs_a_cursor(
    make_web: MakeWeb, aiohttp_client: Any
) -> None:
    alice = await browser(make_web, aiohttp_client)
    reply = await login(alice, "Alice")
    assert [r["name"] for r in reply["rooms"]] == ["general"]
    resp = await alice.get("/api/rooms")
    body = await resp.json()
    assert resp.status == 200 and body["rooms"][0]["joined"] is True
    assert isinstance(body["cursor"], int)


async def test_room_routes_and_their_errors(make_web: MakeWeb, aiohttp_client: Any) -> None:
    server = await make_web()
    alice, bob = await aiohttp_client(server), await aiohttp_client(server)
    await login(alice, "Alice")
    await login(bob, "Bob")
    resp = await alice.post("/api/rooms", json={"room": "Team", "members": ["Charlie"]})
    assert resp.status == 201
    assert (await resp.json())["room"]["members"] == 2
    await expect_error(await alice.post("/api/rooms", json={"room": "team"}), 409, "room_exists")
    await expect_error(await alice.post("/api/rooms", json={"room": "no way"}), 400, "invalid_name")
    await expect_error(
        await alice.post("/api/rooms", json={"room": "x", "members": ["Zed"]}), 400, "unknown_user"
    )
    # Bob is not a member of the public room yet.
    await expect_error(await bob.get("/api/rooms/team/members"), 403, "not_a_member")
    await expect_error(
        await bob.post("/api/messages", json={"room": "team", "text": "hi"}), 403, "not_a_member"
    )
    resp = await bob.post("/api/rooms/TEAM/join", json={})
    assert resp.status == 200 and (await resp.json())["room"]["joined"] is True
    members = await (await bob.get("/api/rooms/team/members")).json()
    assert [m["username"] for m in members["members"]] == ["Alice", "Bob", "Charlie"]
    assert (await bob.post("/api/rooms/team/leave", json={})).status == 204
    await expect_error(await bob.post("/api/rooms/team/leave", json={}), 403, "not_a_member")
    # Private: does not exist for outsiders.
    await alice.post("/api/rooms", json={"room": "hidden", "private": True})
    await expect_error(await bob.post("/api/rooms/hidden/join", json={}), 404, "unknown_room")
    await expect_error(await bob.get("/api/history?room=hidden"), 404, "unknown_room")
    await expect_error(await bob.get("/api/rooms/nothing/members"), 404, "unknown_room")
    resp = await alice.post("/api/rooms/hidden/members", json={"username": "Bob"})
    assert resp.status == 204
    assert (await bob.get("/api/rooms/hidden/members")).status == 200
    await expect_error(
        await alice.post("/api/messages", json={"room": "team", "to": "Bob", "text": "x"}),
        400,
        "bad_request",
    )
    # Not logged in.
    stranger = await aiohttp_client(server)
    await expect_error(await stranger.get("/api/rooms"), 401, "not_logged_in")
    await expect_error(
        await stranger.post("/api/rooms/general/join", json={}), 401, "not_logged_in"
    )


async def test_a_browser_and_a_desktop_user_in_one_room(
    make_web: MakeWeb, aiohttp_client: Any, tcp: Any
) -> None:
    alice = await browser(make_web, aiohttp_client)
    cursor = (await login(alice, "Alice"))["cursor"]
    bob = await tcp("Bob")
    sent = await bob.client.call("send_message", room="general", text="hi @alice from desktop")
    event, cursor = await poll_until(
        alice, cursor, lambda e: e["type"] == "message" and e["message"].get("room") == "general"
    )
    assert event["message"] == sent["message"]
    rooms = (await (await alice.get("/api/rooms")).json())["rooms"]
    assert rooms[0]["unread"] == 1 and rooms[0]["mentions"] == 1
    resp = await alice.post("/api/messages", json={"room": "general", "text": "hi desktop"})
    assert resp.status == 200
    got = await bob.wait_event(
        lambda e: e["type"] == "message" and e["message"]["text"] == "hi desktop"
    )
    assert got["message"]["room"] == "general" and got["message"]["from"] == "Alice"
    page = await (await alice.get("/api/history?room=general")).json()
    assert [m["text"] for m in page["messages"]] == ["hi @alice from desktop", "hi desktop"]
    newest = page["messages"][-1]["id"]
    assert (await alice.post("/api/read", json={"room": "general", "up_to": newest})).status == 204
    await poll_until(alice, cursor, lambda e: e["type"] == "read" and e.get("room") == "general")
    rooms = (await (await alice.get("/api/rooms")).json())["rooms"]
    assert rooms[0]["unread"] == 0 and rooms[0]["mentions"] == 0
