"""The web app's heap: no automatic full collections while sessions exist; trimmed for the OS.

Two costs grow with the number of browser sessions (docs/performance.md):

* **GC pauses.** Each session keeps ~100 container objects alive (aiohttp's
  handler chain for its socket, tasks, coroutines, the core connection), and each
  keep-alive HTTP connection ~45 more. A full collection walks all of them:
  ~300 ms at 10,000 users. CPython starts one whenever the objects that survived
  the young generations outnumber a quarter of the old ones, so a burst of new
  connections (a login wave, thousands of tabs reconnecting, the first sends of a
  busy minute) set off pauses of 100–400 ms. While sessions exist, automatic full
  collections are off; the young generations are still collected as usual (their
  size is bounded by the thresholds, a few thousand objects: a few ms).
* **Freed memory glibc keeps.** Each login decodes and re-encodes a list of every
  user; ``malloc_trim`` hands what a wave of logins freed back to the OS.

The price: a cycle of old objects that becomes garbage waits for a full
collection. Our own session objects are freed by reference counting when a
session ends (tests/test_web_gc.py checks it), but aiohttp leaves ~40 objects in
cycles per closed WebSocket (a plain keep-alive connection leaves none). So once
as many sessions have ended or sockets closed as a quarter of the live sessions,
one full collection runs (a pause, logged with its length): the garbage kept is
bounded by the population, and a steady population never pays a full collection.
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
#: not one person logging in), and collect this long after the churn that asks for it.
AFTER_LOGINS = 64
WHEN_QUIET = 5.0
#: Collect in full once this share of the live sessions have ended or closed a
#: socket (and at least AFTER_LOGINS): the uncollected garbage stays below that share.
COLLECT_SHARE = 4
#: The oldest generation's threshold while sessions exist: never reached.
NEVER = 1 << 30


class Heap:
    """Turn automatic full collections off while sessions exist; collect after churn."""

    def __init__(self, when_quiet: float = WHEN_QUIET) -> None:
        self.when_quiet = when_quiet
        self._logins = 0
        self._released = 0
        self._settle_timer: asyncio.TimerHandle | None = None
        self._collect_timer: asyncio.TimerHandle | None = None
        self._saved_threshold: tuple[int, int, int] | None = None
        self.sessions = 0

    @property
    def holding(self) -> bool:
        """Whether automatic full collections are off (sessions exist)."""
        return self._saved_threshold is not None

    def login(self) -> None:
        self.sessions += 1
        self._logins += 1
        if self._saved_threshold is None:
            self._saved_threshold = gc.get_threshold()
            young, middle, _ = self._saved_threshold
            gc.set_threshold(young, middle, NEVER)
        if self._logins >= AFTER_LOGINS:
            self._settle_timer = self._replace(self._settle_timer, self._settle)

    def ended(self) -> None:
        """A browser session ended."""
        self.sessions -= 1
        self._release()
        if self.sessions <= 0:
            self._restore()

    def socket_closed(self) -> None:
        """A WebSocket closed (aiohttp leaves its handler chain in cycles)."""
        self._release()

    def _release(self) -> None:
        self._released += 1
        if self._released >= max(AFTER_LOGINS, self.sessions // COLLECT_SHARE):
            self._collect_timer = self._replace(self._collect_timer, self._collect)

    def _replace(
        self, timer: asyncio.TimerHandle | None, action: Callable[[], None]
    ) -> asyncio.TimerHandle:
        if timer is not None:
            timer.cancel()
        return asyncio.get_running_loop().call_later(self.when_quiet, action)

    def _restore(self) -> None:
        if self._saved_threshold is not None:
            gc.set_threshold(*self._saved_threshold)
            self._saved_threshold = None

    def _settle(self) -> None:
        """After a wave of logins: hand what the wave freed back to the OS."""
        self._settle_timer = None
        count, self._logins = self._logins, 0
        trimmed = release_free_memory()
        log.info("heap after %d logins: trimmed in %.1f ms", count, trimmed * 1000)

    def _collect(self) -> None:
        """Enough sessions ended or sockets closed: collect what they left in cycles."""
        self._collect_timer = None
        released, self._released = self._released, 0
        start = time.perf_counter()
        found = gc.collect()
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
        for timer in (self._settle_timer, self._collect_timer):
            if timer is not None:
                timer.cancel()
        self._settle_timer = self._collect_timer = None
        self._restore()
