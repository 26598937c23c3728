"""Limits per client in the core: the login deadline, connections per address, sessions per
user, and a hash gate that is fair per address (docs/protocol.md#limits-per-client).

Loopback has a whole /8: a client bound to 127.0.0.2 and one bound to 127.0.0.3
are two different addresses to the core, and neither is trusted (only
127.0.0.1 and ::1 are, by default).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from conftest import StartCore
from core_helpers import DEMO, RawClient
from waiting import until

from legacy_socket_server.addresses import client_address, is_trusted, normalize, parse_networks
from legacy_socket_server.limits import HashGate
from legacy_socket_server.protocol import encode
from legacy_socket_server.server import CoreServer

Connect = Callable[..., Awaitable[RawClient]]


@pytest.fixture(params=["files", "postgres"])
def store_kind(request: pytest.FixtureRequest) -> str:
    """Every in-process core here runs on the file store and on PostgreSQL."""
    return request.param


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Open a raw connection to a core from a chosen loopback address."""
    clients: list[RawClient] = []

    async def open_from(core: CoreServer, source: str = "127.0.0.2") -> RawClient:
        host = "::1" if ":" in source else "127.0.0.1"
        if core.config.host not in ("::", "0.0.0.0", "127.0.0.1") or (
            ":" in source and core.config.host != "::"
        ):
            host = core.config.host
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, core.port, local_addr=(source, 0)), 10
        )
        clients.append(RawClient(reader, writer))
        return clients[-1]

    yield open_from
    for client in clients:
        await client.close()


# -- addresses -----------------------------------------------------------------------------------
def test_addresses_are_normalised_and_matched() -> None:
    assert normalize("::ffff:10.1.2.3") == "10.1.2.3"
    assert client_address(("::ffff:127.0.0.2", 5000, 0, 0)) == "127.0.0.2"
    assert normalize("2001:DB8::1") == "2001:db8::1"
    trusted = parse_networks("127.0.0.1, ::1, 172.28.0.0/24, ::ffff:10.0.0.9")
    assert is_trusted("127.0.0.1", trusted) and is_trusted("::1", trusted)
    assert is_trusted("172.28.0.77", trusted) and is_trusted("10.0.0.9", trusted)
    assert not is_trusted("127.0.0.2", trusted) and not is_trusted("", trusted)


# -- the login deadline --------------------------------------------------------------------------
async def test_a_connection_that_never_logs_in_is_closed_at_the_deadline(
    start_core: StartCore, connect: Connect
) -> None:
    core = await start_core(login_timeout=0.5)
    silent = await connect(core)
    typing = await connect(core)
    await typing.send_raw(b"$12{")  # half a packet: still not logged in
    logged = await connect(core)
    await logged.login("Bob")
    for idle in (silent, typing):
        got = await idle.expect_closed(timeout=10)
        assert [m["error"] for m in got] == ["login_timeout"], got
        assert "0.5 s" in got[0]["message"]
    # The one that logged in in time outlived the deadline.
    assert (await logged.call("ping"))["ok"] is True
    assert len(core.connections) == 1


async def test_resume_also_meets_the_deadline(start_core: StartCore, connect: Connect) -> None:
    core = await start_core(login_timeout=0.5)
    first = await connect(core)
    token = (await first.login("Alice"))["token"]
    second = await connect(core)
    await second.call("resume", token=token)
    idle = await connect(core)
    await idle.expect_closed(timeout=10)
    assert (await second.call("ping"))["ok"] is True


# -- connections per address ---------------------------------------------------------------------
async def test_the_33rd_connection_of_an_address_is_refused(
    start_core: StartCore, connect: Connect
) -> None:
    core = await start_core()
    held = [await connect(core, "127.0.0.2") for _ in range(32)]
    await held[-1].call("ping")  # all 32 were accepted
    extra = await connect(core, "127.0.0.2")
    got = await extra.expect_closed()
    assert [m["error"] for m in got] == ["server_busy"] and "32" in got[0]["message"]
    # Another address is not affected: it logs in at once.
    other = await connect(core, "127.0.0.3")
    await other.login("Bob")
    # A slot freed is a slot for the address again.
    await held[0].close()
    await until(lambda: core.per_address.get("127.0.0.2") == 31, what="the slot to free")
    again = await connect(core, "127.0.0.2")
    await again.login("Charlie")


async def test_trusted_addresses_are_not_capped(start_core: StartCore, connect: Connect) -> None:
    core = await start_core(max_connections_per_ip=3)
    trusted = [await connect(core, "127.0.0.1") for _ in range(10)]
    for c in trusted:
        assert (await c.call("ping"))["ok"] is True
    capped = [await connect(core, "127.0.0.4") for _ in range(3)]
    await capped[-1].call("ping")
    over = await connect(core, "127.0.0.4")
    assert [m["error"] for m in await over.expect_closed()] == ["server_busy"]


# -- sessions per user ---------------------------------------------------------------------------
async def test_the_33rd_session_of_a_user_is_refused(
    start_core: StartCore, connect: Connect
) -> None:
    core = await start_core()
    sessions = []
    for _ in range(32):
        c = await connect(core, "127.0.0.1")
        token = (await c.login("Alice"))["token"]
        sessions.append(c)
    extra = await connect(core, "127.0.0.1")
    reply = await extra.request("login", username="Alice", password=DEMO["Alice"])
    assert reply["error"] == "too_many_sessions" and "32 sessions" in reply["message"], reply
    # Not logged in, still connected; others log in meanwhile.
    assert (await extra.request("users"))["error"] == "not_logged_in"
    bob = await connect(core, "127.0.0.1")
    await bob.login("Bob")
    # A resume counts as a session too.
    resumed = await extra.request("resume", token=token)
    assert resumed["error"] == "too_many_sessions", resumed
    # One leaves: the refused connection may come in now.
    await sessions[0].close()
    await until(lambda: _resumed(extra, token), what="a slot for Alice")


async def _resumed(client: RawClient, token: str) -> bool:
    return (await client.request("resume", token=token))["ok"]


# -- the hash gate is fair per address -----------------------------------------------------------
async def test_gate_takes_waiting_clients_in_turn() -> None:
    gate = HashGate(burst=0.0, duty=0.5, max_waiting=100, max_per_client=5)
    order: list[str] = []

    def job(tag: str) -> Callable[[], str]:
        return lambda: order.append(tag) or tag

    storm = [gate.run(job("a"), "A") for _ in range(5)]
    assert gate.run(job("a"), "A") is None  # A holds its share of the room
    other = gate.run(job("b"), "B")
    await asyncio.wait_for(asyncio.gather(*storm, other), 10)
    assert order.index("b") <= 1, order  # B's one check did not wait behind A's five
    gate.close()


async def test_a_login_storm_from_one_address_does_not_hold_up_another(
    start_core: StartCore, connect: Connect
) -> None:
    core = await start_core(max_connections_per_ip=400)
    # A slow gate (one check per ~0.6 s) makes the queue certain on any machine.
    gate = core.service.hash_gate = HashGate(burst=0.0, duty=0.05)
    storm = [await connect(core, "127.0.0.2") for _ in range(300)]
    names = (f"nobody{i}" for i in itertools.count())
    for c in storm:  # written at once, sent as the loop gets to them
        # Naming another client is a trusted gateway's privilege: ignored from here.
        name = next(names)
        login = {"purpose": "login", "id": 1, "username": name, "password": "x", "client": name}
        c.writer.write(encode(login))
    replies = [asyncio.create_task(c.recv(timeout=120)) for c in storm]
    # One address holds at most its share of the waiting room; the rest is refused unhashed.
    await until(lambda: sum(t.done() for t in replies) >= 300 - 64, 60, "the refusals")
    errors = [t.result()["error"] for t in replies if t.done()]
    assert errors.count("rate_limited") == 300 - 64, errors  # 64 were let in to wait
    queued = gate.waiting
    assert queued >= 40, queued  # at most one check per ~0.6 s has run since
    bob = await connect(core, "127.0.0.3")
    t0 = time.monotonic()
    reply = await bob.request("login", username="Bob", password=DEMO["Bob"], timeout=60)
    elapsed = time.monotonic() - t0
    assert reply["ok"] is True, reply
    # Fair turns: Bob's check ran at the next turn, not behind the storm's queue.
    assert gate.waiting >= queued - 3, (queued, gate.waiting, elapsed)
    print(f"login from another address answered in {elapsed * 1000:.0f} ms during the storm")
    for task in replies:
        task.cancel()
    for c in storm:  # gone: their waiting checks are dropped unhashed
        await c.close()
    await until(lambda: gate.waiting == 0, 60, "the storm's checks to be dropped")
