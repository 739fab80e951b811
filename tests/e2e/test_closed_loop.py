"""The loop the suite exists for, through the REST API of a suite started as `make run`
starts it: an agent pushes points, telemetry stores them and streams them to anomaly, a
spike opens an anomaly, remediation suggests actions for it, operators say the first
suggestion did not help, and it drops in the ranking."""

from __future__ import annotations

import datetime as dt
import random
import time
from typing import Any

from tests.e2e.conftest import Suite

SERIES = "checkout_latency_p95_ms"


def _rfc3339(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat().replace("+00:00", "Z")


def _poll(check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.5)


def test_pushed_spike_opens_an_anomaly_and_feedback_reranks_its_suggestions(
    suite: Suite,
) -> None:
    agent = suite.cli("token", "--role", "agent")
    operator = suite.cli("token", "--role", "operator")
    rng = random.Random(11)
    start = time.time() - 3600
    values = [120 + rng.gauss(0, 3) for _ in range(300)] + [600.0] * 5
    samples = [
        {
            "metric": SERIES,
            "labels": {"service": "checkout"},
            "sampleTime": _rfc3339(start + i * 10),
            "value": v,
        }
        for i, v in enumerate(values)
    ]
    status, body = suite.http("POST", "/api/v1/aiops/points", agent, {"samples": samples})
    assert status == 200 and int(body.get("acceptedCount", 0)) == len(samples), body

    def opened() -> Any:
        status, page = suite.http("GET", "/api/v1/aiops/anomalies?pageSize=50", operator)
        assert status == 200, page
        mine = [a for a in page.get("anomalies", []) if SERIES in a.get("series", "")]
        return mine

    anomalies = _poll(opened)
    name = max(anomalies, key=lambda a: a.get("startTime", ""))["name"]

    status, first = suite.http("POST", "/api/v1/aiops/suggestions", operator, {"anomaly": name})
    assert status == 200 and first["suggestions"], first
    top = first["suggestions"][0]["action"]
    key = first["signatureKey"]
    for i in range(4):
        status, _ = suite.http(
            "POST",
            "/api/v1/aiops/feedback",
            operator,
            {
                "target": {"kind": "TARGET_KIND_SUGGESTION", "id": name},
                "verdict": "VERDICT_NOT_HELPFUL",
                "action": top,
                "signature": key,
                "comment": f"did not help ({i})",
            },
        )
        assert status == 201
    status, after = suite.http("POST", "/api/v1/aiops/suggestions", operator, {"anomaly": name})
    ranks = {s["action"]: s["rank"] for s in after["suggestions"]}
    assert after["suggestions"][0]["action"] != top and ranks[top] > 1, after
