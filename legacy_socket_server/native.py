"""The core's request path compiled with mypyc, used only while it matches its sources.

``python -m legacy_socket_server.native_build`` compiles :data:`MODULES` (codec, event
logs, chat rules, server) into C extensions in ``_compiled/`` with a manifest of the
package's sources' SHA-256. ``make run`` and ``make test`` build them; a
machine without a C compiler runs the same modules as Python. The Python source is the
reference: the extensions are that code compiled, about 1.4x fewer CPU-seconds per
message (docs/performance.md#core-efficiency).

An extension built from other sources than those beside it would run old code silently,
so the extensions live in a directory Python does not search: :func:`activate` (called
when the package is imported, before any of these modules) compares the manifest with
every source of the package (the compiled code also relies on the types of the modules it
calls) and only then puts ``_compiled/`` first on the package's path. A source changed
since the build, a file missing, a library that does not load here, or
``TEAMCHAT_PURE_PYTHON=1``: every module loads from its ``.py`` (all or none: compiled
classes inherit from each other), and an old checkout never sees the directory.

    python -m legacy_socket_server.native_build           # compile (needs gcc and mypy)
    python -m legacy_socket_server.native_build status    # which build runs, and why
    python -m legacy_socket_server.native_build clean     # remove the extensions
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

PACKAGE = __name__.rpartition(".")[0]
PACKAGE_DIR = Path(__file__).resolve().parent
COMPILED_DIR = PACKAGE_DIR / "_compiled"
MANIFEST = COMPILED_DIR / "manifest.json"
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


def _digests() -> dict[str, str]:
    # Every module of the package, not only the compiled ones: their code was compiled
    # against the types of the others (a list where a tuple now comes is a TypeError).
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(_package_sources())}


def _package_sources() -> list[Path]:
    return list(PACKAGE_DIR.glob("*.py"))


def _group_libraries(where: Path = COMPILED_DIR) -> list[Path]:
    # mypyc puts the code of every module in one library, a top-level module named after a
    # hash of the module list; activate() loads it by path.
    return sorted(where.glob(f"*__mypyc{_EXT}"))


def extensions(where: Path = COMPILED_DIR) -> list[Path]:
    """The compiled files present for this Python (modules and the group library)."""
    modules = [p for p in (where / f"{n}{_EXT}" for n in MODULES) if p.exists()]
    return modules + _group_libraries(where)


def check() -> Status:
    """Whether the extensions may be used: present, complete, built from these sources."""
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return Status(False, f"{PURE_ENV} is set")
    present = extensions()
    if not present:
        return Status(False, "not built (python -m legacy_socket_server.native_build)")
    try:
        manifest = json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        return Status(False, "the build is incomplete; build it again")
    if len(present) != len(MODULES) + 1 or [p.name for p in _group_libraries()] != [
        manifest.get("group")
    ]:
        return Status(False, "the build is incomplete; build it again")
    if manifest.get("ext_suffix") != _EXT or manifest.get("sources") != _digests():
        return Status(False, "the sources changed since the build; build it again")
    return Status(True, "built from these sources")


status: Status = Status(False, "not checked yet")


def activate() -> Status:
    """Decide once per process, before any of :data:`MODULES` is imported."""
    global status
    status = check()
    if status.active:
        try:
            _load_group(_group_libraries()[0])
        except (ImportError, OSError) as exc:  # built for another system, damaged
            status = Status(False, f"the compiled modules do not load here ({exc})")
        else:
            sys.modules[PACKAGE].__path__.insert(0, str(COMPILED_DIR))
            return status
    if extensions() and os.environ.get(PURE_ENV, "") in ("", "0"):
        print(f"{PACKAGE}: {status}; running the Python modules", file=sys.stderr)
    return status


def _load_group(path: Path) -> None:
    """Put the group library in ``sys.modules`` under its own name: the modules' shims
    import it by that name, and it lives in ``_compiled/`` rather than on ``sys.path``."""
    name = path.name[: -len(_EXT)]
    if name in sys.modules:
        return
    loader = importlib.machinery.ExtensionFileLoader(name, str(path))
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


def clean() -> None:
    shutil.rmtree(COMPILED_DIR, ignore_errors=True)


_SETUP = """import sys
from setuptools import setup
from mypyc.build import mypycify
setup(name="chat-core-native", script_args=["build_ext", "--inplace", "--build-temp", sys.argv[1]],
      ext_modules=mypycify(["--ignore-missing-imports", "--follow-imports=silent", *sys.argv[2:]],
                           opt_level="3", target_dir=sys.argv[1]))
"""


def build() -> int:
    """Compile :data:`MODULES` into ``_compiled/``; 0 on success.

    Compiled in a copy of the package's sources in a temp dir (nothing is written beside
    the sources, or beside the package: in site-packages other projects' libraries live
    there), then put in place with one rename, the manifest already inside.
    """
    digests = _digests()
    with tempfile.TemporaryDirectory(prefix="mypyc-") as tmp_name:
        tmp = Path(tmp_name)
        src = tmp / "src" / PACKAGE
        src.mkdir(parents=True)
        for path in _package_sources():
            shutil.copy2(path, src / path.name)
        files = [f"{PACKAGE}/{name}.py" for name in MODULES]
        done = subprocess.run(
            [sys.executable, "-c", _SETUP, str(tmp / "build"), *files],
            cwd=tmp / "src",
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            print(done.stdout[-4000:], done.stderr[-4000:], sep="\n", file=sys.stderr)
            return done.returncode or 1
        staged = tmp / "src" / "_compiled"
        staged.mkdir()
        for path in [*extensions(src), *_group_libraries(tmp / "src")]:
            path.replace(staged / path.name)
        groups = _group_libraries(staged)
        if len(extensions(staged)) != len(MODULES) + 1 or len(groups) != 1:
            print("the build made other files than expected", file=sys.stderr)
            return 1
        if _digests() != digests:
            print("the sources changed during the build; build it again", file=sys.stderr)
            return 1
        manifest = {"ext_suffix": _EXT, "group": groups[0].name, "sources": digests}
        (staged / MANIFEST.name).write_text(json.dumps(manifest, indent=1) + "\n")
        # Into the package's directory (maybe another filesystem), then one rename.
        incoming = PACKAGE_DIR / f"_compiled.new-{os.getpid()}"
        shutil.rmtree(incoming, ignore_errors=True)
        shutil.copytree(staged, incoming)
    clean()
    incoming.rename(COMPILED_DIR)
    return 0
