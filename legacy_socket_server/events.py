"""Per-user event logs and cursors (PROTOCOL.md section 3).

A cursor is ``boot << 32 | seq``: ``seq`` is a counter shared by every event
of this server run and ``boot`` is the run's number (kept in the journal), so
cursors never repeat across restarts and a stale one is recognised and reset.

Each user's log keeps its newest events in two parallel lists (sequence
numbers and entries) so a poll finds its place with one binary search.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from typing import Any

SEQ_BITS = 32
SEQ_MASK = (1 << SEQ_BITS) - 1

#: Events kept per user. A client that falls further behind than this (e.g.
#: a laptop asleep for hours while its peers chatted) gets ``reset`` and
#: reloads from history, which holds everything anyway.
LOG_KEEP = 2000


def encoded_size(obj: Any) -> int:
    return len(json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode())


class Entry:
    __slots__ = ("seq", "event", "skip_session", "size")

    def __init__(self, seq: int, event: dict[str, Any], skip_session: int, size: int) -> None:
        self.seq = seq
        self.event = event
        self.skip_session = skip_session  # a session that must not see it (0: none)
        self.size = size


class UserLog:
    __slots__ = ("seqs", "entries", "trimmed")

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.entries: list[Entry] = []
        self.trimmed = 0  # seq of the newest dropped event

    def append(self, entry: Entry) -> None:
        self.seqs.append(entry.seq)
        self.entries.append(entry)
        if len(self.seqs) > 2 * LOG_KEEP:
            # Trim in halves so the cost is amortised O(1) per event.
            cut = len(self.seqs) - LOG_KEEP
            self.trimmed = self.seqs[cut - 1]
            del self.seqs[:cut]
            del self.entries[:cut]

    def after(
        self, seq: int, session_id: int, max_events: int, max_bytes: int
    ) -> tuple[list[dict[str, Any]], int]:
        """Events after ``seq`` for one session, bounded in count and bytes.

        Returns the events and the seq of the last entry examined (skipped
        entries count as seen, so the cursor moves past them).
        """
        i = bisect_right(self.seqs, seq)
        events: list[dict[str, Any]] = []
        budget = max_bytes
        last = seq
        entries = self.entries
        for k in range(i, len(entries)):
            e = entries[k]
            if e.skip_session != session_id:
                if events and (len(events) >= max_events or e.size + 1 > budget):
                    break
                events.append(e.event)
                budget -= e.size + 1
            last = e.seq
        return events, last

    def has_after(self, seq: int, session_id: int) -> bool:
        for k in range(len(self.entries) - 1, -1, -1):
            e = self.entries[k]
            if e.seq <= seq:
                return False
            if e.skip_session != session_id:
                return True
        return False
