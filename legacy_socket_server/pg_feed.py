"""The change feed between cores sharing one PostgreSQL database (docs/scaling.md).

Every change a core commits is a row of ``changes`` with a position assigned under
one transaction-level lock (``chat_apply``), so positions increase in commit order
and have no holes. Each core hands changes on to its chat service strictly in
position order: other cores' changes as they are fetched, its own when its writer's
commit returns (:meth:`ChangeFeed.own`, which first fetches anything older it has
not seen). ``NOTIFY chat_changes`` says when to fetch; a heartbeat fetches too, so a
notification missed while the listening connection was down loses nothing.

The same heartbeat renews this core's lease in ``cores`` and drops cores whose lease
ran out (``chat_reap``): their users go offline everywhere within
:data:`LEASE` + :data:`HEARTBEAT` seconds of a ``kill -9``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import asyncpg

log = logging.getLogger(__name__)

#: Seconds between heartbeats (lease renewal, reaping, a catch-up fetch).
HEARTBEAT = 2.0
#: Seconds a core stays "alive" after its last heartbeat.
LEASE = 8.0
#: Changes are kept this long for cores that were cut off (they catch up from them).
KEEP_CHANGES = "1 hour"
#: Seconds between prunes of old changes (expired tokens end through TokenStore._expire).
PRUNE_EVERY = 10.0
#: Rows one prune deletes at most: small, bounded statements (cores prune side by side).
PRUNE_ROWS = 20_000
#: Rows per catch-up query.
FETCH_ROWS = 1000
#: Seconds the writer retries fetching other cores' older changes before it gives up on
#: this core's memory (and stops it: a supervisor restarts it afresh).
OWN_PATIENCE = 30.0


class FeedLost(Exception):
    """Changes this core has not seen were pruned: its memory can no longer be trusted."""


class ChangeFeed:
    """Fetches other cores' changes in order; renews this core's lease."""

    def __init__(
        self,
        url: str,
        core_id: int,
        applied: int,
        apply_remote: Callable[[list[dict[str, Any]]], None],
        *,
        connect_timeout: float = 10.0,
        on_reregistered: Callable[[], None] | None = None,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        self.url = url
        self.core_id = core_id
        #: The last position handed on (this core's own, or fetched).
        self.applied = applied
        self.apply_remote = apply_remote
        self.connect_timeout = connect_timeout
        self.on_reregistered = on_reregistered
        self.on_lost = on_lost
        #: The batch the writer is committing: a row of it met while fetching waits
        #: for the writer (it settles its requests first).
        self.writing_batch: int | None = None
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._fetching: asyncio.Task[None] | None = None
        self._again = False
        #: A fetch stopped at our own commit still being answered: fetch again after it.
        self._behind_own = False
        self._last_prune = 0.0
        self._stopped = False

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._heartbeats())

    async def stop(self) -> None:
        self._stopped = True
        for task in (self._task, self._fetching):
            if task is not None:
                task.cancel()
        for task in (self._task, self._fetching):
            if task is not None:
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def _connection(self) -> asyncpg.Connection:
        conn = self._conn
        if conn is not None and not conn.is_closed():
            return conn
        conn = await asyncpg.connect(self.url, timeout=self.connect_timeout, command_timeout=10.0)
        try:
            await conn.add_listener("chat_changes", self._notified)
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        return conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    # -- fetching ------------------------------------------------------------------------
    def _notified(self, *_: Any) -> None:
        self.fetch_soon()

    def fetch_soon(self) -> None:
        """Fetch new changes now, or once more after the fetch under way."""
        if self._stopped:
            return
        if self._fetching is not None:
            self._again = True
            return
        self._fetching = asyncio.get_running_loop().create_task(self._fetch_loop())

    async def _fetch_loop(self) -> None:
        try:
            self._again = True
            while self._again and not self._stopped:
                self._again = False
                try:
                    await self.catch_up()
                except FeedLost:
                    raise
                except Exception as exc:  # the heartbeat reconnects and fetches again
                    log.warning("fetching other cores' changes failed: %r", exc)
                    self._drop()
                    return
        except FeedLost as exc:
            self._lost(str(exc))
        finally:
            self._fetching = None

    async def catch_up(self, below: int | None = None) -> None:
        """Hand on every committed change after :attr:`applied` (and before ``below``)."""
        while True:
            limit = FETCH_ROWS if below is None else min(FETCH_ROWS, below - self.applied - 1)
            if limit <= 0:
                return
            # The lock per page, not per catch-up: a long one must not hold up the
            # heartbeat (the lease) or the writer's ``own`` for its whole length.
            async with self._lock:
                conn = await self._connection()
                rows = await conn.fetch(
                    "SELECT pos, core, batch, records FROM changes WHERE pos > $1 "
                    "ORDER BY pos LIMIT $2",
                    self.applied,
                    limit,
                )
                if not self._hand_on(rows):
                    return
            if len(rows) < limit:
                return

    def _hand_on(self, rows: list[asyncpg.Record]) -> bool:
        """Hand ``rows`` on in order; False where the writer must go on (our own commit)."""
        loop = asyncio.get_running_loop()
        for row in rows:
            pos = row["pos"]
            if pos <= self.applied:
                continue  # handed on by the writer while we fetched
            if pos != self.applied + 1:
                raise FeedLost(
                    f"changes {self.applied + 1}..{pos - 1} were pruned before this "
                    "core saw them: restart it (it reloads everything)"
                )
            if row["core"] == self.core_id and row["batch"] == self.writing_batch:
                # Our own commit, its answer not yet handled: the writer hands it on,
                # and then what follows it is fetched (``own``).
                self._behind_own = True
                return False
            # An own row of another batch: a commit we reported as failed went through
            # after all; memory must follow the database.
            self.applied = pos
            # Through the ready queue, as the writer's settled futures call back: the
            # service then applies every change in position order.
            loop.call_soon(self.apply_remote, json.loads(row["records"]))
        return True

    async def own(self, positions: list[int], settle: Callable[[], None]) -> None:
        """The writer committed changes at ``positions``: hand on what came before, then
        ``settle`` (its requests' replies), in order. Until what came before is fetched
        the writer waits: a change skipped here would be missing from memory for good."""
        waited = 0.0
        pause = 0.05
        while self.applied < positions[0] - 1:
            try:
                await self.catch_up(below=positions[0])
            except FeedLost as exc:
                self._lost(str(exc))
                break
            except Exception as exc:
                log.error("fetching changes before our own failed (retrying): %r", exc)
                self._drop()
                if waited > OWN_PATIENCE:
                    self._lost(f"other cores' changes unreadable for {waited:.0f} s: {exc!r}")
                    break
                await asyncio.sleep(pause)  # a reconnect's backoff
                waited += pause
                pause = min(pause * 2, 1.0)
        settle()
        self.applied = max(self.applied, positions[-1])
        if self._behind_own:
            self._behind_own = False
            self.fetch_soon()  # what a fetch stopped short of, behind our commit

    def _lost(self, reason: str) -> None:
        log.critical("%s", reason)
        if self.on_lost is not None:
            self.on_lost(reason)

    # -- lease ---------------------------------------------------------------------------
    async def _heartbeats(self) -> None:
        while not self._stopped:
            try:
                await self.heartbeat()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("heartbeat to the database failed: %r", exc)
                self._drop()
            self.fetch_soon()  # the safety net for a missed notification
            await asyncio.sleep(HEARTBEAT)

    async def heartbeat(self) -> None:
        """Renew the lease (re-register if it ran out), drop dead cores, prune."""
        reregistered = False
        async with self._lock:
            conn = await self._connection()
            renewed = await conn.fetchval(
                "UPDATE cores SET alive_until = now() + make_interval(secs => $2) "
                "WHERE id = $1 RETURNING id",
                self.core_id,
                LEASE,
            )
            if renewed is None:
                # Our lease ran out (the database was away) and another core dropped us
                # and our users: register again; the service says who is here.
                await conn.execute(
                    "INSERT INTO cores (id, alive_until) "
                    "VALUES ($1, now() + make_interval(secs => $2)) ON CONFLICT DO NOTHING",
                    self.core_id,
                    LEASE,
                )
                reregistered = True
            await conn.fetchval("SELECT chat_reap()")
            now = time.monotonic()
            if now - self._last_prune > PRUNE_EVERY:
                self._last_prune = now
                await conn.execute(
                    "DELETE FROM changes WHERE pos IN (SELECT pos FROM changes WHERE at < now() "
                    f"- interval '{KEEP_CHANGES}' ORDER BY pos LIMIT $1 FOR UPDATE SKIP LOCKED)",
                    PRUNE_ROWS,
                )
        if reregistered:
            log.warning("this core's lease had run out: registered again")
            if self.on_reregistered is not None:
                self.on_reregistered()

    async def lookup_token(self, digest: str) -> dict[str, Any] | None:
        """A token committed by another core that this one has not heard of yet."""
        async with self._lock:
            conn = await self._connection()
            row = await conn.fetchrow(
                "SELECT username, pw, used FROM tokens WHERE digest = $1", digest
            )
        if row is None:
            return None
        return {"user": row["username"], "pw": row["pw"], "used": row["used"]}
