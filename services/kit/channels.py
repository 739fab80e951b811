"""Client channels: one per peer per process, with deadlines on every call and retries for
idempotent methods."""

from __future__ import annotations

import asyncio
import json
import time
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


# gRPC's message for a call that found no connection to send it on (pick_first while the
# channel is in TRANSIENT_FAILURE): such a call never left this process.
_NOT_SENT = "failed to connect to all addresses"
_RESEND_ATTEMPTS = 3


class _ResendUnsent(_UnaryUnary):
    """Sends a unary call again when it failed without ever being sent, once the channel
    is READY again, waiting at most `wait_seconds` (and never past the call's deadline).

    During a rolling restart a reconnect can land on the old process's closing listener
    and fail; without this, every call made before the next attempt (100 ms later) would
    fail UNAVAILABLE although the replacement is already listening. A peer that is really
    down still answers UNAVAILABLE, `wait_seconds` later.
    """

    def __init__(self, wait_seconds: float) -> None:
        self._wait = wait_seconds
        self.channel: grpc.aio.Channel | None = None

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        began = time.monotonic()
        for attempt in range(1, _RESEND_ATTEMPTS + 1):
            call = await continuation(details, request)
            try:
                await call
            except grpc.aio.AioRpcError as err:
                unsent = err.code() is grpc.StatusCode.UNAVAILABLE and (
                    err.details() or ""
                ).startswith(_NOT_SENT)
                if not unsent or attempt == _RESEND_ATTEMPTS:
                    return call
                left = self._wait
                if details.timeout is not None:
                    left = details.timeout - (time.monotonic() - began) - _MARGIN_SECONDS
                if not await self._reconnected(min(self._wait, left)):
                    return call
                details = grpc.aio.ClientCallDetails(
                    details.method,
                    None if details.timeout is None else left,
                    details.metadata,
                    details.credentials,
                    details.wait_for_ready,
                )
                continue
            return call
        raise AssertionError("unreachable")  # pragma: no cover

    async def _reconnected(self, within: float) -> bool:
        if self.channel is None or within <= 0:
            return False
        channel = self.channel
        try:
            async with asyncio.timeout(within):
                state = channel.get_state(try_to_connect=True)
                while state is not grpc.ChannelConnectivity.READY:
                    await channel.wait_for_state_change(state)
                    state = channel.get_state(try_to_connect=True)
        except TimeoutError:
            return False
        return True


def service_config(service: str, idempotent_methods: Sequence[str]) -> str:
    """A gRPC service config with retries that never run a call twice by accident.

    Every method is retried on CANCELLED: a peer answers it only to calls it never
    started, caught in its own shutdown (calls it started finish within its grace period,
    longer than the deadlines callers set), so a rolling restart surfaces no error.
    Idempotent methods are also retried on UNAVAILABLE, which may come after the peer ran
    the call. Calls that never left this process (a refused stream after GOAWAY) are
    retried by gRPC itself.
    """
    policy = {
        "maxAttempts": 3,
        "initialBackoff": "0.05s",
        "maxBackoff": "0.5s",
        "backoffMultiplier": 2,
    }
    config: dict[str, Any] = {
        "methodConfig": [
            {
                "name": [{"service": service}],
                "retryPolicy": {**policy, "retryableStatusCodes": ["CANCELLED"]},
            }
        ]
    }
    if idempotent_methods:
        config["methodConfig"].append(
            {
                "name": [{"service": service, "method": m} for m in idempotent_methods],
                "retryPolicy": {**policy, "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"]},
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
    reconnect_wait_seconds: float = 1.0,
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
        reconnect_wait_seconds: how long a call that found no connection waits for one.
    """
    options = [
        ("grpc.service_config", service_config(service, idempotent_methods)),
        ("grpc.enable_retries", 1),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        # A restarted peer is back within a second or two: find it soon after.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1_000),
    ]
    # grpc-stubs leaves `ClientInterceptor` as a placeholder that callers must cast to.
    default_deadline = cast("grpc.aio.ClientInterceptor", _DefaultDeadline(default_timeout_seconds))
    resend = _ResendUnsent(reconnect_wait_seconds)
    interceptors = [
        default_deadline,
        cast("grpc.aio.ClientInterceptor", resend),
        *tracing.client_interceptors(),
    ]
    channel: grpc.aio.Channel
    if tls_settings is not None and tls_settings.client_enabled:
        channel = grpc.aio.secure_channel(
            target,
            tls.channel_credentials(tls_settings),
            options=options,
            interceptors=interceptors,
        )
    else:
        channel = grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
    resend.channel = channel
    return channel
