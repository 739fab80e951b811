"""Dockerfile, its entrypoint and docker-compose.yml. No Docker engine runs here, so the
files are checked for their structure and the entrypoint is run with a stand-in python."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.deploy import tools

SERVICES = {"feedback": 50051, "telemetry": 50052, "anomaly": 50053, "remediation": 50054}
ENTRYPOINT = tools.DEPLOY / "docker" / "entrypoint.sh"


def _compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((tools.ROOT / "docker-compose.yml").read_text())
    return doc


def _dockerfile() -> list[tuple[str, str]]:
    text = (tools.ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _run_entrypoint(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\necho "python $*"\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    return subprocess.run(
        ["sh", str(ENTRYPOINT), *args], capture_output=True, text=True, env=env, check=False
    )


def test_entrypoint_picks_the_process(tmp_path: Path) -> None:
    for svc in SERVICES:
        assert _run_entrypoint(tmp_path, svc).stdout.strip() == f"python -m services.{svc}"
        assert (tools.ROOT / "services" / svc / "__main__.py").exists()
    assert _run_entrypoint(tmp_path).stdout.strip() == "python -m gateway"
    assert _run_entrypoint(tmp_path, "gateway").stdout.strip() == "python -m gateway"
    out = _run_entrypoint(tmp_path, "aiops", "token", "--role", "viewer").stdout.strip()
    assert out == "python -m services.cli token --role viewer"
    bad = _run_entrypoint(tmp_path, "nope")
    assert bad.returncode == 64 and "usage" in bad.stderr


def test_dockerfile_is_multi_stage_small_and_non_root() -> None:
    steps = _dockerfile()
    stages = [rest for word, rest in steps if word == "FROM"]
    assert len(stages) >= 3
    assert all("slim" in s or s.startswith("${PYTHON_IMAGE}") for s in stages)
    final = steps[max(i for i, (w, _) in enumerate(steps) if w == "FROM") :]
    users = [rest for word, rest in final if word == "USER"]
    assert users and not users[-1].startswith(("0", "root"))
    assert ("ENTRYPOINT", '["/app/entrypoint.sh"]') in final
    # Build tools stay in earlier stages: the final stage installs nothing.
    assert not any(w == "RUN" and "pip install" in r for w, r in final)
    kept = {line.rstrip("/") for line in (tools.ROOT / ".dockerignore").read_text().split()}
    for word, rest in steps:
        if word == "COPY" and "--from" not in rest:
            for source in rest.split()[:-1]:
                assert (tools.ROOT / source).exists(), source
                assert f"!{source.rstrip('/')}" in kept, f"{source} is excluded by .dockerignore"


def test_compose_runs_the_suite_on_one_host() -> None:
    compose = _compose()
    services = compose["services"]
    assert {"redis", "postgres", "gateway", *SERVICES} <= services.keys()
    redis_cmd = services["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    assert services["gateway"]["ports"] == ["3000:3000"]
    for name in ("gateway", *SERVICES):
        svc = services[name]
        assert svc["command"] == [name]
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"]
        assert not svc["user"].startswith("0")
        assert svc["healthcheck"]["test"][0] == "CMD"
        for dep in svc.get("depends_on", {}):
            assert dep in services
        env = svc["environment"]
        for peer, port in SERVICES.items():
            assert env[f"AIOPS_{peer.upper()}_ADDR"] == f"{peer}:{port}"
        assert "@redis:6379" in env["AIOPS_REDIS_URL"]
        assert "@postgres:5432/" in env["AIOPS_DATABASE_URL"]
    for name in ("redis", "postgres"):
        assert services[name]["healthcheck"]["test"]


def test_compose_mounts_exist_and_volumes_are_declared() -> None:
    compose = _compose()
    declared = set(compose["volumes"])
    for name, svc in compose["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (tools.ROOT / source).exists(), (name, source)
            else:
                assert source in declared, (name, source)


def test_compose_prometheus_config_is_valid() -> None:
    tools.run(
        [tools.promtool(), "check", "config", str(tools.DEPLOY / "docker" / "prometheus.yml")]
    )
    config = yaml.safe_load((tools.DEPLOY / "docker" / "prometheus.yml").read_text())
    targets = {
        t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    }
    services = _compose()["services"]
    for target in targets:
        host = re.sub(r":\d+$", "", target)
        assert host in services, target
