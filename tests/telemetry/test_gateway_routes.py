"""The telemetry REST routes over real HTTP: agent pushes, series for the dashboard,
Alertmanager webhooks (deduplicated by fingerprint) and clear 400s for garbage."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from services.kit import serve
from tests.conftest import Gateway, serve_gateway

FIRING = {
    "version": "4",
    "groupKey": '{}:{alertname="HighLatency"}',
    "truncatedAlerts": 0,
    "status": "firing",
    "receiver": "aiops",
    "groupLabels": {"alertname": "HighLatency"},
    "commonLabels": {"alertname": "HighLatency", "severity": "warning"},
    "commonAnnotations": {},
    "externalURL": "http://alertmanager:9093",
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "HighLatency", "severity": "warning"},
            "annotations": {"summary": "p95 above 150 ms for 5 minutes"},
            "startsAt": "2026-01-01T10:00:00.123456789Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus:9090/graph?g0.expr=x",
            "fingerprint": "a1b2c3d4e5f60708",
        }
    ],
}


@pytest.fixture
async def gw(telemetry_running: serve.Running, tmp_path: Path) -> AsyncIterator[Gateway]:
    async with serve_gateway({"telemetry": telemetry_running}, tmp_path / "keys") as g:
        yield g


async def call(
    gw: Gateway, method: str, path: str, role: str | None, **kwargs: Any
) -> tuple[int, dict[str, Any]]:
    headers = gw.auth(role) if role else {}
    async with gw.session.request(method, gw.url(path), headers=headers, **kwargs) as resp:
        return resp.status, await resp.json(content_type=None)


def fields(body: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for detail in body["error"]["details"]:
        out += [v["field"] for v in detail.get("fieldViolations", [])]
    return out


async def test_agent_pushes_points_and_the_dashboard_reads_them(gw: Gateway) -> None:
    now = int(time.time())
    samples = [
        {"metric": "cpu", "labels": {"host": "a"}, "sampleTime": _rfc(now - 120 + i), "value": i}
        for i in range(120)
    ]
    samples.append(
        {"metric": "cpu", "labels": {"host": "a"}, "sampleTime": _rfc(now), "value": "NaN"}
    )
    status, body = await call(
        gw, "POST", "/api/v1/aiops/points", "agent", json={"samples": samples}
    )
    assert status == 200, body
    assert body["acceptedCount"] == "120"
    assert body["rejections"] == [{"reason": "POINT_REJECT_REASON_NON_FINITE_VALUE", "count": "1"}]
    status, body = await call(
        gw, "POST", "/api/v1/aiops/points", "viewer", json={"samples": samples}
    )
    assert status == 403
    status, body = await call(gw, "GET", "/api/v1/aiops/series?labels=host=a", "viewer")
    assert status == 200, body
    (series,) = body["series"]
    series_id = series["name"].split("/")[1]
    status, body = await call(
        gw, "GET", f"/api/v1/aiops/series/{series_id}?step=1m&aggregation=max", "viewer"
    )
    assert status == 200, body
    assert [p.get("value", 0) for p in body["series"][0]["points"]][-1] == 119
    status, body = await call(gw, "GET", "/api/v1/aiops/series/cpu?labels=host=a", "viewer")
    assert status == 200 and len(body["series"][0]["points"]) == 120
    status, body = await call(gw, "GET", "/api/v1/aiops/series/no_such_metric", "viewer")
    assert status == 404 and body["error"]["code"] == "NOT_FOUND"
    status, body = await call(gw, "GET", "/api/v1/aiops/series/cpu?step=soon", "viewer")
    assert status == 400 and fields(body) == ["step"]


async def test_alertmanager_webhooks_are_deduplicated_and_resolved(gw: Gateway) -> None:
    for _ in range(2):  # Alertmanager repeats a firing notification
        status, body = await call(gw, "POST", "/api/v1/aiops/alerts", "agent", json=FIRING)
        assert status == 200, body
        assert body["acceptedCount"] == "1" and body["firingCount"] == "1"
    status, body = await call(gw, "GET", "/api/v1/aiops/alerts?state=firing", "viewer")
    assert [a["fingerprint"] for a in body["alerts"]] == ["a1b2c3d4e5f60708"]
    resolved = {**FIRING, "status": "resolved"}
    resolved["alerts"] = [
        {**FIRING["alerts"][0], "status": "resolved", "endsAt": "2026-01-01T10:20:00Z"}  # type: ignore[index]
    ]
    status, body = await call(gw, "POST", "/api/v1/aiops/alerts", "agent", json=resolved)
    assert status == 200 and body["resolvedCount"] == "1"
    status, body = await call(gw, "GET", "/api/v1/aiops/alerts", "viewer")
    (alert,) = body["alerts"]
    assert alert["state"] == "ALERT_STATE_RESOLVED"
    assert alert["endTime"] == "2026-01-01T10:20:00Z"
    # A late copy of the old firing notification does not reopen the resolved episode.
    status, body = await call(gw, "POST", "/api/v1/aiops/alerts", "agent", json=FIRING)
    status, body = await call(gw, "GET", "/api/v1/aiops/alerts", "viewer")
    assert body["alerts"][0]["state"] == "ALERT_STATE_RESOLVED"
    # An alert without a fingerprint or a known status is counted, not stored.
    odd = {
        "alerts": [
            {"status": "weird", "labels": {"alertname": "X"}, "fingerprint": "f"},
            {"status": "firing", "labels": {"alertname": "X"}, "startsAt": "2026-01-01T00:00:00Z"},
        ]
    }
    status, body = await call(gw, "POST", "/api/v1/aiops/alerts", "agent", json=odd)
    assert status == 200, body
    reasons = {r["reason"] for r in body["rejections"]}
    assert reasons == {
        "ALERT_REJECT_REASON_MISSING_STATE",
        "ALERT_REJECT_REASON_INVALID_FINGERPRINT",
    }


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (b"not json", "body"),
        (b"[]", "alerts"),
        (b'{"alerts": "many"}', "alerts"),
        (b'{"alerts": []}', "alerts"),
        (b'{"alerts": [42]}', "alerts[0]"),
        (b'{"alerts": [{"labels": {"a": 1}}]}', "alerts[0].labels.a"),
        (b'{"alerts": [{"startsAt": "yesterday"}]}', "alerts[0].startsAt"),
        (b'{"alerts": [{"fingerprint": 7}]}', "alerts[0].fingerprint"),
    ],
)
async def test_garbage_webhook_bodies_get_a_400_naming_the_field(
    gw: Gateway, payload: bytes, field: str
) -> None:
    status, body = await call(gw, "POST", "/api/v1/aiops/alerts", "agent", data=payload)
    assert status == 400, body
    assert fields(body) == [field]


async def test_collect_route_returns_the_five_critical_metrics(gw: Gateway) -> None:
    status, body = await call(gw, "GET", "/api/v1/aiops/collect", "viewer")
    assert status == 200, body
    assert [m["metric"] for m in body["metrics"]] == [
        "latency_p95",
        "error_rate",
        "availability",
        "redis_uptime",
        "feedback_success_rate",
    ]
    assert body["metrics"][0]["sloTarget"] == 150


def _rfc(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
