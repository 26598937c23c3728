"""Browser sessions kept in PostgreSQL, where every web app can read them (issue 14).

With ``--database-url`` a web app writes one row per browser session it logs in, so
another web app that gets a request with that cookie (after a failover, or from a
balancer without affinity) can resume the session on the core instead of sending the
browser to the login page. The table is the web app's own (``web_sessions``), created
idempotently at start; the core's tables are not touched.

What a row holds, and why nothing in it logs anyone in by itself:

- ``key``: SHA-256 of the session id. The cookie itself is never stored, so a copy of
  the table (a backup, a read-only account) does not hand out cookies.
- ``token``: the core resume token, sealed with AES-256-GCM under a key derived from
  the session id. Only a request that carries the cookie can open it: a copy of the
  table alone cannot resume anybody. (The password is never known here at all.)
- ``username``, ``created``, ``last_seen``: for operators, and for pruning rows unused
  for as long as the core keeps a token (7 days).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, NamedTuple, TypeVar

import asyncpg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from legacy_socket_server.tokens import TOKEN_TTL

log = logging.getLogger(__name__)

#: Seconds to connect, and for any one statement: a database that hangs fails the
#: request clearly (503) instead of holding it.
DB_TIMEOUT = 5.0
#: Connections one web app keeps: lookups are one indexed row each.
POOL_SIZE = 4
#: Transaction-level advisory lock held while creating the table, so two web apps
#: starting together do not race ``CREATE TABLE IF NOT EXISTS`` (which can fail on a
#: duplicate type name when two run at once).
_SCHEMA_LOCK = 7_277_022
#: Keeps the sealing key apart from the row key, though both come from the session id.
_SEAL_LABEL = b"teamchat web session token\x00"
_NONCE_BYTES = 12

SCHEMA = """
CREATE TABLE IF NOT EXISTS web_sessions (
    key bytea PRIMARY KEY,
    username text NOT NULL,
    token bytea NOT NULL,
    created timestamptz NOT NULL DEFAULT now(),
    last_seen timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS web_sessions_last_seen ON web_sessions (last_seen);
"""

T = TypeVar("T")


class SessionStoreUnavailable(Exception):
    """PostgreSQL cannot be reached (or answered an error): the request gets a 503."""


class StoredSession(NamedTuple):
    username: str
    token: str


def row_key(sid: str) -> bytes:
    """The row's key: SHA-256 of the session id (the cookie's value)."""
    return hashlib.sha256(sid.encode()).digest()


def seal(sid: str, token: str) -> bytes:
    """``token`` encrypted under a key only the cookie ``sid`` gives (nonce + ciphertext)."""
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + AESGCM(_seal_key(sid)).encrypt(nonce, token.encode(), row_key(sid))


def unseal(sid: str, sealed: bytes) -> str | None:
    """The token sealed by :func:`seal` for ``sid``; None if it does not open."""
    try:
        plain = AESGCM(_seal_key(sid)).decrypt(
            sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], row_key(sid)
        )
    except (InvalidTag, ValueError):
        return None
    return plain.decode()


def _seal_key(sid: str) -> bytes:
    return hashlib.sha256(_SEAL_LABEL + sid.encode()).digest()


class SessionStore:
    """The ``web_sessions`` table: open with ``await SessionStore.open(url)``."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, url: str) -> SessionStore:
        """Connect and create the table if needed; raise :class:`SessionStoreUnavailable`."""
        try:
            pool = await asyncpg.create_pool(
                url,
                min_size=0,
                max_size=POOL_SIZE,
                timeout=DB_TIMEOUT,
                command_timeout=DB_TIMEOUT,
            )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise SessionStoreUnavailable(f"cannot reach the database: {exc}") from None
        self = cls(pool)
        try:
            await self._run(_create_schema)
        except BaseException:
            await pool.close()
            raise
        return self

    async def close(self) -> None:
        await self._pool.close()

    async def _run(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """``op`` on a pooled connection, once more on a fresh one if the first broke.

        After PostgreSQL restarts, every pooled connection is dead but only says so when
        used: the retry makes the first request after an outage succeed, not fail.
        """
        for attempt in (1, 2):
            try:
                async with self._pool.acquire(timeout=DB_TIMEOUT) as conn:
                    return await op(conn)
            except TimeoutError:
                raise SessionStoreUnavailable("the database did not answer in time") from None
            except (
                OSError,
                asyncpg.PostgresConnectionError,
                asyncpg.InterfaceError,
                asyncpg.exceptions.OperatorInterventionError,
            ) as exc:
                if attempt == 2:
                    raise SessionStoreUnavailable(f"cannot reach the database: {exc}") from None
            except asyncpg.PostgresError as exc:
                raise SessionStoreUnavailable(f"the database refused: {exc}") from None
        raise AssertionError("unreachable")

    async def save(self, sid: str, username: str, token: str) -> None:
        """Write the session's row (a login, or a token the core replaced)."""
        sealed = seal(sid, token)
        await self._run(
            lambda conn: conn.execute(
                "INSERT INTO web_sessions (key, username, token) VALUES ($1, $2, $3) "
                "ON CONFLICT (key) DO UPDATE SET username = $2, token = $3, last_seen = now()",
                row_key(sid),
                username,
                sealed,
            )
        )

    async def load(self, sid: str) -> StoredSession | None:
        """The session of cookie ``sid``, or None (never written, ended, or pruned)."""
        row = await self._run(
            lambda conn: conn.fetchrow(
                "SELECT username, token FROM web_sessions WHERE key = $1", row_key(sid)
            )
        )
        if row is None:
            return None
        token = unseal(sid, row["token"])
        if token is None:  # not sealed for this cookie: as good as absent
            log.warning("a browser session row does not open with its cookie; ignored")
            return None
        return StoredSession(row["username"], token)

    async def delete(self, sid: str) -> None:
        """Forget the session everywhere (logout, or the core refused its token)."""
        await self._run(lambda conn: conn.execute(_DELETE, row_key(sid)))

    async def refresh(self, keys: Iterable[bytes]) -> set[bytes]:
        """Mark these rows used now, in one statement; return the keys that still exist."""
        keys = list(keys)
        if not keys:
            return set()
        rows = await self._run(lambda conn: conn.fetch(_REFRESH, keys))
        return {bytes(r["key"]) for r in rows}

    async def prune(self, older_than: float = TOKEN_TTL) -> int:
        """Delete rows unused for ``older_than`` seconds (their core tokens have expired)."""
        status = await self._run(lambda conn: conn.execute(_PRUNE, older_than))
        return int(status.split()[-1])

    async def count(self) -> int:
        """Rows in the table (for tests and operators)."""
        return await self._run(lambda conn: conn.fetchval("SELECT count(*) FROM web_sessions"))


_DELETE = "DELETE FROM web_sessions WHERE key = $1"
_REFRESH = "UPDATE web_sessions SET last_seen = now() WHERE key = ANY($1::bytea[]) RETURNING key"
_PRUNE = "DELETE FROM web_sessions WHERE last_seen < now() - make_interval(secs => $1)"


async def _create_schema(conn: asyncpg.Connection) -> Any:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
        await conn.execute(SCHEMA)
