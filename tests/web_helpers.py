"""Helpers for the web app's tests (tests/test_web_*.py).

Fixtures shared by those modules live here, defined as ``fixture_NAME`` with
``name="NAME"`` so that a test module imports them without shadowing its test
arguments (``from web_helpers import fixture_tcp  # noqa: F401``):
``make_web`` starts the web app against the ``core_proc`` core, ``tcp`` logs
desktop-like users in on plain core connections, ``chromium`` is Debian's
headless Chromium under Playwright. Waiting is ``waiting.until``, never a sleep.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from conftest import DEMO_USERS, ROOT, CoreProcess, missing, require_tool
from waiting import until

from app.config import WebConfig
from app.web import create_app
from legacy_socket_server.client import CoreClient

MakeWeb = Callable[..., Awaitable[TestServer]]
#: Debian's Chromium in a container: no sandbox, no GPU, nothing phoning home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


class TcpUser:
    """A user on a plain core connection (what the desktop client is)."""

    def __init__(self, client: CoreClient, reply: dict[str, Any]) -> None:
        self.client = client
        self.username: str = reply["username"]
        self.cursor: int = reply["cursor"]
        self.events: list[dict[str, Any]] = []

    @classmethod
    async def login(cls, host: str, port: int, name: str) -> TcpUser:
        client = await CoreClient.connect(host, port)
        return cls(client, await client.login(name, DEMO_USERS[name]))

    async def wait_event(
        self, match: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        """The first event (seen before or arriving within ``timeout``) that ``match``es."""
        deadline = time.monotonic() + timeout
        while True:
            for ev in self.events:
                if match(ev):
                    return ev
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching event within {timeout} s: {self.events}")
            reply = await self.client.poll(self.cursor, wait_ms=int(min(left, 1.0) * 1000))
            self.cursor = reply["cursor"]
            self.events.extend(reply["events"])

    async def users(self) -> dict[str, dict[str, Any]]:
        return {u["username"]: u for u in (await self.client.call("users"))["users"]}

    async def close(self) -> None:
        await self.client.close()


async def login(client: TestClient, name: str = "Alice", password: str | None = None) -> dict:
    resp = await client.post(
        "/api/login", json={"username": name, "password": password or DEMO_USERS[name]}
    )
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def expect_error(resp: aiohttp.ClientResponse, status: int, code: str) -> None:
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert body["error"] == code and isinstance(body["message"], str)


async def poll_until(client: TestClient, cursor: int, match: Callable[[dict], bool]) -> tuple:
    """Poll (long-poll, 1 s at a time) until an event matches; return (event, cursor)."""
    seen: list[dict] = []

    async def step() -> dict | None:
        nonlocal cursor
        resp = await client.get("/api/poll", params={"cursor": cursor, "wait_ms": 1000})
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        cursor = body["cursor"]
        seen.extend(body["events"])
        return next((e for e in seen if match(e)), None)

    event = await until(step, timeout=10, what="a matching event")
    return event, cursor


async def status_is(client: TestClient, path: str, status: int) -> bool:
    return (await client.get(path)).status == status


# -- fixtures (import them into a test module to use them) ---------------------------------
@pytest.fixture(name="make_web")
async def fixture_make_web(core_proc: CoreProcess, aiohttp_server: Any) -> MakeWeb:
    """Start the web app against ``core_proc`` (WebConfig overrides as keywords)."""

    async def make(**overrides: Any) -> TestServer:
        config = WebConfig(core=(core_proc.host, core_proc.port), **overrides)
        return await aiohttp_server(create_app(config))

    return make


@pytest.fixture(name="tcp")
async def fixture_tcp(core_proc: CoreProcess) -> AsyncIterator[Callable[[str], Awaitable[TcpUser]]]:
    """A factory: ``await tcp("Bob")`` logs Bob in on a core connection (closed at the end)."""
    users: list[TcpUser] = []

    async def login(name: str) -> TcpUser:
        users.append(await TcpUser.login(core_proc.host, core_proc.port, name))
        return users[-1]

    yield login
    for u in users:
        await u.close()


def import_playwright() -> Any:
    """``playwright.async_api``; skip without it on a laptop, fail in CI."""
    try:
        import playwright.async_api as playwright_api
    except ImportError:
        missing("playwright not installed: pip install -e '.[test]'")
    return playwright_api


@pytest.fixture(name="chromium")
async def fixture_chromium() -> AsyncIterator[Any]:
    """Debian's headless Chromium (never a downloaded one), driven by Playwright."""
    path = require_tool("chromium", "the browser tests drive Debian's headless Chromium")
    async with import_playwright().async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


async def log_in(page: Any, site: str, name: str, password: str, query: str = "") -> None:
    """Log in through the login page and wait for the people list."""
    expect = import_playwright().expect
    await page.goto(f"{site}/{query}")
    await expect(page).to_have_url(re.compile(r"/login"))
    await page.get_by_label("Username").fill(name)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Log in").click()
    await expect(page.locator("#users .user").first).to_be_visible()


def user_button(page: Any, name: str) -> Any:
    """The people list's button for ``name``."""
    return page.locator(f'#users .user[data-name="{name}"]')


def room_button(page: Any, name: str) -> Any:
    """The sidebar's button for the room ``name``."""
    return page.locator(f'#rooms .room[data-room="{name}"]')


# -- accessibility: axe-core (npm, package.json) --------------------------------------------
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"


@pytest.fixture(name="axe")
def fixture_axe() -> Path:
    """The axe-core bundle; skip without it on a laptop, fail in CI.

    Listed first in each test's arguments, so nothing is started without it.
    """
    if not AXE.is_file():
        missing(f"{AXE.relative_to(ROOT)} not found: run `npm ci` in the repo root (see .ci/run)")
    return AXE


async def violations(page: Any, axe: Path) -> list[dict[str, Any]]:
    """Every axe-core violation on the page as it is now (WCAG 2.x A/AA and best practice)."""
    if not await page.evaluate("() => typeof window.axe === 'object'"):
        await page.add_script_tag(path=str(axe))
    result = await page.evaluate(
        """async () => {
            const r = await axe.run(document, { resultTypes: ["violations"] });
            return r.violations.map((v) => ({
                id: v.id, impact: v.impact, help: v.help,
                nodes: v.nodes.map((n) => ({ target: n.target, summary: n.failureSummary })),
            }));
        }"""
    )
    return result
