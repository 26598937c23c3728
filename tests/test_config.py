"""Settings (flags with CHAT_* fallbacks) and the data directory a run writes to."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from waiting import wait_for

from legacy_socket_server import datadir
from legacy_socket_server.cli import build_parser as core_parser
from legacy_socket_server.settings import DEFAULT_DATA_DIR

PROGRAMS = {
    "core": [sys.executable, "server.py"],
    "web": [sys.executable, "-m", "app"],
    "desktop": [sys.executable, "chatapp.py"],
}


@pytest.mark.parametrize(
    ("program", "variable", "value"),
    [
        ("core", "CHAT_PORT", "abc"),
        ("core", "CHAT_FSYNC", "sometimes"),
        ("core", "CHAT_MAX_CONNECTIONS", "-3"),
        ("core", "CHAT_LOG_LEVEL", "LOUD"),
        ("web", "CHAT_WEB_PORT", "80a"),
        ("web", "CHAT_CORE", "nohost"),
        ("web", "CHAT_WEB_TRANSPORT", "maybe"),
        ("web", "CHAT_WEB_IDLE_TIMEOUT", "soon"),
        ("desktop", "CHAT_PORT", "70000"),
    ],
)
def test_a_bad_variable_is_a_usage_error_naming_it(program: str, variable: str, value: str) -> None:
    env = {**os.environ, variable: value}
    proc = subprocess.run(
        PROGRAMS[program], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "error:" in last and variable in last and repr(value) in last, proc.stderr
    assert proc.stderr.startswith("usage:")


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"CHAT_SEND_RATE": "10"}, "CHAT_SEND_RATE"),
        ({"CHAT_SEND_BURST": "100"}, "CHAT_SEND_BURST"),
        ({"CHAT_SEND_RATE": "-1"}, "CHAT_SEND_RATE"),
    ],
)
def test_send_limits_below_the_contracts_floor_are_refused(
    variables: dict[str, str], named: str
) -> None:
    proc = subprocess.run(
        PROGRAMS["core"],
        cwd=ROOT,
        env={**os.environ, **variables},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "error:" in last and named in last and "Traceback" not in proc.stderr


def test_send_limits_default_and_off() -> None:
    args = core_parser(env={}).parse_args([])
    assert (args.send_rate, args.send_burst) == (50.0, 600)
    args = core_parser(env={"CHAT_SEND_RATE": "0", "CHAT_SEND_BURST": "1"}).parse_args([])
    assert (args.send_rate, args.send_burst) == (0.0, 1)  # no limit: the burst does not matter
    args = core_parser(env={}).parse_args(["--send-rate", "20", "--send-burst", "500"])
    assert (args.send_rate, args.send_burst) == (20.0, 500)


def test_flag_beats_variable_beats_default() -> None:
    assert core_parser(env={}).parse_args([]).port == 5050
    assert core_parser(env={"CHAT_PORT": "6000"}).parse_args([]).port == 6000
    assert core_parser(env={"CHAT_PORT": "6000"}).parse_args(["--port", "7000"]).port == 7000
    args = core_parser(env={"CHAT_DEMO_USERS": "0"}).parse_args([])
    assert args.demo_users is False and args.data_dir == DEFAULT_DATA_DIR


def test_help_names_every_variable() -> None:
    text = core_parser(env={}).format_help()
    for variable in ("CHAT_HOST", "CHAT_PORT", "CHAT_DATA_DIR", "CHAT_FSYNC", "CHAT_LOG_LEVEL"):
        assert variable in text


# -- the data directory -------------------------------------------------------------------------
def _seed(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name in datadir.SEED_FILES:
        shutil.copy(ROOT / name, root / name)


def test_default_data_dir_is_seeded_once_from_the_shipped_files(tmp_path: Path) -> None:
    _seed(tmp_path)
    default = tmp_path / "data"
    datadir.prepare(default, seed_dir=tmp_path, default=default)
    for name in datadir.SEED_FILES:
        assert (default / name).read_bytes() == (tmp_path / name).read_bytes()
    (default / "users.json").write_text("{}")  # the running data moves on
    datadir.prepare(default, seed_dir=tmp_path, default=default)
    assert (default / "users.json").read_text() == "{}"


def test_an_older_runs_state_is_carried_into_data(tmp_path: Path) -> None:
    _seed(tmp_path)
    (tmp_path / "history.journal").write_text('{"op": "boot", "boot": 7}\n')
    (tmp_path / "tokens.json").write_text("{}")
    default = tmp_path / "data"
    datadir.prepare(default, seed_dir=tmp_path, default=default)
    assert (default / "history.journal").read_text() == '{"op": "boot", "boot": 7}\n'
    assert (default / "tokens.json").exists()


def test_another_data_dir_is_only_created(tmp_path: Path) -> None:
    _seed(tmp_path)
    other = tmp_path / "elsewhere"
    datadir.prepare(other, seed_dir=tmp_path, default=tmp_path / "data")
    assert other.is_dir() and not any(other.iterdir())


def _clone_working_tree(dest: Path) -> Path:
    """The tracked files as they are now, committed in a new repository (a fresh clone)."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        src = ROOT / name.decode()
        if src.is_file():
            (dest / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name.decode())
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "clone"], cwd=dest, check=True)
    return dest


def _git_status(repo: Path) -> str:
    return subprocess.run(
        ["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout


def test_a_run_and_the_users_cli_leave_a_clone_clean(tmp_path: Path) -> None:
    repo = _clone_working_tree(tmp_path / "clone")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    env["PYTHONUNBUFFERED"] = "1"
    add = subprocess.run(
        [sys.executable, "-m", "legacy_socket_server.users", "add", "Dana"],
        cwd=repo,
        env=env,
        input="dana-pass\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert add.returncode == 0, add.stderr
    assert "Dana" in json.loads((repo / "data" / "users.json").read_text())
    assert "Dana" not in json.loads((repo / "users.json").read_text())

    log = tmp_path / "run.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app", "--port", "0", "--core-port", "0"],
            cwd=repo,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: "Chat is running" in log.read_text(), timeout=30, what="make run")
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl+C
        assert proc.wait(30) == 0, log.read_text()
    assert "chat core stopped" in log.read_text()
    assert (repo / "data" / "history.journal").exists() or (repo / "data" / "history.json").exists()
    assert _git_status(repo) == ""
