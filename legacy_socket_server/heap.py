"""A server's heap: old objects frozen for the cyclic GC, freed memory trimmed for the OS.

Used by the core (one per connection) and the web app (one per browser session);
two costs grow with what they hold (docs/performance.md):

* **GC pauses.** A full collection walks every object not frozen, and CPython runs
  one whenever enough objects have survived the young generations. The web app
  keeps ~100 container objects per session (aiohttp's handler chain for its socket,
  tasks, coroutines, the core connection): ~300 ms at 10,000 users, after a login
  wave or a storm of reconnecting tabs. The core keeps two per recent event (the
  per-user logs hold up to 4,000 each): 11 ms growing to 300 ms as they filled, a
  few times a second under load. So while sessions exist, whatever survives a
  collection of the middle generation is frozen with :func:`gc.freeze` right after
  it (a ``gc.callbacks`` hook: the collector itself says when, however fast objects
  arrive). An automatic full collection then walks only the young generations'
  objects, a few thousand.
* **Freed memory glibc keeps.** Each login decodes and re-encodes a list of every
  user; ``malloc_trim`` hands what a wave of logins freed back to the OS.

The price of freezing: a cycle of frozen objects that becomes garbage is not
collected while frozen. Our own session objects are freed by reference counting
when a session ends (tests/test_web_gc.py and tests/test_core_gc.py check it), but
aiohttp leaves ~40 objects in cycles per closed WebSocket, and asyncio's own loop
(without uvloop) a few per closed socket. So once as many sessions have ended or
sockets closed as a quarter of the live sessions (the web app; the core, whose
connections leave few or none, as many as are open and at least 1,024), the heap is
thawed and collected in full (one pause, logged with its length) and frozen again, at
a quiet moment (no churn for ``when_quiet`` s) or at the latest ``MAX_POSTPONE`` s
later, and at most ``MAX_GC_SHARE`` of the time: the garbage kept is bounded by the
population and the churn, and a steady population never pays a full collection. One
hook serves every heap of the process (the web app can run the core in its own).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from typing import Any

from legacy_socket_server.malloc import release_free_memory

log = logging.getLogger(__name__)

#: Trim this many seconds after the last of at least AFTER_LOGINS logins (a wave,
#: not one person logging in); thaw this long after the churn that asks for it.
AFTER_LOGINS = 64
WHEN_QUIET = 5.0
#: Collect in full once this share of the live sessions have ended or closed a
#: socket (and at least AFTER_LOGINS): the frozen garbage stays below that share.
THAW_SHARE = 4
#: Churn that goes on and on still gets its full collection this long after it was due.
MAX_POSTPONE = 60.0
#: Full collections after churn take at most this share of the time: the core's walks
#: its whole history (~90 ms for 300,000 messages), frozen the rest of the time.
MAX_GC_SHARE = 0.01

#: The heaps that have sessions: the hook is the process's (the web app may run the core
#: in its own process), installed while any of them wants it.
_freezing: set[Heap] = set()


def _freeze_survivors(phase: str, info: dict[str, Any]) -> None:
    """After a collection of the middle or oldest generation: freeze what survived it.

    Runs inside the collector's callback, after the collection has finished (the
    generations' lists are consistent; freezing only moves them to the permanent one).
    """
    if phase == "stop" and info["generation"] >= 1:
        gc.freeze()


class Heap:
    """Freeze survivors while sessions exist; trim after login waves; thaw after churn."""

    def __init__(
        self,
        when_quiet: float = WHEN_QUIET,
        max_postpone: float = MAX_POSTPONE,
        max_gc_share: float = MAX_GC_SHARE,
        *,
        min_churn: int = AFTER_LOGINS,
        churn_share: int = THAW_SHARE,
    ) -> None:
        if not 0 < max_gc_share <= 1:
            raise ValueError("max_gc_share is a share of the time: above 0, at most 1")
        self.when_quiet = when_quiet
        self.max_postpone = max_postpone
        self.max_gc_share = max_gc_share
        #: Thaw once this many sessions ended, or 1/churn_share of the live ones if more.
        self.min_churn = min_churn
        self.churn_share = churn_share
        self._stopped = False
        #: No full collection before this (loop time): the last one's length, spread out.
        self._thaw_after = 0.0
        self._logins = 0
        self._released = 0
        self._settle_timer: asyncio.TimerHandle | None = None
        self._thaw_timer: asyncio.TimerHandle | None = None
        #: When the thaw is due at the latest (loop time), once enough churn asked for it.
        self._thaw_by: float | None = None
        self.sessions = 0

    @property
    def freezing(self) -> bool:
        return self in _freezing

    def started(self) -> None:
        """A session started (a login, a connection): what it keeps lives long."""
        if self._stopped:
            return
        self.sessions += 1
        self._logins += 1
        if not _freezing:
            gc.collect(1)  # what exists now is old: out of sight too
            gc.freeze()
            gc.callbacks.append(_freeze_survivors)
        _freezing.add(self)
        if self._logins >= AFTER_LOGINS:
            self._settle_timer = self._replace(self._settle_timer, self._settle, self.when_quiet)

    def ended(self) -> None:
        """A session ended."""
        self.sessions -= 1
        self._release()
        if self.sessions <= 0:
            self._stop_freezing()

    def released(self) -> None:
        """Something a session used closed (aiohttp leaves a WebSocket's handlers in cycles)."""
        self._release()

    def _release(self) -> None:
        if self._stopped:
            return
        self._released += 1
        if self._released >= max(self.min_churn, self.sessions // self.churn_share):
            now = asyncio.get_running_loop().time()
            if self._thaw_by is None:
                self._thaw_by = now + self.max_postpone
            delay = min(self.when_quiet, max(0.0, self._thaw_by - now))
            delay = max(delay, self._thaw_after - now)
            self._thaw_timer = self._replace(self._thaw_timer, self._thaw, delay)

    def _replace(
        self, timer: asyncio.TimerHandle | None, action: Callable[[], None], delay: float
    ) -> asyncio.TimerHandle:
        if timer is not None:
            timer.cancel()
        return asyncio.get_running_loop().call_later(delay, action)

    def _stop_freezing(self) -> None:
        _freezing.discard(self)
        if not _freezing:
            while _freeze_survivors in gc.callbacks:
                gc.callbacks.remove(_freeze_survivors)

    def _settle(self) -> None:
        """After a wave of logins: hand what the wave freed back to the OS."""
        self._settle_timer = None
        count, self._logins = self._logins, 0
        trimmed = release_free_memory()
        log.info(
            "heap after %d sessions started: %d objects frozen, trimmed in %.1f ms",
            count,
            gc.get_freeze_count(),
            trimmed * 1000,
        )

    def _thaw(self) -> None:
        """Enough sessions ended: collect what they left among the frozen, freeze again."""
        self._thaw_timer = self._thaw_by = None
        released, self._released = self._released, 0
        start = time.perf_counter()
        gc.unfreeze()
        found = gc.collect()  # and the callback freezes what survived
        gc.freeze()
        took = time.perf_counter() - start
        self._thaw_after = asyncio.get_running_loop().time() + took / self.max_gc_share
        trimmed = release_free_memory()
        log.info(
            "heap after %d sessions ended or sockets closed: full collection "
            "(%d unreachable) in %.1f ms, trimmed in %.1f ms",
            released,
            found,
            took * 1000,
            trimmed * 1000,
        )

    def stop(self) -> None:
        for timer in (self._settle_timer, self._thaw_timer):
            if timer is not None:
                timer.cancel()
        self._settle_timer = self._thaw_timer = self._thaw_by = None
        self._stopped = True  # connections closing after the server: no timers again
        self._stop_freezing()
