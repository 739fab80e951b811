"""Points flow to anomaly's ScorePoints through a bounded buffer: while anomaly is away
the oldest points are dropped and counted, and the stream resumes by itself."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import NamedTuple

import grpc
import pytest
from aiops.anomaly.v1 import anomaly_service_pb2
from aiops.anomaly.v1 import anomaly_service_pb2_grpc as anomaly_grpc
from aiops.telemetry.v1 import telemetry_service_pb2 as tel_svc
from aiops.telemetry.v1 import telemetry_service_pb2_grpc as tel_grpc
from prometheus_client import REGISTRY

from services.kit import channels, local_servers, sharding
from services.telemetry import domain, forwarder, server
from services.telemetry.settings import TelemetrySettings
from tests.helpers import eventually
from tests.telemetry.conftest import telemetry_env
from tests.telemetry.test_api import sample


class Seen(NamedTuple):
    series: str
    micros: int
    value: float
    labels: dict[str, str]


class FakeAnomaly(anomaly_grpc.AnomalyServiceServicer):
    """A minimal ScorePoints (columnar form): records every point and scores it 0."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.observation_requests = 0

    async def ScorePoints(  # type: ignore[override]
        self,
        request_iterator: AsyncIterator[anomaly_service_pb2.ScorePointsRequest],
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> AsyncIterator[anomaly_service_pb2.ScorePointsResponse]:
        async for request in request_iterator:
            self.observation_requests += bool(request.observations)
            response = anomaly_service_pb2.ScorePointsResponse(batch_id=request.batch_id)
            for sb in request.series_batches:
                assert len(sb.sample_time_micros) == len(sb.values)
                self.seen.extend(
                    Seen(sb.series, t, v, dict(sb.labels))
                    for t, v in zip(sb.sample_time_micros, sb.values, strict=True)
                )
                response.series_scores.add(series=sb.series, scores=[0.0] * len(sb.values))
            yield response


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
            assert fake.seen[0].series == "m" and fake.seen[0].labels == {"k": "v"}
            assert fake.seen[0].micros == 1_800_000_050_000_000
            assert not fake.observation_requests
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


async def test_router_sends_each_series_to_its_owner_in_order() -> None:
    ports = [local_servers.free_port(), local_servers.free_port()]
    addrs = [f"127.0.0.1:{p}" for p in ports]
    chans = [channels.open_channel(a, service="aiops.anomaly.v1.AnomalyService") for a in addrs]
    router = forwarder.Router(
        {
            a: forwarder.Forwarder(
                anomaly_grpc.AnomalyServiceStub(c),
                capacity=10_000,
                batch_size=25,
                timeout_seconds=2,
                target=a,
            )
            for a, c in zip(addrs, chans, strict=True)
        }
    )
    keys = [f"m{k}" for k in range(10)]
    # Series interleaved point by point; m0 changes its labels half way.
    points = [
        domain.Row(1, key, {"v": "2" if key == "m0" and i >= 20 else "1"}, 1_800_000_000.0 + i, i)
        for i in range(40)
        for key in keys
    ]
    try:
        async with fake_anomaly(ports[0]) as a, fake_anomaly(ports[1]) as b:
            router.start()
            router.offer(points)

            async def delivered() -> None:
                assert len(a.seen) + len(b.seen) == len(points)
                assert router.depth == 0

            await eventually(delivered, timeout=10)
            ring = sharding.Ring(addrs)
            for fake, addr in ((a, addrs[0]), (b, addrs[1])):
                assert {s.series for s in fake.seen} == {k for k in keys if ring.owner(k) == addr}
            assert a.seen and b.seen
            for key in keys:
                got = [s for s in a.seen + b.seen if s.series == key]
                assert [s.value for s in got] == [float(i) for i in range(40)]
                assert [s.micros for s in got] == [
                    (1_800_000_000 + i) * 1_000_000 for i in range(40)
                ]
                want = [{"v": "2" if key == "m0" and i >= 20 else "1"} for i in range(40)]
                assert [s.labels for s in got] == want
            assert router.sent == len(points)
    finally:
        await router.stop()
        for c in chans:
            await c.close()


def test_router_needs_a_forwarder() -> None:
    with pytest.raises(ValueError, match="forwarder"):
        forwarder.Router({})
