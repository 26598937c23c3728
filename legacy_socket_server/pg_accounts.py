"""Users and resume tokens when they live in PostgreSQL (``--database-url``).

The service asks about users and tokens synchronously, many times per second, so each
core keeps them in memory as with files: loaded at start, changed by its own writes
(records through the store, like any other change) and by other cores' changes as the
feed hands them on. A resume with a token this core has not heard of yet (issued a
moment ago on another core) is looked up in the database before it is refused.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import Callable
from typing import Any

from .session import ChatError
from .storage_files import StorageUnavailable
from .tokens import TOKEN_BYTES, TokenStore, _digest
from .users import UserStore

log = logging.getLogger(__name__)

#: What ``secrets.token_urlsafe(TOKEN_BYTES)`` makes: 43 URL-safe characters.
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{%d}" % len(secrets.token_urlsafe(TOKEN_BYTES)))
#: Database lookups of unknown tokens in flight at once, per core.
MAX_LOOKUPS = 16


class PgUserStore(UserStore):
    """The users of the database: the queries of :class:`UserStore`, no file."""

    def __init__(self, hashes: dict[str, str]) -> None:
        self.on_change: Callable[[], None] | None = None
        self._set(hashes)

    def _set(self, hashes: dict[str, str]) -> None:
        self._hashes = hashes
        self._lower = {n.lower(): n for n in sorted(hashes, reverse=True)}

    def reload(self) -> None:
        pass  # changes arrive through the feed (:meth:`apply`)

    def refresh(self) -> bool:
        return False

    def apply(self, record: dict[str, Any]) -> None:
        """A ``user`` change (the users CLI): added, new password, or removed (no hash)."""
        hashes = dict(self._hashes)
        if record.get("password_hash") is None:
            hashes.pop(record["name"], None)
        else:
            hashes[record["name"]] = record["password_hash"]
        self._set(hashes)
        if self.on_change is not None:
            self.on_change()


class PgTokenStore(TokenStore):
    """Resume tokens in the database: the rules of :class:`TokenStore`, no files."""

    def __init__(
        self,
        records: dict[str, dict[str, Any]],
        append: Callable[[dict[str, Any]], asyncio.Future[None]],
        lookup: Callable[[str], Any] | None = None,
    ) -> None:
        self._records = records  # type: ignore[assignment]
        self._append = append
        self._lookup = lookup
        self._lookups = 0
        self._revoking: set[str] = set()
        self._last_expire = 0.0

    def _write(self, op: dict[str, object]) -> None:
        """Apply one change in memory and commit it (a failure is logged: tokens only
        spare a password prompt, chat goes on)."""
        if "+" in op:
            digest, rec = str(op["+"]), op["r"]
            known = digest in self._records
            self._records[digest] = rec  # type: ignore[assignment]
            if known:  # a use noted: never brings back a token revoked on another core
                record = {"op": "token_used", "digest": digest, "used": rec["used"]}  # type: ignore[index]
            else:
                record = {"op": "token", "digest": digest, **rec}  # type: ignore[dict-item]
        else:
            digest = str(op["-"])
            self._records.pop(digest, None)
            record = {"op": "untoken", "digest": digest}
            # Until the revocation commits, the database still has the row: a resume
            # meanwhile must not find it there (``find``).
            self._revoking.add(digest)
        try:
            pending = self._append(record)
        except StorageUnavailable as exc:
            log.error("a resume token was not stored: %s", exc)
            return
        pending.add_done_callback(_log_failure)
        if record["op"] == "untoken":
            pending.add_done_callback(lambda _: self._revoking.discard(digest))

    def _compact(self) -> None:
        pass

    def close(self) -> None:
        pass

    def apply(self, record: dict[str, Any]) -> None:
        """Another core's ``token``, ``token_used`` or ``untoken`` change."""
        if record["op"] == "token_used":
            rec = self._records.get(record["digest"])
            if rec is not None:
                rec["used"] = max(float(rec["used"]), float(record["used"]))
        elif record["op"] == "token":
            self._records[record["digest"]] = {
                "user": record["user"],
                "pw": record["pw"],
                "used": record["used"],
            }
        else:
            self._records.pop(record["digest"], None)

    async def find(self, token: str) -> bool:
        """Look ``token`` up in the database (issued on another core a moment ago);
        True if it was found and is now known here. Only what could be a token is
        looked up, and only so many at once: made-up tokens must not queue up queries
        on the connection the change feed needs."""
        if self._lookup is None or not _TOKEN_SHAPE.fullmatch(token):
            return False
        if self._lookups >= MAX_LOOKUPS:
            raise ChatError("rate_limited", "the server is busy; try again in a moment")
        self._lookups += 1
        digest = _digest(token)
        if digest in self._revoking:
            return False
        try:
            rec = await self._lookup(digest)
        finally:
            self._lookups -= 1
        if rec is None or digest in self._revoking:
            return False
        self._records.setdefault(digest, rec)
        return True


def _log_failure(f: asyncio.Future[None]) -> None:
    if not f.cancelled() and f.exception() is not None:
        log.error("a resume token change was not stored: %s", f.exception())
