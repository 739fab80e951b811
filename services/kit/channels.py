"""Client channels: one per peer per process, with deadlines on every call and retries for
idempotent methods."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import grpc
from prometheus_client import Counter

from services.kit import errors, tls, tracing

CALLS_WITHOUT_DEADLINE = Counter(
    "grpc_client_calls_without_deadline_total",
    "Outgoing RPCs issued without a deadline (the channel's default was applied).",
    ["grpc_method"],
)

# Deadlines are cut a little short so the callee's answer can still reach our caller.
_MARGIN_SECONDS = 0.05


def timeout_for(context: grpc.aio.ServicerContext[Any, Any] | None, configured: float) -> float:
    """The timeout of an outgoing call made while serving `context`:
    `min(configured, time_remaining - margin)`. Raises DeadlineExceeded when no time is left.
    """
    remaining = context.time_remaining() if context is not None else None
    if remaining is None:
        return configured
    left = remaining - _MARGIN_SECONDS
    if left <= 0:
        raise errors.DeadlineExceeded(
            "DEADLINE_EXCEEDED", "The caller's deadline passed before the call could be made."
        )
    return min(configured, left)


# grpc-stubs makes the interceptor classes generic; at runtime they are not subscriptable.
if TYPE_CHECKING:
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    _StreamUnary = grpc.aio.StreamUnaryClientInterceptor[Any, Any]
    _StreamStream = grpc.aio.StreamStreamClientInterceptor[Any, Any]
else:
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor
    _StreamUnary = grpc.aio.StreamUnaryClientInterceptor
    _StreamStream = grpc.aio.StreamStreamClientInterceptor


class _DefaultDeadline(_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream):
    """Gives a deadline to any call that has none and counts such calls."""

    def __init__(self, default_seconds: float) -> None:
        self._default = default_seconds

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        if details.timeout is not None:
            return details
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        CALLS_WITHOUT_DEADLINE.labels(method).inc()
        return grpc.aio.ClientCallDetails(
            details.method,
            self._default,
            details.metadata,
            details.credentials,
            details.wait_for_ready,
        )

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)

    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


def service_config(service: str, idempotent_methods: Sequence[str]) -> str:
    """A gRPC service config that retries idempotent methods on UNAVAILABLE."""
    config: dict[str, Any] = {"methodConfig": []}
    if idempotent_methods:
        config["methodConfig"].append(
            {
                "name": [{"service": service, "method": m} for m in idempotent_methods],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "0.5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        )
    return json.dumps(config)


def open_channel(
    target: str,
    *,
    service: str,
    idempotent_methods: Sequence[str] = (),
    default_timeout_seconds: float = 5.0,
    max_message_bytes: int = 4 * 1024 * 1024,
    tls_settings: tls.TLSSettings | None = None,
) -> grpc.aio.Channel:
    """Opens a channel to `target` with tracing, default deadlines and retries: mutual TLS
    when `tls_settings` names a CA, else plaintext.

    Args:
        target: `host:port` of the peer.
        service: full name of the peer's service, for the retry policy.
        idempotent_methods: methods that may be retried safely.
        default_timeout_seconds: deadline given to calls that have none.
        max_message_bytes: send and receive size limit.
        tls_settings: this process's certificate and the CA of its peers.
    """
    options = [
        ("grpc.service_config", service_config(service, idempotent_methods)),
        ("grpc.enable_retries", 1),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2_000),
    ]
    # grpc-stubs leaves `ClientInterceptor` as a placeholder that callers must cast to.
    default_deadline = cast("grpc.aio.ClientInterceptor", _DefaultDeadline(default_timeout_seconds))
    interceptors = [default_deadline, *tracing.client_interceptors()]
    if tls_settings is not None and tls_settings.client_enabled:
        return grpc.aio.secure_channel(
            target,
            tls.channel_credentials(tls_settings),
            options=options,
            interceptors=interceptors,
        )
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
