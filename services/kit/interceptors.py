"""Server interceptors: `observe` (access log + Prometheus metrics) and `errors`
(domain errors -> rich gRPC status; anything else -> INTERNAL without leaking details)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import grpc
from grpc_status import rpc_status
from prometheus_client import Counter, Histogram

from services.kit import errors

log = logging.getLogger(__name__)
access_log = logging.getLogger("aiops.access")

STARTED = Counter(
    "grpc_server_started_total",
    "RPCs started on the server.",
    ["grpc_service", "grpc_method", "grpc_type"],
)
HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by status code.",
    ["grpc_service", "grpc_method", "grpc_type", "grpc_code"],
)
HANDLING = Histogram(
    "grpc_server_handling_seconds",
    "Time to handle an RPC on the server, in seconds.",
    ["grpc_service", "grpc_method", "grpc_type"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10),
)

Behavior = Callable[..., Any]
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"

# grpc-stubs makes these classes generic; at runtime they are not subscriptable.
if TYPE_CHECKING:
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor
Wrapper = Callable[[Behavior, str, bool, bool], Behavior]

_QUIET_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.")
# Unknown methods are not cached (their handler is None), so this only bounds a server
# with very many services.
_MAX_CACHED_METHODS = 1024


def _split(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").partition("/")
    return service, name


def _rpc_type(handler: Handler) -> str:
    if handler.request_streaming and handler.response_streaming:
        return "bidi_stream"
    if handler.request_streaming:
        return "client_stream"
    if handler.response_streaming:
        return "server_stream"
    return "unary"


def _rewrap(handler: Handler, wrap: Callable[[Behavior, bool], Behavior]) -> Handler:
    """Returns a copy of `handler` whose behaviour is wrapped."""
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            wrap(handler.unary_unary, False),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            wrap(handler.unary_stream, True),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            wrap(handler.stream_unary, False),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return grpc.stream_stream_rpc_method_handler(
        # The last kind left: a method handler always has exactly one behaviour set.
        wrap(cast(Behavior, handler.stream_stream), True),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class _WrappingInterceptor(_ServerInterceptor):
    def __init__(self) -> None:
        # method -> (the handler we were given, our wrapped copy). The servicer's handler of
        # a method is the same object on every call, so wrapping (and the metric children it
        # resolves) is done once per method rather than once per RPC.
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method: str = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = _rewrap(
            handler, lambda behavior, streaming: self.wrap(behavior, method, handler, streaming)
        )
        if len(self._wrapped) < _MAX_CACHED_METHODS:
            self._wrapped[method] = (handler, wrapped)
        return wrapped

    def wrap(self, behavior: Behavior, method: str, handler: Handler, streaming: bool) -> Behavior:
        raise NotImplementedError


class StreamWriteInterceptor(_WrappingInterceptor):
    """Put first (outermost): serves response streams through `context.write` from one
    coroutine, and always closes the interceptors' async generators in the RPC's own task.

    grpc.aio iterates an async-generator handler but never closes it: when the client
    cancels while the handler is suspended at `yield` (grpc is sending), the generator is
    left open, and the event loop's finaliser later closes it in another task, after the
    RPC ended. OpenTelemetry then fails to detach its context there (an ERROR log line per
    cancelled stream), and the access log's `context.peer()` ran on a cancelled call and
    crashed the process with SIGSEGV (ScorePoints benchmark; `observe` now reads the peer
    at the start). A coroutine handler gets the cancellation at `context.write`, so the
    whole chain is closed in the RPC's task, in its context, before the RPC ends."""

    def wrap(self, behavior: Behavior, method: str, handler: Handler, streaming: bool) -> Behavior:
        if not streaming:
            return behavior

        async def write_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            responses = behavior(request, context)
            if not hasattr(responses, "__aiter__"):
                for item in responses:
                    await context.write(item)
                return
            try:
                async for item in responses:
                    await context.write(item)
            finally:
                await responses.aclose()

        return write_stream


class ErrorInterceptor(_WrappingInterceptor):
    """Turns `AiopsError` into a `google.rpc.Status` with ErrorInfo/BadRequest/RetryInfo,
    and any other exception into INTERNAL with the message `internal error`."""

    def __init__(self, domain: str) -> None:
        super().__init__()
        self._domain = domain

    async def _abort(self, context: grpc.aio.ServicerContext[Any, Any], exc: Exception) -> None:
        if isinstance(exc, NotImplementedError):
            # The generated base servicer raises this for methods not built yet.
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "method not implemented")
        if isinstance(exc, errors.AiopsError):
            status = rpc_status.to_status(errors.to_status(exc, self._domain))
            await context.abort(status.code, status.details, status.trailing_metadata)
        log.error("unhandled error in rpc", exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, "internal error")

    def wrap(self, behavior: Behavior, method: str, handler: Handler, streaming: bool) -> Behavior:
        if streaming:

            async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                try:
                    async for item in _as_async_iter(behavior(request, context)):
                        yield item
                except (grpc.aio.AbortError, asyncio.CancelledError):
                    raise
                except Exception as exc:
                    await self._abort(context, exc)

            return stream

        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                result = behavior(request, context)
                return await result if inspect.isawaitable(result) else result
            except (grpc.aio.AbortError, asyncio.CancelledError):
                raise
            except Exception as exc:
                await self._abort(context, exc)

        return unary


class ObserveInterceptor(_WrappingInterceptor):
    """Records `grpc_server_*` metrics and writes one access-log line per RPC."""

    def wrap(self, behavior: Behavior, method: str, handler: Handler, streaming: bool) -> Behavior:
        service, name = _split(method)
        kind = _rpc_type(handler)
        quiet = service.startswith(_QUIET_SERVICES)
        started = STARTED.labels(service, name, kind)
        handling = HANDLING.labels(service, name, kind)
        handled: dict[str, Any] = {}

        def peer(context: grpc.aio.ServicerContext[Any, Any]) -> str:
            # Read when the RPC starts: once the client has cancelled, the core call behind
            # `context.peer()` may be gone, and reading it crashed the process (SIGSEGV).
            if quiet or not access_log.isEnabledFor(logging.INFO):
                return ""
            return context.peer()

        def finish(caller: str, begin: float, code: str) -> None:
            elapsed = time.perf_counter() - begin
            handling.observe(elapsed)
            counter = handled.get(code)
            if counter is None:
                counter = handled[code] = HANDLED.labels(service, name, kind, code)
            counter.inc()
            if quiet:
                return
            level = logging.ERROR if code in _SERVER_FAULTS else logging.INFO
            if not access_log.isEnabledFor(level):
                return
            access_log.log(
                level,
                "rpc",
                extra={
                    "method": method,
                    "code": code,
                    "duration_ms": round(elapsed * 1000, 3),
                    "peer": caller,
                },
            )

        if streaming:

            async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                started.inc()
                begin = time.perf_counter()
                caller = peer(context)
                code = "OK"
                try:
                    async for item in behavior(request, context):
                        yield item
                except (asyncio.CancelledError, GeneratorExit):
                    # GeneratorExit: closed early, the client went away (not a server fault).
                    code = "CANCELLED"
                    raise
                except BaseException:
                    code = _code_name(context, "UNKNOWN")
                    raise
                finally:
                    finish(caller, begin, code if code != "OK" else _code_name(context, "OK"))

            return stream

        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started.inc()
            begin = time.perf_counter()
            caller = peer(context)
            code = "OK"
            try:
                return await behavior(request, context)
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except BaseException:
                code = _code_name(context, "UNKNOWN")
                raise
            finally:
                finish(caller, begin, code if code != "OK" else _code_name(context, "OK"))

        return unary


_SERVER_FAULTS = frozenset(
    {"UNKNOWN", "INTERNAL", "UNAVAILABLE", "DEADLINE_EXCEEDED", "DATA_LOSS", "UNIMPLEMENTED"}
)


def _code_name(context: grpc.aio.ServicerContext[Any, Any], default: str) -> str:
    code = context.code()
    if code is None:
        return default
    if isinstance(code, grpc.StatusCode):
        return code.name
    return errors.CODE_BY_NUMBER.get(int(code), grpc.StatusCode.UNKNOWN).name


async def _as_async_iter(result: Any) -> AsyncIterator[Any]:
    if hasattr(result, "__aiter__"):
        async for item in result:
            yield item
    else:
        for item in result:
            yield item
