"""Durability: kill -9, torn journals, clean stops, corrupt files, compaction, fsync modes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, CoreProcess, StartCore
from core_helpers import RawClient, seed_users, whole_history
from waiting import until

from legacy_socket_server.protocol import encode
from legacy_socket_server.store import HistoryStore


async def send_many(core: CoreProcess, n: int, sender: str = "Alice", to: str = "Bob") -> list[int]:
    c = await RawClient.to(core)
    await c.login(sender)
    ids = [
        (await c.call("send_message", to=to, text=f"{sender} #{i}"))["message"]["id"]
        for i in range(n)
    ]
    await c.close()
    return ids


async def history_ids(core: CoreProcess, user: str = "Bob", peer: str = "Alice") -> list[int]:
    c = await RawClient.to(core)
    await c.login(user)
    ids = [m["id"] for m in await whole_history(c, peer)]
    await c.close()
    return ids


def run_core_expecting_failure(data_dir: Path) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "legacy_socket_server", "--port", "0", "--data-dir", str(data_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return proc.returncode, proc.stderr + proc.stdout


async def test_sigkill_after_ack_loses_nothing(core_proc: CoreProcess) -> None:
    ids = await send_many(core_proc, 200)
    b = await RawClient.to(core_proc)
    await b.login("Bob")
    await b.call("read", **{"with": "Alice"}, up_to=ids[149])
    core_proc.kill()  # right after the acknowledgements, no flush, no compaction
    core_proc.start()
    assert await history_ids(core_proc) == ids
    b = await RawClient.to(core_proc)
    users = (await b.login("Bob"))["users"]
    assert users[0] == {"username": "Alice", "online": False, "unread": 50}
    # Ids go on from where they were, never reused.
    more = await send_many(core_proc, 3)
    assert more[0] > ids[-1] and more == sorted(set(more))
    await b.close()


async def test_torn_journal_tail_is_dropped_with_warning(core_proc: CoreProcess) -> None:
    ids = await send_many(core_proc, 20)
    core_proc.kill()
    journal = core_proc.data_dir / "history.journal"
    intact = journal.read_bytes()
    assert intact.endswith(b"\n")
    with open(journal, "ab") as f:
        f.write(b'{"op":"message","message":{"id":999,"from":"Alice","to":"Bo')
    core_proc.start()
    assert await history_ids(core_proc) == ids
    log = core_proc.log_text()
    assert "WARNING" in log and "torn" in log and "history.journal" in log
    # The journal is usable again: more writes, another crash, another clean start.
    more = await send_many(core_proc, 5)
    assert more[0] > ids[-1]
    core_proc.kill()
    core_proc.start()
    assert await history_ids(core_proc) == ids + more


async def test_clean_stop_leaves_snapshot_and_empty_journal(core_proc: CoreProcess) -> None:
    ids = await send_many(core_proc, 30)
    b = await RawClient.to(core_proc)
    await b.login("Bob")
    await b.call("read", **{"with": "Alice"}, up_to=ids[9])
    await b.close()
    assert core_proc.stop() == 0
    data = core_proc.data_dir
    snap = json.loads((data / "history.json").read_text())
    assert [m["id"] for m in snap["messages"]] == ids
    assert snap["read_markers"]["Bob"]["Alice"] == ids[9]
    assert snap["next_id"] > ids[-1]
    assert (data / "history.journal").stat().st_size == 0
    assert not list(data.glob("history.journal.*"))
    core_proc.start()
    assert await history_ids(core_proc) == ids
    c = await RawClient.to(core_proc)
    assert (await c.login("Bob"))["users"][0]["unread"] == 20
    await c.close()


@pytest.mark.parametrize(
    ("name", "content", "line"),
    [
        ("history.json", b'{"version": 1,\n "next_id": 3,\n "messages": [\n  {"id": 1,}\n ]}\n', 4),
        ("history.json", b"\xff\xfe garbage", 1),
        ("history.json", b'{"version": 1, "messages": [\n{"id": 2}, {"id": 1}]}', None),
        (
            "history.json",
            b'{"version": 1, "next_id": 2,\n "read_markers": {},\n'
            b' "messages": [\n  {"id": 1, "text": "no sender"}\n ]}\n',
            4,
        ),
        ("history.json", b'{"version": 1, "read_markers": [], "messages": []}', 1),
        (
            "history.journal",
            b'{"op":"boot","boot":1}\n{"op":"message"}\n{"op":"boot","boot":2}\n',
            2,
        ),
        ("history.journal", b'{"op":"read","user":"Bob","with":"Alice","up_to":"9"}\n{}\n', 1),
        ("users.json", b'{\n  "Alice": {"password_hash": "x"}\n  "Bob": {}\n}\n', 3),
        ("users.json", b"[]", 1),
    ],
)
def test_corrupt_file_refuses_to_start_and_is_untouched(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    content: bytes,
    line: int | None,
) -> None:
    data = tmp_path / "data"
    seed_users(data, tmp_path_factory.getbasetemp() / "users-template")
    journal = data / "history.journal"
    journal.write_bytes(b'{"op":"boot","boot":1}\n')
    (data / name).write_bytes(content)
    before = {p.name: p.read_bytes() for p in data.iterdir()}
    rc, out = run_core_expecting_failure(data)
    assert rc != 0
    assert name in out and "listening" not in out
    if line is not None:
        assert f"line {line}" in out, out
    after = {p.name: p.read_bytes() for p in data.iterdir()}
    assert after == before  # byte for byte, and nothing new


def test_bad_journal_line_in_the_middle_refuses(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    data = tmp_path / "data"
    seed_users(data, tmp_path_factory.getbasetemp() / "users-template")
    msg = {"id": 1, "from": "Alice", "to": "Bob", "text": "x", "ts": "2026-01-01T00:00:00.000Z"}
    content = (
        b'{"op":"boot","boot":1}\nnot json\n'
        + json.dumps({"op": "message", "message": msg}).encode()
        + b"\n"
    )
    (data / "history.journal").write_bytes(content)
    rc, out = run_core_expecting_failure(data)
    assert rc != 0 and "history.journal line 2" in out
    assert (data / "history.journal").read_bytes() == content


async def test_ids_never_reused_across_restarts(core_proc: CoreProcess) -> None:
    all_ids: list[int] = []
    all_ids += await send_many(core_proc, 3)
    core_proc.kill()
    core_proc.start()
    all_ids += await send_many(core_proc, 3, "Bob", "Alice")
    core_proc.stop()
    core_proc.start()
    all_ids += await send_many(core_proc, 3)
    core_proc.kill()
    core_proc.start()
    all_ids += await send_many(core_proc, 3, "Charlie", "Alice")
    assert all_ids == sorted(all_ids) and len(set(all_ids)) == len(all_ids)


async def test_cursor_and_token_across_restart(core_proc: CoreProcess) -> None:
    c = await RawClient.to(core_proc)
    login = await c.login("Alice")
    await c.close()
    core_proc.stop()
    core_proc.start()
    c = await RawClient.to(core_proc)
    r = await c.call("resume", token=login["token"])
    assert r["username"] == "Alice" and r["cursor"] != login["cursor"]
    poll = await c.call("poll", cursor=login["cursor"])
    assert poll["reset"] is True and poll["events"] == []
    await c.close()


async def test_read_markers_persist_across_kill(core_proc: CoreProcess) -> None:
    ids = await send_many(core_proc, 4)
    b = await RawClient.to(core_proc)
    await b.login("Bob")
    await b.call("read", **{"with": "Alice"}, up_to=ids[2])
    await b.call("read", **{"with": "Alice"}, up_to=ids[0])  # backwards: ignored
    await b.close()
    core_proc.kill()
    core_proc.start()
    b = await RawClient.to(core_proc)
    assert (await b.login("Bob"))["users"][0]["unread"] == 1
    await b.close()


async def test_plaintext_users_are_hashed_at_startup(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "users.json").write_text(
        json.dumps({"Dana": "plain-secret-1", "Eve": {"password": "plain-secret-2"}})
    )
    core = CoreProcess(data).start(port=0)
    try:
        text = (data / "users.json").read_text()
        assert "plain-secret" not in text
        users = json.loads(text)
        assert set(users) == {"Dana", "Eve"}
        assert all(u["password_hash"].startswith("$argon2id$") for u in users.values())
        assert "plaintext" in core.log_text()
        c = await RawClient.to(core)
        r = await c.login("Dana", "plain-secret-1")
        assert r["users"] == [{"username": "Eve", "online": False, "unread": 0}]
        await c.close()
    finally:
        core.stop()


async def test_fsync_always(tmp_path: Path) -> None:
    core = CoreProcess(tmp_path / "data", ["--fsync", "always"]).start(port=0)
    try:
        assert "fsync always" in core.log_text()
        ids = await send_many(core, 50)
        # Replies stay in request order even though sends wait for the fsync.
        p = await RawClient.to(core)
        await p.login("Alice")
        reqs = [
            {"purpose": "send_message", "id": 1, "to": "Bob", "text": "a"},
            {"purpose": "ping", "id": 2},
            {"purpose": "send_message", "id": 3, "to": "Bob", "text": "b"},
            {"purpose": "history", "id": 4, "with": "Bob", "limit": 2},
        ]
        await p.send_raw(b"".join(encode(r) for r in reqs))
        got = [await p.recv() for _ in reqs]
        assert [g["id"] for g in got] == [1, 2, 3, 4] and all(g["ok"] for g in got)
        assert [m["text"] for m in got[3]["messages"]] == ["a", "b"]
        ids += [got[0]["message"]["id"], got[2]["message"]["id"]]
        await p.close()
        b = await RawClient.to(core)
        await b.login("Bob")
        await b.call("read", **{"with": "Alice"}, up_to=ids[-1])
        await b.close()
        core.kill()
        core.start()
        assert await history_ids(core) == ids
        b = await RawClient.to(core)
        assert (await b.login("Bob"))["users"][0]["unread"] == 0
        await b.close()
    finally:
        core.stop()


async def test_compaction_yields_the_cpu_to_the_core(
    start_core: StartCore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compacting child lowers its priority: on a CPU it shares with the core it takes
    what the core leaves, not half (docs/performance.md#core-efficiency)."""
    seen = tmp_path / "niceness"
    real_nice = os.nice

    def recording_nice(increment: int) -> int:  # runs in the child
        seen.write_text(f"{increment} {os.getpid()}")
        return real_nice(increment)

    monkeypatch.setattr(os, "nice", recording_nice)
    server = await start_core(tmp_path / "data", min_compact_bytes=1000)
    c = await RawClient.to(server)
    await c.login("Alice")
    for i in range(40):
        await c.call("send_message", to="Bob", text=f"message {i} " + "z" * 40)
    await until(seen.exists, what="a compaction to start")
    increment, pid = map(int, seen.read_text().split())
    assert increment >= 10 and pid != os.getpid()
    await c.close()
    await server.stop()


async def test_background_compaction(start_core: StartCore, tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = await start_core(data, min_compact_bytes=1000)

    def compacting() -> bool:
        """A compaction runs while the journal segments it covers are on disk."""
        return bool(list(data.glob("history.journal.*")))

    def snapshot_ids() -> list[int]:
        path = data / "history.json"
        return [m["id"] for m in json.loads(path.read_text())["messages"]] if path.exists() else []

    c = await RawClient.to(server)
    await c.login("Alice")
    ids = []
    snapshots = {len(snapshot_ids())}
    for i in range(150):
        r = await c.call("send_message", to="Bob", text=f"message {i} " + "z" * 40)
        ids.append(r["message"]["id"])
        if compacting():  # let it finish before writing on, so that there are several
            await until(lambda: not compacting(), what="the compaction to finish")
        snapshots.add(len(snapshot_ids()))  # written atomically: always a whole one
    await until(lambda: not compacting(), what="the compaction to finish")
    assert len(snapshots) >= 3  # the empty start and at least two compactions
    snap_ids = snapshot_ids()
    assert snap_ids == ids[: len(snap_ids)] and len(snap_ids) > 50
    # A crash now (no clean stop): snapshot + journal still hold everything.
    crash = tmp_path / "crash-copy"
    crash.mkdir()
    for p in data.iterdir():
        if p.name.startswith("history"):
            (crash / p.name).write_bytes(p.read_bytes())
    store = HistoryStore(crash)
    state = store.load()
    store.close()
    assert [m["id"] for m in state.messages] == ids
    assert state.next_id > ids[-1]
    await c.close()
    await server.stop()
    assert snapshot_ids() == ids
    assert (data / "history.journal").stat().st_size == 0
    assert not compacting()
