"""Telemetry streams pushed points to the real anomaly service's ScorePoints."""

from __future__ import annotations

import time

import grpc
from aiops.telemetry.v1 import telemetry_service_pb2 as tel_svc
from aiops.telemetry.v1 import telemetry_service_pb2_grpc as tel_grpc
from prometheus_client import REGISTRY

from services.anomaly import server as anomaly_server
from services.anomaly.settings import AnomalySettings
from services.kit import local_servers, sharding
from services.telemetry import server
from services.telemetry.settings import TelemetrySettings
from tests.helpers import eventually
from tests.telemetry.conftest import telemetry_env
from tests.telemetry.test_api import sample


def _sent() -> float:
    return REGISTRY.get_sample_value("aiops_telemetry_forward_sent_points_total") or 0.0


async def test_points_reach_the_real_anomaly_service(postgres_url: str, pg_schema: str) -> None:
    anomaly_env = {
        "AIOPS_DATABASE_URL": postgres_url,
        "AIOPS_ANOMALY_DATABASE_SCHEMA": pg_schema,
        "AIOPS_ANOMALY_GRPC_PORT": "0",
        "AIOPS_ANOMALY_METRICS_PORT": "0",
        "AIOPS_BIND_HOST": "127.0.0.1",
        "AIOPS_SHUTDOWN_GRACE_SECONDS": "0.2",
        "AIOPS_ANOMALY_SCORING_WORKERS": "0",
        "AIOPS_ANOMALY_DRIFT_WORKERS": "0",
    }
    async with anomaly_server.running(AnomalySettings.from_env(anomaly_env)) as anomaly:
        env = telemetry_env(
            postgres_url,
            pg_schema,
            AIOPS_TELEMETRY_FORWARD_ENABLED="true",
            AIOPS_ANOMALY_ADDR=f"127.0.0.1:{anomaly.port}",
        )
        before = _sent()
        async with (
            server.running(TelemetrySettings.from_env(env)) as running,
            grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch,
        ):
            now = time.time()
            stub = tel_grpc.TelemetryServiceStub(ch)
            await stub.WritePoints(
                tel_svc.WritePointsRequest(
                    samples=[sample("rps", now - 50 + i, float(i % 7), svc="x") for i in range(50)]
                )
            )

            async def acknowledged() -> None:
                assert _sent() - before == 50

            await eventually(acknowledged, timeout=15)


def _refused() -> float:
    return REGISTRY.get_sample_value("aiops_telemetry_forward_refused_points_total") or 0.0


async def test_points_reach_the_replica_owning_their_series(
    postgres_url: str, pg_schema: str
) -> None:
    ports = [local_servers.free_port(), local_servers.free_port()]
    replicas = ",".join(f"127.0.0.1:{p}" for p in ports)

    def replica_env(port: int) -> dict[str, str]:
        return {
            "AIOPS_DATABASE_URL": postgres_url,
            "AIOPS_ANOMALY_DATABASE_SCHEMA": pg_schema,
            "AIOPS_ANOMALY_GRPC_PORT": str(port),
            "AIOPS_ANOMALY_METRICS_PORT": "0",
            "AIOPS_BIND_HOST": "127.0.0.1",
            "AIOPS_SHUTDOWN_GRACE_SECONDS": "0.2",
            "AIOPS_ANOMALY_SCORING_WORKERS": "0",
            "AIOPS_ANOMALY_DRIFT_WORKERS": "0",
            "AIOPS_ANOMALY_REPLICAS": replicas,
            "AIOPS_ANOMALY_REPLICA_SELF": f"127.0.0.1:{port}",
        }

    async with (
        anomaly_server.running(AnomalySettings.from_env(replica_env(ports[0]))),
        anomaly_server.running(AnomalySettings.from_env(replica_env(ports[1]))),
    ):
        env = telemetry_env(
            postgres_url,
            pg_schema,
            AIOPS_TELEMETRY_FORWARD_ENABLED="true",
            # The Service address would reach either replica; the list routes by owner.
            AIOPS_ANOMALY_ADDR=f"127.0.0.1:{ports[0]}",
            AIOPS_ANOMALY_REPLICAS=replicas,
        )
        sent, refused = _sent(), _refused()
        async with (
            server.running(TelemetrySettings.from_env(env)) as running,
            grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch,
        ):
            now = time.time()
            samples = [
                sample("rps", now - 20 + i, float(i % 5), svc=f"s{k}")
                for k in range(12)
                for i in range(20)
            ]
            await tel_grpc.TelemetryServiceStub(ch).WritePoints(
                tel_svc.WritePointsRequest(samples=samples)
            )

            async def acknowledged() -> None:
                assert _sent() - sent == len(samples)

            await eventually(acknowledged, timeout=15)
        # Every point went to its owner: none refused as not owned.
        assert _refused() - refused == 0
        ring = sharding.Ring(replicas.split(","))
        owners = {ring.owner(f'rps{{svc="s{k}"}}') for k in range(12)}
        assert len(owners) == 2  # the series really were split over both replicas
