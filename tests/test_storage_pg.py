"""The PostgreSQL history store against a real, throwaway PostgreSQL on loopback.

It must keep exactly what the file journal keeps for the same records, survive the
database going away and coming back, and migrate its schema once.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from conftest import ROOT, missing

from legacy_socket_server.storage_files import StorageUnavailable, StoreError
from legacy_socket_server.storage_pg import MIGRATIONS, PgHistoryStore
from legacy_socket_server.store import HistoryState, HistoryStore

sys.path.insert(0, str(ROOT / "bench"))
from _pg_server import PgServer, find_bin  # noqa: E402

_databases = itertools.count(1)


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PgServer]:
    if find_bin() is None:
        missing("PostgreSQL's initdb not found (apt-get install postgresql; see .ci/run)")
    # In the system's temp dir: the server's user must reach it (pytest's are private).
    server = PgServer().start()
    yield server
    server.stop()


@pytest.fixture
async def pg_url(pg_server: PgServer) -> AsyncIterator[str]:
    """A new, empty database for each test."""
    name = f"chat_{next(_databases)}"
    admin = await asyncpg.connect(pg_server.url())
    await admin.execute(f"CREATE DATABASE {name}")
    await admin.close()
    yield pg_server.url(name)


def msg(i: int, frm: str, **where: str) -> dict[str, Any]:
    return {"id": i, "from": frm, **where, "text": f"text {i} ☕", "ts": "2026-12-03T08:00:00.000Z"}


#: Every kind of journal record, including ones that must change nothing when applied:
#: a message id seen before, a marker moving back, a member of a room that does not exist.
RECORDS: list[dict[str, Any]] = [
    {"op": "room", "room": "general", "private": False},
    {"op": "member", "room": "general", "user": "Alice", "joined": True, "marker": 0},
    {"op": "member", "room": "general", "user": "Bob", "joined": True, "marker": 0},
    {"op": "message", "message": msg(1, "Alice", to="Bob")},
    {"op": "message", "message": {**msg(2, "Bob", to="Alice"), "client_msg_id": "b-1"}},
    {"op": "message", "message": msg(3, "Alice", room="general")},
    {"op": "message", "message": msg(1, "Mallory", to="Bob")},  # the id is taken: kept as it was
    {"op": "read", "user": "Bob", "with": "Alice", "up_to": 1},
    {"op": "read", "user": "Alice", "with": "Bob", "up_to": 2},
    {"op": "read", "user": "Alice", "with": "Bob", "up_to": 1},  # never backwards
    {"op": "read", "user": "Bob", "room": "general", "up_to": 3},
    {"op": "room", "room": "secret", "private": True},
    {"op": "member", "room": "secret", "user": "Bob", "joined": True, "marker": 3},
    {"op": "member", "room": "general", "user": "Alice", "joined": False},
    {"op": "member", "room": "nowhere", "user": "Zed", "joined": True, "marker": 0},
    {"op": "message", "message": msg(4, "Bob", room="secret")},
]


def comparable(state: HistoryState) -> dict[str, Any]:
    return {
        "messages": state.messages,
        "markers": state.markers,
        "rooms": state.rooms,
        "room_markers": state.room_markers,
        "enrolled": state.enrolled,
        "next_id": state.next_id,
    }


async def file_state(data: Path, records: list[dict[str, Any]]) -> HistoryState:
    store = HistoryStore(data)
    store.load()
    for record in records:
        store.append(record)
    store.close()
    reopened = HistoryStore(data)
    try:
        return reopened.load()
    finally:
        reopened.close()


async def test_keeps_what_the_file_journal_keeps(pg_url: str, tmp_path: Path) -> None:
    store = await PgHistoryStore.open(pg_url)
    assert comparable(store.load()) == comparable(HistoryState())  # a new database is empty
    for record in RECORDS:
        store.append(record)
    await store.append({"op": "boot", "boot": 99})  # committed after all of the above
    await store.aclose()
    again = await PgHistoryStore.open(pg_url)
    expected = await file_state(tmp_path / "files", RECORDS)
    assert comparable(again.load()) == comparable(expected)
    assert again.load().messages[0]["from"] == "Alice"  # not Mallory's
    await again.aclose()


async def test_each_start_has_a_new_boot(pg_url: str) -> None:
    boots = []
    for _ in range(3):
        store = await PgHistoryStore.open(pg_url)
        boots.append(store.load().boot)
        await store.aclose()
    assert boots == [1, 2, 3]


async def test_the_schema_is_migrated_once_and_a_newer_one_is_refused(pg_url: str) -> None:
    for _ in range(2):
        await (await PgHistoryStore.open(pg_url)).aclose()
    conn = await asyncpg.connect(pg_url)
    versions = [r["version"] for r in await conn.fetch("SELECT version FROM schema_version")]
    assert versions == list(range(1, len(MIGRATIONS) + 1))
    await conn.execute("INSERT INTO schema_version VALUES ($1)", len(MIGRATIONS) + 1)
    await conn.close()
    with pytest.raises(StoreError, match="newer than this program"):
        await PgHistoryStore.open(pg_url)


async def test_unreachable_database() -> None:
    """Writes fail clearly while the database is down and work again once it is back,
    without reopening the store; what was committed before is kept, what failed is not."""
    if find_bin() is None:
        missing("PostgreSQL's initdb not found (apt-get install postgresql; see .ci/run)")
    server = PgServer().start()
    try:
        store = await PgHistoryStore.open(server.url(), connect_timeout=2)
        await store.append({"op": "message", "message": msg(1, "Alice", to="Bob")})
        server.pause()
        with pytest.raises(StorageUnavailable):
            await store.append({"op": "message", "message": msg(2, "Alice", to="Bob")})
        with pytest.raises(StorageUnavailable):  # and again: nothing got stuck
            await store.append({"op": "message", "message": msg(3, "Alice", to="Bob")})
        server.resume()
        await store.append({"op": "message", "message": msg(4, "Alice", to="Bob")})
        await store.aclose()
        again = await PgHistoryStore.open(server.url())
        assert [m["id"] for m in again.load().messages] == [1, 4]
        await again.aclose()
        with pytest.raises(StorageUnavailable):
            await PgHistoryStore.open(f"postgresql://postgres@127.0.0.1:{server.port}/nope")
    finally:
        server.stop()
