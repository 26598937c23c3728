"""What an ended browser session leaves to the cyclic GC.

The web app freezes its heap after a wave of logins (app/heap.py): frozen
objects that become cyclic garbage wait for the next full collection, so a
session's own objects must be freed by reference counting when it ends.
"""

from __future__ import annotations

import collections
import gc
import weakref
from typing import Any

from waiting import until
from web_helpers import (  # noqa: F401 - fixtures
    MakeWeb,
    fixture_make_web,
    fixture_tcp,
    login,
)

from app.heap import AFTER_LOGINS, FREEZE_AFTER, THAW_SHARE, Heap
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


async def test_the_heap_is_frozen_while_sessions_exist_and_collected_once_enough_ended() -> None:
    heap = Heap(when_quiet=0.05, freeze_every=0.05)
    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle that exists when the heap is frozen
    gone = weakref.ref(a)
    try:
        heap.login()
        await until(lambda: gc.get_freeze_count() > 0, what="the heap frozen with one session")
        frozen = gc.get_freeze_count()
        c, d = Node(), Node()
        c.other, d.other = d, c  # made later: frozen at the next period
        later = weakref.ref(c)
        await until(lambda: gc.get_freeze_count() > frozen, what="the next period's freeze")
        del a, b, c, d
        gc.collect()
        # Frozen garbage waits: collections skip it.
        assert gone() is not None and later() is not None
        for _ in range(1, AFTER_LOGINS):
            heap.login()
        # Half of them end, half close a socket: together a thaw's worth.
        need = max(AFTER_LOGINS, heap.sessions // THAW_SHARE)
        for i in range(need - 1):
            heap.ended() if i % 2 else heap.socket_closed()
        gc.collect(0)
        assert gone() is not None  # not yet enough sessions ended
        heap.socket_closed()
        await until(lambda: gone() is None, what="a full collection after sessions ended")
        await until(lambda: later() is None, what="the later cycle collected as well")
        assert gc.get_freeze_count() > 0  # and frozen again
    finally:
        heap.stop()
        gc.unfreeze()


async def test_the_periodic_freeze_stops_when_the_last_session_ends() -> None:
    heap = Heap(when_quiet=0.05, freeze_every=0.02)
    try:
        heap.login()
        await until(lambda: gc.get_freeze_count() > 0, what="the first freeze")
        heap.ended()
        await until(lambda: heap._freezer is None, what="the freezer stopped")
    finally:
        heap.stop()
        gc.unfreeze()


async def test_a_storm_of_new_sockets_is_frozen_in_batches_without_waiting_for_the_period() -> None:
    heap = Heap(when_quiet=60, freeze_every=60)
    a, b = Node(), Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    try:
        heap.login()
        for _ in range(FREEZE_AFTER - 2):
            heap.socket_opened()
        del a, b
        gc.collect()
        assert gone() is None  # not frozen yet: an ordinary collection frees the cycle
        c, d = Node(), Node()
        c.other, d.other = d, c
        kept = weakref.ref(c)
        heap.socket_opened()  # the batch is full: frozen at once
        del c, d
        gc.collect()
        assert kept() is not None
    finally:
        heap.stop()
        gc.unfreeze()
