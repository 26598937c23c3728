"""Reading the deploy files (docker-compose.yml, Dockerfile, .dockerignore) for the deploy tests.

Small parsers for what the tests check: Compose interpolation and ports, Dockerfile stages
and instructions, .dockerignore matching, and the programs' own --help and settings.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from conftest import ROOT

COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

#: What the issue asks for, written once: the services, their commands and what they publish.
EXPECTED_COMMANDS = {
    "core": "python server.py --host 0.0.0.0 --data-dir /data",
    "web": "python -m app --host 0.0.0.0 --core core:5050",
}
#: The variable each program reads its listening port from (when no --port flag is given).
PORT_VARIABLE = {"core": "CHAT_PORT", "web": "CHAT_WEB_PORT"}
#: The port each service publishes to the network: the core only its TLS port
#: (docs/protocol.md#tls), its plaintext one stays inside the compose network.
PUBLISHED_VARIABLE = {"core": "CHAT_TLS_PORT", "web": "CHAT_WEB_PORT"}
DATA_DIR = "/data"
CHAT_VAR = re.compile(r"\bCHAT_[A-Z_]+\b")
#: The code each service runs, where its settings are read (the desktop client's are not).
PROGRAM_SOURCES = {
    "core": lambda: [ROOT / "server.py", *sorted((ROOT / "legacy_socket_server").glob("*.py"))],
    "web": lambda: sorted((ROOT / "app").rglob("*.py")),
}
#: Compose durations: "1m30s", "10s", "500ms".
DURATION_RE = re.compile(r"^(\d+(\.\d+)?(h|m|s|ms|us|ns))+$")


# --- reading the files ----------------------------------------------------------------------


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


_INTERPOLATION_RE = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?-)(?P<default>[^}]*))?\}")


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's ``${NAME}``/``${NAME:-default}``/``${NAME-default}``, strictly."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        name, op, default = m.group("name"), m.group("op"), m.group("default")
        if op == ":-":
            return env.get(name) or default
        if op == "-":
            return env.get(name, default)
        return env.get(name, "")

    out = _INTERPOLATION_RE.sub(sub, value)
    assert "$" not in out, f"unsupported interpolation in {value!r} (the test knows ${{A:-b}})"
    return out


def env_mapping(environment: Any) -> dict[str, str]:
    """A service's ``environment`` (a mapping or a list of NAME=VALUE) as str -> str."""
    if environment is None:
        return {}
    if isinstance(environment, list):
        return dict(item.split("=", 1) for item in environment)
    return {k: "" if v is None else str(v) for k, v in environment.items()}


def command_argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def listen_port(name: str, service: dict[str, Any]) -> int:
    """The plaintext port a service's program listens on inside its container."""
    argv = command_argv(service["command"])
    if "--port" in argv:
        return int(argv[argv.index("--port") + 1])
    return int(env_mapping(service.get("environment"))[PORT_VARIABLE[name]])


def published(service: dict[str, Any]) -> list[tuple[int, int]]:
    """(host port, container port) for each short-syntax ``ports`` entry."""
    out = []
    for entry in service.get("ports", []):
        parts = str(entry).split("/")[0].split(":")
        out.append((int(parts[-2]), int(parts[-1])))
    return out


@dataclass
class Instruction:
    keyword: str
    args: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [i.args for i in self.instructions if i.keyword == keyword]


def dockerfile_stages() -> list[Stage]:
    """Instructions by stage; continuation lines joined, comments dropped."""
    logical: list[str] = []
    buf = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or not stripped:
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        logical.append(buf + stripped)
        buf = ""
    assert not buf, "the Dockerfile ends inside a continued line"
    stages: list[Stage] = []
    for text in logical:
        keyword, _, args = text.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        else:
            assert stages, f"{keyword} before FROM"
            stages[-1].instructions.append(Instruction(keyword, args.strip()))
    return stages


def dockerfile_env(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in stage.all("ENV"):
        for word in shlex.split(args):
            name, sep, value = word.partition("=")
            assert sep, f"ENV {args!r}: write ENV NAME=value"
            env[name] = value
    return env


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(negated, regex) per line, with Docker's matching: Go globs plus ``**``."""
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rx, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                rx, i = rx + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                rx, i = rx + ".*", i + 2
            elif pattern[i] == "*":
                rx, i = rx + "[^/]*", i + 1
            elif pattern[i] == "?":
                rx, i = rx + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                rx, i = rx + pattern[i : end + 1], end + 1
            else:
                rx, i = rx + re.escape(pattern[i]), i + 1
        rules.append((negated, re.compile(rx)))
    return rules


def ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether ``path`` (relative, with /) is left out of the build context."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for negated, rx in rules:
        if any(rx.fullmatch(p) for p in prefixes):
            result = not negated
    return result


def build_context(dest: Path) -> Path:
    """Copy the repo as ``docker build .`` would send it (after .dockerignore) to ``dest``."""
    rules = dockerignore_rules()
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel_dir = Path(dirpath).relative_to(ROOT)
        dirnames[:] = [d for d in dirnames if not ignored((rel_dir / d).as_posix(), rules)]
        for name in filenames:
            rel = (rel_dir / name).as_posix()
            if not ignored(rel, rules):
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / rel, dest / rel)
    return dest


def find_packages(where: Path, include: list[str]) -> set[str]:
    """What ``[tool.setuptools.packages.find]`` picks: folders with ``__init__.py``."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(where):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if "__init__.py" in filenames:
            name = Path(dirpath).relative_to(where).as_posix().replace("/", ".")
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in include):
                found.add(name)
    return found


@functools.cache
def help_text(program: tuple[str, ...]) -> str:
    """``--help`` of a service's program (its command up to the first flag)."""
    proc = subprocess.run(
        [sys.executable, *program[1:], "--help"],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, f"{' '.join(program)} --help failed:\n{proc.stderr}"
    return proc.stdout


def program_of(argv: list[str]) -> tuple[str, ...]:
    i = next((n for n, a in enumerate(argv) if a.startswith("--")), len(argv))
    return tuple(argv[:i])


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any CHAT_* setting of the developer's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def parse_duration(text: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|us|ns|h|m|s)", text))
