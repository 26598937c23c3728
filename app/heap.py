"""The web app's heap: old objects frozen for the cyclic GC, freed memory trimmed for the OS.

Two costs grow with the number of browser sessions (docs/performance.md):

* **GC pauses.** Each session keeps ~100 container objects alive (aiohttp's
  handler chain for its socket, tasks, coroutines, the core connection), and each
  keep-alive HTTP connection ~45 more. A full collection walks every object not
  frozen: ~300 ms at 10,000 users, and CPython runs one whenever enough objects
  have survived the young generations, whatever the traffic. So while sessions
  exist, every FREEZE_EVERY seconds, and after every FREEZE_AFTER logins or new
  sockets (a storm of reconnecting tabs opens thousands a second), the young
  generations are collected (cheap: only what is new) and what survives is
  frozen with :func:`gc.freeze`: the automatic full collections then walk at
  most that many sessions' or that interval's survivors.
* **Freed memory glibc keeps.** Each login decodes and re-encodes a list of every
  user; ``malloc_trim`` hands what a wave of logins freed back to the OS.

The price of freezing: a cycle of frozen objects that becomes garbage is not
collected while frozen. Our own session objects are freed by reference counting
when a session ends (tests/test_web_gc.py checks it), but aiohttp leaves ~40
objects in cycles per closed WebSocket (a plain keep-alive connection leaves
none). So once as many sessions have ended or sockets closed as a quarter of the
live sessions, the heap is thawed and collected in full (one pause, logged with
its length) and frozen again: the garbage kept is bounded by the population, and
a steady population never pays a full collection.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable

from legacy_socket_server.malloc import release_free_memory

log = logging.getLogger(__name__)

#: Trim this many seconds after the last of at least AFTER_LOGINS logins (a wave,
#: not one person logging in).
AFTER_LOGINS = 64
WHEN_QUIET = 5.0
#: Freeze the young generations' survivors this often while sessions exist: at
#: 10,000 users one second of survivors (new keep-alive connections, mostly) is
#: what a full collection walks in well under 50 ms.
FREEZE_EVERY = 1.0
#: ... and after this many logins or new sockets, whichever comes first (a
#: socket's objects cost a full collection ~35 µs each).
FREEZE_AFTER = 128
#: Collect in full once this share of the live sessions have ended or closed a
#: socket (and at least AFTER_LOGINS): the frozen garbage stays below that share.
THAW_SHARE = 4


class Heap:
    """Freeze the heap's survivors periodically; trim after login waves; thaw after churn."""

    def __init__(self, when_quiet: float = WHEN_QUIET, freeze_every: float = FREEZE_EVERY) -> None:
        self.when_quiet = when_quiet
        self.freeze_every = freeze_every
        self._logins = 0
        self._released = 0
        self._young = 0
        self._settle_timer: asyncio.TimerHandle | None = None
        self._thaw_timer: asyncio.TimerHandle | None = None
        self._freezer: asyncio.TimerHandle | None = None
        self.sessions = 0
        #: The longest periodic freeze so far, in seconds (it is a pause too).
        self.longest_freeze = 0.0

    def login(self) -> None:
        self.sessions += 1
        self._logins += 1
        self._arrived()
        if self._logins >= AFTER_LOGINS:
            self._settle_timer = self._replace(self._settle_timer, self.when_quiet, self._settle)

    def socket_opened(self) -> None:
        """A tab opened a WebSocket (its handler chain lives as long as the socket)."""
        self._arrived()

    def _arrived(self) -> None:
        if self._freezer is None:
            self._freezer = self._call_later(self.freeze_every, self._tick)
        self._young += 1
        if self._young >= FREEZE_AFTER:
            self._freeze()

    def ended(self) -> None:
        """A browser session ended."""
        self.sessions -= 1
        self._release()

    def socket_closed(self) -> None:
        """A WebSocket closed (aiohttp leaves its handler chain in cycles)."""
        self._release()

    def _release(self) -> None:
        self._released += 1
        if self._released >= max(AFTER_LOGINS, self.sessions // THAW_SHARE):
            self._thaw_timer = self._replace(self._thaw_timer, self.when_quiet, self._thaw)

    @staticmethod
    def _call_later(delay: float, action: Callable[[], None]) -> asyncio.TimerHandle:
        return asyncio.get_running_loop().call_later(delay, action)

    def _replace(
        self, timer: asyncio.TimerHandle | None, delay: float, action: Callable[[], None]
    ) -> asyncio.TimerHandle:
        if timer is not None:
            timer.cancel()
        return self._call_later(delay, action)

    def _freeze(self) -> None:
        """Collect the young generations (cheap), put the survivors out of the GC's sight."""
        start = time.perf_counter()
        gc.collect(1)
        gc.freeze()
        self._young = 0
        self.longest_freeze = max(self.longest_freeze, time.perf_counter() - start)

    def _tick(self) -> None:
        self._freeze()
        self._freezer = (
            self._call_later(self.freeze_every, self._tick) if self.sessions > 0 else None
        )

    def _settle(self) -> None:
        """After a wave of logins: hand what the wave freed back to the OS."""
        self._settle_timer = None
        count, self._logins = self._logins, 0
        trimmed = release_free_memory()
        log.info(
            "heap after %d logins: %d objects frozen, trimmed in %.1f ms (longest freeze %.1f ms)",
            count,
            gc.get_freeze_count(),
            trimmed * 1000,
            self.longest_freeze * 1000,
        )

    def _thaw(self) -> None:
        """Enough sessions ended: collect what they left among the frozen, freeze again."""
        self._thaw_timer = None
        released, self._released = self._released, 0
        start = time.perf_counter()
        gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        took = time.perf_counter() - start
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
        for timer in (self._settle_timer, self._thaw_timer, self._freezer):
            if timer is not None:
                timer.cancel()
        self._settle_timer = self._thaw_timer = self._freezer = None
