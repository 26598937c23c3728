"""Resume tokens, kept hashed in ``tokens.json`` in the data directory.

A token lets a new connection of the same user ``resume`` without the
password (the desktop client and the gateway use it to reconnect, also after
a restart). Only SHA-256 digests are stored, so a copy of the file cannot be
replayed. A token ends on ``exit``, when the password changes (each record
keeps a fingerprint of the password hash it was issued under) and after
:data:`TOKEN_TTL` unused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from pathlib import Path

from .storage_files import StoreError, atomic_write, load_json_file

log = logging.getLogger(__name__)

TOKENS_FILE = "tokens.json"
#: Tokens unused for a week end: long enough for a laptop closed over a weekend.
TOKEN_TTL = 7 * 24 * 3600.0
#: How stale the recorded last use may be before a resume rewrites the file.
USE_PERSIST_SLACK = 24 * 3600.0
#: 32 random bytes: 256 bits, far past the protocol's 128-bit floor.
TOKEN_BYTES = 32


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class TokenStore:
    def __init__(self, data_dir: Path, *, fsync: bool = False) -> None:
        self.path = Path(data_dir) / TOKENS_FILE
        self._fsync = fsync
        # digest -> {"user": name, "pw": fingerprint, "used": unix time}
        self._records: dict[str, dict[str, object]] = {}
        if self.path.exists():
            try:
                self._records = self._load()
            except StoreError as exc:
                # Tokens only spare people a password prompt after a reconnect;
                # a damaged file must not keep the whole chat down. Keep it aside.
                aside = self.path.with_name(f"{TOKENS_FILE}.corrupt-{int(time.time())}")
                self.path.rename(aside)
                log.error("%s; moved it to %s: everyone logs in again once", exc, aside.name)
        self._expire(time.time())

    def _load(self) -> dict[str, dict[str, object]]:
        raw = load_json_file(self.path)
        if not isinstance(raw, dict) or not all(
            isinstance(r, dict) and {"user", "pw", "used"} <= r.keys() for r in raw.values()
        ):
            raise StoreError(f"{self.path}: not an object of token records")
        return raw

    def _expire(self, now: float) -> bool:
        old = [d for d, r in self._records.items() if now - float(r.get("used", 0)) > TOKEN_TTL]  # type: ignore[arg-type]
        for d in old:
            del self._records[d]
        return bool(old)

    def _save(self) -> None:
        try:
            atomic_write(self.path, json.dumps(self._records).encode(), fsync=self._fsync)
        except OSError as exc:
            # Tokens are a convenience: if they cannot be saved, resume after a
            # restart fails and the user logs in again. Chat keeps working.
            log.error("cannot save %s: %s", self.path, exc)

    def issue(self, username: str, pw_fingerprint: str) -> str:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        now = time.time()
        self._expire(now)
        self._records[_digest(token)] = {"user": username, "pw": pw_fingerprint, "used": now}
        self._save()
        return token

    def check(self, token: str, current_fingerprint: object) -> str | None:
        """Return the token's user if it is still valid (and mark it used)."""
        digest = _digest(token)
        rec = self._records.get(digest)
        now = time.time()
        if rec is None:
            return None
        user = str(rec["user"])
        if now - float(rec["used"]) > TOKEN_TTL or rec["pw"] != current_fingerprint(user):  # type: ignore[operator,arg-type]
            del self._records[digest]
            self._save()
            return None
        if now - float(rec["used"]) > USE_PERSIST_SLACK:  # type: ignore[arg-type]
            # Rewriting the file on every resume would make a reconnect storm
            # O(tokens^2); expiry only needs the last use to within a day.
            rec["used"] = now
            self._save()
        return user

    def touch(self, token: str) -> None:
        """Note a use (a session ending): keeps long-lived sessions' tokens alive."""
        rec = self._records.get(_digest(token))
        now = time.time()
        if rec is not None and now - float(rec["used"]) > USE_PERSIST_SLACK:  # type: ignore[arg-type]
            rec["used"] = now
            self._save()

    def revoke(self, token: str) -> None:
        if self._records.pop(_digest(token), None) is not None:
            self._save()
