"""Fixtures of the anomaly tests: the production server on real Postgres (a schema per
test) and a recording stand-in for the remediation peer."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from aiops.anomaly.v1 import anomaly_service_pb2_grpc as an_grpc
from aiops.remediation.v1 import remediation_service_pb2 as rem_svc
from aiops.remediation.v1 import remediation_service_pb2_grpc as rem_grpc

from services.anomaly import server
from services.anomaly.settings import AnomalySettings
from services.kit import serve


def anomaly_env(postgres_url: str, schema: str, **extra: str) -> dict[str, str]:
    return {
        "AIOPS_DATABASE_URL": postgres_url,
        "AIOPS_ANOMALY_DATABASE_SCHEMA": schema,
        "AIOPS_ANOMALY_GRPC_PORT": "0",
        "AIOPS_ANOMALY_METRICS_PORT": "0",
        "AIOPS_BIND_HOST": "127.0.0.1",
        "AIOPS_SHUTDOWN_GRACE_SECONDS": "0.2",
        "AIOPS_HEALTH_PROBE_INTERVAL_SECONDS": "0.1",
        "AIOPS_REMEDIATION_ADDR": "127.0.0.1:1",
        "AIOPS_FEEDBACK_ADDR": "127.0.0.1:1",
        "AIOPS_ANOMALY_PEER_TIMEOUT_SECONDS": "0.5",
        # Spawning worker processes takes seconds; tests that need them ask for them.
        "AIOPS_ANOMALY_SCORING_WORKERS": "0",
        "AIOPS_ANOMALY_DRIFT_WORKERS": "0",
        **extra,
    }


class RecordingRemediation(rem_grpc.RemediationServiceServicer):
    """Answers Suggest with nothing and records which anomalies it was asked about."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def Suggest(
        self, request: rem_svc.SuggestRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> rem_svc.SuggestResponse:
        self.asked.append(request.anomaly)
        return rem_svc.SuggestResponse()


@pytest.fixture
async def remediation() -> AsyncIterator[tuple[RecordingRemediation, int]]:
    srv = grpc.aio.server()
    recorder = RecordingRemediation()
    rem_grpc.add_RemediationServiceServicer_to_server(recorder, srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    await srv.start()
    try:
        yield recorder, port
    finally:
        await srv.stop(0)


StartAnomaly = Callable[..., contextlib.AbstractAsyncContextManager[serve.Running]]


@pytest.fixture
def start_anomaly(postgres_url: str, pg_schema: str) -> StartAnomaly:
    """Starts an anomaly server on this test's schema; keyword args become env overrides."""

    def start(**extra: str) -> contextlib.AbstractAsyncContextManager[serve.Running]:
        return server.running(
            AnomalySettings.from_env(anomaly_env(postgres_url, pg_schema, **extra))
        )

    return start


@pytest.fixture
async def anomaly_running(
    start_anomaly: StartAnomaly, remediation: tuple[RecordingRemediation, int]
) -> AsyncIterator[serve.Running]:
    async with start_anomaly(AIOPS_REMEDIATION_ADDR=f"127.0.0.1:{remediation[1]}") as running:
        yield running


@pytest.fixture
async def anomaly_stub(
    anomaly_running: serve.Running,
) -> AsyncIterator[an_grpc.AnomalyServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{anomaly_running.port}") as channel:
        yield an_grpc.AnomalyServiceStub(channel)
