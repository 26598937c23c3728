"""The core's request path compiled with mypyc, used only while it matches its sources.

``python -m legacy_socket_server.native_build`` compiles :data:`MODULES` (codec, event
logs, chat rules, server) into C extensions next to their sources and writes a manifest
of the sources' SHA-256 (``_native.json``). ``make run`` and ``make test`` build them; a
machine without a C compiler runs the same modules as Python. The Python source is the
reference: the extensions are that code compiled, about 1.4x fewer CPU-seconds per
message (docs/performance.md#core-efficiency).

Python imports an extension before a ``.py`` of the same name, so an extension built
from older sources would silently run old code. :func:`activate` (called when the package
is imported, before any of these modules) therefore compares the manifest with the
sources: if any changed since the build, or ``TEAMCHAT_PURE_PYTHON=1`` is set, every one of
them loads from its ``.py`` (all or none: compiled classes inherit from each other).

    python -m legacy_socket_server.native_build           # compile (needs gcc and mypy)
    python -m legacy_socket_server.native_build status    # which build runs, and why
    python -m legacy_socket_server.native_build clean     # remove the extensions
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

PACKAGE = __name__.rpartition(".")[0]
PACKAGE_DIR = Path(__file__).resolve().parent
MANIFEST = PACKAGE_DIR / "_native.json"
#: Every request runs through these; the rest (storage in PostgreSQL, CLIs, TLS, the
#: desktop client) is not worth a compiler.
MODULES = (
    "contract",
    "conversations",
    "deadlines",
    "events",
    "limits",
    "login",
    "protocol",
    "replication",
    "rooms",
    "chat",
    "server",
    "session",
    "store",
    "validation",
)
#: Not one of the core's CHAT_* settings: it picks which build of the same code runs.
PURE_ENV = "TEAMCHAT_PURE_PYTHON"
_EXT = sysconfig.get_config_var("EXT_SUFFIX") or ".so"


class Status:
    """Which build this process runs (``active``: the compiled one) and why."""

    def __init__(self, active: bool, reason: str) -> None:
        self.active = active
        self.reason = reason

    def __str__(self) -> str:
        return f"{'compiled (mypyc)' if self.active else 'pure Python'}: {self.reason}"


def sources() -> dict[str, Path]:
    return {name: PACKAGE_DIR / f"{name}.py" for name in MODULES}


def _digests() -> dict[str, str]:
    return {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in sources().items()}


def _group_libraries() -> list[Path]:
    # mypyc puts the code of every module in one library, a top-level module named after a
    # hash of the module list; the build moves it in here and activate() loads it by path.
    return sorted(PACKAGE_DIR.glob(f"*__mypyc{_EXT}"))


def extensions() -> list[Path]:
    """The compiled files present for this Python (modules and the group library)."""
    modules = [p for p in (PACKAGE_DIR / f"{n}{_EXT}" for n in MODULES) if p.exists()]
    return modules + _group_libraries()


def check() -> Status:
    """Whether the extensions may be used: present, complete, built from these sources."""
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return Status(False, f"{PURE_ENV} is set")
    present = extensions()
    if not present:
        return Status(False, "not built (python -m legacy_socket_server.native_build)")
    if len(present) != len(MODULES) + 1:
        return Status(False, "the build is incomplete; build it again")
    try:
        manifest = json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        return Status(False, f"{MANIFEST.name} is missing or unreadable; build it again")
    if manifest.get("ext_suffix") != _EXT or manifest.get("modules") != _digests():
        return Status(False, "the sources changed since the build; build it again")
    if [p.name for p in _group_libraries()] != [manifest.get("group")]:
        return Status(False, "the build is incomplete; build it again")
    return Status(True, "built from these sources")


class _FromSource(importlib.abc.MetaPathFinder):
    """Loads the compiled modules from their ``.py``, ahead of the extensions."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        package, _, name = fullname.rpartition(".")
        if package != PACKAGE or name not in MODULES:
            return None
        source = str(PACKAGE_DIR / f"{name}.py")
        loader = importlib.machinery.SourceFileLoader(fullname, source)
        return importlib.util.spec_from_file_location(fullname, source, loader=loader)


status: Status = Status(False, "not checked yet")


def activate() -> Status:
    """Decide once per process, before any of :data:`MODULES` is imported."""
    global status
    status = check()
    if status.active:
        _load_group(_group_libraries()[0])
    elif extensions() and not any(isinstance(f, _FromSource) for f in sys.meta_path):
        sys.meta_path.insert(0, _FromSource())
        if os.environ.get(PURE_ENV, "") in ("", "0"):
            print(f"{PACKAGE}: {status}; running the Python modules", file=sys.stderr)
    return status


def _load_group(path: Path) -> None:
    """Put the group library in ``sys.modules`` under its own name: the modules' shims
    import it by that name, and it lives here rather than on ``sys.path``."""
    name = path.name[: -len(_EXT)]
    if name in sys.modules:
        return
    loader = importlib.machinery.ExtensionFileLoader(name, str(path))
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)


def clean() -> None:
    for path in extensions():
        path.unlink()
    MANIFEST.unlink(missing_ok=True)


def build() -> int:
    """Compile :data:`MODULES` in place; 0 on success (the manifest is written last)."""
    clean()
    root = PACKAGE_DIR.parent
    files = [str(p.relative_to(root)) for p in sources().values()]
    digests = _digests()
    with tempfile.TemporaryDirectory(prefix="mypyc-") as tmp:
        script = (
            "import sys\n"
            "from setuptools import setup\n"
            "from mypyc.build import mypycify\n"
            "setup(name='chat-core-native', script_args=['build_ext', '--inplace',\n"
            "      '--build-temp', sys.argv[1]],\n"
            "      ext_modules=mypycify(['--ignore-missing-imports', '--follow-imports=silent',\n"
            "                            *sys.argv[2:]], opt_level='3',\n"
            "                           target_dir=sys.argv[1]))\n"
        )
        for stray in root.glob(f"*__mypyc{_EXT}"):  # an interrupted build's
            stray.unlink()
        done = subprocess.run(
            [sys.executable, "-c", script, tmp, *files],
            cwd=root,
            capture_output=True,
            text=True,
        )
    if done.returncode != 0:
        print(done.stdout[-4000:], done.stderr[-4000:], sep="\n", file=sys.stderr)
        clean()
        return done.returncode
    groups = list(root.glob(f"*__mypyc{_EXT}"))
    for group in groups:
        group.replace(PACKAGE_DIR / group.name)
    if len(groups) != 1 or _digests() != digests:  # edited while it compiled: the old text
        clean()
        print("the sources changed during the build; build it again", file=sys.stderr)
        return 1
    manifest = {"ext_suffix": _EXT, "group": groups[0].name, "modules": digests}
    MANIFEST.write_text(json.dumps(manifest, indent=1) + "\n")
    return 0
