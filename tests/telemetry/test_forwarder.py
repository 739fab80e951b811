"""Points flow to anomaly's ScorePoints through a bounded buffer: while anomaly is away
the oldest points are dropped and counted, and the stream resumes by itself."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

import grpc
from aiops.anomaly.v1 import anomaly_pb2, anomaly_service_pb2
from aiops.anomaly.v1 import anomaly_service_pb2_grpc as anomaly_grpc
from aiops.telemetry.v1 import telemetry_service_pb2 as tel_svc
from aiops.telemetry.v1 import telemetry_service_pb2_grpc as tel_grpc
from prometheus_client import REGISTRY

from services.kit import channels, local_servers
from services.telemetry import domain, forwarder, server
from services.telemetry.settings import TelemetrySettings
from tests.helpers import eventually
from tests.telemetry.conftest import telemetry_env
from tests.telemetry.test_api import sample


class FakeAnomaly(anomaly_grpc.AnomalyServiceServicer):
    """A minimal ScorePoints: records every observation and scores it 0."""

    def __init__(self) -> None:
        self.seen: list[anomaly_pb2.Observation] = []

    async def ScorePoints(  # type: ignore[override]
        self,
        request_iterator: AsyncIterator[anomaly_service_pb2.ScorePointsRequest],
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> AsyncIterator[anomaly_service_pb2.ScorePointsResponse]:
        async for request in request_iterator:
            self.seen.extend(request.observations)
            yield anomaly_service_pb2.ScorePointsResponse(
                batch_id=request.batch_id,
                scores=[anomaly_pb2.PointScore() for _ in request.observations],
            )


@contextlib.asynccontextmanager
async def fake_anomaly(port: int) -> AsyncIterator[FakeAnomaly]:
    fake = FakeAnomaly()
    srv = grpc.aio.server()
    anomaly_grpc.add_AnomalyServiceServicer_to_server(fake, srv)
    assert srv.add_insecure_port(f"127.0.0.1:{port}") == port
    await srv.start()
    try:
        yield fake
    finally:
        await srv.stop(0)


def rows(n: int, start: int = 0) -> list[domain.Row]:
    return [
        domain.Row(1, "m", {"k": "v"}, 1_800_000_000.0 + i, float(i))
        for i in range(start, start + n)
    ]


def dropped_total() -> float:
    return REGISTRY.get_sample_value("aiops_telemetry_forward_dropped_points_total") or 0.0


async def test_buffer_drops_the_oldest_while_anomaly_is_away_and_resumes_by_itself() -> None:
    port = local_servers.free_port()
    channel = channels.open_channel(f"127.0.0.1:{port}", service="aiops.anomaly.v1.AnomalyService")
    fwd = forwarder.Forwarder(
        anomaly_grpc.AnomalyServiceStub(channel), capacity=100, batch_size=30, timeout_seconds=0.5
    )
    before = dropped_total()
    fwd.start()
    try:
        fwd.offer(rows(150))
        assert fwd.depth == 100
        assert fwd.dropped == 50
        assert dropped_total() - before == 50
        assert REGISTRY.get_sample_value("aiops_telemetry_forward_buffer_points") == 100

        async def tried_and_failed() -> None:
            assert REGISTRY.get_sample_value("aiops_telemetry_forward_connected") == 0
            assert fwd.depth == 100  # nothing acknowledged, nothing lost beyond the drops

        await eventually(tried_and_failed)
        async with fake_anomaly(port) as fake:

            async def drained() -> None:
                assert fwd.depth == 0
                assert len(fake.seen) >= 100

            await eventually(drained, timeout=10)
            # The newest 100 points arrive in order; repeats of an unacknowledged batch
            # are allowed, losses are not.
            values = [o.value for o in fake.seen]
            assert sorted(set(values)) == [float(i) for i in range(50, 150)]
            assert fake.seen[0].series == "m" and dict(fake.seen[0].labels) == {"k": "v"}
            fwd.offer(rows(5, start=150))
            await eventually(lambda: _has(fake, 154.0))
    finally:
        await fwd.stop()
        await channel.close()


async def _has(fake: FakeAnomaly, value: float) -> None:
    assert value in [o.value for o in fake.seen]


async def test_pushed_points_are_streamed_to_anomaly(postgres_url: str, pg_schema: str) -> None:
    port = local_servers.free_port()
    env = telemetry_env(
        postgres_url,
        pg_schema,
        AIOPS_TELEMETRY_FORWARD_ENABLED="true",
        AIOPS_ANOMALY_ADDR=f"127.0.0.1:{port}",
    )
    async with (
        fake_anomaly(port) as fake,
        server.running(TelemetrySettings.from_env(env)) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch,
    ):
        now = time.time()
        stub = tel_grpc.TelemetryServiceStub(ch)
        await stub.WritePoints(
            tel_svc.WritePointsRequest(
                samples=[sample("rps", now - i, float(i), svc="x") for i in range(3)]
            )
        )

        async def arrived() -> None:
            assert sorted(o.value for o in fake.seen) == [0.0, 1.0, 2.0]
            assert {o.series for o in fake.seen} == {'rps{svc="x"}'}

        await eventually(arrived)
