"""The whole suite started the way `make run` starts it, driven through REST, the CLI and
the real grpcurl binary."""

from __future__ import annotations

import base64
import json
import signal
import time
from typing import Any

import pytest

from tests.e2e.conftest import Suite

FEEDBACK = "/api/v1/aiops/feedback"


def test_rest_feedback_round_trip_and_metrics(suite: Suite) -> None:
    token = suite.cli("token", "--role", "operator")
    body = {
        "target": {"kind": "TARGET_KIND_ANOMALY", "id": "e2e-1"},
        "verdict": "VERDICT_FALSE_POSITIVE",
    }
    status, created = suite.http("POST", FEEDBACK, token, body)
    assert status == 201, created
    status, listed = suite.http("GET", FEEDBACK, token)
    assert created["feedback"]["name"] in [f["name"] for f in listed["feedback"]]
    assert suite.http("DELETE", f"{FEEDBACK}?all=true", token)[0] == 403
    assert suite.http("GET", FEEDBACK)[0] == 401
    _, metrics = suite.http("GET", "/metrics/aiops")
    line = next(
        line
        for line in metrics.splitlines()
        if line.startswith("aiops_feedback_total{") and 'result="stored"' in line
    )
    assert float(line.rsplit(" ", 1)[1]) >= 1


def test_collect_returns_the_five_critical_metrics_of_the_running_suite(suite: Suite) -> None:
    token = suite.cli("token", "--role", "viewer")
    for _ in range(3):  # traffic for the gateway's own latency and error metrics
        suite.http("GET", FEEDBACK, token)
    status, snapshot = suite.http("GET", "/api/v1/aiops/collect", token)
    assert status == 200, snapshot
    metrics = {m["metric"]: m for m in snapshot["metrics"]}
    assert set(metrics) == {
        "latency_p95",
        "error_rate",
        "availability",
        "redis_uptime",
        "feedback_success_rate",
    }
    assert all("target" in m or "sloTarget" in m or "slo" in m for m in metrics.values())
    observed = [name for name, m in metrics.items() if m.get("observed")]
    assert {"availability", "redis_uptime"} <= set(observed), snapshot


def test_grpcurl_lists_services_and_submits_feedback_the_rest_api_shows(suite: Suite) -> None:
    services = suite.grpcurl("list").split()
    assert "aiops.feedback.v1.FeedbackService" in services
    assert "grpc.health.v1.Health" in services
    request = {
        "feedback": {
            "target": {"kind": "TARGET_KIND_ALERT", "id": "grpcurl-1"},
            "verdict": "VERDICT_CONFIRMED",
        }
    }
    out = suite.grpcurl(
        "-d", json.dumps(request), "aiops.feedback.v1.FeedbackService/SubmitFeedback"
    )
    name = json.loads(out)["feedback"]["name"]
    token = suite.cli("token", "--role", "viewer")
    status, got = suite.http("GET", f"/api/v1/aiops/{name}", token)
    assert status == 200 and got["feedback"]["target"]["id"] == "grpcurl-1"


def test_key_rotation_through_the_cli(suite: Suite) -> None:
    old = suite.cli("token", "--role", "viewer")
    new_kid = suite.cli("keys", "rotate")
    new = suite.cli("token", "--role", "viewer")
    header = json.loads(base64.urlsafe_b64decode(new.split(".")[0] + "=="))
    assert header["kid"] == new_kid
    _, jwks = suite.http("GET", "/.well-known/jwks.json")
    assert len(jwks["keys"]) == 2 and new_kid in {k["kid"] for k in jwks["keys"]}
    assert suite.http("GET", FEEDBACK, old)[0] == 200
    assert suite.http("GET", FEEDBACK, new)[0] == 200
    assert new_kid in suite.cli("keys", "list")


def test_backup_and_maintenance_through_the_cli(suite: Suite) -> None:
    out = suite.cli("backup", "create")
    archive = out.splitlines()[0].removeprefix("archive: ")
    assert "ok" in suite.cli("backup", "verify", archive)
    assert archive in suite.cli("backup", "list")
    port = suite.env["AIOPS_GATEWAY_PORT"]
    suite.cli(
        "maintenance",
        "on",
        "--reason",
        "e2e drill",
        "--minutes",
        "5",
        "--url",
        f"http://127.0.0.1:{port}",
    )
    token = suite.cli("token", "--role", "operator")
    body = {"target": {"kind": "TARGET_KIND_ANOMALY", "id": "m-1"}, "verdict": "VERDICT_CONFIRMED"}

    # Each gateway worker re-reads the state within AIOPS_GATEWAY_MAINTENANCE_CACHE_SECONDS.
    def answered(expected: int) -> tuple[int, Any]:
        deadline = time.monotonic() + 5
        while True:
            status, reply = suite.http("POST", FEEDBACK, token, body)
            if status == expected or time.monotonic() > deadline:
                return status, reply
            time.sleep(0.2)

    status, reply = answered(503)
    assert status == 503 and "e2e drill" in reply["error"]["message"]
    assert suite.http("GET", FEEDBACK, token)[0] == 200
    suite.cli("maintenance", "off", "--url", f"http://127.0.0.1:{port}")
    assert answered(201)[0] == 201


def test_oversized_token_gets_the_json_envelope_not_a_parser_error(suite: Suite) -> None:
    status, body = suite.http("GET", FEEDBACK, "x" * 9000)
    assert status == 401 and body["error"]["details"][0]["reason"] == "TOKEN_TOO_LARGE"


def test_gateway_metrics_merge_every_worker(suite: Suite) -> None:
    token = suite.cli("token", "--role", "viewer")
    for _ in range(20):  # new connections, spread over the workers by the kernel
        assert suite.http("GET", FEEDBACK, token)[0] == 200
    _, text = suite.http("GET", "/metrics")
    lines = [
        line
        for line in text.splitlines()
        if line.startswith("aiops_gateway_requests_total{")
        and 'route="/api/v1/aiops/feedback"' in line
        and 'method="GET"' in line
        and 'status="200"' in line
    ]
    assert lines and sum(float(line.rsplit(" ", 1)[1]) for line in lines) >= 20


def test_sigterm_stops_everything(suite: Suite) -> None:
    suite.process.send_signal(signal.SIGTERM)
    assert suite.process.wait(timeout=30) == 0
    with pytest.raises(OSError):
        suite.http("GET", "/health")
