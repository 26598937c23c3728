"""The token store's journal: O(1) per change, crash-safe, compacted."""

from __future__ import annotations

import json
from pathlib import Path

from legacy_socket_server import tokens as tokens_module
from legacy_socket_server.tokens import TokenStore


def fingerprint(_: str) -> str:
    return "fp"


def test_changes_append_and_survive_a_crash(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    issued = [store.issue(f"u{i}", "fp") for i in range(50)]
    store.revoke(issued[0])
    # No snapshot rewrite per login: the changes are lines in the journal.
    assert not (tmp_path / "tokens.json").exists()
    lines = (tmp_path / "tokens.journal").read_bytes().splitlines()
    assert len(lines) == 51
    assert all(t not in lines[i].decode() for i, t in enumerate(issued))  # digests only
    # A crash (no close): a new store replays the journal.
    again = TokenStore(tmp_path)
    assert again.check(issued[0], fingerprint) is None
    assert [again.check(t, fingerprint) for t in issued[1:]] == [f"u{i}" for i in range(1, 50)]


def test_torn_last_line_is_ignored(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    kept = store.issue("Alice", "fp")
    with open(tmp_path / "tokens.journal", "ab") as f:
        f.write(b'{"+": "abc", "r": {"us')  # the crash came mid-write
    again = TokenStore(tmp_path)
    assert again.check(kept, fingerprint) == "Alice"
    assert not list(tmp_path.glob("*.corrupt-*"))


def test_damaged_middle_line_sets_the_files_aside(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    lost = store.issue("Alice", "fp")
    with open(tmp_path / "tokens.journal", "ab") as f:
        f.write(b"garbage\n")
    store.issue("Bob", "fp")
    again = TokenStore(tmp_path)  # starts, with no tokens: everyone logs in once
    assert again.check(lost, fingerprint) is None
    assert len(list(tmp_path.glob("tokens.journal.corrupt-*"))) == 1


def test_journal_is_compacted_into_the_snapshot(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(tokens_module, "COMPACT_MIN_LINES", 10)
    store = TokenStore(tmp_path)
    first = store.issue("Alice", "fp")
    for _ in range(30):  # a resume/logout churn: one live token, many lines
        store.revoke(store.issue("Bob", "fp"))
    journal = tmp_path / "tokens.journal"
    assert not journal.exists() or len(journal.read_bytes().splitlines()) < 10
    snapshot = json.loads((tmp_path / "tokens.json").read_text())
    assert len(snapshot) <= 2  # Alice, and perhaps a Bob token revoked after it was written
    store.close()  # a clean shutdown leaves just the snapshot
    assert not journal.exists()
    snapshot = json.loads((tmp_path / "tokens.json").read_text())
    assert [r["user"] for r in snapshot.values()] == ["Alice"]
    assert TokenStore(tmp_path).check(first, fingerprint) == "Alice"
