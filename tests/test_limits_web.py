"""The web app's limits per client: failed logins per address, browser sessions per user,
per address and in all (docs/protocol.md#limits-per-client), against a real core."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from conftest import DEMO_USERS, CoreProcess

from app.config import WebConfig
from app.limits import FailedLogins
from app.web import GATEWAY_KEY, create_app

MakeBrowser = Callable[..., Awaitable[Callable[[], Awaitable[TestClient]]]]


@pytest.fixture
async def web(core_proc: CoreProcess, aiohttp_server: Any, aiohttp_client: Any) -> MakeBrowser:
    """A web app on ``core_proc`` (WebConfig overrides as keywords) -> a browser factory."""

    async def make(**overrides: Any) -> Callable[[], Awaitable[TestClient]]:
        config = WebConfig(core=(core_proc.host, core_proc.port), **overrides)
        server = await aiohttp_server(create_app(config))

        async def browser() -> TestClient:
            return await aiohttp_client(server)

        return browser

    return make


async def log_in(
    client: TestClient, name: str, password: str | None = None, address: str | None = None
) -> Any:
    headers = {"X-Forwarded-For": f"10.0.0.1, {address}"} if address else {}
    return await client.post(
        "/api/login",
        json={"username": name, "password": DEMO_USERS[name] if password is None else password},
        headers=headers,
    )


async def expect(resp: Any, status: int, code: str) -> dict[str, Any]:
    body = await resp.json()
    assert resp.status == status and body["error"] == code, (resp.status, body)
    return body


def test_failed_login_bucket_refills_at_its_rate() -> None:
    now = [0.0]
    bucket = FailedLogins(burst=3, refill=10.0, clock=lambda: now[0])
    for _ in range(3):
        assert bucket.retry_after("a") == 0
        bucket.failed("a")
    assert bucket.retry_after("a") == pytest.approx(10.0)
    assert bucket.retry_after("b") == 0  # another address is untouched
    now[0] = 10.0
    assert bucket.retry_after("a") == 0  # one more try after the refill time


async def test_failed_logins_from_one_address_get_429_without_the_core(
    web: MakeBrowser, core_proc: CoreProcess
) -> None:
    browser = await web(trust_proxy=True, failed_logins_per_minute=5)
    client = await browser()
    for i in range(5):
        await expect(
            await log_in(client, "Bob", f"wrong{i}", "203.0.113.5"), 401, "invalid_credentials"
        )
    body = await expect(await log_in(client, "Bob", address="203.0.113.5"), 429, "rate_limited")
    assert "try again in" in body["message"]
    # Another address behind the same proxy logs in at once.
    assert (await log_in(client, "Charlie", address="198.51.100.7")).status == 200
    # Without asking the core: with the core gone, the limited address still gets 429.
    core_proc.kill()
    await expect(await log_in(client, "Bob", address="203.0.113.5"), 429, "rate_limited")
    await expect(await log_in(client, "Bob", address="198.51.100.8"), 503, "core_unavailable")


async def test_forwarded_for_is_ignored_without_trust_proxy(web: MakeBrowser) -> None:
    browser = await web(failed_logins_per_minute=2)
    client = await browser()
    for i, spoofed in enumerate(["192.0.2.1", "192.0.2.2"]):
        await expect(await log_in(client, "Bob", f"no{i}", spoofed), 401, "invalid_credentials")
    # Both failures counted against the real peer, whatever the header claimed.
    await expect(await log_in(client, "Bob", address="192.0.2.3"), 429, "rate_limited")


async def test_browser_sessions_per_user_are_capped(web: MakeBrowser) -> None:
    browser = await web(max_sessions_per_user=2)
    tabs = [await browser() for _ in range(3)]
    for tab in tabs[:2]:
        assert (await log_in(tab, "Alice")).status == 200
    body = await expect(await log_in(tabs[2], "Alice"), 429, "too_many_sessions")
    assert "2 browser sessions" in body["message"]
    assert (await log_in(tabs[2], "Bob")).status == 200  # other users are not affected
    assert (await tabs[0].post("/api/logout", json={})).status == 204
    other = await browser()
    assert (await log_in(other, "Alice")).status == 200


async def test_browser_sessions_per_address_and_in_all_are_capped(web: MakeBrowser) -> None:
    browser = await web(trust_proxy=True, max_sessions_per_ip=2, max_sessions=3)
    tabs = [await browser() for _ in range(5)]
    assert (await log_in(tabs[0], "Alice", address="198.51.100.1")).status == 200
    assert (await log_in(tabs[1], "Bob", address="198.51.100.1")).status == 200
    await expect(await log_in(tabs[2], "Charlie", address="198.51.100.1"), 429, "too_many_sessions")
    assert (await log_in(tabs[3], "Charlie", address="198.51.100.2")).status == 200
    await expect(await log_in(tabs[4], "Alice", address="198.51.100.3"), 503, "server_busy")
    gateway = tabs[0].server.app[GATEWAY_KEY]
    assert len(gateway.sessions) == 3


async def test_the_cores_session_cap_reaches_the_browser_as_429(
    core_proc: CoreProcess, web: MakeBrowser
) -> None:
    core_proc.stop()
    core_proc.extra_args += ["--max-sessions-per-user", "1"]
    core_proc.start()
    browser = await web()
    first, second = await browser(), await browser()
    assert (await log_in(first, "Alice")).status == 200
    body = await expect(await log_in(second, "Alice"), 429, "too_many_sessions")
    assert "1 sessions open" in body["message"]
