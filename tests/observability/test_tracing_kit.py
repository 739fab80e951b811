"""services/kit/tracing: Postgres statement spans, the aiohttp server span, suppression,
and the OTLP exporter switched on by the standard environment variable only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.kit import tracing
from tests.deploy import tools


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider(resource=Resource.create({"service.name": "aiops-tests"}))
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()


@pytest.fixture
async def pool(postgres_url: str, pg_schema: str) -> AsyncIterator[asyncpg.Pool]:
    opened = await asyncpg.create_pool(
        postgres_url,
        min_size=1,
        max_size=1,
        server_settings={"search_path": pg_schema},
        connection_class=tracing.TracedConnection,
    )
    try:
        yield opened
    finally:
        await opened.close()


async def test_postgres_statements_are_child_spans_inside_a_trace(
    pool: asyncpg.Pool, spans: InMemorySpanExporter
) -> None:
    await pool.execute("CREATE TABLE t (v int)")  # outside a trace: no span
    spans.clear()
    with trace.get_tracer("test").start_as_current_span("request") as parent:
        await pool.execute("INSERT INTO t VALUES ($1)", 7)
        assert await pool.fetchval("SELECT v FROM t") == 7
        with tracing.untraced():
            await pool.fetch("SELECT * FROM t")
    finished = {s.name: s for s in spans.get_finished_spans()}
    assert set(finished) == {"request", "postgresql INSERT", "postgresql SELECT"}
    select = finished["postgresql SELECT"]
    assert select.kind == trace.SpanKind.CLIENT
    assert select.parent is not None
    assert select.parent.span_id == parent.get_span_context().span_id
    assert (select.attributes or {})["db.system"] == "postgresql"
    assert "7" not in json.dumps(dict(finished["postgresql INSERT"].attributes or {}))


async def test_http_server_span_per_request_with_status_and_route(
    spans: InMemorySpanExporter,
) -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"id": request.match_info["id"]})

    async def boom(request: web.Request) -> web.Response:
        raise web.HTTPServiceUnavailable()

    app = web.Application(middlewares=[tracing.aiohttp_middleware()])
    app.router.add_get("/items/{id}", ok)
    app.router.add_get("/boom", boom)
    app.router.add_get("/health", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        spans.clear()
        async with aiohttp.ClientSession() as session:
            for path in ("/items/42", "/boom", "/health"):
                async with session.get(base + path) as resp:
                    await resp.read()
    finally:
        await runner.cleanup()
    finished = {s.name: s for s in spans.get_finished_spans()}
    assert set(finished) == {"GET /items/{id}", "GET /boom"}  # probes are not traced
    item = finished["GET /items/{id}"]
    assert item.kind == trace.SpanKind.SERVER
    assert (item.attributes or {})["http.route"] == "/items/{id}"
    assert (item.attributes or {})["http.response.status_code"] == 200
    boom_span = finished["GET /boom"]
    assert (boom_span.attributes or {})["http.response.status_code"] == 503
    assert boom_span.status.status_code == trace.StatusCode.ERROR


_PROBE = """
import json, os
from opentelemetry import trace
from services.kit import tracing
tracing.configure("feedback", os.environ)
provider = trace.get_tracer_provider()
active = getattr(provider, "_active_span_processor", None)
processors = getattr(active, "_span_processors", ())
resource = getattr(provider, "resource", None)
print(json.dumps({
    "sdk": type(provider).__name__,
    "exporters": [type(getattr(p, "span_exporter", None)).__name__ for p in processors],
    "service": resource.attributes.get("service.name") if resource else None,
}))
"""


def _probe(**env: str) -> dict[str, object]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    path = f"{tools.ROOT}{os.pathsep}{tools.ROOT / 'gen'}"
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE],
        capture_output=True,
        text=True,
        env={**clean, "PYTHONPATH": path, **env},
        cwd=tools.ROOT,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_traces_are_exported_over_otlp_only_when_an_endpoint_is_set() -> None:
    off = _probe()
    assert off == {"sdk": "TracerProvider", "exporters": [], "service": "aiops-feedback"}
    on = _probe(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4317", OTEL_SERVICE_NAME="fb")
    assert on["exporters"] == ["OTLPSpanExporter"]
    assert on["service"] == "fb"
    assert _probe(OTEL_SDK_DISABLED="true")["sdk"] != "TracerProvider"
