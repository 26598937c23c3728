"""The hash gate: password checks are spaced so the core's loop keeps serving others."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from conftest import StartCore, StartService
from core_helpers import Client, RawClient
from waiting import until

from legacy_socket_server.limits import HashGate
from legacy_socket_server.protocol import encode
from legacy_socket_server.server import CoreServer


def busy(seconds: float) -> Any:
    """A job that holds the CPU like an argon2 check does."""

    def job() -> float:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass
        return seconds

    return job


async def test_runs_inline_while_credit_lasts_then_queues() -> None:
    now = 0.0  # the gate's clock stands still until we move it: no credit comes back
    gate = HashGate(burst=0.25, duty=0.1, max_waiting=3, clock=lambda: now)
    assert gate.run(busy(0.1)) == 0.1  # credit left: answered at once
    assert gate.run(busy(0.2)) == 0.2  # still positive (~0.15 s) before it ran
    later = [gate.run(busy(0.01)) for _ in range(3)]  # in debt now: they wait
    assert all(isinstance(f, asyncio.Future) for f in later)
    assert gate.run(busy(0.01)) is None  # the queue is full: refused, nothing hashed
    now += 10  # time passes: the credit comes back
    assert await asyncio.wait_for(asyncio.gather(*later), 10) == [0.01] * 3
    gate.close()


async def test_other_callbacks_run_between_queued_checks() -> None:
    gate = HashGate(burst=0.0, duty=0.5, max_waiting=10)
    order: list[str] = []

    def check(i: int) -> Any:
        def job() -> None:
            busy(0.02)()
            order.append(f"check{i}")

        return job

    futures = [gate.run(check(i)) for i in range(4)]
    stop = False

    async def other_work() -> None:
        while not stop:
            order.append("other")
            await asyncio.sleep(0)

    worker = asyncio.create_task(other_work())
    await asyncio.wait_for(asyncio.gather(*futures), 5)
    stop = True
    await worker
    checks = [i for i, x in enumerate(order) if x.startswith("check")]
    assert len(checks) == 4
    # Never two checks in a row: someone else always got the loop in between.
    assert all(b - a > 1 for a, b in zip(checks, checks[1:], strict=False))


async def test_duty_cycle_bounds_hashing_share() -> None:
    gate = HashGate(burst=0.0, duty=0.5, max_waiting=10)
    t0 = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(gate.run(busy(0.02)) for _ in range(5))), 5)
    elapsed = time.perf_counter() - t0
    # 0.1 s of hashing at a 50% share cannot finish in less than ~0.18 s.
    assert elapsed >= 0.18, elapsed


async def test_cancelled_waiters_are_never_hashed() -> None:
    gate = HashGate(burst=0.0, duty=0.5, max_waiting=10)
    ran: list[int] = []
    futures = [gate.run(lambda i=i: ran.append(i)) for i in range(3)]
    futures[0].cancel()
    futures[1].cancel()
    await asyncio.wait_for(futures[2], 5)
    assert ran == [2]


# -- through the real server ------------------------------------------------------


@pytest.fixture
async def core(start_core: StartCore) -> CoreServer:
    server = await start_core()
    # Every login waits its turn in the queue, as in a storm.
    server.service.hash_gate = HashGate(burst=0.0)
    return server


async def test_requests_pipelined_behind_a_waiting_login_see_it(core: CoreServer) -> None:
    c = await RawClient.to(core)
    reqs = [
        {"purpose": "login", "id": 1, "username": "Alice", "password": "123"},
        {"purpose": "send_message", "id": 2, "to": "Bob", "text": "a"},
        {"purpose": "history", "id": 3, "with": "Bob"},
    ]
    await c.send_raw(b"".join(encode(r) for r in reqs))
    got = [await c.recv() for _ in reqs]
    assert [(g["id"], g["ok"]) for g in got] == [(1, True), (2, True), (3, True)]
    assert [m["text"] for m in got[2]["messages"]] == ["a"]
    await c.close()


async def login_then_hang_up(core: CoreServer) -> RawClient:
    """Bob logged in; then a login of Alice that waits in the gate's queue (~1 s) and
    whose connection goes away meanwhile. Returns once the queue has drained and the
    server has dropped that connection; returns Bob."""
    bob = await RawClient.to(core)
    await bob.login("Bob")
    # Spend the gate's credit so the next login waits ~1 s in the queue.
    gate = core.service.hash_gate = HashGate(burst=0.01, duty=0.01)
    gate.run(busy(0.02))
    ghost = await RawClient.to(core)
    await ghost.send({"purpose": "login", "username": "Alice", "password": "123"})
    await until(lambda: gate.waiting == 1, what="login queued")
    await ghost.close()
    await until(
        lambda: gate.waiting == 0 and len(core.connections) == 1,
        what="the queue to drain and the server to drop the connection",
    )
    return bob


async def test_connection_gone_while_login_waits_leaves_no_ghost(core: CoreServer) -> None:
    bob = await login_then_hang_up(core)
    users = {u["username"]: u for u in (await bob.call("users"))["users"]}
    assert users["Alice"]["online"] is False
    assert not core.service.is_online("Alice")
    await bob.close()


async def test_connection_gone_while_login_waits_is_never_logged_in(core: CoreServer) -> None:
    bob = await login_then_hang_up(core)
    assert (await bob.call("poll"))["events"] == []  # Alice was never online, not even briefly
    await bob.close()


async def test_two_waiting_logins_on_one_session_start_it_once(start_svc: StartService) -> None:
    svc = start_svc(hash_gate=HashGate(burst=0.0))
    bob, a = Client(svc), Client(svc)
    assert (await bob.areq("login", username="Bob", password="456"))["ok"]  # type: ignore[index]
    login = {"purpose": "login", "username": "Alice", "password": "123"}
    first, second = svc.handle(a.session, dict(login)), svc.handle(a.session, dict(login))
    replies = await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert [r["ok"] for r in replies] == [True, False]
    assert replies[1]["error"] == "bad_request"
    # One session: Alice came online once, and leaving it takes her offline.
    assert bob.poll_events() == [{"type": "presence", "username": "Alice", "online": True}]
    svc.disconnect(a.session)
    assert not svc.is_online("Alice")
    assert bob.poll_events() == [{"type": "presence", "username": "Alice", "online": False}]
