"""docker-compose.cluster.yml and deploy/haproxy.cfg checked against the code.

No Docker engine here or in CI (as for test_deploy.py): the compose file is validated by
the Compose Specification's schema and by Compose's own loader, the HAProxy configuration
by HAProxy itself (``haproxy -c``), and both against what the programs accept. How the
cluster behaves (failover, sessions on any web app) is proved on loopback by
test_cluster_failover.py and test_web_failover.py with real processes.
"""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest
import yaml
from conftest import ROOT, missing
from deploy_files import clean_env, command_argv, env_mapping, help_text, program_of
from test_deploy import compose_binary, compose_schema, schema_errors

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
    import shutil

    found = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if (ROOT.root / "usr/sbin/haproxy").exists() else None
    )
    if found is None:
        missing("haproxy not found (apt-get install haproxy; see .ci/run)")
    return found  # type: ignore[return-value]


@pytest.mark.parametrize("path", [CLUSTER_FILE, HAPROXY_CFG, ENV_EXAMPLE])
def test_the_deploy_docs_name_the_cluster_files(path: Any) -> None:
    docs = (ROOT / "docs" / "deploy.md").read_text() + (ROOT / "README.md").read_text()
    assert str(path.relative_to(ROOT)) in docs
