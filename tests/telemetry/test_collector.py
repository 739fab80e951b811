"""Scraping real HTTP endpoints: the critical metrics from bucket and counter increases,
resets, and sources that hang, fail or answer garbage."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping

import grpc
import pytest
from aiops.common.v1 import common_pb2
from aiops.telemetry.v1 import telemetry_pb2 as tel
from aiops.telemetry.v1 import telemetry_service_pb2 as tel_svc
from aiops.telemetry.v1 import telemetry_service_pb2_grpc as tel_grpc
from google.protobuf import timestamp_pb2

from services.telemetry import server
from services.telemetry.settings import TelemetrySettings
from tests.helpers import eventually
from tests.telemetry.conftest import Endpoints, telemetry_env

BOUNDS = ("0.05", "0.1", "0.15", "0.25", "0.5", "1.0", "+Inf")


def exposition(
    buckets: Mapping[str, int],
    requests: Mapping[str, int],
    redis_up: int,
    feedback: Mapping[str, int],
) -> str:
    lines = [
        "# HELP aiops_gateway_request_duration_seconds Latency.",
        "# TYPE aiops_gateway_request_duration_seconds histogram",
    ]
    running = 0
    for le in BOUNDS:
        running += buckets.get(le, 0)
        lines.append(
            f'aiops_gateway_request_duration_seconds_bucket{{route="/x",method="GET",le="{le}"}}'
            f" {running}"
        )
    lines += [
        f'aiops_gateway_request_duration_seconds_count{{route="/x",method="GET"}} {running}',
        'aiops_gateway_request_duration_seconds_sum{route="/x",method="GET"} 1.0',
        "# HELP aiops_gateway_requests_total Requests.",
        "# TYPE aiops_gateway_requests_total counter",
    ]
    for status, n in requests.items():
        lines.append(
            f'aiops_gateway_requests_total{{route="/x",method="GET",status="{status}"}} {n}'
        )
    lines += [
        "# HELP aiops_dependency_up Up.",
        "# TYPE aiops_dependency_up gauge",
        f'aiops_dependency_up{{service="feedback",dependency="redis"}} {redis_up}',
        "# HELP aiops_feedback_total Feedback.",
        "# TYPE aiops_feedback_total counter",
    ]
    for result, n in feedback.items():
        lines.append(f'aiops_feedback_total{{verdict="confirmed",result="{result}"}} {n}')
    return "\n".join(lines) + "\n"


@pytest.fixture
async def scraping_stub(
    postgres_url: str, pg_schema: str, endpoints: Endpoints
) -> AsyncIterator[tel_grpc.TelemetryServiceStub]:
    targets = [
        endpoints.url("suite"),
        f"{endpoints.base}/hang",
        endpoints.url("garbage"),
        f"{endpoints.base}/status/500",
        "http://127.0.0.1:1/metrics",
    ]
    endpoints.texts["garbage"] = "<html>this is not an exposition</html>\n{{{"
    env = telemetry_env(
        postgres_url,
        pg_schema,
        AIOPS_TELEMETRY_SCRAPE_TARGETS=",".join(targets),
        AIOPS_TELEMETRY_SCRAPE_TIMEOUT_SECONDS="0.3",
    )
    async with (
        server.running(TelemetrySettings.from_env(env)) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        yield tel_grpc.TelemetryServiceStub(channel)


def by_metric(reply: tel_svc.CollectResponse) -> dict[str, tel.CriticalMetric]:
    return {m.metric: m for m in reply.metrics}


async def test_p95_comes_from_bucket_increases_and_a_counter_reset_is_never_negative(
    scraping_stub: tel_grpc.TelemetryServiceStub, endpoints: Endpoints
) -> None:
    # Before: 1,000 slow requests (all > 1 s) and 100 failures; these must not count.
    endpoints.texts["suite"] = exposition(
        {"+Inf": 1000}, {"200": 900, "500": 100}, 1, {"stored": 50, "unavailable": 50}
    )
    await scraping_stub.Collect(tel_svc.CollectRequest())
    # Then: 100 new requests: 50 <= 50 ms, 40 in (50, 100] ms, 10 in (100, 150] ms; the
    # request counter restarted (process restart) and now shows 200 OK x 199, 500 x 1.
    endpoints.texts["suite"] = exposition(
        {"0.05": 50, "0.1": 40, "0.15": 10, "+Inf": 1000},
        {"200": 199, "500": 1},
        1,
        {"stored": 250, "unavailable": 50},
    )
    begin = time.monotonic()
    reply = await scraping_stub.Collect(tel_svc.CollectRequest())
    assert time.monotonic() - begin < 2.0  # the hanging source did not stall the round
    m = by_metric(reply)
    # rank 95 of 100 falls in (100, 150] ms: 100 + 50 * (95 - 90) / 10 = 125 ms.
    assert m["latency_p95"].value == pytest.approx(125.0)
    assert m["latency_p95"].within_slo and m["latency_p95"].unit == "ms"
    assert m["latency_p95"].slo_target == 150.0
    # After the reset: 1 failure of 200 requests, not a negative or huge rate.
    assert m["error_rate"].value == pytest.approx(0.5)
    assert not m["error_rate"].within_slo  # 0.5 % is not < 0.5 %
    assert m["redis_uptime"].value == pytest.approx(100.0)
    assert m["feedback_success_rate"].value == pytest.approx(100.0)  # 200 stored, 0 failed
    # 2 of 10 attempts (5 sources x 2 rounds) succeeded.
    assert m["availability"].value == pytest.approx(20.0)
    assert all(x.observed for x in reply.metrics)
    assert [x.metric for x in reply.metrics] == [
        "latency_p95",
        "error_rate",
        "availability",
        "redis_uptime",
        "feedback_success_rate",
    ]
    results = [tel.ScrapeResult.Name(s.result) for s in reply.sources]
    assert results == [
        "SCRAPE_RESULT_OK",
        "SCRAPE_RESULT_TIMEOUT",
        "SCRAPE_RESULT_PARSE_ERROR",
        "SCRAPE_RESULT_HTTP_ERROR",
        "SCRAPE_RESULT_UNREACHABLE",
    ]
    assert all(s.error_message for s in reply.sources[1:])
    assert not reply.within_slo


async def test_collect_with_no_source_answering_observes_nothing(
    telemetry_stub: tel_grpc.TelemetryServiceStub,
) -> None:
    reply = await telemetry_stub.Collect(tel_svc.CollectRequest())
    assert len(reply.metrics) == 5
    assert not any(m.observed for m in reply.metrics)
    assert not reply.within_slo


async def test_collect_cuts_a_hanging_source_short_to_meet_the_callers_deadline(
    postgres_url: str, pg_schema: str, endpoints: Endpoints
) -> None:
    env = telemetry_env(
        postgres_url,
        pg_schema,
        AIOPS_TELEMETRY_SCRAPE_TARGETS=f"{endpoints.base}/hang",
        AIOPS_TELEMETRY_SCRAPE_TIMEOUT_SECONDS="5",
    )
    async with (
        server.running(TelemetrySettings.from_env(env)) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        stub = tel_grpc.TelemetryServiceStub(channel)
        reply = await stub.Collect(tel_svc.CollectRequest(), timeout=1.0)
        assert [s.result for s in reply.sources] == [tel.SCRAPE_RESULT_TIMEOUT]


async def test_collector_loop_stores_raw_gauges_and_reset_safe_counter_rates(
    postgres_url: str, pg_schema: str, endpoints: Endpoints
) -> None:
    counter = {"value": 1000}

    def text() -> str:
        return (
            "# TYPE test_queue_depth gauge\ntest_queue_depth 7\n"
            f'# TYPE test_jobs_total counter\ntest_jobs_total{{kind="a"}} {counter["value"]}\n'
        )

    endpoints.texts["raw"] = text()
    env = telemetry_env(
        postgres_url,
        pg_schema,
        AIOPS_TELEMETRY_SCRAPE_TARGETS=endpoints.url("raw"),
        AIOPS_TELEMETRY_COLLECTOR_ENABLED="true",
        AIOPS_TELEMETRY_COLLECT_INTERVAL_SECONDS="0.2",
        AIOPS_TELEMETRY_RAW_METRICS="test_queue_depth,test_jobs_total",
    )
    async with (
        server.running(TelemetrySettings.from_env(env)) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        stub = tel_grpc.TelemetryServiceStub(channel)

        async def points(metric: str) -> list[float]:
            now = time.time()
            rng = common_pb2.TimeRange(start_time=_ts(now - 60), end_time=_ts(now + 1))
            try:
                reply = await stub.QuerySeries(
                    tel_svc.QuerySeriesRequest(metric=metric, time_range=rng)
                )
            except grpc.aio.AioRpcError as err:
                raise AssertionError(f"not stored yet: {err.code()}") from err
            (series,) = reply.series
            return [p.value for p in series.points]

        async def gauges_stored() -> None:
            assert len(await points("test_queue_depth")) >= 2

        await eventually(gauges_stored)
        assert set(await points("test_queue_depth")) == {7.0}
        # The counter grows, restarts from zero, then grows again.
        for value in (1100, 1200, 10, 20):
            hits = endpoints.hits.get("raw", 0)
            counter["value"] = value
            endpoints.texts["raw"] = text()

            async def scraped(before: int = hits) -> None:
                assert endpoints.hits.get("raw", 0) >= before + 2

            await eventually(scraped)
        rates = await points("test_jobs_total")
        assert rates and min(rates) >= 0.0  # the reset never shows as a negative rate
        listed = await stub.ListSeries(
            tel_svc.ListSeriesRequest(filter=tel_svc.SeriesFilter(metric="test_jobs_total"))
        )
        (series,) = listed.series
        assert series.kind == tel.SERIES_KIND_COUNTER_RATE and series.unit == "1/s"
        assert series.labels["instance"] == endpoints.base.removeprefix("http://")
        assert series.labels["kind"] == "a"


def _ts(seconds: float) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromNanoseconds(round(seconds * 1e9))
    return out
