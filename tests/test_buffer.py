"""The browser session's event buffer (app/buffer.py): cursors, trimming, and what the GC sees."""

from __future__ import annotations

import gc
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from app.buffer import EventBuffer

KEEP = 100


def drain(buf: EventBuffer, cursor: int) -> tuple[list[int], bool]:
    """Follow the cursor to the head: the events read, and whether a reset was said."""
    got: list[int] = []
    while True:
        reply = buf.collect(cursor)
        if reply.reset:
            return got, True
        if not reply.events:
            return got, False
        got += [json.loads(e)["n"] for e in reply.events]
        cursor = reply.cursor


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=150), min_size=1, max_size=20))
async def test_a_reader_gets_every_event_after_its_cursor_once_in_order(batches: list[int]) -> None:
    buf = EventBuffer(KEEP)
    counter = 0
    readers: list[tuple[int, int]] = []  # (cursor, first event number after it)
    for size in batches:
        readers.append((buf.head, counter))
        buf.append([json.dumps({"n": counter + i}).encode() for i in range(size)])
        counter += size
    for cursor, first in readers:
        got, reset = drain(buf, cursor)
        if counter - first <= KEEP:  # never more behind than the buffer keeps: no loss
            assert not reset
        if not reset:
            assert got == list(range(first, counter))


async def test_reset_is_seen_by_a_tab_at_the_old_head_and_not_after() -> None:
    buf = EventBuffer(KEEP)
    buf.append([b'{"n":0}'])
    old = buf.head
    buf.reset()
    assert buf.collect(old).reset
    assert not buf.collect(buf.head).reset
    assert buf.collect(buf.head).events == []


async def test_a_cursor_of_another_session_is_answered_with_reset() -> None:
    a, b = EventBuffer(KEEP), EventBuffer(KEEP)
    a.append([b'{"n":0}'])
    assert b.collect(a.head).reset


async def test_sealed_events_are_out_of_the_cyclic_gcs_sight() -> None:
    buf = EventBuffer(KEEP)
    buf.append([b'{"n":%d}' % i for i in range(3 * EventBuffer.CHUNK + 5)])
    gc.collect()
    chunks = [r for r in gc.get_referents(buf) if isinstance(r, list) and r and type(r[0]) is tuple]
    assert chunks, "the buffer holds its events in tuples"
    assert not any(gc.is_tracked(t) for t in chunks[0])
