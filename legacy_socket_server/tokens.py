"""Resume tokens, kept hashed in ``tokens.json`` + ``tokens.journal``.

A token lets a new connection of the same user ``resume`` without the
password (the desktop client and the gateway use it to reconnect, also after
a restart). Only SHA-256 digests are stored, so a copy of the file cannot be
replayed. A token ends on ``exit``, when the password changes (each record
keeps a fingerprint of the password hash it was issued under) and after
:data:`TOKEN_TTL` unused.

Each change is one appended journal line (``{"+": digest, "r": record}`` or
``{"-": digest}``), so a login, a resume or a logout costs one small write
whatever the number of tokens; rewriting the whole file per change made a
storm of N logins (or a web app logging out N sessions) O(N^2). The snapshot is
rewritten, and the journal emptied, when the journal outgrows it and at a clean
shutdown. A torn last line (a crash mid-write) is ignored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import time
from pathlib import Path
from typing import BinaryIO

from .storage_files import StoreError, atomic_write, load_json_file

log = logging.getLogger(__name__)

TOKENS_FILE = "tokens.json"
TOKENS_JOURNAL = "tokens.journal"
#: Rewrite the snapshot once the journal holds this many lines and more lines
#: than there are tokens: amortised O(1) per change.
COMPACT_MIN_LINES = 1024
#: Expiry scans every record; once a minute is plenty for a 7-day TTL.
EXPIRE_EVERY = 60.0
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
        self.journal_path = Path(data_dir) / TOKENS_JOURNAL
        self._fsync = fsync
        # digest -> {"user": name, "pw": fingerprint, "used": unix time}
        self._records: dict[str, dict[str, object]] = {}
        self._lines = 0
        self._journal: BinaryIO | None = None
        try:
            self._records = self._load()
        except StoreError as exc:
            # Tokens only spare people a password prompt after a reconnect;
            # a damaged file must not keep the whole chat down. Keep it aside.
            stamp = int(time.time())
            for path in (self.path, self.journal_path):
                if path.exists():
                    path.rename(path.with_name(f"{path.name}.corrupt-{stamp}"))
            log.error("%s; set the token files aside: everyone logs in again once", exc)
            self._records = {}
        self._last_expire = 0.0
        self._expire(time.time())
        if self.journal_path.exists():
            self._compact()  # start from one clean snapshot and an empty journal

    def _load(self) -> dict[str, dict[str, object]]:
        records: dict[str, dict[str, object]] = {}
        if self.path.exists():
            raw = load_json_file(self.path)
            if not isinstance(raw, dict) or not all(_is_record(r) for r in raw.values()):
                raise StoreError(f"{self.path}: not an object of token records")
            records = raw
        if self.journal_path.exists():
            lines = self.journal_path.read_bytes().split(b"\n")
            for n, line in enumerate(lines, 1):
                if not line:
                    continue
                try:
                    op = json.loads(line)
                    if "+" in op and _is_record(op["r"]):
                        records[str(op["+"])] = op["r"]
                    elif "-" in op:
                        records.pop(str(op["-"]), None)
                    else:
                        raise ValueError("unknown operation")
                except (ValueError, TypeError, KeyError) as exc:
                    if n == len(lines):  # torn by a crash mid-write: never acknowledged
                        break
                    raise StoreError(f"{self.journal_path} line {n}: {exc}") from None
        return records

    def _expire(self, now: float) -> None:
        if now - self._last_expire < EXPIRE_EVERY:
            return
        self._last_expire = now
        old = [d for d, r in self._records.items() if now - float(r.get("used", 0)) > TOKEN_TTL]  # type: ignore[arg-type]
        for d in old:
            self._write({"-": d})

    def _write(self, op: dict[str, object]) -> None:
        """Apply one change in memory and append it to the journal."""
        if "+" in op:
            self._records[str(op["+"])] = op["r"]  # type: ignore[assignment]
        else:
            self._records.pop(str(op["-"]), None)
        try:
            if self._journal is None:
                self._journal = open(self.journal_path, "ab")  # noqa: SIM115 - kept open
            self._journal.write(json.dumps(op).encode() + b"\n")
            self._journal.flush()
            if self._fsync:
                os.fsync(self._journal.fileno())
        except OSError as exc:
            # Tokens are a convenience: if they cannot be saved, resume after a
            # restart fails and the user logs in again. Chat keeps working.
            log.error("cannot write %s: %s", self.journal_path, exc)
            self._close_journal()
            return
        self._lines += 1
        if self._lines >= COMPACT_MIN_LINES and self._lines > len(self._records):
            self._compact()

    def _compact(self) -> None:
        """Snapshot every record, then empty the journal (a crash between is harmless:
        replaying the journal onto the new snapshot gives the same records)."""
        try:
            atomic_write(self.path, json.dumps(self._records).encode(), fsync=self._fsync)
            self._close_journal()
            self.journal_path.unlink(missing_ok=True)
            self._lines = 0
        except OSError as exc:
            log.error("cannot save %s: %s", self.path, exc)

    def _close_journal(self) -> None:
        if self._journal is not None:
            try:
                self._journal.close()
            except OSError:
                pass
            self._journal = None

    def close(self) -> None:
        self._compact()
        self._close_journal()

    def records(self) -> dict[str, dict[str, object]]:
        """Every live token's record by digest (the import into PostgreSQL copies them)."""
        return dict(self._records)

    def issue(self, username: str, pw_fingerprint: str) -> str:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        now = time.time()
        self._expire(now)
        self._write(
            {"+": _digest(token), "r": {"user": username, "pw": pw_fingerprint, "used": now}}
        )
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
            self._write({"-": digest})
            return None
        if now - float(rec["used"]) > USE_PERSIST_SLACK:  # type: ignore[arg-type]
            # Expiry only needs the last use to within a day: most resumes write nothing.
            self._write({"+": digest, "r": {**rec, "used": now}})
        return user

    def touch(self, token: str) -> None:
        """Note a use (a session ending): keeps long-lived sessions' tokens alive."""
        digest = _digest(token)
        rec = self._records.get(digest)
        now = time.time()
        if rec is not None and now - float(rec["used"]) > USE_PERSIST_SLACK:  # type: ignore[arg-type]
            self._write({"+": digest, "r": {**rec, "used": now}})

    def revoke(self, token: str) -> None:
        digest = _digest(token)
        if digest in self._records:
            self._write({"-": digest})


def _is_record(r: object) -> bool:
    return isinstance(r, dict) and {"user", "pw", "used"} <= r.keys()
