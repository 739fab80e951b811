"""One REST call produces one trace that covers every hop: the gateway's HTTP server span,
the gRPC client span, the feedback service's gRPC server span and its Redis spans; W3C
trace context sent by the caller is continued; log lines carry the trace id.

The gateway middleware and the Redis client instrumentation are production code
(services/kit/tracing.py). Until gateway/app.py and services/feedback/storage.py wire them
in themselves, the `wired` fixture does it the same way (and does nothing once they do).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway import app as gateway_app
from services.feedback import server as feedback_server
from services.feedback import storage as feedback_storage
from services.feedback.settings import FeedbackSettings
from services.kit import logging as kit_logging
from services.kit import tracing
from tests import helpers
from tests.conftest import Gateway, feedback_env, serve_gateway

FEEDBACK = {
    "target": {"kind": "TARGET_KIND_ANOMALY", "id": "a-trace"},
    "verdict": "VERDICT_CONFIRMED",
    "series": "latency_p95",
}


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider(resource=Resource.create({"service.name": "aiops-tests"}))
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()  # the processor stays registered but exports nothing any more


@pytest.fixture
def wired(monkeypatch: pytest.MonkeyPatch, spans: InMemorySpanExporter) -> None:
    create_app, connect = gateway_app.create_app, feedback_storage.connect

    def create_traced_app(*args: Any, **kwargs: Any) -> Any:
        application = create_app(*args, **kwargs)
        if not any(getattr(m, "aiops_tracing", False) for m in application.middlewares):
            application.middlewares.insert(0, tracing.aiohttp_middleware())
        return application

    monkeypatch.setattr(gateway_app, "create_app", create_traced_app)
    monkeypatch.setattr(
        feedback_storage, "connect", lambda *a, **k: tracing.instrument_redis(connect(*a, **k))
    )


@pytest.fixture
async def suite(
    wired: None, redis_url: str, redis_prefix: str, tmp_path: Path
) -> AsyncIterator[Gateway]:
    settings = FeedbackSettings.from_env(feedback_env(redis_url, redis_prefix))
    async with (
        feedback_server.running(settings) as running,
        serve_gateway({"feedback": running}, tmp_path / "keys") as gw,
    ):
        yield gw


def _of_trace(exporter: InMemorySpanExporter, trace_id: int) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]


def _by_kind(found: list[ReadableSpan]) -> dict[str, ReadableSpan]:
    """The spans of one request: gateway HTTP server, gRPC client, gRPC server, first Redis."""
    out: dict[str, ReadableSpan] = {}
    for span in found:
        attributes = span.attributes or {}
        if span.kind == trace.SpanKind.SERVER and "http.route" in attributes:
            out["http"] = span
        elif span.kind == trace.SpanKind.CLIENT and attributes.get("rpc.system") == "grpc":
            out["grpc_client"] = span
        elif span.kind == trace.SpanKind.SERVER and attributes.get("rpc.system") == "grpc":
            out["grpc_server"] = span
        elif attributes.get("db.system") == "redis":
            out.setdefault("redis", span)
    return out


async def _submit(gw: Gateway, **headers: str) -> None:
    async with gw.session.post(
        gw.url("/api/v1/aiops/feedback"),
        json=FEEDBACK,
        headers={**gw.auth("operator"), **headers},
    ) as resp:
        assert resp.status == 201, await resp.text()


async def test_one_rest_call_is_one_trace_across_every_hop(
    suite: Gateway, spans: InMemorySpanExporter
) -> None:
    spans.clear()
    await _submit(suite)

    async def complete() -> dict[str, ReadableSpan]:
        roots = [
            s
            for s in spans.get_finished_spans()
            if s.parent is None and (s.attributes or {}).get("http.route")
        ]
        assert len(roots) == 1
        hops = _by_kind(_of_trace(spans, roots[0].context.trace_id))
        assert hops.keys() == {"http", "grpc_client", "grpc_server", "redis"}
        return hops

    hops = await helpers.eventually(complete)
    assert hops["http"].name == "POST /api/v1/aiops/feedback"
    assert (hops["http"].attributes or {})["http.response.status_code"] == 201
    # Each hop is the child of the previous one.
    assert hops["grpc_client"].parent is not None
    assert hops["grpc_client"].parent.span_id == hops["http"].context.span_id
    assert hops["grpc_server"].parent is not None
    assert hops["grpc_server"].parent.span_id == hops["grpc_client"].context.span_id
    assert (hops["grpc_server"].attributes or {})["rpc.service"] == (
        "aiops.feedback.v1.FeedbackService"
    )
    assert hops["redis"].parent is not None
    redis_parents = {s.context.span_id for s in _of_trace(spans, hops["http"].context.trace_id)}
    assert hops["redis"].parent.span_id in redis_parents
    # Nothing the request did started a trace of its own.
    orphans = [s for s in spans.get_finished_spans() if s.parent is None and s is not hops["http"]]
    assert not [s for s in orphans if (s.attributes or {}).get("rpc.system")], orphans


async def test_callers_w3c_trace_context_is_continued(
    suite: Gateway, spans: InMemorySpanExporter
) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent_id = "00f067aa0ba902b7"
    spans.clear()
    await _submit(suite, traceparent=f"00-{trace_id}-{parent_id}-01")

    async def complete() -> dict[str, ReadableSpan]:
        hops = _by_kind(_of_trace(spans, int(trace_id, 16)))
        assert hops.keys() == {"http", "grpc_client", "grpc_server", "redis"}
        return hops

    hops = await helpers.eventually(complete)
    assert hops["http"].parent is not None
    assert hops["http"].parent.span_id == int(parent_id, 16)


async def test_log_lines_carry_the_trace_id(suite: Gateway, spans: InMemorySpanExporter) -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(kit_logging.JsonFormatter("tests"))
    access = logging.getLogger("aiops.access")
    access.addHandler(handler)
    previous = access.level
    access.setLevel(logging.INFO)
    try:
        spans.clear()
        await _submit(suite)

        async def logged() -> list[dict[str, Any]]:
            lines = [json.loads(line) for line in out.getvalue().splitlines()]
            rpc = [line for line in lines if line.get("method", "").endswith("Feedback")]
            assert rpc
            return rpc

        (line, *_) = await helpers.eventually(logged)
    finally:
        access.removeHandler(handler)
        access.setLevel(previous)
    server_spans = [s for s in spans.get_finished_spans() if (s.attributes or {}).get("rpc.system")]
    assert line["trace_id"] in {format(s.context.trace_id, "032x") for s in server_spans}
