"""A browser session's event buffer: the fast path of ``GET /api/poll``.

One core long-poll per session fills it (see ``gateway.py``); every tab of the
session reads it by cursor, so a tab never consumes another tab's events and a
held poll never cuts another short. Answering a poll is an index computation and
a list slice, no core round trip: that is what keeps 5k polls/s close to the
cost of a bare aiohttp handler.

Events are kept as their JSON encoding (``bytes``), made once when they arrive:
a poll reply is then a join, not a re-encode, and thousands of buffers hold no
dicts for the cyclic GC to walk (with dicts, 5,000 sessions made the web app's
full collections pause for ~0.4 s).

Cursor numbering is the buffer's own: ``epoch << 32 | seq``. ``seq`` counts the
events appended to this buffer; ``epoch`` is random per session so a cursor
from another session (or from before the gateway restarted) is recognised and
answered with ``reset`` rather than misread. Both stay below 2**53, so
JavaScript numbers hold them exactly.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any, NamedTuple, Protocol

from legacy_socket_server.contract import MAX_POLL_EVENTS, SEQ_BITS, SEQ_MASK
from legacy_socket_server.protocol import dumps

#: 20 bits of epoch + 32 of seq fit a JavaScript number exactly.
EPOCH_BITS = 20
#: Room messages whose encoding is kept for the sessions still to receive them.
ROOM_MESSAGES_SHARED = 256

_RESET_MARK = b'{"type":"_reset"}'


def encode_event(event: dict[str, Any]) -> bytes:
    """An event as it will be sent to the browser (the core's events are valid JSON)."""
    return dumps(event)


class SharedEncodings:
    """Events encoded once for all sessions of a web app.

    A wave of N logins puts N presence events in each of N session buffers,
    and a message to a room of N browser users reaches N sessions: sharing
    the encoding turns N copies into one (per presence state, per message).
    """

    def __init__(self) -> None:
        self._presence: dict[tuple[Any, ...], bytes] = {}
        self._room_messages: dict[tuple[Any, ...], bytes] = {}

    def encode(self, event: dict[str, Any]) -> bytes:
        """``event`` encoded; one object for equal events across all sessions."""
        kind = event.get("type")
        if kind == "presence":
            key: tuple[Any, ...] = (event.get("username"), event.get("online"))
            table = self._presence
        elif kind == "message" and "room" in event.get("message", ()):
            key = (event["message"].get("id"),)
            table = self._room_messages
        else:
            return encode_event(event)
        encoded = table.get(key)
        if encoded is None:
            encoded = table[key] = encode_event(event)
            if table is self._room_messages and len(table) > ROOM_MESSAGES_SHARED:
                del table[next(iter(table))]  # the oldest: every session has it by now
        return encoded


class Poll(NamedTuple):
    """A poll's answer: the next cursor, the events (encoded), and whether to reload."""

    cursor: int
    events: list[bytes]
    reset: bool = False

    def body(self) -> bytes:
        """The JSON reply body of ``GET /api/poll`` (docs/protocol.md#http-api)."""
        reset = b',"reset":true' if self.reset else b""
        return b'{"cursor":%d,"events":[%s]%s}' % (self.cursor, b",".join(self.events), reset)


class Listener(Protocol):
    """A reader fed as events arrive (a WebSocket), instead of waiting to be woken."""

    def deliver(self) -> None:
        """New events were appended: send them now if caught up."""

    def wake(self) -> None:
        """Something other than new events changed (reset, session end, core lost)."""


class EventBuffer:
    """The newest events of one session, with its own cursors and a wake-up signal.

    Events are kept in tuples of ``CHUNK`` (plus a short list being filled): a
    tuple holding only bytes is dropped from the cyclic GC's sight, so thousands
    of buffers add a few references each to a full collection instead of
    thousands (a list of 2,000 events is 2,000 references walked every time).
    """

    __slots__ = (
        "_epoch",
        "_chunks",
        "_tail",
        "_base",
        "_keep",
        "_reset_seq",
        "_changed",
        "_listeners",
    )

    #: Events per sealed chunk.
    CHUNK = 64

    def __init__(self, keep: int) -> None:
        self._epoch = (secrets.randbelow((1 << EPOCH_BITS) - 1) + 1) << SEQ_BITS
        self._chunks: list[tuple[bytes, ...]] = []
        self._tail: list[bytes] = []
        self._base = 0  # seq of the newest event dropped from the front
        self._keep = keep
        # Seq at which the core last said "reset" (or we reconnected): a tab
        # whose cursor is older missed something it cannot get from us.
        self._reset_seq = 0
        # One Event per "generation": set and dropped on every change, so any
        # number of waiting polls wake together and none consumes the signal.
        # Made only when a poll waits (a session read over WebSocket never needs one).
        self._changed: asyncio.Event | None = None
        # Sockets fed synchronously on append: a delivery is a write, not a task wake-up.
        self._listeners: tuple[Listener, ...] = ()

    def __len__(self) -> int:
        return len(self._chunks) * self.CHUNK + len(self._tail)

    @property
    def head(self) -> int:
        """The cursor after the newest event."""
        return self._epoch | (self._base + len(self))

    def append(self, events: list[bytes]) -> None:
        if not events:
            return
        self._add(events)
        for listener in self._listeners:
            listener.deliver()
        self._wake_polls()

    def subscribe(self, listener: Listener) -> None:
        self._listeners += (listener,)

    def unsubscribe(self, listener: Listener) -> None:
        self._listeners = tuple(x for x in self._listeners if x is not listener)

    def _add(self, events: list[bytes]) -> None:
        tail, size = self._tail, self.CHUNK
        tail.extend(events)
        while len(tail) >= size:
            self._chunks.append(tuple(tail[:size]))
            del tail[:size]
        if len(self) > 2 * self._keep:
            # Whole chunks from the front: amortised O(1) per event, ``keep`` or more kept.
            cut = (len(self) - self._keep) // size
            del self._chunks[:cut]
            self._base += cut * size

    def _slice(self, start: int, stop: int) -> list[bytes]:
        """Events ``start`` to ``stop`` (indexes from the oldest kept)."""
        size, chunks = self.CHUNK, self._chunks
        sealed = len(chunks) * size
        out: list[bytes] = []
        i = start
        while i < stop and i < sealed:
            k, j = divmod(i, size)
            take = min(size - j, stop - i)
            out.extend(chunks[k][j : j + take])
            i += take
        if i < stop:
            out.extend(self._tail[i - sealed : stop - sealed])
        return out

    def reset(self) -> None:
        """Every tab must reload (users, open conversation): the core said reset."""
        # The reset takes a seq of its own so a tab at the old head sees it.
        self._add([_RESET_MARK])
        self._reset_seq = self._base + len(self)
        self.notify()

    def notify(self) -> None:
        """Wake every waiting poll and listener (a reset, a lost core, the session's end)."""
        self._wake_polls()
        for listener in self._listeners:
            listener.wake()

    def _wake_polls(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def collect(self, cursor: int | None) -> Poll:
        """The reply to a poll at ``cursor``."""
        if cursor is None:
            return Poll(self.head, [])
        count = len(self)
        end = self._base + count
        seq = cursor & SEQ_MASK
        if (cursor & ~SEQ_MASK) != self._epoch or seq > end or seq < self._base:
            return Poll(self.head, [], True)
        if seq < self._reset_seq:
            return Poll(self.head, [], True)
        i = seq - self._base
        stop = min(count, i + MAX_POLL_EVENTS)
        return Poll(self._epoch | (self._base + stop), self._slice(i, stop))

    async def changed(self, timeout: float) -> None:
        """Return at the next change (events or :meth:`notify`), or after ``timeout`` seconds."""
        if self._changed is None:
            self._changed = asyncio.Event()
        event = self._changed
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            pass
