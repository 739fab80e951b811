"""The anomaly REST routes through the real gateway over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from aiops.anomaly.v1 import anomaly_service_pb2_grpc as an_grpc

from services.kit import serve
from tests.anomaly.test_events import SPIKE_AT, with_spike
from tests.anomaly.test_scoring import batch, score_all
from tests.conftest import Gateway, serve_gateway


@pytest.fixture
async def gw(
    feedback_running: serve.Running, anomaly_running: serve.Running, tmp_path: Path
) -> AsyncIterator[Gateway]:
    async with serve_gateway(
        {"feedback": feedback_running, "anomaly": anomaly_running}, tmp_path / "keys"
    ) as g:
        yield g


async def test_list_get_and_acknowledge_anomalies_over_rest(
    gw: Gateway, anomaly_running: serve.Running
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{anomaly_running.port}") as channel:
        stub = an_grpc.AnomalyServiceStub(channel)
        (response,) = await score_all(stub, [batch("errors", with_spike(SPIKE_AT + 1, 3))])
    name = response.scores[SPIKE_AT].anomaly
    aid = name.split("/", 1)[1]
    async with gw.session.get(
        gw.url("/api/v1/aiops/anomalies?series=errors&state=open&pageSize=10"),
        headers=gw.auth("viewer"),
    ) as r:
        assert r.status == 200
        body = await r.json()
    assert name in [a["name"] for a in body["anomalies"]]
    async with gw.session.get(
        gw.url(f"/api/v1/aiops/anomalies/{aid}"), headers=gw.auth("viewer")
    ) as r:
        assert r.status == 200
        assert (await r.json())["anomaly"]["state"] == "ANOMALY_STATE_OPEN"
    async with gw.session.post(
        gw.url(f"/api/v1/aiops/anomalies/{aid}/acknowledge"), headers=gw.auth("viewer")
    ) as r:
        assert r.status == 403
    async with gw.session.post(
        gw.url(f"/api/v1/aiops/anomalies/{aid}/acknowledge"),
        headers=gw.auth("operator"),
        json={"comment": "on it"},
    ) as r:
        assert r.status == 200
        got = (await r.json())["anomaly"]
    assert got["state"] == "ANOMALY_STATE_ACKNOWLEDGED"
    assert got["acknowledger"] == "tester" and got["acknowledgeComment"] == "on it"
    async with gw.session.get(
        gw.url("/api/v1/aiops/anomalies/01ARZ3NDEKTSV4RRFFQ69G5FAV"), headers=gw.auth("viewer")
    ) as r:
        assert r.status == 404
        assert (await r.json())["error"]["code"] == "NOT_FOUND"
    async with gw.session.get(
        gw.url("/api/v1/aiops/anomalies?pageSize=-1"), headers=gw.auth("viewer")
    ) as r:
        assert r.status == 400


async def test_openapi_lists_the_anomaly_routes(gw: Gateway) -> None:
    async with gw.session.get(gw.url("/openapi.json")) as r:
        assert r.status == 200
        paths = (await r.json())["paths"]
    for path in (
        "/api/v1/aiops/anomalies",
        "/api/v1/aiops/anomalies/{anomaly}",
        "/api/v1/aiops/anomalies/{anomaly}/acknowledge",
        "/api/v1/aiops/drift",
    ):
        assert path in paths
