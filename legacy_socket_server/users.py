"""``users.json``: registered users with argon2id password hashes, and its CLI.

File format (an object keyed by user name)::

    {"Alice": {"password_hash": "$argon2id$v=19$m=19456,t=2,p=1$..."}}

An entry written by hand as ``"Bob": "secret"`` or ``"Bob": {"password": "secret"}``
is hashed at startup and the file rewritten atomically; plaintext never stays on disk.

CLI: ``python -m legacy_socket_server.users [--data-dir DIR] add|passwd|remove|list NAME``
(default ``data/``, created from the repository's seed files on first use).
The running server notices the change (it re-reads the file when its inode, size or mtime moves).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from .datadir import prepare as prepare_data_dir
from .settings import DEFAULT_DATA_DIR, SettingsParser, add_database_url, boolean, run
from .storage_files import StorageUnavailable, StoreError, atomic_write, load_json_file

log = logging.getLogger(__name__)

#: OWASP's recommended argon2id parameters (m=19 MiB, t=2, p=1). One verify
#: costs ~40 ms of CPU on the event loop: the bounded, measured price of a login.
HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)

DEMO_USERS = {"Alice": "123", "Bob": "456", "Charlie": "789"}

#: Names show up in lists and file names; keep them printable and short.
USERNAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,32}$")

USERS_FILE = "users.json"

# Verified against unknown names so a miss costs as much as a wrong password.
_DUMMY_HASH = HASHER.hash("not a real password")


def fingerprint(password_hash: str) -> str:
    """A short digest of a hash: tokens remember it, so a new password ends them."""
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


def _stamp(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class UserStore:
    """The users of one data directory, re-read when the file changes on disk."""

    def __init__(self, data_dir: Path, *, create_demo: bool = True) -> None:
        self.path = Path(data_dir) / USERS_FILE
        self._hashes: dict[str, str] = {}
        self._lower: dict[str, str] = {}
        #: Called after the file changed and was re-read (the core enrolls new users).
        self.on_change: Callable[[], None] | None = None
        # (inode, size, mtime): mtimes alone are too coarse (a few ms on Linux), but
        # every write is an atomic rename, so a new file always has a new inode.
        self._stamp: tuple[int, int, int] | None = None
        if not self.path.exists():
            self._create(create_demo)
        self.reload()

    def _create(self, demo: bool) -> None:
        users = {name: {"password_hash": HASHER.hash(pw)} for name, pw in DEMO_USERS.items()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write(users if demo else {})
        if demo:
            log.warning(
                "%s created with the demo users %s and their KNOWN passwords; change them with "
                "'python -m legacy_socket_server.users passwd Alice' (in docker: 'docker compose "
                "exec core python -m legacy_socket_server.users passwd Alice'), or start with "
                "CHAT_DEMO_USERS=0 for no users",
                self.path,
                ", ".join(DEMO_USERS),
            )
        else:
            log.info("%s created with no users (CHAT_DEMO_USERS=0)", self.path)

    def _write(self, users: dict[str, dict[str, str]]) -> None:
        data = json.dumps(users, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        atomic_write(self.path, data.encode())

    def _parse(self, raw: object) -> tuple[dict[str, str], bool]:
        if not isinstance(raw, dict):
            raise StoreError(f"{self.path} line 1: expected an object of users — fix or restore it")
        hashes: dict[str, str] = {}
        rehashed = False
        for name, entry in raw.items():
            if not USERNAME_RE.match(name):
                raise StoreError(f"{self.path}: invalid user name {name!r} — fix the file")
            if isinstance(entry, str):
                entry = {"password": entry}
            if not isinstance(entry, dict):
                raise StoreError(f"{self.path}: entry for {name!r} must be an object")
            if isinstance(entry.get("password_hash"), str):
                hashes[name] = entry["password_hash"]
            elif isinstance(entry.get("password"), str):
                hashes[name] = HASHER.hash(entry["password"])
                rehashed = True
            else:
                raise StoreError(f"{self.path}: entry for {name!r} has no password_hash")
        return hashes, rehashed

    def reload(self) -> None:
        """(Re)read the file; hash any plaintext entry and rewrite it atomically."""
        st = self.path.stat()
        hashes, rehashed = self._parse(load_json_file(self.path))
        if rehashed:
            self._write({n: {"password_hash": h} for n, h in hashes.items()})
            log.warning("%s had plaintext passwords: hashed them with argon2id", self.path)
            st = self.path.stat()
        self._hashes = hashes
        self._lower = {n.lower(): n for n in sorted(hashes, reverse=True)}
        self._stamp = _stamp(st)

    def refresh(self) -> bool:
        """Re-read if the file changed on disk (the CLI edits it); True if it did."""
        try:
            stamp = _stamp(self.path.stat())
        except OSError:
            return False
        if stamp == self._stamp:
            return False
        try:
            self.reload()
        except StoreError as exc:
            # Keep serving with the users we know rather than locking everyone out.
            log.error("ignoring the new %s: %s", self.path.name, exc)
            self._stamp = stamp
            return False
        if self.on_change is not None:
            self.on_change()
        return True

    # -- queries ------------------------------------------------------------
    def hashes(self) -> dict[str, str]:
        """Every user's argon2 hash (the import into PostgreSQL copies them)."""
        return dict(self._hashes)

    def names(self) -> list[str]:
        return sorted(self._hashes)

    def exists(self, name: str) -> bool:
        return name in self._hashes

    def by_lower(self, lowered: str) -> str | None:
        """The user whose name, lowercased, is ``lowered`` (mentions ignore case)."""
        return self._lower.get(lowered)

    def fingerprint(self, name: str) -> str | None:
        h = self._hashes.get(name)
        return fingerprint(h) if h else None

    def verify(self, name: str, password: str) -> bool:
        """Check a password (constant work whether or not the user exists)."""
        stored = self._hashes.get(name)
        try:
            HASHER.verify(stored or _DUMMY_HASH, password)
        except (VerificationError, InvalidHashError):
            return False
        return stored is not None

    # -- changes (CLI) ------------------------------------------------------
    def set_password(self, name: str, password: str) -> None:
        self.refresh()
        hashes = dict(self._hashes)
        hashes[name] = HASHER.hash(password)
        self._write({n: {"password_hash": h} for n, h in hashes.items()})
        self.reload()

    def remove(self, name: str) -> None:
        self.refresh()
        hashes = dict(self._hashes)
        hashes.pop(name)
        self._write({n: {"password_hash": h} for n, h in hashes.items()})
        self.reload()


def _read_password(prompt: str) -> str:
    if sys.stdin.isatty():
        first = getpass.getpass(prompt)
        if getpass.getpass("Repeat: ") != first:
            raise SystemExit("passwords do not match")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def _main_pg(cmd: str, name: str, url: str) -> int:
    from . import pg_admin

    names = run(pg_admin.user_names(url))
    if cmd == "list":
        for n in names:
            print(n)
        return 0
    return _change(
        cmd,
        name,
        name in names,
        lambda n: run(pg_admin.set_user(url, n, None)),
        lambda n, pw: run(pg_admin.set_user(url, n, HASHER.hash(pw))),
    )


def _change(
    cmd: str,
    name: str,
    exists: bool,
    remove: Callable[[str], None],
    set_password: Callable[[str, str], None],
) -> int:
    """``add``, ``passwd`` or ``remove`` ``name``, whichever store holds the users."""
    problem = _refusal(cmd, name, exists)
    if problem:
        print(f"error: {problem[1]}", file=sys.stderr)
        return problem[0]
    if cmd == "remove":
        remove(name)
        print(f"removed {name}")
        return 0
    password = _read_password(f"Password for {name}: ")
    if not password:
        print("error: empty password", file=sys.stderr)
        return 2
    set_password(name, password)
    print(f"{'added' if cmd == 'add' else 'changed password of'} {name}")
    return 0


def _refusal(cmd: str, name: str, exists: bool) -> tuple[int, str] | None:
    """Why ``cmd`` cannot be done for ``name`` (exit code, message), or None."""
    if cmd == "add":
        if not USERNAME_RE.match(name):
            return 2, "names are 1-32 letters, digits, '_', '.' or '-'"
        if exists:
            return 1, f"{name} already exists (use passwd)"
    elif not exists:
        return 1, f"no user named {name}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = SettingsParser(
        prog="python -m legacy_socket_server.users", description="Manage chat users."
    )
    parser.add_setting(
        "--data-dir",
        env="CHAT_DATA_DIR",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="directory holding users.json (the default data/ is created from the seed files)",
    )
    parser.add_setting(
        "--demo-users",
        env="CHAT_DEMO_USERS",
        type=boolean,
        default=True,
        metavar="1|0",
        help="create the demo users in a data directory that has no users.json",
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    for cmd, text in [
        ("add", "add a user (password prompted, or read from stdin)"),
        ("passwd", "change a password (ends the user's resume tokens)"),
        ("remove", "remove a user"),
    ]:
        sub.add_parser(cmd, help=text).add_argument("name")
    sub.add_parser("list", help="list user names")
    add_database_url(parser, ": the users of this database (beside running cores)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    if args.database_url is not None:
        try:
            return _main_pg(args.cmd, getattr(args, "name", ""), args.database_url)
        except StorageUnavailable as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    try:
        store = UserStore(prepare_data_dir(args.data_dir), create_demo=args.demo_users)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.cmd == "list":
        for name in store.names():
            print(name)
        return 0
    name = args.name
    return _change(args.cmd, name, store.exists(name), store.remove, store.set_password)


if __name__ == "__main__":
    raise SystemExit(main())
