"""What a closed connection leaves to the core's cyclic GC.

The core freezes its heap while connections are open (legacy_socket_server/heap.py):
frozen objects that become cyclic garbage wait for the next full collection, so a
connection's own objects must be freed by reference counting when it closes.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import pytest
import uvloop
from conftest import StartCore
from core_helpers import RawClient, cyclic_garbage, seed_users
from waiting import until

from legacy_socket_server.server import CoreServer, ServerConfig

OURS = "legacy_socket_server."


async def _every_way_to_close(core: CoreServer) -> None:
    bob = await RawClient.to(core)
    await bob.login("Bob")
    for _ in range(3):
        alice = await RawClient.to(core)
        cursor = (await alice.login("Alice"))["cursor"]
        await alice.send({"purpose": "poll", "id": 1, "cursor": cursor, "wait_ms": 30_000})
        await bob.call("send_message", to="Alice", text="hi")
        await alice.recv_match(lambda m: m.get("id") == 1)
        await alice.send({"purpose": "poll", "id": 2, "cursor": cursor, "wait_ms": 30_000})
        await alice.close()  # hung up with a poll held
        idle = await RawClient.to(core)  # never logs in: closed by the login timeout
        await idle.expect_closed()
        leaving = await RawClient.to(core)
        await leaving.login("Charlie")
        await leaving.send({"purpose": "exit", "id": "bye"})
        await leaving.expect_closed()
        garbled = await RawClient.to(core)  # a framing error: told, then closed
        await garbled.send_raw(b"$5{xx}$")
        await garbled.expect_closed()
    await bob.close()
    await until(lambda: not core.connections, what="every connection closed")


async def test_closed_connections_leave_none_of_our_objects_in_cycles(
    start_core: StartCore,
) -> None:
    core = await start_core(login_timeout=0.3)
    core.heap.stop()  # a leaked cycle frozen by the heap would be out of the check's sight
    await _every_way_to_close(core)
    garbage = cyclic_garbage()
    ours = collections.Counter(
        type(o).__qualname__ for o in garbage if type(o).__module__.startswith(OURS)
    )
    assert not ours, f"cycles of ours among {len(garbage)} unreachable objects: {ours}"


def test_on_uvloop_closed_connections_leave_no_cycles_at_all(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # The core's own loop when installed: its transports leave none either (asyncio's
    # leave a few per socket, collected when the heap thaws after churn).
    seed_users(tmp_path / "data", tmp_path_factory.getbasetemp() / "users-template")

    async def scenario() -> list[Any]:
        config = ServerConfig(port=0, data_dir=tmp_path / "data", login_timeout=0.3)
        core = await CoreServer.start(config)
        core.heap.stop()
        try:
            await _every_way_to_close(core)  # what is made once: the first event logs
            cyclic_garbage()
            await _every_way_to_close(core)
            return cyclic_garbage()
        finally:
            await core.stop()

    garbage = uvloop.run(scenario())
    kinds = collections.Counter(type(o).__qualname__ for o in garbage)
    assert not garbage, f"{len(garbage)} unreachable objects in cycles: {kinds.most_common(8)}"
