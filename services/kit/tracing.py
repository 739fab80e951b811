"""OpenTelemetry set-up: one tracer provider per process, exporting over OTLP only when the
standard `OTEL_EXPORTER_OTLP_ENDPOINT` variable is set (off by default)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, cast

import grpc
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import (
    aio_client_interceptors,
    aio_server_interceptor,
    filters,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger(__name__)


def configure(service: str, env: Mapping[str, str]) -> None:
    """Installs a tracer provider once per process, so logs carry trace ids and spans
    propagate across calls; adds an OTLP exporter when an endpoint is configured."""
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return
    provider = TracerProvider(resource=Resource.create({"service.name": f"aiops-{service}"}))
    if env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter,
            )
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        except ImportError:
            log.warning(
                "otlp exporter not installed", extra={"package": "opentelemetry-exporter-otlp"}
            )
    trace.set_tracer_provider(provider)


# opentelemetry-instrumentation-grpc ships `py.typed` but leaves these factories unannotated.
_aio_server_interceptor = cast(Callable[..., Any], aio_server_interceptor)
_aio_client_interceptors = cast(Callable[..., Any], aio_client_interceptors)


def server_interceptor() -> grpc.aio.ServerInterceptor[Any, Any]:
    """The OTel server interceptor, passed explicitly, with health checks left out."""
    interceptor: grpc.aio.ServerInterceptor[Any, Any] = _aio_server_interceptor(
        filter_=filters.negate(filters.health_check())
    )
    return interceptor


def client_interceptors() -> list[Any]:
    """The OTel client interceptors that propagate W3C trace context on outgoing calls."""
    return list(_aio_client_interceptors(filter_=filters.negate(filters.health_check())))
