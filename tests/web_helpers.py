"""Helpers for the web app's tests: a desktop-like TCP user and async waiting."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient
from conftest import DEMO_USERS
from waiting import until

from legacy_socket_server.client import CoreClient


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
