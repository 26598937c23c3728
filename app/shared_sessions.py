"""Browser sessions any web app can serve: the gateway's side of the shared table.

With ``--database-url`` (docs/deploy.md#web-apps-on-postgresql) the gateway writes each
login's row (app/session_store.py) before the browser gets its cookie. A request whose
cookie this web app does not hold is then *adopted*: the row is read, a new core
connection ``resume``s with its token, and the session is served here under the same
cookie, so a browser whose web app was killed or replaced never sees the login page. No
balancer affinity is needed for that; without it, each web app that serves a browser
holds a copy of its session (a core connection and an event buffer of its own).

Rows go on logout and when the core refuses the token; the others are kept while used
(``last_seen``, refreshed for all of a web app's sessions in one statement a minute, not
per request) and pruned after the core's token lifetime (7 days) unused. The refresh
also tells a web app which of its copies were logged out on another one: it ends them.
"""

from __future__ import annotations

import asyncio
import logging
import re
from functools import partial
from typing import TYPE_CHECKING

from legacy_socket_server.client import CoreError

from .session import BrowserSession, NotLoggedIn
from .session_store import SessionStore, SessionStoreUnavailable, row_key

if TYPE_CHECKING:
    from .gateway import Gateway

log = logging.getLogger(__name__)

#: How often ``last_seen`` is refreshed (and copies logged out elsewhere are ended).
REFRESH_EVERY = 60.0
#: How often rows unused for the token lifetime are deleted (by every web app: cheap).
PRUNE_EVERY = 3600.0
#: A session id as the gateway makes them (``secrets.token_urlsafe(32)``): anything
#: else is not looked up at all.
_SID = re.compile(r"[A-Za-z0-9_-]{43}")


class SharedSessions:
    """The shared table as one web app's gateway uses it."""

    def __init__(
        self, store: SessionStore, gateway: Gateway, refresh_every: float = REFRESH_EVERY
    ) -> None:
        self.store = store
        self.gateway = gateway
        self.refresh_every = refresh_every
        #: Adoptions in flight by session id: concurrent requests share one.
        self._adopting: dict[str, asyncio.Task[BrowserSession]] = {}
        self._keeper: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._keeper = asyncio.create_task(self._keep_rows(), name="web-sessions-keeper")

    async def stop(self) -> None:
        """No more adoptions (those in flight are cancelled) nor refreshes: the web app stops."""
        tasks = [t for t in (self._keeper, *self._adopting.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        await self.stop()
        await self.store.close()

    # -- the gateway's calls --------------------------------------------------------------
    async def save(self, sid: str, username: str, token: str) -> None:
        """Write a new session's row; :class:`SessionStoreUnavailable` if it cannot be."""
        await self.store.save(sid, username, token)

    async def forget(self, sid: str) -> None:
        """Delete a session's row. If the database is away the row stays, harmlessly: its
        token has been ended, so an adoption fails and deletes it then."""
        try:
            await self.store.delete(sid)
        except SessionStoreUnavailable as exc:
            log.warning("could not delete an ended browser session's row: %s", exc)

    async def adopt(self, sid: str | None, address: str) -> BrowserSession:
        """Serve here the session of cookie ``sid`` from the table; NotLoggedIn if none.

        Two requests for the same unknown cookie at once (a page's poll and its send)
        share one adoption: one row read, one core connection.
        """
        if sid is None or not _SID.fullmatch(sid):
            raise NotLoggedIn
        task = self._adopting.get(sid)
        if task is None:
            task = asyncio.create_task(self._adopt(sid, address), name="adopt-browser-session")
            self._adopting[sid] = task
            task.add_done_callback(partial(self._adopted, sid))
        # Shielded: a browser that gives up on its request does not cancel the others'.
        return await asyncio.shield(task)

    def _adopted(self, sid: str, task: asyncio.Task[BrowserSession]) -> None:
        if self._adopting.get(sid) is task:
            del self._adopting[sid]
        if not task.cancelled():
            task.exception()  # seen: each awaiting request raises it itself

    async def _adopt(self, sid: str, address: str) -> BrowserSession:
        stored = await self.store.load(sid)
        if stored is None:
            raise NotLoggedIn
        try:
            session = await self.gateway.resume_session(sid, stored.token, address)
        except CoreError as exc:
            if exc.code != "invalid_token":
                raise
            # Logged out elsewhere while the row stayed, a password change, 7 days unused.
            log.info("core refused the token of %s's browser session: it ends", stored.username)
            await self.forget(sid)
            raise NotLoggedIn from None
        log.info(
            "browser session of %s adopted (%d sessions)",
            session.username,
            len(self.gateway.sessions),
        )
        return session

    # -- background -------------------------------------------------------------------------
    async def _keep_rows(self) -> None:
        """Refresh ``last_seen`` of the sessions held here; end those whose row is gone;
        now and then prune rows unused for the token lifetime."""
        loop = asyncio.get_running_loop()
        next_prune = loop.time()
        while True:
            await asyncio.sleep(self.refresh_every)
            held = {row_key(s.sid): s for s in self.gateway.sessions.values()}
            try:
                found = await self.store.refresh(held)
                if loop.time() >= next_prune:
                    next_prune = loop.time() + PRUNE_EVERY
                    pruned = await self.store.prune()
                    if pruned:
                        log.info("pruned %d browser sessions unused for 7 days", pruned)
            except SessionStoreUnavailable as exc:
                log.warning("could not refresh the browser sessions' rows: %s", exc)
                continue
            gone = [s for key, s in held.items() if key not in found and not s.ended]
            for s in gone:
                log.info("browser session of %s was logged out elsewhere: ending it", s.username)
            await asyncio.gather(
                *(self.gateway.end(s, forget_row=False) for s in gone), return_exceptions=True
            )
