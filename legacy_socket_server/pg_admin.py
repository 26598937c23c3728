"""The users and rooms CLIs against PostgreSQL (``--database-url``), beside running cores.

A change is written as any core writes one (``chat_apply``, as core 0: no core's own),
so every core hears of it through its feed and applies it at once: a new user can log
in and is enrolled in ``general``, a removed one leaves every room, a changed password
ends the user's resume tokens (their fingerprint no longer matches).
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from .pg_schema import migrate
from .storage_files import StorageUnavailable


async def connect(url: str) -> asyncpg.Connection:
    try:
        conn = await asyncpg.connect(url, timeout=10, command_timeout=30)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        raise StorageUnavailable(f"cannot reach the database: {exc}") from None
    await migrate(conn)
    return conn


async def apply(conn: asyncpg.Connection, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Commit ``records`` as a change of core 0; the records as applied."""
    raw = await conn.fetchval("SELECT chat_apply($1::jsonb, 0, 0)", json.dumps(records))
    return json.loads(raw)["records"]


async def user_names(url: str) -> list[str]:
    conn = await connect(url)
    try:
        return [r["name"] for r in await conn.fetch("SELECT name FROM users ORDER BY name")]
    finally:
        await conn.close()


async def set_user(url: str, name: str, password_hash: str | None) -> None:
    """Add a user or change their password (a hash), or remove them (``None``)."""
    conn = await connect(url)
    try:
        await apply(conn, [{"op": "user", "name": name, "password_hash": password_hash}])
    finally:
        await conn.close()


async def rooms(url: str) -> list[tuple[str, bool, int]]:
    """(name, private, member count) of every room."""
    conn = await connect(url)
    try:
        rows = await conn.fetch(
            "SELECT r.name, r.private, count(m.username) AS members FROM rooms r "
            "LEFT JOIN memberships m ON m.room = r.name GROUP BY r.name, r.private ORDER BY r.name"
        )
        return [(r["name"], r["private"], r["members"]) for r in rows]
    finally:
        await conn.close()


async def change_member(url: str, room: str, user: str, joined: bool) -> str:
    """Add ``user`` to ``room`` or remove them; a sentence saying what happened."""
    conn = await connect(url)
    try:
        if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM users WHERE name = $1)", user):
            raise LookupError(f"no user named {user}")
        if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM rooms WHERE name = $1)", room):
            raise LookupError(f"no room named {room}")
        member = await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM memberships WHERE room = $1 AND username = $2)",
            room,
            user,
        )
        if member == joined:
            return f"{user} {'is already' if joined else 'is not'} a member of {room}"
        record: dict[str, Any] = {"op": "member", "room": room, "user": user, "joined": joined}
        if joined:  # what was said before they joined is not unread for them
            newest = await conn.fetchval("SELECT max(id) FROM messages WHERE room = $1", room)
            record["marker"] = newest or 0
        await apply(conn, [record])
        return f"{'added' if joined else 'removed'} {user} {'to' if joined else 'from'} {room}"
    finally:
        await conn.close()
