"""The HTTP API (docs/protocol.md#http-api), against a real core on an ephemeral port."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from conftest import ROOT, CoreProcess
from waiting import until
from web_helpers import (  # noqa: F401 - fixtures
    MakeWeb,
    expect_error,
    fixture_make_web,
    fixture_tcp,
    login,
    poll_until,
    status_is,
)

from app.config import WebConfig
from app.gateway import BrowserSession, Gateway
from app.web import GATEWAY_KEY, create_app

JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def browser(make_web: MakeWeb, aiohttp_client: Any) -> Callable[[], Awaitable[TestClient]]:
    """A factory of browsers (cookie jars) on one web app."""
    server = await make_web()

    async def new() -> TestClient:
        return await aiohttp_client(server)

    return new


def gateway_of(server: TestServer) -> Gateway:
    return server.app[GATEWAY_KEY]


def only_session(server: TestServer) -> BrowserSession:
    """The one live browser session on ``server``."""
    (session,) = gateway_of(server).sessions.values()
    return session


# -- health, pages, headers --
async def test_healthz(browser: Any) -> None:
    client = await browser()
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}


async def test_pages_redirect_by_session_and_carry_security_headers(browser: Any) -> None:
    client = await browser()
    resp = await client.get("/", allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "/login"
    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    resp = await client.get("/login")
    assert resp.status == 200
    page = await resp.text()
    assert "Username" in page and "Password" in page and "Log in" in page
    assert "<script>" not in page  # no inline script: the CSP forbids it
    await login(client)
    resp = await client.get("/login", allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "/"
    resp = await client.post("/api/nowhere", json={})
    assert resp.status == 404 and resp.headers["X-Content-Type-Options"] == "nosniff"
    for path in ("/", "/static/style.css", "/static/chat.js", "/api/users", "/healthz"):
        resp = await client.get(path)
        assert resp.status == 200, path
        if path.startswith("/api/"):
            assert resp.headers["Cache-Control"] == "no-store"
        csp = resp.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["Referrer-Policy"]


# -- login, logout, cookie --
async def test_login_sets_a_strict_httponly_random_cookie(browser: Any) -> None:
    client = await browser()
    resp = await client.post("/api/login", json={"username": "Alice", "password": "123"})
    assert resp.status == 200
    body = await resp.json()
    assert body["username"] == "Alice"
    assert [u["username"] for u in body["users"]] == ["Bob", "Charlie"]
    assert isinstance(body["cursor"], int)
    header = resp.headers["Set-Cookie"]
    assert "HttpOnly" in header and "SameSite=Strict" in header and "Path=/" in header
    assert "Secure" not in header  # plain HTTP: a Secure cookie would never come back
    value = resp.cookies["chat_session"].value
    assert len(value) >= 22 and "Alice" not in value  # >= 128 bits of base64


@pytest.mark.parametrize(
    ("overrides", "headers", "secure"),
    [
        ({"secure_cookies": True}, {}, True),
        ({"trust_proxy": True}, {"X-Forwarded-Proto": "https"}, True),
        ({}, {"X-Forwarded-Proto": "https"}, False),  # an untrusted header changes nothing
    ],
)
async def test_secure_cookie_behind_https(
    make_web: MakeWeb, aiohttp_client: Any, overrides: dict, headers: dict, secure: bool
) -> None:
    client = await aiohttp_client(await make_web(**overrides))
    resp = await client.post(
        "/api/login", json={"username": "Alice", "password": "123"}, headers=headers
    )
    assert resp.status == 200
    assert ("Secure" in resp.headers["Set-Cookie"]) is secure


async def test_login_errors(browser: Any) -> None:
    client = await browser()
    for creds in ({"username": "Alice", "password": "wrong"}, {"username": "Zed", "password": "x"}):
        await expect_error(await client.post("/api/login", json=creds), 401, "invalid_credentials")
    await expect_error(
        await client.post("/api/login", json={"username": "Alice"}), 400, "bad_request"
    )
    await expect_error(await client.post("/api/login", json=["Alice"]), 400, "bad_request")
    resp = await client.post("/api/login", data=b"{not json", headers=JSON)
    await expect_error(resp, 400, "bad_request")
    # Throttling is the core's: enough failures and the name is locked.
    codes = []
    for _ in range(8):
        resp = await client.post("/api/login", json={"username": "Charlie", "password": "no"})
        codes.append((resp.status, (await resp.json())["error"]))
    assert (429, "rate_limited") in codes


async def test_every_route_but_login_and_healthz_needs_the_cookie(browser: Any) -> None:
    client = await browser()
    for method, path, body in [
        ("POST", "/api/logout", {}),
        ("GET", "/api/users", None),
        ("GET", "/api/poll?cursor=0", None),
        ("POST", "/api/messages", {"to": "Bob", "text": "hi"}),
        ("GET", "/api/history?with=Bob", None),
        ("POST", "/api/read", {"with": "Bob", "up_to": 1}),
    ]:
        resp = await client.request(method, path, json=body)
        await expect_error(resp, 401, "not_logged_in")
    client.session.cookie_jar.update_cookies({"chat_session": "forged"})
    await expect_error(await client.get("/api/users"), 401, "not_logged_in")


async def test_logout_ends_the_session_and_the_core_session(browser: Any, tcp: Any) -> None:
    bob = await tcp("Bob")
    client = await browser()
    await login(client)
    await bob.wait_event(lambda e: e == {"type": "presence", "username": "Alice", "online": True})
    resp = await client.post("/api/logout", json={})
    assert resp.status == 204
    await expect_error(await client.get("/api/users"), 401, "not_logged_in")
    await expect_error(await client.post("/api/logout", json={}), 401, "not_logged_in")
    await bob.wait_event(lambda e: e == {"type": "presence", "username": "Alice", "online": False})


# -- CSRF and body size --
async def test_csrf_refusals(make_web: MakeWeb, aiohttp_client: Any) -> None:
    server = await make_web(allowed_origins=frozenset({"https://chat.example.org"}))
    client = await aiohttp_client(server)
    creds = json.dumps({"username": "Alice", "password": "123"})
    resp = await client.post("/api/login", data=creds, headers={"Content-Type": "text/plain"})
    await expect_error(resp, 403, "csrf")
    resp = await client.post("/api/login", data={"username": "Alice", "password": "123"})
    await expect_error(resp, 403, "csrf")  # a cross-site form post
    evil = {**JSON, "Origin": "https://evil.example"}
    await expect_error(await client.post("/api/login", data=creds, headers=evil), 403, "csrf")
    own = {**JSON, "Origin": f"http://{server.host}:{server.port}"}
    assert (await client.post("/api/login", data=creds, headers=own)).status == 200
    listed = {**JSON, "Origin": "https://chat.example.org"}
    resp = await client.post("/api/messages", json={"to": "Bob", "text": "x"}, headers=listed)
    assert resp.status == 200
    resp = await client.post("/api/messages", json={"to": "Bob", "text": "x"}, headers=evil)
    await expect_error(resp, 403, "csrf")


async def test_body_over_256_kib_is_413(browser: Any) -> None:
    client = await browser()
    await login(client)
    big = {"to": "Bob", "text": "x" * (300 * 1024)}
    await expect_error(await client.post("/api/messages", json=big), 413, "too_large")


# -- messages, history, read --
async def test_send_errors_and_safe_retry(browser: Any) -> None:
    client = await browser()
    await login(client)
    send = lambda body: client.post("/api/messages", json=body)  # noqa: E731
    resp = await send({"to": "Bob", "text": "hello", "client_msg_id": "m-1"})
    assert resp.status == 200
    first = (await resp.json())["message"]
    assert first["from"] == "Alice" and first["to"] == "Bob" and first["text"] == "hello"
    again = await (await send({"to": "Bob", "text": "hello", "client_msg_id": "m-1"})).json()
    assert again["message"] == first  # a retry never doubles
    await expect_error(await send({"to": "Bob", "text": "   "}), 400, "empty_text")
    await expect_error(await send({"to": "Nobody", "text": "hi"}), 400, "unknown_user")
    await expect_error(await send({"to": "Alice", "text": "hi"}), 400, "unknown_user")
    await expect_error(await send({"text": "hi"}), 400, "bad_request")
    await expect_error(await send({"to": "Bob", "text": "x" * 10_001}), 413, "text_too_long")
    history = await (await client.get("/api/history", params={"with": "Bob"})).json()
    assert [m["id"] for m in history["messages"]] == [first["id"]]


async def test_history_pages_and_errors(browser: Any) -> None:
    client = await browser()
    await login(client)
    ids = []
    for i in range(5):
        resp = await client.post("/api/messages", json={"to": "Bob", "text": f"m{i}"})
        ids.append((await resp.json())["message"]["id"])
    page = await (await client.get("/api/history", params={"with": "Bob", "limit": 2})).json()
    assert [m["id"] for m in page["messages"]] == ids[-2:] and page["has_more"] is True
    resp = await client.get("/api/history", params={"with": "Bob", "before": ids[1], "limit": 5})
    page = await resp.json()
    assert [m["text"] for m in page["messages"]] == ["m0"] and page["has_more"] is False
    bad = [
        {"with": "Bob", "limit": "x"},
        {"with": "Bob", "limit": 0},
        {"with": "Bob", "limit": 500},
    ]
    for params in [{}, *bad]:
        await expect_error(await client.get("/api/history", params=params), 400, "bad_request")
    resp = await client.get("/api/history", params={"with": "Nobody"})
    await expect_error(resp, 400, "unknown_user")


async def test_read_and_poll_errors(browser: Any) -> None:
    client = await browser()
    await login(client)
    assert (await client.post("/api/read", json={"with": "Bob", "up_to": 0})).status == 204
    resp = await client.post("/api/read", json={"with": "Nobody", "up_to": 1})
    await expect_error(resp, 400, "unknown_user")
    await expect_error(await client.post("/api/read", json={"with": "Bob"}), 400, "bad_request")
    for query in ("cursor=abc", "cursor=-1", "cursor=0&wait_ms=30001", "cursor=0&wait_ms=x"):
        await expect_error(await client.get(f"/api/poll?{query}"), 400, "bad_request")
    body = await (await client.get("/api/poll", params={"cursor": 12345})).json()
    assert body["reset"] is True and body["events"] == []  # a cursor we never gave out


# -- browser and TCP users together --
async def test_browser_and_tcp_user_exchange_messages(browser: Any, tcp: Any) -> None:
    bob = await tcp("Bob")
    client = await browser()
    cursor = (await login(client))["cursor"]
    resp = await client.post("/api/messages", json={"to": "Bob", "text": "hi Bob"})
    sent = (await resp.json())["message"]
    got = await bob.wait_event(lambda e: e.get("type") == "message")
    assert got["message"] == sent
    assert (await bob.users())["Alice"] == {"username": "Alice", "online": True, "unread": 1}
    # Not ASCII: the poll body is joined from pre-encoded UTF-8 events.
    reply = await bob.client.send_message("Alice", "hi Alice — ça va? 🌍")
    event, cursor = await poll_until(
        client, cursor, lambda e: e.get("type") == "message" and e["message"]["id"] == reply["id"]
    )
    assert event["message"] == reply
    resp = await client.get("/api/poll", params={"cursor": 0})
    assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
    users = {u["username"]: u for u in (await (await client.get("/api/users")).json())["users"]}
    assert users["Bob"]["unread"] == 1 and users["Bob"]["online"] is True
    assert (
        await client.post("/api/read", json={"with": "Bob", "up_to": reply["id"]})
    ).status == 204
    users = {u["username"]: u for u in (await (await client.get("/api/users")).json())["users"]}
    assert users["Bob"]["unread"] == 0
    history = await (await client.get("/api/history", params={"with": "Bob"})).json()
    tcp_history = await bob.client.call("history", **{"with": "Alice"})
    assert history["messages"] == tcp_history["messages"]
    assert [m["text"] for m in history["messages"]] == ["hi Bob", "hi Alice — ça va? 🌍"]


async def test_two_browsers_of_one_user(browser: Any, tcp: Any) -> None:
    bob = await tcp("Bob")
    one, two = await browser(), await browser()
    c1, c2 = (await login(one))["cursor"], (await login(two))["cursor"]
    msg = await bob.client.send_message("Alice", "to both")
    is_msg = lambda e: e.get("type") == "message" and e["message"]["id"] == msg["id"]  # noqa: E731
    await poll_until(one, c1, is_msg)
    await poll_until(two, c2, is_msg)
    # Reading in one browser is news for the other (a separate core session).
    assert (await one.post("/api/read", json={"with": "Bob", "up_to": msg["id"]})).status == 204
    is_read = lambda e: e == {"type": "read", "with": "Bob", "up_to": msg["id"]}  # noqa: E731
    await poll_until(two, c2, is_read)
    await poll_until(one, c1, is_read)  # the reading session's own tabs hear of it too
    assert (await one.post("/api/logout", json={})).status == 204
    assert (await two.get("/api/users")).status == 200
    assert (await bob.users())["Alice"]["online"] is True  # still one session


async def test_tabs_of_one_session_all_wake_and_never_cut_each_other(
    make_web: MakeWeb, aiohttp_client: Any, tcp: Any
) -> None:
    bob = await tcp("Bob")
    server = await make_web()
    client = await aiohttp_client(server)
    cursor = (await login(client))["cursor"]
    session = only_session(server)

    async def tab() -> dict:
        resp = await client.get("/api/poll", params={"cursor": cursor, "wait_ms": 10_000})
        return await resp.json()

    tabs = [asyncio.create_task(tab()) for _ in range(3)]
    # All three held at once: a later tab's poll did not answer an earlier one.
    await until(lambda: session.polls_in_flight == 3, what="three held polls")
    assert not any(t.done() for t in tabs)
    msg = await bob.client.send_message("Alice", "wake up")
    for reply in await asyncio.gather(*tabs):
        assert [e["message"]["id"] for e in reply["events"] if e["type"] == "message"] == [
            msg["id"]
        ]


async def test_idle_session_is_logged_out(make_web: MakeWeb, aiohttp_client: Any, tcp: Any) -> None:
    bob = await tcp("Bob")
    client = await aiohttp_client(await make_web(idle_timeout=0.5))
    await login(client)
    await bob.wait_event(lambda e: e == {"type": "presence", "username": "Alice", "online": True})
    # No polls: Alice goes offline and her cookie is dead.
    await bob.wait_event(lambda e: e == {"type": "presence", "username": "Alice", "online": False})
    await expect_error(await client.get("/api/users"), 401, "not_logged_in")


async def test_a_held_poll_keeps_a_session_alive(make_web: MakeWeb, aiohttp_client: Any) -> None:
    server = await make_web(idle_timeout=0.5)
    sessions = gateway_of(server).sessions
    # Two sessions of one user: no presence events between them to wake a poll.
    polling, idle = await aiohttp_client(server), await aiohttp_client(server)
    cursor = (await login(polling))["cursor"]
    (kept,) = sessions.values()
    await login(idle)
    (dropped,) = [s for s in sessions.values() if s is not kept]

    async def poll() -> aiohttp.ClientResponse:
        return await polling.get("/api/poll", params={"cursor": cursor, "wait_ms": 30_000})

    held = asyncio.create_task(poll())
    await until(lambda: kept.polls_in_flight == 1, what="the poll to be held")
    # The idle session polls once after the held poll began, then stops. When
    # the reaper ends it, the held poll's session has gone as long without a
    # new poll: only the held one keeps it in.
    assert (await idle.get("/api/poll")).status == 200
    await until(lambda: dropped.ended, what="the idle session to end")
    assert not kept.ended and not held.done()
    resp = await polling.post("/api/messages", json={"to": "Bob", "text": "still here"})
    assert resp.status == 200
    resp = await held  # the message answers the held poll
    assert [e["type"] for e in (await resp.json())["events"]] == ["message"]
    assert (await polling.get("/api/users")).status == 200
    await expect_error(await idle.get("/api/users"), 401, "not_logged_in")


async def test_core_restart_gives_503_then_recovers(
    browser: Any, core_proc: CoreProcess, tcp: Any
) -> None:
    client = await browser()
    cursor = (await login(client))["cursor"]
    core_proc.kill()
    await until(lambda: status_is(client, "/healthz", 503), timeout=10, what="healthz to turn 503")
    body = await (await client.get("/healthz")).json()
    assert body == {"status": "unavailable", "error": "core_unavailable"}
    await expect_error(await client.get("/api/users"), 503, "core_unavailable")
    await expect_error(
        await client.get("/api/poll", params={"cursor": cursor}), 503, "core_unavailable"
    )
    resp = await client.post("/api/messages", json={"to": "Bob", "text": "lost?"})
    await expect_error(resp, 503, "core_unavailable")
    core_proc.start()
    await until(lambda: status_is(client, "/healthz", 200), timeout=15, what="healthz back")
    await until(lambda: status_is(client, "/api/users", 200), timeout=15, what="session resumed")
    resp = await client.get("/api/poll", params={"cursor": cursor})
    assert (await resp.json()).get("reset") is True  # events in the gap are unknown: reload
    cursor = (await resp.json())["cursor"]
    bob = await tcp("Bob")
    assert (await bob.users())["Alice"]["online"] is True
    msg = await bob.client.send_message("Alice", "welcome back")
    await poll_until(client, cursor, lambda e: e.get("message", {}).get("id") == msg["id"])


async def test_refused_token_ends_the_session(browser: Any, core_proc: CoreProcess) -> None:
    client = await browser()
    await login(client)
    core_proc.kill()
    for name in ("tokens.json", "tokens.journal"):  # the core forgets every token
        (core_proc.data_dir / name).unlink(missing_ok=True)
    await expect_error(
        await client.post("/api/login", json={"username": "Bob", "password": "456"}),
        503,
        "core_unavailable",
    )
    core_proc.start()
    await until(lambda: status_is(client, "/api/users", 401), timeout=15, what="the session to end")
    await expect_error(await client.get("/api/poll", params={"cursor": 0}), 401, "not_logged_in")
    resp = await client.get("/", allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "/login"


# -- the whole product from one command --
async def test_embedded_core(tmp_path: Path, aiohttp_client: Any) -> None:
    config = WebConfig(core=None, core_port=0, data_dir=tmp_path / "data")
    client = await aiohttp_client(create_app(config))
    assert (await client.get("/healthz")).status == 200
    await login(client, "Bob")
    resp = await client.post("/api/messages", json={"to": "Charlie", "text": "embedded"})
    assert resp.status == 200


def test_python_m_app_serves_the_chat(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CHAT_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "--port", "0", "--core-port", "0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        url_line = proc.stdout.readline()  # type: ignore[union-attr]
        desktop_line = proc.stdout.readline()  # type: ignore[union-attr]
        assert url_line.startswith("Chat is running: http://127.0.0.1:"), url_line
        assert "python chatapp.py --host 127.0.0.1 --port " in desktop_line
        url = url_line.split()[-1]

        async def check() -> None:
            async with aiohttp.ClientSession() as http:
                async with http.get(url + "healthz") as resp:
                    assert resp.status == 200
                async with http.get(url + "login") as resp:
                    assert "Log in" in await resp.text()

        asyncio.run(check())
    finally:
        proc.terminate()
        assert proc.wait(20) == 0


def test_config_flags_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.config import build_parser, config_from_args

    monkeypatch.setenv("CHAT_CORE", "core.internal:6000")
    monkeypatch.setenv("CHAT_WEB_TRANSPORT", "longpoll")
    monkeypatch.setenv("CHAT_WEB_PORT", "9000")
    config = config_from_args(build_parser().parse_args([]))
    assert config.core == ("core.internal", 6000) and config.transport == "longpoll"
    assert config.port == 9000
    config = config_from_args(build_parser().parse_args(["--core", "[::1]:7000", "--port", "1"]))
    assert config.core == ("::1", 7000) and config.port == 1
    for argv in (["--core", "nohost"], ["--transport", "carrier-pigeon"]):
        with pytest.raises(SystemExit):
            config_from_args(build_parser().parse_args(argv))


@pytest.mark.parametrize("transport", ["ws", "longpoll", "poll"])
async def test_the_transport_setting_reaches_the_page(
    make_web: MakeWeb, aiohttp_client: Any, transport: str
) -> None:
    client = await aiohttp_client(await make_web(transport=transport))
    await login(client)
    assert f'data-transport="{transport}"' in await (await client.get("/")).text()
