"""Chat history on PostgreSQL: the journal's records as rows (issue 14, first step).

The same interface as the file store (:class:`~legacy_socket_server.store.HistoryStore`):
:meth:`PgHistoryStore.load` hands the service its :class:`HistoryState` at start, and
:meth:`PgHistoryStore.append` takes the very records the file journal takes (``message``,
``read``, ``room``, ``member``) and returns a future that completes once they are
committed. Records appended in one loop turn share one transaction (group commit, as
``--fsync always`` shares one fsync), written by one connection in order, so commits
happen in the order of the records. Applying a record twice changes nothing (an existing
message id is kept, markers only move forward), as replaying the journal does.

While the database is unreachable every future fails with :class:`StorageUnavailable`
and the store reconnects by itself on the next write. The core uses it with
``--database-url`` (one core for now: docs/scaling.md says what remains).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import asyncpg

from .protocol import dumps
from .storage_files import StorageUnavailable, StoreError
from .store import HistoryState

log = logging.getLogger(__name__)

#: Schema changes in order; ``schema_version`` holds how many have run. A hand-kept
#: list rather than a migration tool: the schema is small and owned by this one
#: program, and each step runs in the transaction that records it.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (key text PRIMARY KEY, value bigint NOT NULL);
    INSERT INTO meta VALUES ('boot', 0);
    CREATE TABLE messages (
        id bigint PRIMARY KEY,
        sender text NOT NULL,
        recipient text,
        room text,
        text text NOT NULL,
        ts text NOT NULL,
        client_msg_id text,
        CHECK ((recipient IS NULL) <> (room IS NULL))
    );
    CREATE INDEX messages_room ON messages (room, id) WHERE room IS NOT NULL;
    CREATE INDEX messages_pair
        ON messages (LEAST(sender, recipient), GREATEST(sender, recipient), id)
        WHERE recipient IS NOT NULL;
    CREATE TABLE read_markers (
        username text, peer text, up_to bigint NOT NULL, PRIMARY KEY (username, peer)
    );
    CREATE TABLE rooms (name text PRIMARY KEY, private boolean NOT NULL);
    CREATE TABLE memberships (
        room text REFERENCES rooms ON DELETE CASCADE, username text,
        PRIMARY KEY (room, username)
    );
    CREATE TABLE room_markers (
        username text, room text, up_to bigint NOT NULL, PRIMARY KEY (username, room)
    );
    CREATE TABLE enrolled (username text PRIMARY KEY);
    """,
    # One statement per transaction: the records of a loop turn go in as one JSON array
    # and are applied here, as the file journal's replay applies them (a membership of
    # an unknown room is ignored, markers only move forward), except that a message id
    # already stored fails the write: ids are the core's, a collision is a bug.
    """
    CREATE FUNCTION chat_apply(records jsonb, batch bigint) RETURNS void
    LANGUAGE plpgsql AS $$
    DECLARE
        r jsonb;
        m jsonb;
        added int;
    BEGIN
        FOR r IN SELECT value FROM jsonb_array_elements(records) LOOP
            CASE r->>'op'
            WHEN 'message' THEN
                m := r->'message';
                INSERT INTO messages (id, sender, recipient, room, text, ts, client_msg_id)
                VALUES ((m->>'id')::bigint, m->>'from', m->>'to', m->>'room', m->>'text',
                        m->>'ts', m->>'client_msg_id')
                ON CONFLICT (id) DO NOTHING;
                GET DIAGNOSTICS added = ROW_COUNT;
                IF added = 0 THEN
                    RAISE EXCEPTION 'message id % is stored already', m->>'id';
                END IF;
            WHEN 'read' THEN
                IF r ? 'room' THEN
                    INSERT INTO room_markers AS t
                    VALUES (r->>'user', r->>'room', (r->>'up_to')::bigint)
                    ON CONFLICT (username, room)
                    DO UPDATE SET up_to = GREATEST(t.up_to, EXCLUDED.up_to);
                ELSE
                    INSERT INTO read_markers AS t
                    VALUES (r->>'user', r->>'with', (r->>'up_to')::bigint)
                    ON CONFLICT (username, peer)
                    DO UPDATE SET up_to = GREATEST(t.up_to, EXCLUDED.up_to);
                END IF;
            WHEN 'room' THEN
                INSERT INTO rooms VALUES (r->>'room', (r->>'private')::boolean)
                ON CONFLICT DO NOTHING;
            WHEN 'member' THEN
                IF EXISTS (SELECT 1 FROM rooms WHERE name = r->>'room') THEN
                    INSERT INTO enrolled VALUES (r->>'user') ON CONFLICT DO NOTHING;
                    IF (r->>'joined')::boolean THEN
                        INSERT INTO memberships VALUES (r->>'room', r->>'user')
                        ON CONFLICT DO NOTHING;
                        INSERT INTO room_markers AS t
                        VALUES (r->>'user', r->>'room', COALESCE((r->>'marker')::bigint, 0))
                        ON CONFLICT (username, room)
                        DO UPDATE SET up_to = GREATEST(t.up_to, EXCLUDED.up_to);
                    ELSE
                        DELETE FROM memberships WHERE room = r->>'room' AND username = r->>'user';
                    END IF;
                END IF;
            ELSE
                NULL;  -- ``boot`` and anything unknown: no row (boot is counted at open)
            END CASE;
        END LOOP;
        UPDATE meta SET value = batch WHERE key = 'batch';
    END
    $$;
    """,
)

#: Seconds a statement may take before the write fails (``storage_unavailable``).
COMMAND_TIMEOUT = 10.0

#: The session-level advisory lock a core holds on its database (see ``_connect``).
_ONE_CORE_LOCK = 7_277_021

_APPLY = "SELECT chat_apply($1::jsonb, $2)"
#: At most this much JSON per call of ``chat_apply`` (jsonb takes up to 256 MB): a loop
#: turn's records in one call, a long stall's or an import's in several.
PART_BYTES = 8 * 1024 * 1024


async def migrate(conn: asyncpg.Connection) -> int:
    """Bring the schema up to date; return its version. Refuses a newer schema."""
    async with conn.transaction():
        # One core migrates at a time; the others wait here, then find nothing to do.
        await conn.execute("SELECT pg_advisory_xact_lock(4711)")
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version int NOT NULL)")
        version = await conn.fetchval("SELECT max(version) FROM schema_version") or 0
        if version > len(MIGRATIONS):
            raise StoreError(
                f"the database's schema is version {version}, newer than this program "
                f"knows ({len(MIGRATIONS)}): run the newer version of the core"
            )
        for step in range(version, len(MIGRATIONS)):
            await conn.execute(MIGRATIONS[step])
            await conn.execute("INSERT INTO schema_version VALUES ($1)", step + 1)
            log.info("database schema migrated to version %d", step + 1)
    return len(MIGRATIONS)


class PgHistoryStore:
    """History in PostgreSQL: open with ``await PgHistoryStore.open(url)``."""

    #: A record is kept only once its future is done: the service applies a change
    #: after the commit, and not at all if it fails (``ChatService._commit_then``).
    commit_first = True

    def __init__(self, url: str, *, connect_timeout: float = 10.0) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self._conn: asyncpg.Connection | None = None
        self._state: HistoryState | None = None
        self._queue: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._closed = False
        #: Transactions committed: each one writes its number, so a commit whose
        #: answer was lost can be looked up (``_committed_anyway``).
        self._batches = 0

    @classmethod
    async def open(cls, url: str, *, connect_timeout: float = 10.0) -> PgHistoryStore:
        """Connect, migrate, count this start (``boot``) and read the history."""
        self = cls(url, connect_timeout=connect_timeout)
        conn = await self._connect()
        try:
            await migrate(conn)
            async with conn.transaction():
                boot = await conn.fetchval(
                    "UPDATE meta SET value = value + 1 WHERE key = 'boot' RETURNING value"
                )
                self._state = await self._read_state(conn, boot)
                await conn.execute("INSERT INTO meta VALUES ('batch', 0) ON CONFLICT DO NOTHING")
                self._batches = await conn.fetchval("SELECT value FROM meta WHERE key = 'batch'")
        except BaseException as exc:
            await self._drop_connection()  # and with it the one-core lock
            if isinstance(exc, (StoreError, StorageUnavailable)) or not isinstance(exc, Exception):
                raise
            raise StoreError(f"the database could not be prepared: {exc!r}") from None
        return self

    async def _connect(self) -> asyncpg.Connection:
        try:
            # A database that hangs rather than goes away must not hold a write (and
            # every request queued behind it) for ever.
            conn = await asyncpg.connect(
                self.url, timeout=self.connect_timeout, command_timeout=COMMAND_TIMEOUT
            )
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            raise StorageUnavailable(f"cannot reach the database: {exc}") from None
        # One core per database for now: it numbers the messages itself, so a second
        # one would reuse its ids. The lock lives as long as this connection.
        try:
            locked = await conn.fetchval("SELECT pg_try_advisory_lock($1)", _ONE_CORE_LOCK)
        except Exception as exc:
            conn.terminate()
            raise StorageUnavailable(f"cannot reach the database: {exc!r}") from None
        if not locked:
            await conn.close()
            raise StorageUnavailable(
                "another core uses this database (one core per database for now)"
            )
        self._conn = conn
        return conn

    @staticmethod
    async def _read_state(conn: asyncpg.Connection, boot: int) -> HistoryState:
        state = HistoryState(boot=boot)
        rows = await conn.fetch(
            "SELECT id, sender, recipient, room, text, ts, client_msg_id FROM messages ORDER BY id"
        )
        for r in rows:
            msg: dict[str, Any] = {"id": r["id"], "from": r["sender"]}
            if r["room"] is None:
                msg["to"] = r["recipient"]
            else:
                msg["room"] = r["room"]
            msg["text"] = r["text"]
            msg["ts"] = r["ts"]
            if r["client_msg_id"] is not None:
                msg["client_msg_id"] = r["client_msg_id"]
            state.messages.append(msg)
        state.next_id = state.messages[-1]["id"] + 1 if state.messages else 1
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

    def close(self) -> None:
        """Take no more records (the service's shutdown); :meth:`aclose` disconnects."""
        self._closed = True

    async def aclose(self) -> None:
        """Let queued records commit (for at most a command's timeout), then disconnect."""
        self._closed = True
        if self._writer is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._writer), COMMAND_TIMEOUT)
            except TimeoutError:
                self._writer.cancel()  # fails what is still queued: nothing was acknowledged
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    # -- writing ------------------------------------------------------------------------
    async def _write_queued(self) -> None:
        batch: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        try:
            while self._queue:
                # What was appended during the last commit goes in the next one.
                batch, self._queue = self._queue, []
                try:
                    await self._commit([record for record, _ in batch])
                except StorageUnavailable as exc:
                    log.error("%d change(s) not stored: %s", len(batch), exc)
                    _settle(batch, exc)
                else:
                    _settle(batch, None)
                batch = []
        except BaseException:  # cancelled (the loop is going away): nobody waits for ever
            gone = StorageUnavailable("the history store stopped")
            _settle(batch, gone)
            _settle(self._queue, gone)
            self._queue = []
            raise
        finally:
            self._writer = None

    async def _commit(self, records: list[dict[str, Any]]) -> None:
        conn = self._conn
        # Never reused, even after a failure: a failed batch that did commit after all
        # must not make a later one look committed (``_committed_anyway``).
        number = self._batches = self._batches + 1
        try:
            if conn is None or conn.is_closed():
                conn = await self._connect()
            # BEGIN and COMMIT of their own, not one statement in autocommit: a statement
            # that timed out may still run when the database wakes up, and alone it would
            # then commit after we answered storage_unavailable; without our COMMIT it
            # cannot. Large batches (an import, a long stall) go in parts.
            async with conn.transaction():
                for part in _parts(records):
                    await conn.execute(_APPLY, part, number)
        except StorageUnavailable:
            raise
        except asyncpg.PostgresError as exc:
            broken = conn is None or conn.is_closed()
            if not broken and not isinstance(exc, asyncpg.PostgresConnectionError):
                raise StorageUnavailable(f"the database refused the write: {exc}") from None
            await self._drop_connection()
            if not await self._committed_anyway(number):
                raise StorageUnavailable(f"the database did not take the write: {exc}") from None
        except Exception as exc:  # the connection broke (reset, closed, timed out): a new one
            await self._drop_connection()
            if not await self._committed_anyway(number):
                raise StorageUnavailable(f"the database did not take the write: {exc!r}") from None

    async def _committed_anyway(self, number: int) -> bool:
        """Did the transaction ``number`` commit, though its answer was lost? (One core
        writes to the database, so the counter is only ever ours.)"""
        try:
            conn = await self._connect()
            done = await conn.fetchval("SELECT value FROM meta WHERE key = 'batch'")
        except Exception:
            await self._drop_connection()
            return False
        return done == number

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()


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


def _settle(
    waiting: list[tuple[dict[str, Any], asyncio.Future[None]]], error: Exception | None
) -> None:
    for _, fut in waiting:
        if not fut.done():
            if error is None:
                fut.set_result(None)
            else:
                fut.set_exception(error)
