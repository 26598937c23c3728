"""The users CLI (``python -m legacy_socket_server.users``), alone and next to a running core."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, CoreProcess
from core_helpers import RawClient


def users_cli(data_dir: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "legacy_socket_server.users", "--data-dir", str(data_dir), *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "CHAT_DEMO_USERS": "1"},
    )


def test_add_list_passwd_remove(data_dir: Path) -> None:
    r = users_cli(data_dir, "add", "Dana", stdin="dana-pw\n")
    assert r.returncode == 0, r.stderr
    assert "added Dana" in r.stdout
    text = (data_dir / "users.json").read_text()
    assert "dana-pw" not in text and json.loads(text)["Dana"]["password_hash"].startswith("$argon2")
    r = users_cli(data_dir, "list")
    assert r.returncode == 0 and r.stdout.split() == ["Alice", "Bob", "Charlie", "Dana"]
    old_hash = json.loads(text)["Dana"]["password_hash"]
    r = users_cli(data_dir, "passwd", "Dana", stdin="other-pw\n")
    assert r.returncode == 0, r.stderr
    assert json.loads((data_dir / "users.json").read_text())["Dana"]["password_hash"] != old_hash
    r = users_cli(data_dir, "remove", "Dana")
    assert r.returncode == 0 and "removed Dana" in r.stdout
    assert users_cli(data_dir, "list").stdout.split() == ["Alice", "Bob", "Charlie"]


@pytest.mark.parametrize(
    ("args", "stdin", "code", "words"),
    [
        (["add", "Alice"], "x\n", 1, "already exists"),
        (["passwd", "Nobody"], "x\n", 1, "no user"),
        (["remove", "Nobody"], "", 1, "no user"),
        (["add", "bad name"], "x\n", 2, "names are"),
        (["add", "x" * 33], "x\n", 2, "names are"),
        (["add", "Dana"], "\n", 2, "empty password"),
    ],
)
def test_cli_errors(data_dir: Path, args: list[str], stdin: str, code: int, words: str) -> None:
    before = (data_dir / "users.json").read_bytes()
    r = users_cli(data_dir, *args, stdin=stdin)
    assert r.returncode == code and words in r.stderr, (r.returncode, r.stderr)
    assert (data_dir / "users.json").read_bytes() == before


def test_cli_refuses_corrupt_file(data_dir: Path) -> None:
    (data_dir / "users.json").write_text('{"Alice": \n')
    r = users_cli(data_dir, "add", "Dana", stdin="pw\n")
    assert r.returncode == 2 and "users.json line" in r.stderr
    assert (data_dir / "users.json").read_text() == '{"Alice": \n'


async def test_running_server_sees_changes_without_restart(core_proc: CoreProcess) -> None:
    alice = await RawClient.to(core_proc)
    await alice.login("Alice")
    assert users_cli(core_proc.data_dir, "add", "Dana", stdin="dana-pw\n").returncode == 0
    names = [u["username"] for u in (await alice.call("users"))["users"]]
    assert names == ["Bob", "Charlie", "Dana"]
    # Messages to the new user are accepted at once, and she can log in.
    await alice.call("send_message", to="Dana", text="welcome")
    dana = await RawClient.to(core_proc)
    r = await dana.login("Dana", "dana-pw")
    assert r["users"][0] == {"username": "Alice", "online": True, "unread": 1}
    token = r["token"]
    await dana.close()
    # passwd: the old password and Dana's resume tokens end.
    assert users_cli(core_proc.data_dir, "passwd", "Dana", stdin="new-pw\n").returncode == 0
    c = await RawClient.to(core_proc)
    assert (await c.request("resume", token=token))["error"] == "invalid_token"
    assert (await c.request("login", username="Dana", password="dana-pw"))[
        "error"
    ] == "invalid_credentials"
    assert (await c.login("Dana", "new-pw"))["username"] == "Dana"
    await c.close()
    # remove: gone from the list, no longer a recipient.
    assert users_cli(core_proc.data_dir, "remove", "Dana").returncode == 0
    names = [u["username"] for u in (await alice.call("users"))["users"]]
    assert names == ["Bob", "Charlie"]
    r = await alice.request("send_message", to="Dana", text="still there?")
    assert r["error"] == "unknown_user"
    await alice.close()
