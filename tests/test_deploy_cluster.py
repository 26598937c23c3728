"""docker-compose.cluster.yml and deploy/haproxy.cfg checked against the code.

No Docker engine here or in CI (as for test_deploy.py): the compose file is validated by
the Compose Specification's schema and by Compose's own loader, the HAProxy configuration
by HAProxy itself (``haproxy -c``), and both against what the programs accept. How the
cluster behaves (failover, sessions on any web app) is proved on loopback by
test_cluster_failover.py and test_web_failover.py with real processes.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from _haproxy import find_haproxy
from _pg_server import create_database
from _setup import free_port
from conftest import ROOT, missing, start_postgres
from deploy_files import clean_env, command_argv, env_mapping, help_text, interpolate, program_of
from test_deploy import Browser, Service, compose_binary, compose_schema, schema_errors
from waiting import until, wait_for

from legacy_socket_server.client import CoreClient, CoreUnavailable
from legacy_socket_server.tls import ClientTLS

CLUSTER_FILE = ROOT / "docker-compose.cluster.yml"
HAPROXY_CFG = ROOT / "deploy" / "haproxy.cfg"
ENV_EXAMPLE = ROOT / "deploy" / "cluster.env.example"


def load() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_FILE.read_text())


def compose_config(*env: str) -> subprocess.CompletedProcess[str]:
    extra = dict(e.split("=", 1) for e in env)
    return subprocess.run(
        [str(compose_binary()), "-f", str(CLUSTER_FILE), "--project-directory", str(ROOT)]
        + ["config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(**extra),
    )


def test_the_cluster_file_is_valid_compose() -> None:
    doc = load()
    assert schema_errors(compose_schema(compose_binary()), doc) == []
    assert compose_config("POSTGRES_PASSWORD=s3cret").returncode == 0
    # No password, no cluster: compose refuses and says where to put it.
    refused = compose_config()
    assert refused.returncode != 0 and ".env" in refused.stderr, refused.stderr


def test_the_cluster_layout() -> None:
    services = load()["services"]
    assert set(services) == {"postgres", "tls-init", "core", "web", "haproxy"}
    pg = services["postgres"]
    assert pg["image"].startswith("postgres:") and "healthcheck" in pg
    assert any(v.startswith("chat_pg:") for v in pg["volumes"])
    for name in ("core", "web"):
        assert services[name]["deploy"]["replicas"] == 2
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert "ports" not in services[name], f"{name} is reached through HAProxy only"
        url = env_mapping(services[name]["environment"])["CHAT_DATABASE_URL"]
        assert "${POSTGRES_PASSWORD:?" in url
    assert services["haproxy"]["image"].startswith("haproxy:")
    assert sorted(services["haproxy"]["ports"]) == ["5051:5051", "8080:8080"]
    # The password is read from .env, never written in the YAML.
    text = CLUSTER_FILE.read_text()
    assert "POSTGRES_PASSWORD:" in text and not re.search(r"POSTGRES_PASSWORD:\s*[\"']?\w", text)
    assert "POSTGRES_PASSWORD=" in ENV_EXAMPLE.read_text()
    # Every core presents the one certificate tls-init made (one fingerprint to pin).
    core = env_mapping(services["core"]["environment"])
    assert core["CHAT_TLS_CERT"].startswith("/tls/")
    assert "chat_tls:/tls:ro" in services["core"]["volumes"]
    assert "chat_tls:/data" in services["tls-init"]["volumes"]
    # The cores trust HAProxy's fixed address (every client arrives through it).
    lb_address = services["haproxy"]["networks"]["chat"]["ipv4_address"]
    assert lb_address in core["CHAT_TRUSTED_CLIENTS"].split(",")


def test_commands_and_variables_are_ones_the_programs_know() -> None:
    for name, svc in load()["services"].items():
        if "command" not in svc:
            continue
        argv = command_argv(svc["command"])
        help_ = help_text(program_of(argv))
        for flag in (a for a in argv if a.startswith("--")):
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_), (name, flag)
        for var in env_mapping(svc.get("environment")):
            if var.startswith("CHAT_"):
                assert re.search(rf"\b{var}\b", help_), f"{name}: {var} not in its --help"


def test_haproxy_configuration_is_valid_and_matches_the_services() -> None:
    binary = _haproxy()
    checked = subprocess.run(
        [binary, "-c", "-f", str(HAPROXY_CFG)], capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stderr
    cfg = HAPROXY_CFG.read_text()
    services = load()["services"]
    web = env_mapping(services["web"]["environment"])
    core = env_mapping(services["core"]["environment"])
    # Servers are discovered by the services' DNS names, on the ports they listen on.
    assert f"server-template web 16 web:{web['CHAT_WEB_PORT']}" in cfg
    assert f"server-template core 16 core:{core['CHAT_PORT']}" in cfg
    assert f"server-template core 16 core:{core['CHAT_TLS_PORT']}" in cfg
    assert "nameserver dns 127.0.0.11:53" in cfg  # Docker's embedded DNS
    assert web["CHAT_CORE"] == "haproxy:5050" and "bind :5050" in cfg
    for published in services["haproxy"]["ports"]:
        assert f"bind :{published.split(':')[1]}" in cfg


def _haproxy() -> str:
    found = find_haproxy()
    if found is None:
        missing("haproxy not found (apt-get install haproxy; see .ci/run)")
    return found  # type: ignore[return-value]


@pytest.mark.parametrize("path", [CLUSTER_FILE, HAPROXY_CFG, ENV_EXAMPLE])
def test_the_deploy_docs_name_the_cluster_files(path: Any) -> None:
    docs = (ROOT / "docs" / "deploy.md").read_text() + (ROOT / "README.md").read_text()
    assert str(path.relative_to(ROOT)) in docs


# --- the cluster's services run as written ---------------------------------------------------
#
# As test_deploy.py does for docker-compose.yml: each service's command with its environment
# as the file writes them, as a subprocess (``python`` is this interpreter, service names are
# 127.0.0.1, volumes are temp dirs, each listening port a free one). PostgreSQL is a
# throwaway one holding the role and database the official image would create; HAProxy runs
# deploy/haproxy.cfg with its DNS discovery swapped for the two replicas' addresses.


def lb_config(ports: dict[str, int], cores: list[tuple[int, int]], webs: list[int]) -> str:
    """deploy/haproxy.cfg on loopback: the binds on free ports, each ``server-template`` as
    the replicas it would find, no Docker DNS (everything else as written)."""
    out: list[str] = []
    skipping = False
    for line in HAPROXY_CFG.read_text().splitlines():
        if line.startswith("resolvers "):
            skipping = True
            continue
        if skipping and line.startswith("    "):
            continue
        skipping = False
        m = re.match(r"(\s+)bind :(\d+)$", line)
        if m:
            out.append(f"{m.group(1)}bind 127.0.0.1:{ports[m.group(2)]}")
            continue
        m = re.match(r"(\s+)server-template (\w+) \d+ (\w+):(\d+)$", line)
        if m:
            indent, prefix, service, port = m.groups()
            targets = {
                ("web", "8080"): webs,
                ("core", "5050"): [c[0] for c in cores],
                ("core", "5051"): [c[1] for c in cores],
            }[(service, port)]
            out += [f"{indent}server {prefix}{i} 127.0.0.1:{p}" for i, p in enumerate(targets, 1)]
            continue
        # This machine's processes may hold 20,000 files: HAProxy sizes its own need from
        # maxconn (two per connection), and a container's limit is far higher.
        line = re.sub(r"maxconn 20000$", "maxconn 4000", line)
        out.append(line.replace(" resolvers docker init-addr none resolve-prefer ipv4", ""))
    return "\n".join(out) + "\n"


async def test_the_cluster_services_run_as_written(tmp_path: Path) -> None:
    lb_binary = _haproxy()
    pg = start_postgres()
    procs: list[Service] = []
    lb: subprocess.Popen[bytes] | None = None
    try:
        password = "s3cret"
        admin_url = await create_database(pg, "chat_admin")
        admin = await asyncpg.connect(admin_url)
        await admin.execute(f"CREATE ROLE chat LOGIN PASSWORD '{password}'")
        await admin.execute("CREATE DATABASE chat OWNER chat")
        await admin.close()
        doc = yaml.safe_load(
            CLUSTER_FILE.read_text().replace("${POSTGRES_PASSWORD:?", "${POSTGRES_PASSWORD-")
        )
        doc = interpolate(doc, {"POSTGRES_PASSWORD": password})
        services = doc["services"]
        lb_ports = {p: free_port() for p in ("8080", "5051", "5050")}
        volumes = {"chat_tls": tmp_path / "chat_tls"}

        def service(name: str, replica: int, port: int, tls_port: int = 0) -> Service:
            svc = services[name]
            data = tmp_path / f"{name}{replica}"
            mounts = {"/data": data}
            for v in svc.get("volumes", []):
                vol, at = v.split(":")[:2]
                mounts[at] = volumes[vol]

            def rewrite(value: str) -> str:
                for at, where in mounts.items():
                    if value == at or value.startswith(at + "/"):
                        return str(where) + value[len(at) :]
                value = value.replace("@postgres:5432/", f"@127.0.0.1:{pg.port}/")
                value = value.replace("haproxy:5050", f"127.0.0.1:{lb_ports['5050']}")
                return "127.0.0.1" if value == "0.0.0.0" else value

            env = {k: rewrite(v) for k, v in env_mapping(svc.get("environment")).items()}
            for var, value in (("CHAT_PORT", port), ("CHAT_WEB_PORT", port)):
                if var in env:
                    env[var] = str(value)
            if tls_port:
                env["CHAT_TLS_PORT"] = str(tls_port)
            argv = [rewrite(a) for a in command_argv(svc["command"])]
            assert argv[0] == "python"
            argv[0] = sys.executable
            if name == "web":
                argv[argv.index("--core") + 1] = env["CHAT_CORE"]
            health = svc.get("healthcheck", {}).get("test", ["CMD", "true"])[1:]
            health = [sys.executable if a == "python" else a for a in health]
            return Service(
                name, argv, clean_env(**env), health, 10.0, port, tls_port, data.with_suffix(".log")
            )

        tls_init = service("tls-init", 1, 0)
        done = subprocess.run(  # noqa: ASYNC221 - nothing else runs on this loop yet
            tls_init.argv, env=tls_init.env, cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        fingerprint = done.stdout.strip()
        cores = [(free_port(), free_port()) for _ in range(2)]
        for i, (port, tls) in enumerate(cores, 1):
            procs.append(service("core", i, port, tls).start())
        for core in procs:
            core.wait_healthy()  # the core's healthcheck as written (a framed ping)
        webs = [free_port() for _ in range(2)]
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(lb_config(lb_ports, cores, webs))
        with open(tmp_path / "haproxy.log", "ab") as log:
            lb = subprocess.Popen(  # noqa: ASYNC220 - a server process, started once
                [lb_binary, "-f", str(cfg), "-db"], stdout=log, stderr=subprocess.STDOUT
            )
        for i, port in enumerate(webs, 1):
            procs.append(service("web", i, port).start())
        for web in procs[2:]:
            web.wait_healthy()

        # A browser through HAProxy's HTTP port; a desktop client through its TLS port,
        # pinning the one certificate tls-init made.
        site = Browser(f"http://127.0.0.1:{lb_ports['8080']}")
        wait_for(lambda: _answers(site.base + "/healthz"), what="a web app behind HAProxy")
        status, body = site.call("POST", "/api/login", {"username": "Alice", "password": "123"})
        assert status == 200, body
        tls = ClientTLS(fingerprint=fingerprint)

        async def desktop() -> CoreClient:
            client = await CoreClient.connect("127.0.0.1", lb_ports["5051"], tls=tls)
            return client

        bob = await until(
            lambda: _connect_or_none(desktop, CoreUnavailable), what="TLS via HAProxy"
        )
        token = (await bob.login("Bob", "456"))["token"]
        status, sent = site.call("POST", "/api/messages", {"to": "Bob", "text": "through it all"})
        assert status == 200, sent
        history = await bob.call("history", **{"with": "Alice"})
        assert [m["text"] for m in history["messages"]] == ["through it all"]

        # kill -9 the core Bob is on: he resumes on the other through the same port.
        on = next(c for c in procs[:2] if "Bob logged in" in c.output())
        assert on.proc is not None
        os.kill(on.proc.pid, signal.SIGKILL)
        await bob.close()

        async def resumed() -> CoreClient | None:
            try:
                client = await desktop()
                await client.resume(token)
                return client
            except Exception:
                return None

        bob = await until(resumed, timeout=20, what="Bob resumed on the other core")
        # The web app's own core connection may have been on the dead core too: while it
        # resumes, a send answers 503 core_unavailable and the page sends again (same id).
        again = {"to": "Bob", "text": "after the kill", "client_msg_id": "k-1"}
        wait_for(lambda: site.call("POST", "/api/messages", again)[0] == 200, what="a send")
        texts = [m["text"] for m in (await bob.call("history", **{"with": "Alice"}))["messages"]]
        assert texts == ["through it all", "after the kill"]
        await bob.close()
    finally:
        for svc in reversed(procs):
            svc.stop()
        if lb is not None:
            lb.terminate()
            lb.wait(10)
        pg.stop()


async def _connect_or_none(connect: Any, error: type[Exception]) -> Any:
    try:
        return await connect()
    except error:
        return None


def _answers(url: str) -> bool:
    """200 from ``url`` (HAProxy answers 503 in HTML until its checks find a server up)."""
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status == 200
    except OSError:
        return False
