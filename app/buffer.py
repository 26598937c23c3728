"""A browser session's event buffer: the fast path of ``GET /api/poll``.

One core long-poll per session fills it (see ``gateway.py``); every tab of the
session reads it by cursor, so a tab never consumes another tab's events and a
held poll never cuts another short. Answering a poll is an index computation and
a list slice, no core round trip: that is what keeps 5k polls/s close to the
cost of a bare aiohttp handler.

Cursor numbering is the buffer's own: ``epoch << 32 | seq``. ``seq`` counts the
events appended to this buffer; ``epoch`` is random per session so a cursor
from another session (or from before the gateway restarted) is recognised and
answered with ``reset`` rather than misread. Both stay below 2**53, so
JavaScript numbers hold them exactly.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

SEQ_BITS = 32
SEQ_MASK = (1 << SEQ_BITS) - 1
#: 20 bits of epoch + 32 of seq fit a JavaScript number exactly.
EPOCH_BITS = 20
#: The protocol asks for at least 100 events per poll; more per reply means
#: fewer round trips for a tab that fell behind.
MAX_POLL_EVENTS = 500


class EventBuffer:
    """The newest events of one session, with its own cursors and a wake-up signal."""

    __slots__ = ("_epoch", "_events", "_base", "_keep", "_reset_seq", "_changed")

    def __init__(self, keep: int) -> None:
        self._epoch = (secrets.randbelow((1 << EPOCH_BITS) - 1) + 1) << SEQ_BITS
        self._events: list[dict[str, Any]] = []
        self._base = 0  # seq of the newest event dropped from the front
        self._keep = keep
        # Seq at which the core last said "reset" (or we reconnected): a tab
        # whose cursor is older missed something it cannot get from us.
        self._reset_seq = 0
        # One Event per "generation": set and replaced on every change, so any
        # number of waiting polls wake together and none consumes the signal.
        self._changed = asyncio.Event()

    @property
    def head(self) -> int:
        """The cursor after the newest event."""
        return self._epoch | (self._base + len(self._events))

    def append(self, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        self._events.extend(events)
        if len(self._events) > 2 * self._keep:
            # Trim in halves so the cost is amortised O(1) per event.
            cut = len(self._events) - self._keep
            del self._events[:cut]
            self._base += cut
        self.notify()

    def reset(self) -> None:
        """Every tab must reload (users, open conversation): the core said reset."""
        # The reset takes a seq of its own so a tab at the old head sees it.
        self._events.append({"type": "_reset"})
        self._reset_seq = self._base + len(self._events)
        self.notify()

    def notify(self) -> None:
        """Wake every waiting poll (new events, a reset, or a lost core)."""
        self._changed.set()
        self._changed = asyncio.Event()

    def collect(self, cursor: int | None) -> dict[str, Any]:
        """The reply to a poll at ``cursor``: ``cursor``, ``events`` and maybe ``reset``."""
        if cursor is None:
            return {"cursor": self.head, "events": []}
        end = self._base + len(self._events)
        seq = cursor & SEQ_MASK
        if (cursor & ~SEQ_MASK) != self._epoch or seq > end or seq < self._base:
            return {"cursor": self.head, "events": [], "reset": True}
        if seq < self._reset_seq:
            return {"cursor": self.head, "events": [], "reset": True}
        i = seq - self._base
        stop = min(len(self._events), i + MAX_POLL_EVENTS)
        return {"cursor": self._epoch | (self._base + stop), "events": self._events[i:stop]}

    async def changed(self, timeout: float) -> None:
        """Return at the next :meth:`notify`, or after ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                await self._changed.wait()
        except TimeoutError:
            pass
