"""Handing memory back to the OS once a wave of logins is over.

Each browser login decodes and re-encodes a user list (every user): a wave of
N logins leaves N such lists freed in the heap, which glibc keeps; that was two
thirds of the web app's RSS per browser session (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import logging

from legacy_socket_server.malloc import release_free_memory

log = logging.getLogger(__name__)

#: The heap is trimmed this many seconds after the last of at least AFTER_LOGINS
#: logins (a wave, not one person logging in); a trim takes milliseconds, once.
AFTER_LOGINS = 64
WHEN_QUIET = 5.0


class HeapTrim:
    """Count logins; trim the heap once they have stopped coming for a while."""

    def __init__(self) -> None:
        self._logins = 0
        self._timer: asyncio.TimerHandle | None = None

    def login(self) -> None:
        self._logins += 1
        if self._logins < AFTER_LOGINS:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(WHEN_QUIET, self._trim)

    def _trim(self) -> None:
        self._timer = None
        count, self._logins = self._logins, 0
        took = release_free_memory()
        log.info("heap trimmed after %d logins in %.1f ms", count, took * 1000)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
