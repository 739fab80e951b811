"""deploy/k8s: both overlays render with kustomize and validate offline against the
Kubernetes schemas (kubernetes-validate); Argo CRDs are checked for their required fields;
and the properties the runbook relies on hold: probes, hardening, least-privilege RBAC,
deny-by-default network policies, secrets, AOF, sharding."""

from __future__ import annotations

import copy
import re
from typing import Any

import kubernetes_validate
import pytest

from tests.deploy import tools

K8S_VERSION = "1.32.0"
OVERLAYS = ("dev", "prod")
SERVICES = {
    "feedback": ("aiops.feedback.v1.FeedbackService", 50051),
    "telemetry": ("aiops.telemetry.v1.TelemetryService", 50052),
    "anomaly": ("aiops.anomaly.v1.AnomalyService", 50053),
    "remediation": ("aiops.remediation.v1.RemediationService", 50054),
}
CRD_KINDS = {"Rollout", "AnalysisTemplate"}
WORKLOADS = {"Deployment", "StatefulSet", "Rollout"}
Doc = dict[str, Any]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[Doc]]:
    return request.param, tools.kustomize_build(tools.DEPLOY / "k8s" / "overlays" / request.param)


def _find(docs: list[Doc], kind: str, name: str | None = None) -> list[Doc]:
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def _one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = _find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _workloads(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if d["kind"] in WORKLOADS]


def _config(docs: list[Doc]) -> dict[str, str]:
    data: dict[str, str] = _one(docs, "ConfigMap", "aiops-config")["data"]
    return data


def test_core_resources_validate_against_kubernetes_schemas(
    rendered: tuple[str, list[Doc]],
) -> None:
    overlay, docs = rendered
    assert len(docs) > 30
    problems = []
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message}")
    assert not problems, f"{overlay}: " + "\n".join(problems)


def test_schema_validation_rejects_an_unknown_field(rendered: tuple[str, list[Doc]]) -> None:
    _, docs = rendered
    deployment = copy.deepcopy(_one(docs, "Deployment", "feedback"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grcp"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_every_resource_is_in_the_overlay_namespace(rendered: tuple[str, list[Doc]]) -> None:
    overlay, docs = rendered
    namespace = _one(docs, "Namespace", "aiops-dev" if overlay == "dev" else "aiops")
    name = namespace["metadata"]["name"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == name, doc["metadata"]["name"]


def test_each_component_has_workload_service_autoscaling_budget_and_account(
    rendered: tuple[str, list[Doc]],
) -> None:
    _, docs = rendered
    kinds = {"gateway": "Rollout", "anomaly": "StatefulSet"}
    for name in ("gateway", *SERVICES):
        workload = _one(docs, kinds.get(name, "Deployment"), name)
        _one(docs, "Service", name)
        _one(docs, "PodDisruptionBudget", name)
        _one(docs, "ServiceAccount", name)
        assert workload["spec"]["template"]["spec"]["serviceAccountName"] == name
        if name != "anomaly":
            # anomaly's shard ring is a fixed list: scaled with it, never by an HPA.
            hpa = _one(docs, "HorizontalPodAutoscaler", name)
            target = hpa["spec"]["scaleTargetRef"]
            assert (target["kind"], target["name"]) == (workload["kind"], name)
            assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_services_expose_grpc_and_metrics_ports_that_select_pods(
    rendered: tuple[str, list[Doc]],
) -> None:
    _, docs = rendered
    for name, (_, port) in SERVICES.items():
        service = _one(docs, "Service", name)
        assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
            "grpc": port,
            "metrics": port - 50051 + 9151,
        }
    for service in _find(docs, "Service"):
        selector = service["spec"]["selector"]
        pods = [
            w
            for w in _workloads(docs)
            if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert pods, f"Service {service['metadata']['name']} selects no pods"
        container_ports = {
            p["name"] for w in pods for c in _containers(w) for p in c.get("ports", [])
        }
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in container_ports, service["metadata"]["name"]


def _containers(workload: Doc) -> list[Doc]:
    containers: list[Doc] = workload["spec"]["template"]["spec"]["containers"]
    return containers


def test_services_use_native_grpc_probes(rendered: tuple[str, list[Doc]]) -> None:
    _, docs = rendered
    for name, (full, port) in SERVICES.items():
        (workload,) = [w for w in _workloads(docs) if w["metadata"]["name"] == name]
        (container,) = _containers(workload)
        assert container["readinessProbe"]["grpc"] == {"port": port, "service": full}
        assert container["livenessProbe"]["grpc"].get("service", "") == ""
    (gateway,) = _containers(_one(docs, "Rollout", "gateway"))
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/health"


def test_pods_are_hardened_and_bounded(rendered: tuple[str, list[Doc]]) -> None:
    _, docs = rendered
    config = _config(docs)
    drain_and_grace = float(config["AIOPS_SHUTDOWN_DRAIN_SECONDS"]) + float(
        config["AIOPS_SHUTDOWN_GRACE_SECONDS"]
    )
    for workload in _workloads(docs):
        name = workload["metadata"]["name"]
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod["terminationGracePeriodSeconds"] > drain_and_grace, name
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert "add" not in sc["capabilities"], name
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= container["resources"][kind].keys(), name


def test_only_remediation_may_touch_the_kubernetes_api(rendered: tuple[str, list[Doc]]) -> None:
    overlay, docs = rendered
    namespace = "aiops-dev" if overlay == "dev" else "aiops"
    assert not _find(docs, "ClusterRole") and not _find(docs, "ClusterRoleBinding")
    (binding,) = _find(docs, "RoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "remediation", "namespace": namespace}
    ]
    (role,) = _find(docs, "Role")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert role["metadata"]["namespace"] == namespace
    assert namespace in _config(docs)["AIOPS_REMEDIATION_ALLOWED_NAMESPACES"].split(",")
    resources = set()
    for rule in role["rules"]:
        assert not {"*", "create", "delete", "deletecollection", "escalate", "bind"} & set(
            rule["verbs"]
        ), rule
        resources |= set(rule["resources"])
    assert "secrets" not in resources and "*" not in resources
    assert {"deployments/scale", "rollouts"} <= resources  # scale up, roll back
    automount = {
        w["metadata"]["name"]
        for w in _workloads(docs)
        if w["spec"]["template"]["spec"].get("automountServiceAccountToken", True)
    }
    assert automount == {"remediation"}


def _policy(docs: list[Doc], name: str) -> Doc:
    return _one(docs, "NetworkPolicy", name)


def _peers(rules: list[Doc]) -> set[str]:
    names = set()
    for rule in rules:
        for peer in rule.get("from", []) + rule.get("to", []):
            if "podSelector" in peer and "namespaceSelector" not in peer:
                names.add(peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"])
            elif "namespaceSelector" in peer:
                names.add(
                    "ns:" + peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                )
            else:
                names.add("ipBlock")
    return names


def test_network_policies_deny_by_default_and_allow_only_needed_paths(
    rendered: tuple[str, list[Doc]],
) -> None:
    _, docs = rendered
    deny = _policy(docs, "default-deny-all")
    assert deny["spec"]["podSelector"] == {}
    assert set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny["spec"] and "egress" not in deny["spec"]
    # Only the gateway accepts traffic from outside the namespace (besides monitoring).
    for policy in _find(docs, "NetworkPolicy"):
        outside = {p for p in _peers(policy["spec"].get("ingress", [])) if p.startswith("ns:")} - {
            "ns:monitoring"
        }
        expected = {"ns:envoy-gateway-system"} if policy["metadata"]["name"] == "gateway" else set()
        assert outside == expected, policy["metadata"]["name"]
    # `backup` is the nightly `aiops backup create` job, which reads both stores.
    assert _peers(_policy(docs, "redis")["spec"]["ingress"]) == {
        "feedback",
        "gateway",
        "remediation",
        "backup",
    }
    assert _peers(_policy(docs, "postgres")["spec"]["ingress"]) == {
        "telemetry",
        "anomaly",
        "remediation",
        "backup",
    }
    # Services that do not need a datastore cannot reach it.
    for name in ("feedback", "telemetry", "anomaly", "remediation", "gateway"):
        egress = _peers(_policy(docs, name)["spec"]["egress"])
        env = {
            e["name"]
            for w in _workloads(docs)
            if w["metadata"]["name"] == name
            for c in _containers(w)
            for e in c.get("env", [])
        }
        assert ("redis" in egress) == ("AIOPS_REDIS_URL" in env), name
        assert ("postgres" in egress) == ("AIOPS_DATABASE_URL" in env), name


def test_credentials_come_from_secrets(rendered: tuple[str, list[Doc]]) -> None:
    _, docs = rendered
    secrets = {s["metadata"]["name"]: s for s in _find(docs, "Secret")}
    assert {"aiops-redis", "aiops-postgres"} <= secrets.keys()
    for value in _config(docs).values():
        assert not re.search(r"://[^/@]*:[^/@]*@", value), value
        assert "password" not in value.lower(), value
    for workload in _workloads(docs):
        for container in _containers(workload):
            for env in container.get("env", []):
                if env["name"] in {"AIOPS_REDIS_URL", "AIOPS_DATABASE_URL", "POSTGRES_PASSWORD"}:
                    ref = env["valueFrom"]["secretKeyRef"]
                    assert ref["key"] in secrets[ref["name"]]["stringData"]
    gateway_volumes = _one(docs, "Rollout", "gateway")["spec"]["template"]["spec"]["volumes"]
    keyring = [v for v in gateway_volumes if v["name"] == "keyring"]
    assert keyring[0]["secret"]["secretName"] == "aiops-jwt-keyring"


def test_redis_persists_with_aof_and_postgres_on_a_volume(
    rendered: tuple[str, list[Doc]],
) -> None:
    _, docs = rendered
    redis = _one(docs, "StatefulSet", "redis")
    args = _containers(redis)[0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    postgres = _one(docs, "StatefulSet", "postgres")
    assert postgres["spec"]["volumeClaimTemplates"]


def test_anomaly_shard_ring_matches_its_replicas(rendered: tuple[str, list[Doc]]) -> None:
    _, docs = rendered
    anomaly = _one(docs, "StatefulSet", "anomaly")
    ring = _one(docs, "ConfigMap", "anomaly-sharding")["data"]["AIOPS_ANOMALY_REPLICAS"].split(",")
    service = anomaly["spec"]["serviceName"]
    assert ring == [f"anomaly-{i}.{service}:50053" for i in range(anomaly["spec"]["replicas"])]
    env = {e["name"]: e for e in _containers(anomaly)[0]["env"]}
    assert env["AIOPS_ANOMALY_REPLICA_SELF"]["value"] == f"$(POD_NAME).{service}:50053"
    assert list(env).index("POD_NAME") < list(env).index("AIOPS_ANOMALY_REPLICA_SELF")
    assert _one(docs, "Service", service)["spec"]["clusterIP"] == "None"
    # Telemetry routes each series to its owner, so it reads the same list.
    telemetry = _containers(_one(docs, "Deployment", "telemetry"))[0]
    assert {"configMapRef": {"name": "anomaly-sharding"}} in telemetry["envFrom"]


def test_gateway_rollout_is_a_canary_analysed_on_the_suites_metrics(
    rendered: tuple[str, list[Doc]], tmp_path: Any
) -> None:
    _, docs = rendered
    rollout = _one(docs, "Rollout", "gateway")
    assert rollout["apiVersion"] == "argoproj.io/v1alpha1"
    spec = rollout["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    canary = spec["strategy"]["canary"]
    assert [s["setWeight"] for s in canary["steps"] if "setWeight" in s] == [10, 30, 60]
    for service in (canary["stableService"], canary["canaryService"]):
        _one(docs, "Service", service)
    template_name = canary["analysis"]["templates"][0]["templateName"]
    template = _one(docs, "AnalysisTemplate", template_name)
    assert template["apiVersion"] == "argoproj.io/v1alpha1"
    declared = {a["name"] for a in template["spec"]["args"]}
    assert {a["name"] for a in canary["analysis"]["args"]} <= declared
    queries = {}
    for metric in template["spec"]["metrics"]:
        assert metric["name"] and metric["successCondition"] and metric["interval"]
        query = metric["provider"]["prometheus"]["query"]
        for arg in re.findall(r"\{\{args\.([\w-]+)\}\}", query):
            assert arg in declared
        queries[metric["name"]] = re.sub(r"\{\{args\.[\w-]+\}\}", "abc123", query)
    assert {"error-rate", "p95-latency"} <= queries.keys()
    assert "aiops_gateway_requests_total" in queries["error-rate"]
    assert "aiops_gateway_request_duration_seconds_bucket" in queries["p95-latency"]
    tools.check_promql(queries, tmp_path)
