"""Copy a data directory's history into an empty PostgreSQL database, once.

    python -m legacy_socket_server.migrate DATA_DIR --database-url postgresql://...

Run it with the core stopped (it takes the directory as the core does), before the
first start on the database: it refuses a database that already holds a history, so
it cannot run twice. The directory is read, never changed (but for a marker file saying
its history moved). Users (their password hashes) and resume tokens move too, so
nobody needs a new password and desktop clients resume on any core.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .settings import SettingsParser, add_database_url, run, setup_logging
from .storage_files import StorageUnavailable, StoreError
from .storage_pg import PgHistoryStore
from .store import HistoryState, HistoryStore
from .tokens import TokenStore
from .users import USERS_FILE, UserStore

log = logging.getLogger("legacy_socket_server.migrate")


def records(state: HistoryState) -> Iterator[dict[str, Any]]:
    """The journal records that rebuild ``state`` (rooms before what refers to them)."""
    for name, room in sorted(state.rooms.items()):
        yield {"op": "room", "room": name, "private": room["private"]}
    for name, room in sorted(state.rooms.items()):
        for user in sorted(room["members"]):
            marker = state.room_markers.get(user, {}).get(name, 0)
            yield {"op": "member", "room": name, "user": user, "joined": True, "marker": marker}
    members = {u for room in state.rooms.values() for u in room["members"]}
    for user in sorted(state.enrolled - members):
        for name in sorted(state.rooms)[:1]:  # enrolled, then left every room
            yield {"op": "member", "room": name, "user": user, "joined": False}
    for msg in state.messages:
        yield {"op": "message", "message": msg}
    for user, marks in sorted(state.markers.items()):
        for peer, up_to in sorted(marks.items()):
            yield {"op": "read", "user": user, "with": peer, "up_to": up_to}
    for user, marks in sorted(state.room_markers.items()):
        for name, up_to in sorted(marks.items()):
            yield {"op": "read", "user": user, "room": name, "up_to": up_to}


def is_empty(state: HistoryState) -> bool:
    return not (state.messages or state.rooms or state.markers or state.room_markers)


def account_records(data_dir: Path) -> Iterator[dict[str, Any]]:
    """The directory's users and resume tokens as records of the database's store."""
    if (data_dir / USERS_FILE).exists():
        for name, password_hash in sorted(UserStore(data_dir, create_demo=False).hashes().items()):
            yield {"op": "user", "name": name, "password_hash": password_hash}
    for digest, rec in sorted(TokenStore(data_dir).records().items()):
        yield {"op": "token", "digest": digest, **rec}


async def copy(state: HistoryState, url: str, accounts: list[dict[str, Any]] | None = None) -> int:
    """Write ``state`` (and ``accounts``' records) into the database at ``url``; the
    number of records written."""
    store = await PgHistoryStore.open(url, core=False)
    try:
        if not is_empty(store.load()):
            raise StoreError(
                "the database already holds a history: the import runs once, into an empty "
                "database, before the first start of a core on it"
            )
        # Cursors carry the run's number: the next core must not reuse one of the
        # directory's (a client's old cursor would then look current).
        await store.raise_boot(state.boot)
        # Appended in one go, so committed in one transaction: a failed import leaves
        # the database empty, and it can simply be run again.
        written, pending = 0, None
        for record in [*records(state), *(accounts or [])]:
            pending = store.append(record)
            written += 1
        if pending is not None:
            await pending
        return written
    finally:
        await store.aclose()


def build_parser(env: Mapping[str, str] | None = None) -> SettingsParser:
    p = SettingsParser(
        prog="python -m legacy_socket_server.migrate",
        description="Copy DATA_DIR's history (messages, rooms, read markers) into an empty "
        "PostgreSQL database, once.",
        env=env,
    )
    p.add_argument("data_dir", type=Path, metavar="DATA_DIR", help="the core's data directory")
    add_database_url(p, "")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging("INFO")
    if args.database_url is None:
        print("error: give --database-url (or CHAT_DATABASE_URL)", file=sys.stderr)
        return 2
    if not any((args.data_dir / name).exists() for name in ("history.json", "history.journal")):
        print(f"error: {args.data_dir} holds no history (history.json)", file=sys.stderr)
        return 2
    files = HistoryStore(args.data_dir)
    try:
        files.lock()  # refuses a directory a running core holds
        state = files.peek()
        accounts = list(account_records(args.data_dir))
        written = run(copy(state, args.database_url, accounts))
        files.mark_moved(args.database_url)  # a core started without the URL now refuses
    except (StoreError, StorageUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        files.close()
    print(
        f"copied {len(state.messages)} messages, {len(state.rooms)} rooms, the read markers, "
        f"{sum(r['op'] == 'user' for r in accounts)} users and their resume tokens of "
        f"{args.data_dir} ({written} records); start the core with --database-url"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
