"""The browser client's event transports in real headless Chromium.

Events come pushed over ``GET /api/ws`` by default (docs/protocol.md#websocket-push);
a page whose socket cannot be opened falls back to long-poll, and one whose held
polls keep being cut to polling; ``?transport=`` (and the old ``?longpoll=1``)
or the server's setting choose one. Whatever the way, every event is applied
once: a dropped socket reconnects from the last frame it got.
Set WEB_SCREENSHOT_DIR to keep the screenshot.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp import hdrs, web
from conftest import CoreProcess
from waiting import until
from web_helpers import (  # noqa: F401 - fixtures
    MakeWeb,
    fixture_chromium,
    fixture_make_web,
    fixture_tcp,
    import_playwright,
    log_in,
    user_button,
)

from app.config import WebConfig
from app.web import create_app

expect = import_playwright().expect


@pytest.fixture
async def site(make_web: MakeWeb) -> str:
    server = await make_web()
    return f"http://{server.host}:{server.port}"


class Gate:
    """In front of the web app: what a proxy that does not pass WebSocket upgrades on
    does when ``refuse`` (a plain 400), and a handle on each socket let through."""

    def __init__(self, refuse: bool) -> None:
        self.refuse = refuse
        self.transports: list[Any] = []  # the connections of the sockets let through

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.headers.get(hdrs.UPGRADE, "").lower() == "websocket":
            if self.refuse:
                return web.Response(status=400, text="upgrades are not passed on here")
            self.transports.append(request.transport)
        return await handler(request)


async def gated_site(core_proc: CoreProcess, aiohttp_server: Any, gate: Gate) -> str:
    app = create_app(WebConfig(core=(core_proc.host, core_proc.port)))
    app.middlewares.append(gate.middleware)
    server = await aiohttp_server(app)
    return f"http://{server.host}:{server.port}"


@pytest.fixture
async def no_ws_site(core_proc: CoreProcess, aiohttp_server: Any) -> str:
    """The web app behind something that refuses WebSocket upgrades."""
    return await gated_site(core_proc, aiohttp_server, Gate(refuse=True))


def keep(path: Path) -> None:
    target = os.environ.get("WEB_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)


async def new_page(chromium: Any, **options: Any) -> Any:
    """A page in a context of its own, recording what it asks of the server."""
    context = await chromium.new_context(viewport={"width": 1100, "height": 700}, **options)
    page = await context.new_page()
    page.problems = []  # type: ignore[attr-defined]
    page.sockets = []  # type: ignore[attr-defined]
    page.polls = []  # type: ignore[attr-defined]
    page.infos = []  # type: ignore[attr-defined]
    page.on("pageerror", lambda e: page.problems.append(f"error: {e}"))
    page.on("dialog", lambda d: page.problems.append(f"dialog: {d.message}"))
    page.on("websocket", lambda ws: page.sockets.append(ws.url))
    page.on("console", lambda m: m.type == "info" and page.infos.append(m.text))

    def request(req: Any) -> None:
        if "/api/poll?" in req.url:
            page.polls.append(parse_qs(urlsplit(req.url).query))

    page.on("request", request)
    return page


async def transport_is(page: Any, name: str) -> None:
    await expect(page.locator("body")).to_have_attribute("data-active-transport", name)


async def chat_both_ways(page: Any, tcp: Any, note: str) -> None:
    """Bob's message reaches the open conversation; the page's reply reaches Bob."""
    bob = await tcp("Bob")
    await user_button(page, "Bob").click()
    await expect(page.get_by_label("Message")).to_be_enabled()
    await bob.client.send_message("Alice", f"to the page ({note})")
    await expect(page.locator(".msg.theirs .text").last).to_have_text(f"to the page ({note})")
    box = page.get_by_label("Message")
    await box.fill(f"from the page ({note})")
    await box.press("Enter")
    got = await bob.wait_event(
        lambda e: e["type"] == "message" and e["message"]["text"] == f"from the page ({note})"
    )
    assert got["message"]["from"] == "Alice"
    await expect(page.locator(".msg.mine .text").last).to_have_text(f"from the page ({note})")


async def test_events_are_pushed_over_a_websocket(
    chromium: Any, site: str, tcp: Any, tmp_path: Path
) -> None:
    page = await new_page(chromium)
    await log_in(page, site, "Alice", "123")
    await transport_is(page, "ws")
    await until(lambda: page.sockets, what="the page's WebSocket")
    assert [urlsplit(url).path for url in page.sockets] == ["/api/ws"]
    assert "cursor" in parse_qs(urlsplit(page.sockets[0]).query)
    assert any("WebSocket" in text for text in page.infos), page.infos

    await chat_both_ways(page, tcp, "ws")
    # A room message: counted on the room's button; a presence change: the dot.
    bob = await tcp("Bob")
    await bob.client.call("send_message", room="general", text="pushed to the room")
    general = page.locator('#rooms .room[data-room="general"]')
    await expect(general.locator(".badge-room")).to_have_text("1")
    await expect(user_button(page, "Charlie").locator(".dot.online")).to_have_count(0)
    charlie = await tcp("Charlie")
    await expect(user_button(page, "Charlie").locator(".dot.online")).to_be_visible()
    await charlie.close()
    await expect(user_button(page, "Charlie").locator(".dot.online")).to_have_count(0)
    await general.click()
    await expect(page.locator(".msg.theirs .text").last).to_have_text("pushed to the room")

    assert page.polls == []  # nothing polled: every event came over the one socket
    assert len(page.sockets) == 1
    await expect(page.locator("#banner")).to_be_hidden()
    shot = tmp_path / "web-ws.png"
    await page.screenshot(path=shot)
    keep(shot)
    assert page.problems == []
    await page.context.close()


async def test_a_blocked_websocket_falls_back_to_longpoll(
    chromium: Any, no_ws_site: str, tcp: Any
) -> None:
    page = await new_page(chromium)
    await log_in(page, no_ws_site, "Alice", "123")
    await transport_is(page, "longpoll")
    await until(lambda: len(page.sockets) == 2, what="two tries of the socket")
    await chat_both_ways(page, tcp, "fallback")
    assert len(page.sockets) == 2  # neither opened: none since
    assert page.polls and all(q.get("wait_ms") == ["25000"] for q in page.polls)
    assert any("long-poll" in text for text in page.infos), page.infos
    await expect(page.locator("#banner")).to_be_hidden()
    assert page.problems == []
    await page.context.close()


async def test_cut_held_polls_fall_back_to_polling(
    chromium: Any, no_ws_site: str, tcp: Any
) -> None:
    page = await new_page(chromium)
    # A proxy that cuts every held request (and passes no upgrades on).
    await page.route(re.compile(r"/api/poll\?.*wait_ms="), lambda route: route.abort())
    await log_in(page, no_ws_site, "Alice", "123")
    await transport_is(page, "poll")
    held = sum(1 for q in page.polls if "wait_ms" in q)
    assert held == 3, page.polls  # three held polls cut, each followed by a plain one that worked
    await chat_both_ways(page, tcp, "polling")
    assert sum(1 for q in page.polls if "wait_ms" in q) == held  # no more held ones
    assert any("polling" in text for text in page.infos), page.infos
    await expect(page.locator("#banner")).to_be_hidden()
    assert page.problems == []
    await page.context.close()


async def test_a_dropped_socket_reconnects_from_its_cursor(
    chromium: Any, site: str, tcp: Any
) -> None:
    page = await new_page(chromium)
    routes: list[Any] = []  # the page's sockets, in order
    frames: list[dict[str, Any]] = []  # what the server sent the page

    def connect(route: Any) -> None:
        server = route.connect_to_server()

        def forward(message: str | bytes) -> None:
            frames.append(json.loads(message))
            route.send(message)

        server.on_message(forward)

    def on_socket(route: Any) -> None:
        routes.append(route)
        if len(routes) == 1:
            connect(route)  # the first goes through; later ones wait for the test

    await page.route_web_socket(re.compile(r"/api/ws\?"), on_socket)
    bob = await tcp("Bob")
    await log_in(page, site, "Alice", "123")
    await transport_is(page, "ws")
    await user_button(page, "Charlie").click()  # Bob's messages count as unread
    await bob.client.send_message("Alice", "before the drop")
    await expect(user_button(page, "Bob").locator(".badge")).to_have_text("1")
    last = frames[-1]["cursor"]

    await routes[0].close(code=1006, reason="network gone")
    await until(lambda: len(routes) == 2, what="a second socket")
    await expect(page.locator("#banner")).to_be_visible()
    assert parse_qs(urlsplit(routes[1].url).query)["cursor"] == [str(last)]
    await bob.client.send_message("Alice", "while the socket was down")
    await expect(user_button(page, "Bob").locator(".badge")).to_have_text("1")  # not yet
    connect(routes[1])
    await expect(user_button(page, "Bob").locator(".badge")).to_have_text("2")
    await expect(page.locator("#banner")).to_be_hidden()
    await bob.client.send_message("Alice", "after it")
    await expect(user_button(page, "Bob").locator(".badge")).to_have_text("3")  # each once
    await expect(page).to_have_title("(3) Chat")
    await user_button(page, "Bob").click()
    texts = page.locator(".msg.theirs .text")
    await expect(texts).to_have_text(["before the drop", "while the socket was down", "after it"])
    assert len(routes) == 2
    assert page.problems == []
    await page.context.close()


async def test_a_core_restart_over_the_websocket(
    chromium: Any, site: str, tcp: Any, core_proc: CoreProcess
) -> None:
    page = await new_page(chromium)
    await log_in(page, site, "Alice", "123")
    await transport_is(page, "ws")
    await user_button(page, "Bob").click()
    bob = await tcp("Bob")
    await bob.client.send_message("Alice", "before the restart")
    await expect(page.locator(".msg.theirs .text").last).to_have_text("before the restart")
    await bob.close()

    core_proc.kill()
    await expect(page.locator("#banner")).to_be_visible(timeout=15_000)
    core_proc.start()
    await expect(page.locator("#banner")).to_be_hidden(timeout=20_000)
    await transport_is(page, "ws")  # it worked before: no fallback for an outage
    bob = await tcp("Bob")
    await bob.client.send_message("Alice", "after the restart")
    await expect(page.locator(".msg.theirs .text").last).to_have_text("after the restart")
    await expect(page.locator(".msg.theirs .text", has_text="before the restart")).to_have_count(1)
    # A reconnect that found the core still away may have checked the session with one plain
    # poll (a refused upgrade does not say why); the page never went back to polling for events.
    assert all("wait_ms" not in q for q in page.polls), page.polls
    assert page.problems == []
    await page.context.close()


async def test_the_session_ending_closes_the_socket_to_the_login_page(
    chromium: Any, site: str
) -> None:
    page = await new_page(chromium)
    await log_in(page, site, "Alice", "123")
    await transport_is(page, "ws")
    other = await page.context.new_page()  # the same session in another tab
    await other.goto(site + "/")
    await other.get_by_role("button", name="Log out").click()
    await expect(other).to_have_url(re.compile(r"/login"))
    await expect(page).to_have_url(re.compile(r"/login"))  # told by its socket (4401)
    assert page.polls == []
    await page.context.close()


async def test_a_session_ended_while_the_socket_was_down_goes_to_the_login_page(
    chromium: Any, core_proc: CoreProcess, aiohttp_server: Any
) -> None:
    gate = Gate(refuse=False)
    site = await gated_site(core_proc, aiohttp_server, gate)
    page = await new_page(chromium)
    await log_in(page, site, "Alice", "123")
    await transport_is(page, "ws")
    await until(lambda: gate.transports, what="the page's socket")
    gate.refuse = True
    gate.transports[0].abort()  # the network drops it: 1006, and no new one opens
    await expect(page.locator("#banner")).to_be_visible()
    await until(lambda: len(page.sockets) >= 3, what="reconnections refused")
    await transport_is(page, "ws")  # it opened before: an outage, not a proxy
    resp = await page.context.request.post(f"{site}/api/logout", data={})
    assert resp.status == 204
    # The next refused upgrade looks the same to the page; a plain request tells it why.
    await expect(page).to_have_url(re.compile(r"/login"))
    assert page.problems == []
    await page.context.close()


@pytest.mark.parametrize(
    ("query", "setting", "expected"),
    [
        ("?transport=poll", "ws", "poll"),
        ("?transport=longpoll", "ws", "longpoll"),
        ("?longpoll=1", "ws", "longpoll"),  # the old parameter still works
        ("", "poll", "poll"),  # the server's setting
        ("?transport=ws", "longpoll", "ws"),  # the URL wins
    ],
)
async def test_the_transport_can_be_chosen(
    chromium: Any, make_web: MakeWeb, tcp: Any, query: str, setting: str, expected: str
) -> None:
    server = await make_web(transport=setting)
    page = await new_page(chromium)
    # Straight to the login page with the query (the redirect from / keeps it too).
    await page.goto(f"http://{server.host}:{server.port}/login{query}")
    await page.get_by_label("Username").fill("Alice")
    await page.get_by_label("Password").fill("123")
    await page.get_by_role("button", name="Log in").click()
    await expect(page).to_have_url(re.compile(r"/(\?.*)?$"))
    assert urlsplit(page.url).query == query.lstrip("?")
    await transport_is(page, expected)
    await chat_both_ways(page, tcp, expected)
    if expected == "ws":
        assert page.polls == [] and len(page.sockets) == 1
    else:
        assert page.sockets == [] and page.polls
        held = {"wait_ms" in q for q in page.polls}
        assert held == {expected == "longpoll"}, page.polls
    assert page.problems == []
    await page.context.close()
