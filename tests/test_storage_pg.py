"""The PostgreSQL history store against a real, throwaway PostgreSQL on loopback.

It must keep exactly what the file journal keeps for the same records, survive the
database going away and coming back, and migrate its schema once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from _pg_server import PgServer
from conftest import ROOT, StartCore, new_database, start_postgres
from core_helpers import RawClient, whole_history
from waiting import until

from legacy_socket_server import storage_pg
from legacy_socket_server.pg_schema import MIGRATIONS
from legacy_socket_server.storage_files import StorageUnavailable, StoreError
from legacy_socket_server.storage_pg import PgHistoryStore
from legacy_socket_server.store import MOVED_MARKER, HistoryState, HistoryStore


@pytest.fixture
async def pg_url(pg_server: PgServer) -> str:
    return await new_database(pg_server)


def msg(i: int, frm: str, **where: str) -> dict[str, Any]:
    return {"id": i, "from": frm, **where, "text": f"text {i} ☕", "ts": "2026-12-03T08:00:00.000Z"}


#: Every kind of journal record, including ones that must change nothing when applied:
#: a marker moving back, a member of a room that does not exist.
RECORDS: list[dict[str, Any]] = [
    {"op": "room", "room": "general", "private": False},
    {"op": "member", "room": "general", "user": "Alice", "joined": True, "marker": 0},
    {"op": "member", "room": "general", "user": "Bob", "joined": True, "marker": 0},
    {"op": "message", "message": msg(1, "Alice", to="Bob")},
    {"op": "message", "message": {**msg(2, "Bob", to="Alice"), "client_msg_id": "b-1"}},
    {"op": "message", "message": msg(3, "Alice", room="general")},
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
    server = start_postgres()
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


async def test_the_core_rides_out_a_database_outage(start_core: StartCore) -> None:
    """PostgreSQL stopped and started again under a running core: sends answer
    ``storage_unavailable`` meanwhile and keep nothing, reads and pings go on, nothing
    crashes, and sending works again without restarting anything; after a restart the
    history holds exactly what was acknowledged, a retried ``client_msg_id`` once."""
    server = start_postgres()
    try:
        url = await new_database(server)
        core = await start_core(database_url=url)
        alice, bob = await RawClient.to(core), await RawClient.to(core)
        await alice.login("Alice")
        await bob.login("Bob")
        acked = [
            (await alice.call("send_message", to="Bob", text=f"before {i}"))["message"]["id"]
            for i in range(5)
        ]
        server.pause()
        for i in range(3):
            r = await alice.request("send_message", to="Bob", text=f"lost {i}", client_msg_id="x")
            assert (r["ok"], r["error"]) == (False, "storage_unavailable"), r
        assert [m["id"] for m in await whole_history(bob, "Alice")] == acked  # reads go on
        assert (await bob.call("ping"))["ok"] is True
        server.resume()

        async def send_after() -> dict[str, Any] | None:
            r = await alice.request("send_message", to="Bob", text="after", client_msg_id="x")
            return r if r["ok"] else None

        retried = await until(send_after, what="a send succeeds once PostgreSQL is back")
        again = await alice.call("send_message", to="Bob", text="after", client_msg_id="x")
        assert again["message"] == retried["message"]  # the retry is the same message
        acked.append(retried["message"]["id"])
        await core.stop()
        restarted = await start_core(data=core.config.data_dir, database_url=url)
        reader = await RawClient.to(restarted)
        await reader.login("Bob")
        kept = await whole_history(reader, "Alice")
        assert [m["id"] for m in kept] == acked
        assert [m["text"] for m in kept] == [*(f"before {i}" for i in range(5)), "after"]
    finally:
        server.stop()


async def test_a_data_directory_is_imported_once(
    start_core: StartCore, pg_server: PgServer, tmp_path: Path
) -> None:
    """A history made on files (messages, a room, read markers) moves to PostgreSQL with
    ``python -m legacy_socket_server.migrate``; a core on the database serves it as it
    was, and a second import is refused."""
    files = await start_core()
    alice, bob = await RawClient.to(files), await RawClient.to(files)
    await alice.login("Alice")
    await bob.login("Bob")
    await alice.call("create_room", room="ops", members=["Bob"])
    sent = [
        (await alice.call("send_message", to="Bob", text="direct ☕"))["message"],
        (await bob.call("send_message", room="ops", text="in the room"))["message"],
    ]
    await bob.call("read", **{"with": "Alice"}, up_to=sent[0]["id"])
    old_cursor = (await bob.call("poll"))["cursor"]
    data = files.config.data_dir
    await files.stop()
    url = await new_database(pg_server)

    def migrate() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "legacy_socket_server.migrate", str(data)],
            env={**os.environ, "CHAT_DATABASE_URL": url},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    done = migrate()
    assert done.returncode == 0, done.stderr
    assert "copied 2 messages" in done.stdout
    core = await start_core(data=data, database_url=url)
    bob = await RawClient.to(core)
    login = await bob.login("Bob")
    assert login["users"][0] == {"username": "Alice", "online": False, "unread": 0}
    assert [r["name"] for r in login["rooms"]] == ["general", "ops"]
    assert (await bob.call("history", **{"with": "Alice"}))["messages"] == [sent[0]]
    assert (await bob.call("history", room="ops"))["messages"] == [sent[1]]
    assert (await bob.call("poll", cursor=old_cursor))["reset"] is True  # a new run
    await core.stop()
    with pytest.raises(StoreError, match="is in PostgreSQL"):  # its files are stale now
        await start_core(data=data)
    again = migrate()
    assert again.returncode == 2 and "is in PostgreSQL" in again.stderr
    (data / MOVED_MARKER).unlink()  # even so, the database refuses a second import
    again = migrate()
    assert again.returncode == 2 and "already holds a history" in again.stderr


async def test_a_taken_message_id_fails_the_write_and_keeps_the_message(pg_url: str) -> None:
    """Ids are the core's: one already stored is a bug to report, never a write to
    acknowledge (the file journal's replay skips it; a live write must not)."""
    store = await PgHistoryStore.open(pg_url)
    await store.append({"op": "message", "message": msg(1, "Alice", to="Bob")})
    with pytest.raises(StorageUnavailable, match="stored already"):
        await store.append({"op": "message", "message": msg(1, "Mallory", to="Bob")})
    await store.append({"op": "message", "message": msg(2, "Bob", to="Alice")})  # still writes
    await store.aclose()
    again = await PgHistoryStore.open(pg_url)
    assert [(m["id"], m["from"]) for m in again.load().messages] == [(1, "Alice"), (2, "Bob")]
    await again.aclose()


async def test_requests_read_before_the_peer_half_closes_are_all_answered(
    start_core: StartCore, pg_server: PgServer
) -> None:
    """Sends waiting for their commit, then ``exit``, then the client shuts its side:
    every request is answered and both messages are kept, as with the file store."""
    core = await start_core(database_url=await new_database(pg_server))
    alice = await RawClient.to(core)
    await alice.login("Alice")
    for i in range(2):
        await alice.send({"purpose": "send_message", "id": i, "to": "Bob", "text": f"m{i}"})
    await alice.send({"purpose": "exit", "id": 9})
    alice.writer.write_eof()
    replies = [await alice.recv() for _ in range(3)]
    assert [(r["id"], r["ok"]) for r in replies] == [(0, True), (1, True), (9, True)]
    await alice.expect_closed()
    bob = await RawClient.to(core)
    await bob.login("Bob")
    assert [m["text"] for m in await whole_history(bob, "Alice")] == ["m0", "m1"]


async def test_a_hung_database_fails_writes_in_time_and_recovers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A database that stops answering (its backend frozen) rather than going away: the
    write fails after the command timeout instead of holding everything behind it, and
    writes work again once it answers."""
    monkeypatch.setattr(storage_pg, "COMMAND_TIMEOUT", 1.0)
    server = start_postgres()
    try:
        store = await PgHistoryStore.open(server.url(), connect_timeout=2)
        await store.append({"op": "message", "message": msg(1, "Alice", to="Bob")})
        backend = await store._conn.fetchval("SELECT pg_backend_pid()")  # type: ignore[union-attr]
        os.kill(backend, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(StorageUnavailable):
                await store.append({"op": "message", "message": msg(2, "Alice", to="Bob")})
            assert time.monotonic() - started < 8
        finally:
            os.kill(backend, signal.SIGCONT)

        async def writes() -> bool:
            try:
                await store.append({"op": "message", "message": msg(3, "Alice", to="Bob")})
            except StorageUnavailable:
                return False
            return True

        await until(writes, what="writes work again", interval=0.2)
        await store.aclose()
        again = await PgHistoryStore.open(server.url())
        assert [m["id"] for m in again.load().messages] == [1, 3]
        await again.aclose()
    finally:
        server.stop()


async def test_a_history_in_files_is_not_stranded(
    start_core: StartCore, pg_server: PgServer
) -> None:
    """A core given --database-url on a directory whose history is still in files refuses
    (import it first) instead of starting empty and hiding those messages; the marker it
    writes for an imported directory names the database without its password."""
    files = await start_core()
    alice = await RawClient.to(files)
    await alice.login("Alice")
    await alice.call("send_message", to="Bob", text="kept in files")
    data = files.config.data_dir
    await files.stop()
    url = await new_database(pg_server)
    with pytest.raises(StoreError, match="holds a history in files"):
        await start_core(data=data, database_url=url)
    with_password = url.replace("postgres@", "postgres:s3cret@") + "?password=s3cret"
    HistoryStore(data).mark_moved(with_password)
    assert "s3cret" not in (data / MOVED_MARKER).read_text()


async def test_a_batch_larger_than_one_call_is_committed_in_parts(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A loop turn's records beyond one call's size (a long stall, an import) go in
    several calls of one transaction: all kept, in order."""
    monkeypatch.setattr(storage_pg, "PART_BYTES", 30_000)
    store = await PgHistoryStore.open(pg_url)
    big = "é" * 10_000  # 20 kB of UTF-8: one record per part
    records = [
        {"op": "message", "message": {**msg(i, "Alice", to="Bob"), "text": big}}
        for i in range(1, 6)
    ]
    assert len(list(storage_pg._parts(records))) == 5
    futures = [store.append(record) for record in records]
    for f in futures:
        await f
    await store.aclose()
    again = await PgHistoryStore.open(pg_url)
    kept = again.load().messages
    assert [m["id"] for m in kept] == [1, 2, 3, 4, 5] and all(m["text"] == big for m in kept)
    await again.aclose()
