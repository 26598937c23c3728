"""The heap the core and the web app share (legacy_socket_server/heap.py): survivors
frozen while sessions exist, a full collection once enough of them ended."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Callable, Iterator

import pytest
from waiting import until

from legacy_socket_server.heap import AFTER_LOGINS, THAW_SHARE, Heap


class Node:
    """A container that can be in a cycle and be watched with a weak reference."""

    other: Node | None = None


def cycle() -> tuple[Node, weakref.ref[Node]]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return a, weakref.ref(a)


MakeHeap = Callable[..., Heap]


@pytest.fixture(name="make_heap")
def fixture_make_heap() -> Iterator[MakeHeap]:
    """Heaps that are stopped, and the test process's heap unfrozen, at the end."""
    heaps: list[Heap] = []

    def make(when_quiet: float, max_postpone: float = 60, max_gc_share: float = 0.01) -> Heap:
        heaps.append(Heap(when_quiet, max_postpone, max_gc_share))
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
    heap.started()
    assert heap.freezing
    later, kept = cycle()
    gc.collect(1)  # survives a middle collection: frozen right after it
    del before, later
    gc.collect()
    assert gone() is not None and kept() is not None  # frozen garbage waits
    for _ in range(1, AFTER_LOGINS):
        heap.started()
    # Half of them end, half close a socket: together a thaw's worth.
    need = max(AFTER_LOGINS, heap.sessions // THAW_SHARE)
    for i in range(need - 1):
        heap.ended() if i % 2 else heap.released()
    await asyncio.sleep(0.2)
    assert gone() is not None  # not yet enough churn
    heap.released()
    await until(lambda: gone() is None, what="a full collection after enough churn")
    assert kept() is None
    assert gc.get_freeze_count() > 0  # and frozen again


async def test_a_storm_is_frozen_by_the_collector_itself(make_heap: MakeHeap) -> None:
    heap = make_heap(60)
    heap.started()
    obj, kept = cycle()
    # Allocations alone, as in a storm of connections: the collector runs its
    # young collections by itself, and the hook freezes what survived them.
    storm = [[i] for i in range(100_000)]
    del obj, storm
    gc.collect()
    assert kept() is not None


async def test_freezing_stops_when_the_last_session_ends(make_heap: MakeHeap) -> None:
    heap = make_heap(0.05)
    heap.started()
    assert heap.freezing
    heap.ended()
    assert not heap.freezing
    obj, gone = cycle()
    gc.collect(1)
    del obj
    gc.collect()
    assert gone() is None


async def test_churn_that_never_pauses_is_collected_all_the_same(make_heap: MakeHeap) -> None:
    # Sessions end every 0.1 s, each postponing the quiet moment (0.5 s) the thaw waits
    # for: after max_postpone (1 s) it happens anyway, or the frozen garbage would grow.
    heap = make_heap(0.5, max_postpone=1.0)
    for _ in range(2 * AFTER_LOGINS):
        heap.started()
    obj, gone = cycle()
    gc.collect(1)  # frozen
    del obj
    for _ in range(AFTER_LOGINS - 1):
        heap.ended()
    for _ in range(40):  # 4 s of churn, never quiet for 0.5 s
        heap.started()
        heap.ended()
        if gone() is None:
            break
        await asyncio.sleep(0.1)
    assert gone() is None, "no full collection in 4 s of steady churn"


async def test_full_collections_take_a_bounded_share_of_the_time(make_heap: MakeHeap) -> None:
    # A share of a millionth: after one full collection (a millisecond at least) the
    # next waits a quarter of an hour, whatever the churn asks.
    heap = make_heap(0.05, max_gc_share=1e-6)
    for _ in range(AFTER_LOGINS):
        heap.started()
    for round_ in range(2):
        obj, gone = cycle()
        gc.collect(1)  # frozen
        del obj
        for _ in range(AFTER_LOGINS):
            heap.ended()
            heap.started()
        if round_ == 0:
            await until(lambda gone=gone: gone() is None, what="the first full collection")
        else:
            await asyncio.sleep(0.5)
            assert gone() is not None  # the second waits for its turn


async def test_heaps_of_one_process_share_the_hook(make_heap: MakeHeap) -> None:
    # The web app running the core in its own process: the gateway's last browser
    # session ending must not stop the freezing the core's connections want.
    core, web = make_heap(60), make_heap(60)
    core.started()
    web.started()
    web.ended()
    assert core.freezing and not web.freezing
    obj, kept = cycle()
    gc.collect(1)
    del obj
    gc.collect()
    assert kept() is not None  # still frozen: the hook is still there
    core.ended()
    assert not core.freezing


async def test_nothing_runs_after_stop(make_heap: MakeHeap) -> None:
    # Connections that close after the server stopped (a TLS goodbye, a slow reader)
    # must not start a full collection, or the freezing, again.
    heap = make_heap(0.05)
    for _ in range(AFTER_LOGINS):
        heap.started()
    obj, kept = cycle()
    gc.collect(1)  # frozen
    del obj
    heap.stop()
    for _ in range(AFTER_LOGINS):
        heap.ended()
    heap.started()
    assert not heap.freezing
    await asyncio.sleep(0.3)
    assert kept() is not None  # no thaw ran
