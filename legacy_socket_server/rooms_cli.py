"""``python -m legacy_socket_server.rooms_cli``: list rooms, add or remove a member.

``list`` reads the data directory without writing, so it works beside a
running core. ``add`` and ``remove`` change membership through the core's own
rules and journal, so they need the directory to themselves: while a core is
running on it they refuse and say so (a member can add someone from a chat
client instead). The journal is never written by two processes.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from .chat import ChatService
from .datadir import prepare as prepare_data_dir
from .rooms import room_name
from .session import ChatError
from .settings import DEFAULT_DATA_DIR, SettingsParser, add_database_url, run
from .storage_files import StorageUnavailable, StoreError
from .store import HistoryStore
from .tokens import TokenStore
from .users import UserStore


def _list(data_dir: Path) -> int:
    state = HistoryStore(data_dir).peek()
    if not state.rooms:
        print("no rooms yet (the core creates 'general' at its next start)")
    for name, room in sorted(state.rooms.items()):
        kind = "private" if room["private"] else "public"
        count = len(room["members"])
        print(f"{name}\t{kind}\t{count} member{'' if count == 1 else 's'}")
    return 0


async def _change(data_dir: Path, room: str, user: str, joined: bool) -> int:
    service = ChatService(
        UserStore(data_dir, create_demo=False), HistoryStore(data_dir), TokenStore(data_dir)
    )
    try:
        if not service.users.exists(user):
            print(f"error: no user named {user}", file=sys.stderr)
            return 1
        target = service._rooms.get(room)
        if target is None:
            print(f"error: no room named {room}", file=sys.stderr)
            return 1
        if (user in target.members) == joined:
            print(f"{user} {'is already' if joined else 'is not'} a member of {room}")
            return 0
        service._set_member(target, user, joined)
        print(f"{'added' if joined else 'removed'} {user} {'to' if joined else 'from'} {room}")
        return 0
    finally:
        service.close()


def _main_pg(args: argparse.Namespace) -> int:
    from . import pg_admin

    try:
        if args.cmd == "list":
            for name, private, count in run(pg_admin.rooms(args.database_url)):
                kind = "private" if private else "public"
                print(f"{name}\t{kind}\t{count} member{'' if count == 1 else 's'}")
            return 0
        room = room_name(args.room)
        print(run(pg_admin.change_member(args.database_url, room, args.user, args.cmd == "add")))
        return 0
    except ChatError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except LookupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except StorageUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    parser = SettingsParser(
        prog="python -m legacy_socket_server.rooms_cli", description="Manage chat rooms."
    )
    parser.add_setting(
        "--data-dir",
        env="CHAT_DATA_DIR",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="the core's data directory",
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="rooms with their member counts (safe while the core runs)")
    for cmd, text in [
        ("add", "add a user to a room (the core must be stopped)"),
        ("remove", "remove a user from a room (the core must be stopped)"),
    ]:
        p = sub.add_parser(cmd, help=text)
        p.add_argument("room")
        p.add_argument("user")
    add_database_url(parser, ": the rooms of this database (add/remove beside running cores)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    if args.database_url is not None:
        return _main_pg(args)
    data_dir = prepare_data_dir(args.data_dir)
    try:
        if args.cmd == "list":
            return _list(data_dir)
        room = room_name(args.room)
        return asyncio.run(_change(data_dir, room, args.user, args.cmd == "add"))
    except ChatError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
