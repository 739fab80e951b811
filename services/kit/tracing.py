"""OpenTelemetry set-up: one tracer provider per process, and spans on every hop.

- `configure` installs the provider; spans are exported over OTLP only when the standard
  `OTEL_EXPORTER_OTLP_ENDPOINT` variable is set (off by default). The other standard
  variables are honoured: `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
  `OTEL_TRACES_SAMPLER`/`_ARG` (read by the SDK), `OTEL_SDK_DISABLED`, and the exporter's
  own `OTEL_EXPORTER_OTLP_*` (headers, certificate, timeout, ...).
- Sampling: unless `OTEL_TRACES_SAMPLER` says otherwise, parent-based with a ratio for new
  traces, `AIOPS_TRACE_SAMPLE_RATIO` (default 0.01; 1 records every request). A caller's
  sampled `traceparent` is always followed. Unsampled requests still carry a trace id
  (logs, propagation) but record nothing, and our own spans skip their attributes.
- gRPC: `server_interceptor()` and `client_interceptors()` (W3C trace context travels in
  the call metadata), passed explicitly, health checks left out.
- Redis: `instrument_redis(client)` adds a CLIENT span per command and per pipeline.
- Postgres: `TracedConnection` as asyncpg's `connection_class` adds a CLIENT span per
  statement made inside a trace (the statement's operation, never its parameters).
- HTTP: `aiohttp_middleware()` opens the SERVER span of each gateway request, continuing
  the caller's `traceparent` when there is one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping
from typing import Any, TypeVar, cast

import asyncpg
import grpc
import redis.asyncio as redis
from aiohttp import web
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.grpc import (
    aio_client_interceptors,
    aio_server_interceptor,
    filters,
)
from opentelemetry.instrumentation.utils import (
    is_instrumentation_enabled,
    suppress_instrumentation,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider, sampling

from services.kit import settings as kit_settings

log = logging.getLogger(__name__)
T = TypeVar("T")
RedisT = TypeVar("RedisT", bound=redis.Redis)

_TRACER = "aiops"
DEFAULT_SAMPLE_RATIO = 0.01


def sampler(env: Mapping[str, str]) -> sampling.Sampler | None:
    """Parent-based ratio sampling from `AIOPS_TRACE_SAMPLE_RATIO`; None (the SDK's own
    choice) when the operator set `OTEL_TRACES_SAMPLER`.

    Raises:
        kit_settings.SettingsError: the ratio is not a number in [0, 1].
    """
    if env.get("OTEL_TRACES_SAMPLER", "").strip():
        return None
    r = kit_settings.Reader(env)
    ratio = r.float("AIOPS_TRACE_SAMPLE_RATIO", DEFAULT_SAMPLE_RATIO, min=0.0, max=1.0)
    if r.problems:
        raise kit_settings.SettingsError(r.problems)
    if ratio >= 1.0:
        return sampling.ParentBased(sampling.ALWAYS_ON)
    return sampling.ParentBased(sampling.TraceIdRatioBased(ratio))


def configure(service: str, env: Mapping[str, str]) -> None:
    """Installs a tracer provider once per process, so logs carry trace ids and spans
    propagate across calls; adds an OTLP exporter when an endpoint is configured."""
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return
    # Resource.create also reads OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME; ours is only
    # the default, so an operator's OTEL_SERVICE_NAME wins.
    attributes = {} if env.get("OTEL_SERVICE_NAME") else {"service.name": f"aiops-{service}"}
    provider = TracerProvider(resource=Resource.create(attributes), sampler=sampler(env))
    if env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]
                OTLPSpanExporter,
            )
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        except ImportError:
            log.warning(
                "otlp exporter not installed",
                extra={"package": "opentelemetry-exporter-otlp-proto-grpc"},
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


@contextlib.contextmanager
def untraced() -> Iterator[None]:
    """No client spans inside (readiness pings every second would each be a trace)."""
    with suppress_instrumentation():
        yield


# ---------------------------------------------------------------------------------- Redis


def instrument_redis(client: RedisT) -> RedisT:
    """Adds a CLIENT span to every command and pipeline of this client (not globally);
    returns the client. Statements are recorded without their values."""
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    if not getattr(client, "_is_instrumented_by_opentelemetry", False):
        RedisInstrumentor.instrument_client(client)
    return client


# ------------------------------------------------------------------------------- Postgres


def _operation(query: str) -> str:
    words = query.lstrip(" \n\t(").split(None, 1)
    return words[0].upper() if words else "SQL"


class TracedConnection(asyncpg.Connection):  # type: ignore[misc]
    """An asyncpg connection that opens a CLIENT span per statement; use it as
    `asyncpg.create_pool(..., connection_class=tracing.TracedConnection)`."""

    _untraced = False

    async def _traced(self, query: str, call: Callable[[], Awaitable[T]]) -> T:
        # Statements outside any trace (pool resets, start-up) would each be a root trace.
        if (
            self._untraced
            or not is_instrumentation_enabled()
            or not trace.get_current_span().get_span_context().is_valid
        ):
            return await call()
        operation = _operation(query)
        tracer = trace.get_tracer(_TRACER)
        with tracer.start_as_current_span(
            f"postgresql {operation}",
            kind=trace.SpanKind.CLIENT,
            attributes={"db.system": "postgresql", "db.operation": operation},
        ):
            return await call()

    # asyncpg's own signature, overridden as is.
    async def reset(self, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        self._untraced = True
        try:
            await super().reset(timeout=timeout)
        finally:
            self._untraced = False

    async def execute(self, query: str, *args: Any, **kwargs: Any) -> Any:
        return await self._traced(
            query, lambda: super(TracedConnection, self).execute(query, *args, **kwargs)
        )

    async def executemany(self, command: str, args: Any, **kwargs: Any) -> Any:
        return await self._traced(
            command, lambda: super(TracedConnection, self).executemany(command, args, **kwargs)
        )

    async def fetch(self, query: str, *args: Any, **kwargs: Any) -> Any:
        return await self._traced(
            query, lambda: super(TracedConnection, self).fetch(query, *args, **kwargs)
        )

    async def fetchrow(self, query: str, *args: Any, **kwargs: Any) -> Any:
        return await self._traced(
            query, lambda: super(TracedConnection, self).fetchrow(query, *args, **kwargs)
        )

    async def fetchval(self, query: str, *args: Any, **kwargs: Any) -> Any:
        return await self._traced(
            query, lambda: super(TracedConnection, self).fetchval(query, *args, **kwargs)
        )


# ----------------------------------------------------------------------------------- HTTP

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_QUIET_PATHS = frozenset({"/health", "/metrics", "/metrics/aiops"})


def aiohttp_middleware(quiet_paths: Collection[str] = _QUIET_PATHS) -> Any:
    """The SERVER span of each request (put it first in the middleware list, so logs and
    backend calls of the request carry its trace); probes and scrapes are not traced.
    The gateway has its own single middleware that opens the same span with `HttpSpan`."""

    @web.middleware
    async def trace_request(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        if route in quiet_paths:
            return await handler(request)
        span = HttpSpan(request, route)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            span.end(exc.status)
            raise
        except asyncio.CancelledError:
            span.end(499)  # the client went away
            raise
        except BaseException as exc:
            span.end(500, exc)
            raise
        span.end(response.status)
        return response

    trace_request.aiops_tracing = True  # type: ignore[attr-defined]
    return trace_request


# Made once: get_tracer per request showed up in profiles. Before a provider is set it is a
# proxy that follows the provider installed later.
_HTTP_TRACER = trace.get_tracer(_TRACER)
_NO_PARENT = otel_context.Context()


class HttpSpan:
    """The SERVER span of one HTTP request, current until `end`. Cheaper than
    `start_as_current_span`: no generator context manager, the caller's context is only
    extracted when it sent one of the propagator's headers, and an unsampled span gets no
    attributes."""

    __slots__ = ("_span", "_token")

    def __init__(self, request: web.Request, route: str) -> None:
        headers = request.headers
        # Like `propagate.extract`, a request without trace headers starts a new trace.
        parent = (
            propagate.extract(headers)
            if any(name in headers for name in _propagator_fields())
            else _NO_PARENT
        )
        span = _HTTP_TRACER.start_span(
            f"{request.method} {route}",
            context=parent,
            kind=trace.SpanKind.SERVER,
            record_exception=False,
            set_status_on_exception=False,
        )
        if span.is_recording():
            span.set_attributes(
                {
                    "http.request.method": request.method,
                    "http.route": route,
                    "url.path": request.path,
                    "url.scheme": request.scheme,
                }
            )
        self._span = span
        self._token = otel_context.attach(trace.set_span_in_context(span, parent))

    def end(self, status: int, exc: BaseException | None = None) -> None:
        """Records the response status (and an unexpected exception), ends the span and
        restores the context that was current before it."""
        span = self._span
        if span.is_recording():
            if exc is not None:
                span.record_exception(exc)
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(trace.Status(trace.StatusCode.ERROR))
        otel_context.detach(self._token)
        span.end()


_fields_cache: tuple[object, frozenset[str]] | None = None


def _propagator_fields() -> frozenset[str]:
    """The header names the global propagator reads (traceparent, tracestate, baggage by
    default), recomputed only if the global propagator is replaced."""
    global _fields_cache
    textmap = propagate.get_global_textmap()
    cached = _fields_cache
    if cached is None or cached[0] is not textmap:
        cached = _fields_cache = (textmap, frozenset(textmap.fields))
    return cached[1]
