"""The admin CLIs and rooms: users join ``general`` and leave every room through the core's
rules; the rooms CLI lists beside a running core and refuses to race its journal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import DEMO_USERS, ROOT, CoreProcess
from core_helpers import RawClient


def cli(module: str, data: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"legacy_socket_server.{module}", "--data-dir", str(data), *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def rooms_of(core: CoreProcess, name: str, password: str) -> dict[str, dict]:
    client = await RawClient.connect(core.host, core.port)
    try:
        reply = await client.call("login", username=name, password=password)
        return {r["name"]: r for r in reply["rooms"]}
    finally:
        await client.close()


async def test_rooms_cli_lists_beside_a_running_core_and_changes_only_when_stopped(
    core_proc: CoreProcess,
) -> None:
    data = core_proc.data_dir
    listed = cli("rooms_cli", data, "list")
    assert listed.returncode == 0 and "general\tpublic\t3 members" in listed.stdout
    refused = cli("rooms_cli", data, "remove", "general", "Bob")
    assert refused.returncode == 1 and "in use by a running core" in refused.stderr
    core_proc.stop()
    done = cli("rooms_cli", data, "remove", "General", "Bob")
    assert done.returncode == 0, done.stderr
    assert "general\tpublic\t2 members" in cli("rooms_cli", data, "list").stdout
    assert cli("rooms_cli", data, "add", "nowhere", "Bob").returncode == 1
    assert cli("rooms_cli", data, "add", "general", "Zed").returncode == 1
    core_proc.start()
    rooms = await rooms_of(core_proc, "Bob", DEMO_USERS["Bob"])
    assert rooms["general"]["joined"] is False and rooms["general"]["members"] == 2


async def test_users_cli_add_joins_general_and_remove_leaves_every_room(
    core_proc: CoreProcess,
) -> None:
    data = core_proc.data_dir
    assert cli("users", data, "add", "Dana", stdin="dana-pw\n").returncode == 0
    # The running core sees the new user at her login: she is in general.
    rooms = await rooms_of(core_proc, "Dana", "dana-pw")
    assert rooms["general"]["joined"] is True and rooms["general"]["members"] == 4
    client = await RawClient.connect(core_proc.host, core_proc.port)
    await client.call("login", username="Alice", password=DEMO_USERS["Alice"])
    await client.call("create_room", room="crew", private=True, members=["Dana"])
    await client.close()
    core_proc.stop()
    assert cli("users", data, "remove", "Dana").returncode == 0
    core_proc.start()  # the core sees it at start: Dana leaves every room
    listed = cli("rooms_cli", data, "list").stdout
    assert "general\tpublic\t3 members" in listed and "crew\tprivate\t1 member\n" in listed
