"""Per-user event logs and cursors (docs/protocol.md#events-and-cursors).

A cursor is ``boot << 32 | seq``: ``seq`` is a counter shared by every event
of this server run and ``boot`` is the run's number (kept in the journal), so
cursors never repeat across restarts and a stale one is recognised and reset.

Each user's log keeps its newest events in two parallel lists (sequence
numbers and entries) so a poll finds its place with one binary search.
Presence changes go to one shared log instead of every user's: a login
then costs O(1) memory, not O(users), and a poll merges the two by seq.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Any

from .protocol import PreEncoded, dumps

#: Events kept per user. A client that falls further behind than this (e.g.
#: a laptop asleep for hours while its peers chatted) gets ``reset`` and
#: reloads from history, which holds everything anyway.
LOG_KEEP = 2000


def encoded_size(obj: Any) -> int:
    if type(obj) is PreEncoded:
        return len(obj.json)
    return len(dumps(obj))


class Entry:
    __slots__ = ("seq", "event", "skip", "size")

    def __init__(self, seq: int, event: dict[str, Any], skip: object, size: int) -> None:
        self.seq = seq
        self.event = event
        self.skip = skip  # who must not see it: a session id, or a user name
        self.size = size


class EventLog:
    """Events in seq order, newest ``keep`` retained (amortised O(1) trim)."""

    __slots__ = ("seqs", "entries", "trimmed", "keep")

    def __init__(self, keep: int | None = None) -> None:
        self.seqs: list[int] = []
        self.entries: list[Entry] = []
        self.trimmed = 0  # seq of the newest dropped event
        self.keep = LOG_KEEP if keep is None else keep

    def append(self, entry: Entry) -> None:
        self.seqs.append(entry.seq)
        self.entries.append(entry)
        if len(self.seqs) > 2 * self.keep:
            cut = len(self.seqs) - self.keep
            self.trimmed = self.seqs[cut - 1]
            del self.seqs[:cut]
            del self.entries[:cut]

    def index_after(self, seq: int) -> int:
        return bisect_right(self.seqs, seq)


def collect(
    logs: list[tuple[EventLog, object]], seq: int, max_events: int, max_bytes: int
) -> tuple[list[dict[str, Any]], int] | None:
    """Merge the events after ``seq`` from several logs, each with its skip key.

    Returns the events (bounded in count and bytes) and the seq of the last
    entry examined, or None if a log no longer holds what follows ``seq``.
    Entries skipped for this reader still count as seen, so the cursor moves
    past them.
    """
    pos = []
    for log, _ in logs:
        if seq < log.trimmed:
            return None
        pos.append(log.index_after(seq))
    events: list[dict[str, Any]] = []
    budget = max_bytes
    last = seq
    while True:
        best = -1
        best_seq = 0
        for k, (log, _) in enumerate(logs):
            i = pos[k]
            if i < len(log.seqs) and (best < 0 or log.seqs[i] < best_seq):
                best, best_seq = k, log.seqs[i]
        if best < 0:
            break
        log, skip = logs[best]
        e = log.entries[pos[best]]
        if e.skip != skip:
            if events and (len(events) >= max_events or e.size + 1 > budget):
                break
            events.append(e.event)
            budget -= e.size + 1
        pos[best] += 1
        last = e.seq
    return events, last
