"""The telemetry gRPC API on a real server and Postgres: pushes with counted rejections,
queries by selector and by name, listing, and clear errors for bad requests."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from aiops.common.v1 import common_pb2
from aiops.telemetry.v1 import telemetry_pb2 as tel
from aiops.telemetry.v1 import telemetry_service_pb2 as tel_svc
from aiops.telemetry.v1 import telemetry_service_pb2_grpc as tel_grpc
from google.protobuf import duration_pb2, timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.kit import local_servers
from services.telemetry import server
from services.telemetry.settings import TelemetrySettings
from tests.helpers import error_info, eventually, field_violations
from tests.telemetry.conftest import telemetry_env


def ts(seconds: float) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromNanoseconds(round(seconds * 1e9))
    return out


def sample(metric: str, t: float | None, value: float, **labels: str) -> tel.Sample:
    s = tel.Sample(metric=metric, labels=labels, value=value)
    if t is not None:
        s.sample_time.CopyFrom(ts(t))
    return s


async def batches(*items: list[tel.Sample]) -> AsyncIterator[tel_svc.PushPointsRequest]:
    for samples in items:
        yield tel_svc.PushPointsRequest(samples=samples)


async def test_push_points_counts_accepted_and_each_rejection_reason(
    telemetry_stub: tel_grpc.TelemetryServiceStub,
) -> None:
    now = time.time()
    good = [sample("cpu", now - i, float(i), host="a") for i in range(10)]
    bad = [
        sample("cpu", now, math.nan, host="b"),
        sample("cpu", now, math.inf, host="b"),
        sample("cpu", now + 3600, 1.0, host="b"),
        sample("cpu", None, 1.0, host="b"),
        sample("cpu", now, 1.0, **{f"k{i}": "v" for i in range(17)}),
        sample("bad metric", now, 1.0),
    ]
    reply = await telemetry_stub.PushPoints(batches(good[:5], good[5:] + bad, good[:2]))
    assert reply.accepted_count == 10
    assert reply.created_series_count == 1
    counts = {tel.PointRejectReason.Name(r.reason): r.count for r in reply.rejections}
    assert counts == {
        "POINT_REJECT_REASON_INVALID_METRIC": 1,
        "POINT_REJECT_REASON_INVALID_LABELS": 1,
        "POINT_REJECT_REASON_MISSING_TIME": 1,
        "POINT_REJECT_REASON_TIME_IN_FUTURE": 1,
        "POINT_REJECT_REASON_NON_FINITE_VALUE": 2,
        "POINT_REJECT_REASON_DUPLICATE": 2,
    }
    assert reply.rejected_count == 8


async def test_push_points_rejects_an_empty_batch(
    telemetry_stub: tel_grpc.TelemetryServiceStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await telemetry_stub.PushPoints(batches([]))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(exc.value).reason == "BATCH_SIZE_INVALID"


async def test_query_by_selector_and_by_name_returns_the_points(
    telemetry_stub: tel_grpc.TelemetryServiceStub,
) -> None:
    now = float(int(time.time()))
    written = await telemetry_stub.WritePoints(
        tel_svc.WritePointsRequest(
            samples=[sample("latency", now - 120 + i, float(i), route="/a") for i in range(120)]
        )
    )
    assert written.accepted_count == 120
    rng = common_pb2.TimeRange(start_time=ts(now - 120), end_time=ts(now))
    reply = await telemetry_stub.QuerySeries(
        tel_svc.QuerySeriesRequest(
            metric="latency",
            labels={"route": "/a"},
            time_range=rng,
            step=duration_pb2.Duration(seconds=60),
            aggregation=tel.AGGREGATION_MAX,
        )
    )
    (series,) = reply.series
    assert series.series.key == 'latency{route="/a"}'
    assert [p.value for p in series.points] == [59.0, 119.0]
    by_name = await telemetry_stub.QuerySeries(
        tel_svc.QuerySeriesRequest(name=series.series.name, time_range=rng)
    )
    assert len(by_name.series[0].points) == 120
    listed = await telemetry_stub.ListSeries(
        tel_svc.ListSeriesRequest(filter=tel_svc.SeriesFilter(labels={"route": "/a"}))
    )
    assert [s.key for s in listed.series] == ['latency{route="/a"}']
    assert listed.series[0].last_point_time.seconds == int(now - 1)


async def test_query_of_unknown_series_is_not_found_and_bad_ranges_are_invalid(
    telemetry_stub: tel_grpc.TelemetryServiceStub,
) -> None:
    now = time.time()
    rng = common_pb2.TimeRange(start_time=ts(now - 60), end_time=ts(now))
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await telemetry_stub.QuerySeries(
            tel_svc.QuerySeriesRequest(name="series/0123456789abcdef", time_range=rng)
        )
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(exc.value).reason == "SERIES_NOT_FOUND"
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await telemetry_stub.QuerySeries(
            tel_svc.QuerySeriesRequest(metric="x", step=duration_pb2.Duration(seconds=60))
        )
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(exc.value)) == {"time_range", "aggregation"}
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await telemetry_stub.ListSeries(tel_svc.ListSeriesRequest(page_size=-1))
    assert error_info(exc.value).reason == "PAGE_SIZE_INVALID"


async def test_the_service_starts_without_its_database_and_becomes_ready_when_it_answers(
    tmp_path: Path,
) -> None:
    db = local_servers.LocalPostgres(tmp_path / "pg", ephemeral=True)
    port = local_servers.free_port()
    url = f"postgresql://aiops@127.0.0.1:{port}/aiops"
    settings = TelemetrySettings.from_env(telemetry_env(url, "public"))
    try:
        async with (
            server.running(settings) as running,
            grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
        ):
            health = health_pb2_grpc.HealthStub(channel)
            stub = tel_grpc.TelemetryServiceStub(channel)
            check = health_pb2.HealthCheckRequest(service=server.SERVICE_NAME)
            assert (await health.Check(check)).status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await stub.ListSeries(tel_svc.ListSeriesRequest())
            assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
            db = local_servers.LocalPostgres(tmp_path / "pg", port=port, ephemeral=True)
            db.start()

            async def ready() -> None:
                status = (await health.Check(check)).status
                assert status == health_pb2.HealthCheckResponse.SERVING

            await eventually(ready, timeout=30)
            assert (await stub.ListSeries(tel_svc.ListSeriesRequest())).series == []
    finally:
        db.close()
