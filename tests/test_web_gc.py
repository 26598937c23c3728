"""What an ended browser session leaves to the cyclic GC.

The web app freezes its heap after a wave of logins (app/heap.py): frozen
objects that become cyclic garbage wait for the next full collection, so a
session's own objects must be freed by reference counting when it ends.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from waiting import until
from web_helpers import (  # noqa: F401 - fixtures
    MakeWeb,
    fixture_make_web,
    fixture_tcp,
    login,
)

from app.heap import AFTER_LOGINS, THAW_SHARE, Heap
from app.web import GATEWAY_KEY

OUR_MODULES = ("app.", "legacy_socket_server.")


def cyclic_garbage() -> list[Any]:
    """What a full collection would find unreachable now (left in place, then let go)."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        return list(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


async def test_ended_sessions_leave_none_of_our_objects_to_the_cyclic_gc(
    make_web: MakeWeb, aiohttp_client: Any, tcp: Any
) -> None:
    server = await make_web(idle_timeout=0.5)
    web = await aiohttp_client(server)
    gateway = server.app[GATEWAY_KEY]
    bob = await tcp("Bob")
    gc.collect()
    gc.freeze()  # what existed before is out of sight, as after the app's own freeze
    try:
        for _ in range(3):  # logged out while its socket is open
            cursor = (await login(web, "Alice"))["cursor"]
            async with web.ws_connect(f"/api/ws?cursor={cursor}") as ws:
                await ws.receive_json()
                await bob.client.send_message("Alice", "hi")
                assert (await ws.receive_json())["events"]
                assert (await web.post("/api/logout", json={})).status == 204
                assert (await ws.receive()).data == 4401
            await until(lambda: not gateway.sessions)
        # Ended by the idle reaper after polling over HTTP.
        cursor = (await login(web, "Alice"))["cursor"]
        assert (await web.get(f"/api/poll?cursor={cursor}")).status == 200
        await until(lambda: not gateway.sessions, timeout=10)
        garbage = cyclic_garbage()
    finally:
        gc.unfreeze()
    ours = collections.Counter(
        type(o).__qualname__ for o in garbage if type(o).__module__.startswith(OUR_MODULES)
    )
    assert not ours, f"cycles of ours among {len(garbage)} unreachable objects: {ours}"


class Node:
    """A container that can be in a cycle and be watched with a weak reference."""

    other: Node | None = None


def cycle() -> tuple[Node, weakref.ref[Node]]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return a, weakref.ref(a)


MakeHeap = Callable[[float], Heap]


@pytest.fixture(name="make_heap")
def fixture_make_heap() -> Iterator[MakeHeap]:
    """Heaps that are stopped, and the test process's heap unfrozen, at the end."""
    heaps: list[Heap] = []

    def make(when_quiet: float) -> Heap:
        heaps.append(Heap(when_quiet=when_quiet))
        return heaps[-1]

    try:
        yield make
    finally:
        for heap in heaps:
            heap.stop()
        gc.unfreeze()


async def test_survivors_are_frozen_while_sessions_exist_and_collected_once_enough_ended(
    make_heap: MakeHeap,
) -> None:
    heap = make_heap(0.05)
    before, gone = cycle()  # exists when the first session starts
    heap.login()
    assert heap.freezing
    later, kept = cycle()
    gc.collect(1)  # survives a middle collection: frozen right after it
    del before, later
    gc.collect()
    assert gone() is not None and kept() is not None  # frozen garbage waits
    for _ in range(1, AFTER_LOGINS):
        heap.login()
    # Half of them end, half close a socket: together a thaw's worth.
    need = max(AFTER_LOGINS, heap.sessions // THAW_SHARE)
    for i in range(need - 1):
        heap.ended() if i % 2 else heap.socket_closed()
    await asyncio.sleep(0.2)
    assert gone() is not None  # not yet enough churn
    heap.socket_closed()
    await until(lambda: gone() is None, what="a full collection after enough churn")
    assert kept() is None
    assert gc.get_freeze_count() > 0  # and frozen again


async def test_a_storm_is_frozen_by_the_collector_itself(make_heap: MakeHeap) -> None:
    heap = make_heap(60)
    heap.login()
    obj, kept = cycle()
    # Allocations alone, as in a storm of connections: the collector runs its
    # young collections by itself, and the hook freezes what survived them.
    storm = [[i] for i in range(100_000)]
    del obj, storm
    gc.collect()
    assert kept() is not None


async def test_freezing_stops_when_the_last_session_ends(make_heap: MakeHeap) -> None:
    heap = make_heap(0.05)
    heap.login()
    assert heap.freezing
    heap.ended()
    assert not heap.freezing
    obj, gone = cycle()
    gc.collect(1)
    del obj
    gc.collect()
    assert gone() is None
