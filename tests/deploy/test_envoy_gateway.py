"""deploy/envoy-gateway: Gateway API and Envoy Gateway resources parsed and checked for
their required fields and references; every path the gateway serves is routed, JWTs are
checked at the edge on every /api/ path, and only idempotent reads are retried."""

from __future__ import annotations

import re
from typing import Any

import kubernetes_validate
import pytest

from gateway import app as gateway_app
from gateway import settings as gateway_settings
from tests.deploy import tools

Doc = dict[str, Any]
GATEWAY_API = "gateway.networking.k8s.io/v1"
ENVOY_API = "gateway.envoyproxy.io/v1alpha1"


@pytest.fixture(scope="module")
def edge() -> list[Doc]:
    return tools.kustomize_build(tools.DEPLOY / "envoy-gateway")


@pytest.fixture(scope="module")
def debug() -> list[Doc]:
    return tools.kustomize_build(tools.DEPLOY / "envoy-gateway" / "debug")


@pytest.fixture(scope="module")
def suite() -> list[Doc]:
    return tools.kustomize_build(tools.DEPLOY / "k8s" / "overlays" / "prod")


def _by(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _served_paths(tmp_path: Any) -> list[tuple[str, str]]:
    """(method, path) of every route the gateway app registers."""
    settings = gateway_settings.GatewaySettings.from_env({"AIOPS_STATE_DIR": str(tmp_path)})
    app = gateway_app.create_app(settings)
    out = []
    for route in app.router.routes():
        canonical = route.resource.canonical if route.resource else ""
        if route.method != "HEAD" and canonical:
            out.append((route.method, re.sub(r"\{[^}]+\}", "x1", canonical)))
    return out


def _matches(match: Doc, method: str, path: str) -> bool:
    if match.get("method", method) != method:
        return False
    kind, value = match["path"]["type"], match["path"]["value"]
    if kind == "Exact":
        return path == value
    assert kind == "PathPrefix"
    return path == value or path.startswith(value.rstrip("/") + "/")


def _route_for(routes: dict[str, Doc], method: str, path: str) -> list[str]:
    return [
        name
        for name, route in routes.items()
        for rule in route["spec"]["rules"]
        if "backendRefs" in rule and any(_matches(m, method, path) for m in rule["matches"])
    ]


def test_required_fields_and_references(
    edge: list[Doc], debug: list[Doc], suite: list[Doc]
) -> None:
    docs = edge + debug
    assert {d["kind"] for d in docs} >= {
        "GatewayClass",
        "Gateway",
        "HTTPRoute",
        "GRPCRoute",
        "SecurityPolicy",
        "BackendTrafficPolicy",
    }
    services = {
        s["metadata"]["name"]: {p["port"] for p in s["spec"]["ports"]}
        for s in suite
        if s["kind"] == "Service"
    }
    gateways = _by(docs, "Gateway")
    classes = _by(docs, "GatewayClass")
    for doc in docs:
        kind, spec = doc["kind"], doc.get("spec", {})
        if kind in {"Gateway", "HTTPRoute", "GRPCRoute", "GatewayClass"}:
            assert doc["apiVersion"] == GATEWAY_API, kind
        if kind in {"SecurityPolicy", "BackendTrafficPolicy", "EnvoyProxy"}:
            assert doc["apiVersion"] == ENVOY_API, kind
        if kind != "GatewayClass":
            assert doc["metadata"]["namespace"] == "aiops", doc["metadata"]["name"]
        if kind == "GatewayClass":
            assert spec["controllerName"] == "gateway.envoyproxy.io/gatewayclass-controller"
        elif kind == "Gateway":
            assert spec["gatewayClassName"] in classes
            for listener in spec["listeners"]:
                assert listener["name"] and listener["port"] and listener["protocol"]
                if listener["protocol"] == "HTTPS":
                    assert listener["tls"]["certificateRefs"]
        elif kind in {"HTTPRoute", "GRPCRoute"}:
            for parent in spec["parentRefs"]:
                listeners = {lst["name"] for lst in gateways[parent["name"]]["spec"]["listeners"]}
                assert parent["sectionName"] in listeners
            assert spec["rules"]
            for rule in spec["rules"]:
                assert rule.get("backendRefs") or rule.get("filters")
                for ref in rule.get("backendRefs", []):
                    assert ref["port"] in services[ref["name"]], ref
        elif kind in {"SecurityPolicy", "BackendTrafficPolicy"}:
            for target in spec["targetRefs"]:
                assert target["name"] in _by(docs, target["kind"]), target
        elif kind == "NetworkPolicy":
            kubernetes_validate.validate(doc, "1.32.0", strict=True)


def test_every_served_path_is_routed_once(edge: list[Doc], tmp_path: Any) -> None:
    routes = _by(edge, "HTTPRoute")
    served = _served_paths(tmp_path)
    assert ("POST", "/api/v1/aiops/feedback") in served
    for method, path in served:
        assert len(_route_for(routes, method, path)) == 1, (method, path)


def test_jwt_is_checked_at_the_edge_on_every_api_path(
    edge: list[Doc], suite: list[Doc], tmp_path: Any
) -> None:
    routes = _by(edge, "HTTPRoute")
    (policy,) = _by(edge, "SecurityPolicy").values()
    protected = {t["name"] for t in policy["spec"]["targetRefs"]}
    for method, path in _served_paths(tmp_path):
        (route,) = _route_for(routes, method, path)
        assert (route in protected) == path.startswith("/api/"), (method, path)
    config = next(d for d in suite if d["metadata"]["name"] == "aiops-config")["data"]
    (provider,) = policy["spec"]["jwt"]["providers"]
    assert provider["issuer"] == config["AIOPS_GATEWAY_JWT_ISSUER"]
    assert provider["audiences"] == [config["AIOPS_GATEWAY_JWT_AUDIENCE"]]
    assert provider["remoteJWKS"]["uri"].endswith("/.well-known/jwks.json")


def test_only_idempotent_reads_are_retried(edge: list[Doc]) -> None:
    routes = _by(edge, "HTTPRoute")
    for policy in _by(edge, "BackendTrafficPolicy").values():
        spec = policy["spec"]
        assert spec["timeout"]["http"]["requestTimeout"]
        assert spec["rateLimit"]["local"]["rules"]
        if "retry" not in spec:
            continue
        for target in spec["targetRefs"]:
            for rule in routes[target["name"]]["spec"]["rules"]:
                assert {m.get("method") for m in rule["matches"]} == {"GET"}


def test_rollout_canary_controls_every_route_to_the_gateway(
    edge: list[Doc], suite: list[Doc]
) -> None:
    rollout = next(d for d in suite if d["kind"] == "Rollout")
    plugin = rollout["spec"]["strategy"]["canary"]["trafficRouting"]["plugins"][
        "argoproj-labs/gatewayAPI"
    ]
    managed = {r["name"] for r in plugin["httpRoutes"]}
    for name, route in _by(edge, "HTTPRoute").items():
        refs = {
            ref["name"] for rule in route["spec"]["rules"] for ref in rule.get("backendRefs", [])
        }
        if refs:
            assert name in managed
            assert refs == {"gateway", "gateway-canary"}


def test_debug_grpc_routes_cover_every_service_and_need_an_admin(debug: list[Doc]) -> None:
    grpc_routes = _by(debug, "GRPCRoute")
    services = {
        m["method"]["service"]
        for route in grpc_routes.values()
        for rule in route["spec"]["rules"]
        for m in rule["matches"]
    }
    assert {
        "aiops.feedback.v1.FeedbackService",
        "aiops.telemetry.v1.TelemetryService",
        "aiops.anomaly.v1.AnomalyService",
        "aiops.remediation.v1.RemediationService",
        "grpc.health.v1.Health",
    } <= services
    (policy,) = _by(debug, "SecurityPolicy").values()
    assert policy["spec"]["authorization"]["defaultAction"] == "Deny"
    (gateway,) = _by(debug, "Gateway").values()
    proxy = _by(debug, "EnvoyProxy")[gateway["spec"]["infrastructure"]["parametersRef"]["name"]]
    assert proxy["spec"]["provider"]["kubernetes"]["envoyService"]["type"] == "ClusterIP"
