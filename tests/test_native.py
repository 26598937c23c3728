"""The compiled core modules (legacy_socket_server/native.py): used only while they match
their sources, all or none, and the Python modules they are compiled from pass the core's
suites too (the whole suite runs on whichever build is in use, compiled under CI)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import missing

from legacy_socket_server import native

ROOT = Path(__file__).resolve().parent.parent
EXT = native._EXT
PROBE = (
    "import legacy_socket_server.chat, legacy_socket_server.protocol, legacy_socket_server.store\n"
    "for m in ('chat', 'protocol', 'store'):\n"
    "    print(getattr(legacy_socket_server, m).__file__)\n"
)


def require_build() -> None:
    state = native.check()
    if not state.active:  # CI builds it (make): there the suite must test what runs
        missing(f"the core is not compiled here: {state}")


def loaded_from(where: Path, **env: str) -> tuple[list[str], str]:
    """The files three compiled modules load from, in a fresh process run in ``where``."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=where,
        env={**os.environ, native.PURE_ENV: "", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split(), done.stderr


def copy_of_the_package(tmp: Path) -> Path:
    shutil.copytree(
        native.PACKAGE_DIR,
        tmp / "legacy_socket_server",
        ignore=shutil.ignore_patterns("__pycache__", "desktop"),
    )
    return tmp / "legacy_socket_server"


def assert_python_modules(where: Path, reason: str) -> None:
    """A process started in ``where`` runs the Python modules and says why on stderr."""
    files, warnings = loaded_from(where)
    assert all(f.endswith(".py") for f in files), files
    assert reason in warnings


def test_the_compiled_modules_are_in_use() -> None:
    require_build()
    files, warnings = loaded_from(ROOT)
    assert all(f.endswith(EXT) for f in files), files
    assert warnings == ""
    assert native.status.active  # this process too: the suite tests what runs


def test_a_build_older_than_its_sources_is_not_used(tmp_path: Path) -> None:
    require_build()
    package = copy_of_the_package(tmp_path)
    files, _ = loaded_from(tmp_path)
    # (mypyc's modules after the first report a __file__ with the package twice in it.)
    assert all(f.startswith(str(package)) and f.endswith(EXT) for f in files), files
    chat = package / "chat.py"
    chat.write_text(chat.read_text() + "\n# edited after the build\n")
    files, warnings = loaded_from(tmp_path)
    # All from source, not only the edited one: compiled classes inherit from each other.
    assert files == [str(package / f"{m}.py") for m in ("chat", "protocol", "store")]
    assert "the sources changed since the build" in warnings


def test_a_build_older_than_a_module_it_calls_is_not_used(tmp_path: Path) -> None:
    """The compiled code relies on the types of the modules it calls (users.py is not
    compiled): one of them edited, and the compiled build is not used either."""
    require_build()
    package = copy_of_the_package(tmp_path)
    users = package / "users.py"
    users.write_text(users.read_text() + "\n# edited after the build\n")
    assert_python_modules(tmp_path, "the sources changed since the build")


def test_a_library_that_does_not_load_here_is_not_used(tmp_path: Path) -> None:
    """Built for another system, or damaged: the Python modules run, with the reason."""
    require_build()
    package = copy_of_the_package(tmp_path)
    (group,) = (package / "_compiled").glob(f"*__mypyc{EXT}")
    group.write_bytes(b"not a shared library")
    assert_python_modules(tmp_path, "do not load here")


def test_an_incomplete_build_is_not_used(tmp_path: Path) -> None:
    require_build()
    package = copy_of_the_package(tmp_path)
    (package / "_compiled" / f"events{EXT}").unlink()
    assert_python_modules(tmp_path, "incomplete")


def test_python_modules_on_request(tmp_path: Path) -> None:
    require_build()
    files, warnings = loaded_from(ROOT, **{native.PURE_ENV: "1"})
    assert all(f.endswith(".py") for f in files), files
    assert warnings == ""  # asked for: nothing to warn about


def test_the_python_modules_pass_the_core_suites() -> None:
    """Under CI the suite runs compiled; the modules' Python source, which a machine
    without a compiler runs, is held to the same rules and wire contract."""
    require_build()
    suites = ["test_protocol.py", "test_service.py", "test_service_sessions.py", "test_rooms.py"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *suites],
        cwd=ROOT / "tests",
        env={**os.environ, native.PURE_ENV: "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "failed" not in done.stdout
