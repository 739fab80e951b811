"""The whole suite started the way `make run` starts it (`aiops run`: separate processes,
its own Redis and Postgres), driven through REST, the CLI and the real grpcurl binary."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.kit import local_servers

ROOT = Path(__file__).resolve().parents[2]
GRPCURL = Path(sys.executable).parent / "grpcurl"
NAMES = ("feedback", "telemetry", "anomaly", "remediation")


class Suite:
    def __init__(self, env: dict[str, str], process: subprocess.Popen[bytes]) -> None:
        self.env = env
        self.process = process
        self.base = f"http://127.0.0.1:{env['AIOPS_GATEWAY_PORT']}"

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "services.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return out.stdout.strip()

    def http(
        self, method: str, path: str, token: str | None = None, body: Any = None
    ) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as err:
            raw, status = err.read(), err.code
        text = raw.decode()
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def grpcurl(self, *args: str) -> str:
        port = self.env["AIOPS_FEEDBACK_GRPC_PORT"]
        out = subprocess.run(
            [str(GRPCURL), "-plaintext", *args[:-1], f"127.0.0.1:{port}", args[-1]]
            if args
            else [str(GRPCURL), "-plaintext", f"127.0.0.1:{port}", "list"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return out.stdout


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOPS_")}
    env["AIOPS_STATE_DIR"] = str(tmp_path_factory.mktemp("state"))
    env["AIOPS_GATEWAY_PORT"] = str(local_servers.free_port())
    env["AIOPS_SHUTDOWN_DRAIN_SECONDS"] = "0.2"
    env["AIOPS_GATEWAY_WORKERS"] = "2"  # SO_REUSEPORT workers, as in production
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{ROOT / 'gen'}"
    for name in NAMES:
        grpc_port, metrics_port = local_servers.free_port(), local_servers.free_port()
        env[f"AIOPS_{name.upper()}_GRPC_PORT"] = str(grpc_port)
        env[f"AIOPS_{name.upper()}_METRICS_PORT"] = str(metrics_port)
        env[f"AIOPS_{name.upper()}_ADDR"] = f"127.0.0.1:{grpc_port}"
        env[f"AIOPS_{name.upper()}_METRICS_ADDR"] = f"127.0.0.1:{metrics_port}"
    log = open(Path(env["AIOPS_STATE_DIR"]) / "suite.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "run"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    s = Suite(env, process)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, "aiops run exited early; see suite.log"
            try:
                status, body = s.http("GET", "/health")
                if status == 200 and set(body["backends"].values()) == {"SERVING"}:
                    break
            except (OSError, KeyError, TypeError):
                pass
            assert time.monotonic() < deadline, "suite not ready in 90 s"
            time.sleep(0.3)
        yield s
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


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
    status, reply = suite.http("POST", FEEDBACK, token, body)
    assert status == 503 and "e2e drill" in reply["error"]["message"]
    assert suite.http("GET", FEEDBACK, token)[0] == 200
    suite.cli("maintenance", "off", "--url", f"http://127.0.0.1:{port}")
    assert suite.http("POST", FEEDBACK, token, body)[0] == 201


def test_oversized_token_gets_the_json_envelope_not_a_parser_error(suite: Suite) -> None:
    status, body = suite.http("GET", FEEDBACK, "x" * 9000)
    assert status == 401 and body["error"]["details"][0]["reason"] == "TOKEN_TOO_LARGE"


def test_gateway_metrics_merge_every_worker(suite: Suite) -> None:
    token = suite.cli("token", "--role", "viewer")
    for _ in range(20):  # new connections, spread over the workers by the kernel
        assert suite.http("GET", FEEDBACK, token)[0] == 200
    _, text = suite.http("GET", "/metrics")
    lines = [line for line in text.splitlines()
             if line.startswith("aiops_gateway_requests_total{")
             and 'route="/api/v1/aiops/feedback"' in line and 'method="GET"' in line
             and 'status="200"' in line]
    assert lines and sum(float(line.rsplit(" ", 1)[1]) for line in lines) >= 20


def test_sigterm_stops_everything(suite: Suite) -> None:
    suite.process.send_signal(signal.SIGTERM)
    assert suite.process.wait(timeout=30) == 0
    with pytest.raises(OSError):
        suite.http("GET", "/health")
