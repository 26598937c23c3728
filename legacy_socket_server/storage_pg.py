"""Chat history, users and tokens on PostgreSQL, shared by any number of cores (issue 14).

The same interface as the file store (:class:`~legacy_socket_server.store.HistoryStore`):
:meth:`PgHistoryStore.load` hands the service its :class:`HistoryState` at start, and
:meth:`PgHistoryStore.append` takes the very records the file journal takes (``message``,
``read``, ``room``, ``member``, and here also ``presence``, ``token``, ``untoken``,
``user``) and returns a future that completes once they are committed. Records
appended in one loop turn share one transaction (group commit, as ``--fsync always``
shares one fsync), written by one connection in order.

What only the database can decide it decides inside ``chat_apply`` (pg_schema.py): a
message's id, whether a ``client_msg_id`` was used before (on any core), whether a room
name is taken. The store writes those answers back into the records it was given
(``message["id"]``, ``record["duplicate"]``, ``record["conflict"]``) before their
futures complete, so the service's rules read them as they read their own.

While the database is unreachable every future fails with :class:`StorageUnavailable`
and the store reconnects by itself on the next write. Other cores' changes arrive
through :class:`~legacy_socket_server.pg_feed.ChangeFeed` (:meth:`start_feed`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from .pg_feed import LEASE, ChangeFeed
from .pg_schema import migrate
from .protocol import dumps
from .storage_files import StorageUnavailable, StoreError
from .store import HistoryState

log = logging.getLogger(__name__)

#: Seconds a statement may take before the write fails (``storage_unavailable``).
COMMAND_TIMEOUT = 10.0

_APPLY = "SELECT chat_apply($1::jsonb, $2, $3)"
#: At most this much JSON per call of ``chat_apply`` (jsonb takes up to 256 MB): a loop
#: turn's records in one call, a long stall's or an import's in several.
PART_BYTES = 8 * 1024 * 1024

Waiting = list[tuple[dict[str, Any], "asyncio.Future[None]"]]


@dataclass
class Accounts:
    """Users, resume tokens and other cores' logged-in users, as read at start."""

    #: name -> argon2 hash
    users: dict[str, str] = field(default_factory=dict)
    #: token digest -> {"user", "pw", "used"}
    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: user -> ids of the other live cores they are logged in on
    presence: dict[str, set[int]] = field(default_factory=dict)


def message_from(raw: dict[str, Any]) -> dict[str, Any]:
    """A message from the database in the core's key order (jsonb keeps none)."""
    msg: dict[str, Any] = {"id": raw["id"], "from": raw["from"]}
    if raw.get("room") is None:
        msg["to"] = raw["to"]
    else:
        msg["room"] = raw["room"]
    msg["text"] = raw["text"]
    msg["ts"] = raw["ts"]
    if raw.get("client_msg_id") is not None:
        msg["client_msg_id"] = raw["client_msg_id"]
    return msg


class PgHistoryStore:
    """History in PostgreSQL: open with ``await PgHistoryStore.open(url)``."""

    #: A record is kept only once its future is done: the service applies a change
    #: after the commit, and not at all if it fails (``ChatService._commit_then``).
    commit_first = True
    #: Message ids are the database's (several cores share it): ``chat_apply`` numbers them.
    assigns_ids = True

    def __init__(self, url: str, *, connect_timeout: float = 10.0) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self._conn: asyncpg.Connection | None = None
        self._state: HistoryState | None = None
        self.accounts = Accounts()
        self._queue: Waiting = []
        self._writer: asyncio.Task[None] | None = None
        self._closed = False
        #: This core's number in ``cores`` (its boot); 0 for a tool (the import).
        self.core_id = 0
        #: The change position the loaded state reflects.
        self.position = 0
        #: Transactions of this core: each one records its number, so a commit whose
        #: answer was lost can be looked up (``_committed_anyway``).
        self._batches = 0
        self.feed: ChangeFeed | None = None

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        connect_timeout: float = 10.0,
        core: bool = True,
        users_file: Path | None = None,
        demo_users: bool = True,
    ) -> PgHistoryStore:
        """Connect, migrate, count this start (``boot``), register the core (``core``)
        and read the state. A database without users takes ``users_file``'s, or, when
        new, the demo users (``demo_users``)."""
        self = cls(url, connect_timeout=connect_timeout)
        conn = await self._connect()
        try:
            await migrate(conn)
            boot = await conn.fetchval(
                "UPDATE meta SET value = value + 1 WHERE key = 'boot' RETURNING value"
            )
            if core:
                self.core_id = boot
                await conn.execute(
                    "INSERT INTO cores (id, alive_until) "
                    "VALUES ($1, now() + make_interval(secs => $2))",
                    boot,
                    LEASE,
                )
                await self._seed_users(conn, users_file, demo_users)
            # One snapshot: the state and the position it reflects agree, so the feed
            # catches up from exactly there.
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                self._state = await self._read_state(conn, boot)
                self.accounts = await self._read_accounts(conn, self.core_id)
                self.position = await conn.fetchval("SELECT value FROM meta WHERE key = 'pos'")
        except BaseException as exc:
            await self._drop_connection()
            if isinstance(exc, (StoreError, StorageUnavailable)) or not isinstance(exc, Exception):
                raise
            raise StoreError(f"the database could not be prepared: {exc!r}") from None
        return self

    async def _seed_users(
        self, conn: asyncpg.Connection, users_file: Path | None, demo: bool
    ) -> None:
        """Once per database (``meta.seeded``): a users table emptied later by the CLI is
        not refilled from a stale file, and a start killed before seeding seeds next time."""
        if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM meta WHERE key = 'seeded')"):
            return
        if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM users)"):  # the import's
            await conn.execute("INSERT INTO meta VALUES ('seeded', 1) ON CONFLICT DO NOTHING")
            return
        from .tokens import TokenStore
        from .users import DEMO_USERS, HASHER, UserStore  # argon2: only when seeding

        hashes: dict[str, str] = {}
        tokens: dict[str, dict[str, object]] = {}
        if users_file is not None and users_file.exists():
            # The directory's accounts move in (a core that kept only its history here
            # before): nobody needs a new password, desktop clients resume.
            hashes = UserStore(users_file.parent, create_demo=False).hashes()
            tokens = TokenStore(users_file.parent).records()
            log.warning(
                "the database has no users: took the %d users and %d resume tokens of %s",
                len(hashes),
                len(tokens),
                users_file.parent,
            )
        elif demo:
            hashes = {name: HASHER.hash(pw) for name, pw in DEMO_USERS.items()}
            log.warning(
                "a new database: created the demo users %s with their KNOWN passwords; change "
                "them with 'python -m legacy_socket_server.users --database-url URL passwd "
                "Alice', or start with CHAT_DEMO_USERS=0 for no users",
                ", ".join(DEMO_USERS),
            )
        records = [{"op": "user", "name": n, "password_hash": h} for n, h in hashes.items()]
        records += [{"op": "token", "digest": d, **rec} for d, rec in tokens.items()]
        async with conn.transaction():  # all of them or none (then the next start)
            # Two cores starting together on a new database: the second waits, then finds
            # it done.
            await conn.execute("LOCK TABLE users IN EXCLUSIVE MODE")
            if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM meta WHERE key = 'seeded')"):
                return
            for part in _parts(records):
                await conn.execute(_APPLY, part, self.core_id, 0)
            await conn.execute("INSERT INTO meta VALUES ('seeded', 1)")

    async def _connect(self) -> asyncpg.Connection:
        try:
            # A database that hangs rather than goes away must not hold a write (and
            # every request queued behind it) for ever.
            conn = await asyncpg.connect(
                self.url, timeout=self.connect_timeout, command_timeout=COMMAND_TIMEOUT
            )
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            raise StorageUnavailable(f"cannot reach the database: {exc}") from None
        self._conn = conn
        return conn

    @staticmethod
    async def _read_state(conn: asyncpg.Connection, boot: int) -> HistoryState:
        state = HistoryState(boot=boot)
        rows = await conn.fetch(
            'SELECT id, sender AS "from", recipient AS "to", room, text, ts, client_msg_id '
            "FROM messages ORDER BY id"
        )
        state.messages = [message_from(r) for r in rows]
        state.next_id = await conn.fetchval("SELECT value FROM meta WHERE key = 'next_id'")
        for r in await conn.fetch("SELECT username, peer, up_to FROM read_markers"):
            state.markers.setdefault(r["username"], {})[r["peer"]] = r["up_to"]
        for r in await conn.fetch("SELECT name, private FROM rooms"):
            state.rooms[r["name"]] = {"private": r["private"], "members": set()}
        for r in await conn.fetch("SELECT room, username FROM memberships"):
            state.rooms[r["room"]]["members"].add(r["username"])
        for r in await conn.fetch("SELECT username, room, up_to FROM room_markers"):
            state.room_markers.setdefault(r["username"], {})[r["room"]] = r["up_to"]
        state.enrolled = {r["username"] for r in await conn.fetch("SELECT username FROM enrolled")}
        return state

    @staticmethod
    async def _read_accounts(conn: asyncpg.Connection, core_id: int) -> Accounts:
        accounts = Accounts()
        for r in await conn.fetch("SELECT name, password_hash FROM users"):
            accounts.users[r["name"]] = r["password_hash"]
        for r in await conn.fetch("SELECT digest, username, pw, used FROM tokens"):
            accounts.tokens[r["digest"]] = {"user": r["username"], "pw": r["pw"], "used": r["used"]}
        # Every row, lapsed lease or not: a core whose lease ran out while the database
        # was away may be alive still; if not, its reaping takes its users offline here too.
        rows = await conn.fetch("SELECT core, username FROM presence WHERE core <> $1", core_id)
        for r in rows:
            accounts.presence.setdefault(r["username"], set()).add(r["core"])
        return accounts

    # -- the file store's interface ----------------------------------------------------
    def load(self) -> HistoryState:
        if self._state is None:
            raise RuntimeError("open the store with 'await PgHistoryStore.open(url)'")
        return self._state

    def append(self, record: dict[str, Any]) -> asyncio.Future[None]:
        """Queue ``record``; the future completes when it is committed."""
        if self._closed:
            raise StorageUnavailable("the history store is closed")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((record, fut))
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_queued())
        return fut

    def needs_compaction(self) -> bool:
        return False  # the database keeps its own files

    def compact_in_background(self, snapshot: Any) -> bool:
        return False

    def compact_now(self, state: HistoryState) -> None:
        pass

    async def raise_boot(self, boot: int) -> None:
        """Make every later start's ``boot`` greater than ``boot`` (an imported history's)."""
        conn = self._conn if self._conn is not None else await self._connect()
        await conn.execute("UPDATE meta SET value = GREATEST(value, $1) WHERE key = 'boot'", boot)

    def start_feed(
        self,
        apply_remote: Callable[[list[dict[str, Any]]], None],
        *,
        on_reregistered: Callable[[], None] | None = None,
        on_lost: Callable[[str], None] | None = None,
    ) -> ChangeFeed:
        """Hear of other cores' changes from the loaded position on (a core's start)."""
        self.feed = ChangeFeed(
            self.url,
            self.core_id,
            self.position,
            apply_remote,
            connect_timeout=self.connect_timeout,
            on_reregistered=on_reregistered,
            on_lost=on_lost,
        )
        self.feed.start()
        return self.feed

    async def lookup_token(self, digest: str) -> dict[str, Any] | None:
        """A resume token's record as committed (perhaps by another core a moment ago)."""
        if self.feed is None:
            return None
        return await self.feed.lookup_token(digest)

    def close(self) -> None:
        """Take no more records (the service's shutdown); :meth:`aclose` disconnects."""
        self._closed = True

    async def aclose(self) -> None:
        """Let queued records commit (for at most a command's timeout), then disconnect;
        a core leaves ``cores`` (its users go offline everywhere at once)."""
        self._closed = True
        if self._writer is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._writer), COMMAND_TIMEOUT)
            except TimeoutError:
                self._writer.cancel()  # fails what is still queued: nothing was acknowledged
        if self.feed is not None:
            await self.feed.stop()
            self.feed = None
        if self.core_id:
            try:
                if self._conn is None or self._conn.is_closed():
                    await self._connect()
                assert self._conn is not None
                await self._conn.execute(
                    "UPDATE cores SET alive_until = now() WHERE id = $1", self.core_id
                )
                await self._conn.fetchval("SELECT chat_reap()")
            except Exception as exc:  # the lease runs out by itself
                log.warning("could not leave the database's cores: %r", exc)
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    # -- writing ------------------------------------------------------------------------
    async def _write_queued(self) -> None:
        batch: Waiting = []
        try:
            while self._queue:
                # What was appended during the last commit goes in the next one.
                batch, self._queue = self._queue, []
                records = [record for record, _ in batch]
                try:
                    positions, applied = await self._commit(records)
                except StorageUnavailable as exc:
                    log.error("%d change(s) not stored: %s", len(batch), exc)
                    _settle(batch, exc)
                else:
                    _annotate(records, applied)
                    if self.feed is not None:
                        await self.feed.own(positions, functools.partial(_settle, batch, None))
                    else:
                        _settle(batch, None)
                finally:
                    if self.feed is not None:
                        self.feed.writing_batch = None
                batch = []
        except BaseException:  # cancelled (the loop is going away): nobody waits for ever
            gone = StorageUnavailable("the history store stopped")
            _settle(batch, gone)
            _settle(self._queue, gone)
            self._queue = []
            raise
        finally:
            self._writer = None

    async def _commit(self, records: list[dict[str, Any]]) -> tuple[list[int], list[dict]]:
        """Commit ``records``; their change positions and the records as applied."""
        conn = self._conn
        # Never reused, even after a failure: a failed batch that did commit after all
        # must not make a later one look committed (``_committed_anyway``).
        number = self._batches = self._batches + 1
        if self.feed is not None:
            self.feed.writing_batch = number
        positions: list[int] = []
        applied: list[dict[str, Any]] = []
        try:
            if conn is None or conn.is_closed():
                conn = await self._connect()
            # BEGIN and COMMIT of their own, not one statement in autocommit: a statement
            # that timed out may still run when the database wakes up, and alone it would
            # then commit after we answered storage_unavailable; without our COMMIT it
            # cannot. Large batches (an import, a long stall) go in parts.
            async with conn.transaction():
                for part in _parts(records):
                    result = json.loads(await conn.fetchval(_APPLY, part, self.core_id, number))
                    positions.append(result["pos"])
                    applied.extend(result["records"])
            return positions, applied
        except StorageUnavailable:
            raise
        except asyncpg.PostgresError as exc:
            broken = conn is None or conn.is_closed()
            if not broken and not isinstance(exc, asyncpg.PostgresConnectionError):
                raise StorageUnavailable(f"the database refused the write: {exc}") from None
            error = f"{exc}"
        except Exception as exc:  # the connection broke (reset, closed, timed out): a new one
            error = f"{exc!r}"
        await self._drop_connection()
        found = await self._committed_anyway(number)
        if found is None:
            raise StorageUnavailable(f"the database did not take the write: {error}") from None
        return found

    async def _committed_anyway(self, number: int) -> tuple[list[int], list[dict]] | None:
        """Did this core's transaction ``number`` commit, though its answer was lost?"""
        try:
            conn = await self._connect()
            rows = await conn.fetch(
                "SELECT pos, records FROM changes WHERE core = $1 AND batch = $2 ORDER BY pos",
                self.core_id,
                number,
            )
        except Exception:
            await self._drop_connection()
            return None
        if not rows:
            return None
        applied = [r for row in rows for r in json.loads(row["records"])]
        return [row["pos"] for row in rows], applied

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()


def _annotate(records: list[dict[str, Any]], applied: list[dict[str, Any]]) -> None:
    """Write the database's decisions back into the records the service holds."""
    for record, done in zip(records, applied, strict=True):
        op = done.get("op")
        if op == "message":
            record["message"]["id"] = done["message"]["id"]
        elif op == "duplicate":
            record["duplicate"] = message_from(done["message"])
        elif done.get("conflict"):
            record["conflict"] = True


def _parts(records: list[dict[str, Any]]) -> Iterator[str]:
    """``records`` as JSON arrays of at most :data:`PART_BYTES` each (a larger record alone)."""
    part: list[bytes] = []
    size = 0
    for record in records:
        encoded = dumps(record)
        if part and size + len(encoded) > PART_BYTES:
            yield "[" + b",".join(part).decode() + "]"
            part, size = [], 0
        part.append(encoded)
        size += len(encoded) + 1
    if part:
        yield "[" + b",".join(part).decode() + "]"


def _settle(waiting: Waiting, error: Exception | None) -> None:
    for _, fut in waiting:
        if not fut.done():
            if error is None:
                fut.set_result(None)
            else:
                fut.set_exception(error)
