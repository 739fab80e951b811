"""The Prometheus HTTP-API source against a real Prometheus server (Debian package
`prometheus`), started on a loopback port and scraping a local test endpoint."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import asyncpg
import grpc
import pytest
from aiops.telemetry.v1 import telemetry_pb2 as tel
from aiops.telemetry.v1 import telemetry_service_pb2 as tel_svc
from aiops.telemetry.v1 import telemetry_service_pb2_grpc as tel_grpc

from services.kit import local_servers
from services.telemetry import collector, ingest, lease, server, sources, storage
from services.telemetry.settings import TelemetrySettings
from tests.helpers import eventually
from tests.telemetry.conftest import Endpoints, telemetry_env

TEXT = """# HELP test_requests_total Requests.
# TYPE test_requests_total counter
test_requests_total{route="/a"} 100
test_requests_total{route="/b"} 50
# HELP test_latency_ms Latency.
# TYPE test_latency_ms gauge
test_latency_ms 87
"""


@pytest.fixture
def prometheus(endpoints: Endpoints, tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail(
            "the prometheus binary is missing: apt-get install -y prometheus", pytrace=False
        )
    endpoints.texts["app"] = TEXT
    target = endpoints.base.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: app\n    metrics_path: /metrics/app\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    port = local_servers.free_port()
    with (tmp_path / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
async def prom_url(prometheus: str) -> AsyncIterator[str]:
    """The server's URL once it has scraped the endpoint at least three times."""
    async with aiohttp.ClientSession() as session:

        async def scraped() -> None:
            answer = await sources.prometheus_query(
                session, prometheus, "count_over_time(test_latency_ms[1m])", 1.0
            )
            assert answer.status.result is sources.Result.OK, answer.status
            assert answer.samples and answer.samples[0].value >= 3

        await eventually(scraped, timeout=60)
    yield prometheus


QUERIES = {
    "app_requests": "sum by (route) (test_requests_total)",
    "latency_p95": "scalar(test_latency_ms)",
}


async def test_instant_queries_feed_series_and_a_critical_metric(
    prom_url: str, postgres_url: str, pg_schema: str
) -> None:
    env = telemetry_env(
        postgres_url,
        pg_schema,
        AIOPS_TELEMETRY_PROMETHEUS_URL=prom_url,
        AIOPS_TELEMETRY_PROMETHEUS_QUERIES=json.dumps(QUERIES),
        AIOPS_TELEMETRY_COLLECTOR_ENABLED="true",
        AIOPS_TELEMETRY_COLLECT_INTERVAL_SECONDS="0.5",
    )
    async with (
        server.running(TelemetrySettings.from_env(env)) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch,
    ):
        stub = tel_grpc.TelemetryServiceStub(ch)
        reply = await stub.Collect(tel_svc.CollectRequest())
        kinds = [tel.SourceKind.Name(s.kind) for s in reply.sources]
        assert kinds == ["SOURCE_KIND_PROMETHEUS_API"] * 2
        assert all(s.result == tel.SCRAPE_RESULT_OK for s in reply.sources)
        latency = reply.metrics[0]
        assert (latency.metric, latency.value, latency.observed) == ("latency_p95", 87.0, True)
        assert latency.within_slo

        async def stored() -> None:
            listed = await stub.ListSeries(
                tel_svc.ListSeriesRequest(filter=tel_svc.SeriesFilter(metric="app_requests"))
            )
            assert [s.key for s in listed.series] == [
                'app_requests{route="/a"}',
                'app_requests{route="/b"}',
            ]

        await eventually(stored, timeout=10)


async def test_range_query_backfills_a_gap(
    prom_url: str, postgres_url: str, pg_schema: str
) -> None:
    now = time.time()
    async with aiohttp.ClientSession() as session:
        answer = await sources.prometheus_query(
            session, prom_url, "test_latency_ms", 2.0, start=now - 30, end=now, step=1.0
        )
        assert answer.status.result is sources.Result.OK
        assert len(answer.samples) >= 3 and {s.value for s in answer.samples} == {87.0}
        bad = await sources.prometheus_query(session, prom_url, "sum(((", 2.0)
        assert bad.status.result is sources.Result.HTTP_ERROR
        async with asyncpg.create_pool(
            postgres_url, server_settings={"search_path": pg_schema}, min_size=1, max_size=2
        ) as db:
            store = storage.PostgresTelemetryStore(db)
            await store.migrate()
            ing = ingest.Ingestor(store, 86400 * 30, 1000)
            col = collector.Collector(
                collector.Config(
                    (),
                    frozenset(),
                    prom_url,
                    (("latency_gauge", "test_latency_ms"),),
                    1.0,
                    2.0,
                    300.0,
                ),
                session,
                ing,
                store,
                lease.AdvisoryLease(postgres_url, pg_schema, "unused"),
                None,
            )
            stored = await col.backfill(now - 30, now)
            assert stored >= 3
            assert await db.fetchval("SELECT count(*) FROM telemetry_points") == stored
            assert await col.backfill(now - 30, now) == 0  # already there: duplicates
