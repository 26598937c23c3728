"""Two real core processes on one PostgreSQL, a real HAProxy in front (TCP, as desktop
clients reach a cluster): ``kill -9`` one core in the middle of a burst of sends.

Clients reconnect through HAProxy to the survivor and ``resume``; every acknowledged
message is stored exactly once, a ``client_msg_id`` retried after the kill is never
stored twice, the dead core's users go offline within 15 s and come back when they
reconnect. Also: PostgreSQL stopped for 10 s under both cores and started again.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from _haproxy import Frontend, HAProxy, find_haproxy
from _pg_server import PgServer
from conftest import CoreProcess, missing, new_database, start_postgres
from core_helpers import whole_history
from waiting import until

from legacy_socket_server.client import CoreClient, CoreError, CoreUnavailable
from legacy_socket_server.pg_feed import HEARTBEAT, LEASE

PASSWORDS = {"Alice": "123", "Bob": "456", "Charlie": "789"}
PING = '$18{"purpose":"ping"}$'


@pytest.fixture
def lb_binary() -> str:
    found = find_haproxy()
    if found is None:
        missing("haproxy not found (apt-get install haproxy; see .ci/run)")
    return found  # type: ignore[return-value]


class Sender:
    """A desktop-like client through the balancer: sends ``count`` messages to ``peer``,
    each with a client_msg_id; on a lost connection it reconnects, resumes with its
    token and sends the unanswered message again (same client_msg_id)."""

    def __init__(self, name: str, peer: str, port: int) -> None:
        self.name, self.peer, self.port = name, peer, port
        self.token: str | None = None
        self.client: CoreClient | None = None
        self.acked: list[dict[str, Any]] = []
        self.reconnects = 0

    async def connect(self) -> None:
        client = await CoreClient.connect("127.0.0.1", self.port, timeout=3)
        if self.token is None:
            reply = await client.login(self.name, PASSWORDS[self.name])
        else:
            reply = await client.resume(self.token)
        self.token = reply["token"]
        self.client = client

    async def send(self, count: int, progress: asyncio.Event, at: int) -> None:
        i = 0
        while i < count:
            try:
                if self.client is None:
                    await self.connect()
                    self.reconnects += 1
                cmid = f"{self.name}-{i}"
                reply = await self.client.call(  # type: ignore[union-attr]
                    "send_message", to=self.peer, text=cmid, client_msg_id=cmid
                )
            except (CoreUnavailable, ConnectionError, TimeoutError):
                if self.client is not None:
                    await self.client.close()
                self.client = None
                await asyncio.sleep(0.05)  # a reconnect pace, not a wait for a condition
                continue
            except CoreError as exc:
                if exc.reply.get("error") in ("storage_unavailable", "rate_limited"):
                    continue
                raise
            self.acked.append(reply["message"])
            i += 1
            if len(self.acked) >= at:
                progress.set()


async def presence_of(watcher: CoreClient, name: str) -> bool:
    users = (await watcher.call("users"))["users"]
    return {u["username"]: u["online"] for u in users}[name]


async def stored_messages(url: str) -> list[tuple[int, str, str | None]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT id, text, client_msg_id FROM messages ORDER BY id")
        return [(r["id"], r["text"], r["client_msg_id"]) for r in rows]
    finally:
        await conn.close()


async def test_kill_a_core_mid_burst(pg_server: PgServer, tmp_path: Path, lb_binary: str) -> None:
    url = await new_database(pg_server)
    cores = [
        CoreProcess(tmp_path / f"core{i}", ["--database-url", url, "--send-rate", "0"]).start()
        for i in (1, 2)
    ]
    doomed, survivor = cores
    lb = HAProxy(
        [
            Frontend(
                "core",
                "tcp",
                {"one": f"127.0.0.1:{doomed.port}", "two": f"127.0.0.1:{survivor.port}"},
                tcp_check=(PING, '"ok":true'),
            )
        ],
        binary=lb_binary,
        check_interval=0.3,
    ).start()
    try:
        lb.wait_up("core")
        # Everyone starts on the doomed core; the survivor takes them after the kill.
        lb.set_server("core", "two", "maint")
        senders = [
            Sender("Alice", "Bob", lb.ports["core"]),
            Sender("Bob", "Alice", lb.ports["core"]),
        ]
        for s in senders:
            await s.connect()
        # Charlie is on the doomed core too and does not come back by himself; the
        # watcher is on the survivor (directly).
        charlie = await CoreClient.connect("127.0.0.1", doomed.port)
        await charlie.login("Charlie", PASSWORDS["Charlie"])
        lb.set_server("core", "two", "ready")
        watcher = await CoreClient.connect("127.0.0.1", survivor.port)
        await watcher.login("Bob", PASSWORDS["Bob"])
        await until(lambda: presence_of(watcher, "Charlie"), what="Charlie online everywhere")

        progress = asyncio.Event()
        burst = [asyncio.create_task(s.send(150, progress, at=40)) for s in senders]
        await asyncio.wait_for(progress.wait(), 30)
        doomed.kill()
        killed_at = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*burst), 60)

        # Charlie's core is dead and he did not reconnect: offline within 15 s.
        async def charlie_offline() -> bool:
            return not await presence_of(watcher, "Charlie")

        await until(charlie_offline, timeout=20, what="Charlie offline after the kill")
        assert time.monotonic() - killed_at < 15, "offline later than 15 s after the kill"
        assert LEASE + HEARTBEAT < 15
        # ... and back when he reconnects (through the balancer: the survivor).
        back = await CoreClient.connect("127.0.0.1", lb.ports["core"])
        await back.login("Charlie", PASSWORDS["Charlie"])
        await until(lambda: presence_of(watcher, "Charlie"), what="Charlie back online")

        assert all(s.reconnects >= 1 for s in senders), [s.reconnects for s in senders]
        stored = await stored_messages(url)
        # Exactly once: every acknowledged message is stored, and nothing twice.
        cmids = [cmid for _, _, cmid in stored]
        assert len(cmids) == len(set(cmids)), "a client_msg_id stored twice"
        assert sorted(cmids) == sorted(f"{s.name}-{i}" for s in senders for i in range(150))
        acked_ids = {m["id"] for s in senders for m in s.acked}
        assert acked_ids == {i for i, _, _ in stored}
        # The survivor serves the whole conversation in order.
        assert [m["id"] for m in await whole_history(watcher, "Alice")] == sorted(acked_ids)
        for c in (watcher, back, charlie, *(s.client for s in senders if s.client)):
            await c.close()
        assert "Traceback" not in survivor.log_text(), survivor.log_text()
    finally:
        lb.stop()
        for core in cores:
            core.stop()


async def test_postgresql_stopped_for_ten_seconds(tmp_path: Path) -> None:
    """Both cores answer ``storage_unavailable`` while PostgreSQL is down, crash not, and
    recover by themselves (sending, and hearing each other's messages) when it is back."""
    server = start_postgres()
    cores: list[CoreProcess] = []
    try:
        url = await new_database(server)
        for i in (1, 2):
            cores.append(CoreProcess(tmp_path / f"core{i}", ["--database-url", url]).start())
        alice = await CoreClient.connect("127.0.0.1", cores[0].port)
        bob = await CoreClient.connect("127.0.0.1", cores[1].port)
        await alice.login("Alice", PASSWORDS["Alice"])
        cursor = (await bob.login("Bob", PASSWORDS["Bob"]))["cursor"]
        before = (await alice.call("send_message", to="Bob", text="before"))["message"]
        server.pause()  # pg_ctl stop: the server is gone, its data kept
        down_at = time.monotonic()
        refused = await alice.request("send_message", to="Bob", text="lost")
        assert (refused["ok"], refused.get("error")) == (False, "storage_unavailable")
        assert (await bob.call("ping"))["ok"] is True
        assert (await bob.call("history", **{"with": "Alice"}))["messages"] == [before]
        await asyncio.sleep(max(0.0, 10 - (time.monotonic() - down_at)))  # the outage itself
        server.resume()

        async def sent() -> dict[str, Any] | None:
            r = await alice.request("send_message", to="Bob", text="after", client_msg_id="a-1")
            return r["message"] if r["ok"] else None

        after = await until(sent, timeout=30, what="a send once PostgreSQL is back")
        seen: list[dict[str, Any]] = []

        async def bob_hears() -> bool:
            nonlocal cursor
            reply = await bob.call("poll", cursor=cursor, wait_ms=1000)
            cursor = reply["cursor"]
            seen.extend(e["message"] for e in reply["events"] if e["type"] == "message")
            return after in seen

        await until(bob_hears, timeout=20, what="the other core hears of it")
        for core in cores:
            assert core.proc is not None and core.proc.poll() is None, core.log_text()
        await alice.close()
        await bob.close()
        for core in cores:
            assert core.stop() == 0
            assert "Traceback" not in core.log_text(), core.log_text()
    finally:
        for core in cores:
            core.kill()  # still running only if the test failed
        server.stop()
