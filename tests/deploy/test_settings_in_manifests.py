"""Every process accepts the configuration the manifests give it: each component's settings
object is built from the environment its Kubernetes container (both overlays) or compose
service would see, and no AIOPS_* variable is set that nothing reads."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.settings import GatewaySettings
from services.anomaly.settings import AnomalySettings
from services.feedback.settings import FeedbackSettings
from services.remediation.settings import RemediationSettings
from services.telemetry.settings import TelemetrySettings
from tests.deploy import tools

SETTINGS: dict[str, Callable[[Mapping[str, str]], Any]] = {
    "gateway": GatewaySettings.from_env,
    "feedback": FeedbackSettings.from_env,
    "telemetry": TelemetrySettings.from_env,
    "anomaly": AnomalySettings.from_env,
    "remediation": RemediationSettings.from_env,
}
Doc = dict[str, Any]


def _container_env(docs: list[Doc], name: str) -> dict[str, str]:
    """The environment of component `name`'s container, resolved as the kubelet would."""
    objects = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    (workload,) = [
        d
        for d in docs
        if d["kind"] in {"Deployment", "StatefulSet", "Rollout"} and d["metadata"]["name"] == name
    ]
    container = workload["spec"]["template"]["spec"]["containers"][0]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(objects[("ConfigMap", source["configMapRef"]["name"])]["data"])
    for var in container.get("env", []):
        if "value" in var:
            value = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), var["value"])
        elif "configMapKeyRef" in var["valueFrom"]:
            ref = var["valueFrom"]["configMapKeyRef"]
            value = objects[("ConfigMap", ref["name"])]["data"][ref["key"]]
        elif "secretKeyRef" in var["valueFrom"]:
            ref = var["valueFrom"]["secretKeyRef"]
            value = objects[("Secret", ref["name"])]["stringData"][ref["key"]]
        else:  # fieldRef: the pod's name
            value = f"{name}-0"
        env[var["name"]] = value
    return env


def _known_names() -> set[str]:
    source = "\n".join(
        p.read_text() for root in ("services", "gateway") for p in (tools.ROOT / root).rglob("*.py")
    )
    names = set(re.findall(r"AIOPS_[A-Z0-9_]+", source))
    for svc in ("FEEDBACK", "TELEMETRY", "ANOMALY", "REMEDIATION", "GATEWAY"):
        names |= {f"AIOPS_{svc}_{s}" for s in ("GRPC_PORT", "METRICS_PORT", "ADDR", "METRICS_ADDR")}
    return names


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_every_component_accepts_its_kubernetes_configuration(overlay: str) -> None:
    docs = tools.kustomize_build(tools.DEPLOY / "k8s" / "overlays" / overlay)
    known = _known_names()
    for name, from_env in SETTINGS.items():
        env = _container_env(docs, name)
        unknown = {k for k in env if k.startswith("AIOPS_") and k not in known}
        assert not unknown, f"{name}: nothing reads {sorted(unknown)}"
        from_env(env)  # raises, listing every problem, if a value is invalid


def test_every_component_accepts_its_compose_configuration(tmp_path: Path) -> None:
    compose = yaml.safe_load((tools.ROOT / "docker-compose.yml").read_text())
    known = _known_names()
    for name, from_env in SETTINGS.items():
        env = {
            k: re.sub(r"\$\{(\w+):-([^}]*)\}", r"\2", str(v))
            for k, v in compose["services"][name]["environment"].items()
        }
        unknown = {k for k in env if k.startswith("AIOPS_") and k not in known}
        assert not unknown, f"{name}: nothing reads {sorted(unknown)}"
        from_env({**env, "AIOPS_STATE_DIR": str(tmp_path)})
