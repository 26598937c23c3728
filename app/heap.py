"""The web app's heap after a wave of logins: frozen for the cyclic GC, trimmed for the OS.

Two costs grow with the number of browser sessions (docs/performance.md):

* **GC pauses.** Each session keeps ~100 container objects alive (aiohttp's
  handler chain for its socket, tasks, coroutines, the core connection). A full
  collection walks all of them: ~300 ms at 5,000 sessions, every time enough
  new objects have survived, whatever the traffic. Every AFTER_LOGINS logins
  (and once a wave of logins has settled), :func:`gc.freeze` moves what exists
  into the permanent generation, which collections skip: later collections
  walk only what came after, at most AFTER_LOGINS sessions' worth during a wave.
* **Freed memory glibc keeps.** Each login decodes and re-encodes a list of every
  user; ``malloc_trim`` hands what the wave freed back to the OS.

The price of freezing: a cycle of frozen objects that becomes garbage is not
collected while frozen. Our own session objects are freed by reference counting
when a session ends (tests/test_web_gc.py checks it), but aiohttp leaves a few
cycles per closed connection. So once as many sessions have ended as a quarter
of those frozen, the heap is thawed and collected in full (one pause, logged
with its length) and frozen again: the garbage kept is bounded by the
population, and a steady population never pays a full collection.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

from legacy_socket_server.malloc import release_free_memory

log = logging.getLogger(__name__)

#: Freeze and trim this many seconds after the last of at least AFTER_LOGINS
#: logins (a wave, not one person logging in).
AFTER_LOGINS = 64
WHEN_QUIET = 5.0
#: Collect in full once this share of the sessions frozen has ended (and at least
#: AFTER_LOGINS): the frozen garbage stays below that share of the heap.
THAW_SHARE = 4


class Heap:
    """Count logins and ended sessions; freeze, trim and thaw the heap accordingly."""

    def __init__(self, when_quiet: float = WHEN_QUIET) -> None:
        self.when_quiet = when_quiet
        self._logins = 0
        self._since_freeze = 0
        self._ended = 0
        self._frozen_sessions = 0
        self._timer: asyncio.TimerHandle | None = None
        self.sessions = 0

    def login(self) -> None:
        self.sessions += 1
        self._logins += 1
        self._since_freeze += 1
        if self._since_freeze >= AFTER_LOGINS:
            self._freeze()  # during a wave too: a full collection never walks more
        if self._logins >= AFTER_LOGINS:
            self._later(self._settle)

    def _freeze(self) -> None:
        """Collect the young generations (cheap), put everything else out of the GC's sight."""
        gc.collect(1)
        gc.freeze()
        self._frozen_sessions = self.sessions
        self._since_freeze = 0

    def ended(self) -> None:
        self.sessions -= 1
        self._ended += 1
        if self._frozen_sessions and self._ended >= max(
            AFTER_LOGINS, self._frozen_sessions // THAW_SHARE
        ):
            self._later(self._thaw)

    def _later(self, action: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(self.when_quiet, action)  # type: ignore[arg-type]

    def _settle(self) -> None:
        """After a wave of logins: collect the young, freeze the rest, trim."""
        self._timer = None
        count, self._logins = self._logins, 0
        start = time.perf_counter()
        self._freeze()
        took = time.perf_counter() - start
        trimmed = release_free_memory()
        log.info(
            "heap after %d logins: %d objects frozen in %.1f ms, trimmed in %.1f ms",
            count,
            gc.get_freeze_count(),
            took * 1000,
            trimmed * 1000,
        )

    def _thaw(self) -> None:
        """Enough sessions ended: collect what they left among the frozen, freeze again."""
        self._timer = None
        ended, self._ended = self._ended, 0
        start = time.perf_counter()
        gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        self._frozen_sessions = self.sessions
        self._since_freeze = 0
        took = time.perf_counter() - start
        trimmed = release_free_memory()
        log.info(
            "heap after %d sessions ended: full collection (%d unreachable) in %.1f ms, "
            "trimmed in %.1f ms",
            ended,
            found,
            took * 1000,
            trimmed * 1000,
        )

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
