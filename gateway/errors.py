"""The one error envelope of the REST API.

Every error, whether raised by a backend (a gRPC status) or by the gateway itself, leaves as
`{"error": {"code", "message", "details", "request_id"}}` with the HTTP status of the
canonical gRPC mapping, `Retry-After` from RetryInfo, and `WWW-Authenticate` on 401.
"""

from __future__ import annotations

import json
import math
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.kit import errors

DOMAIN = "aiops.gateway.v1"

# Messages for backend failures that carry no status of ours: never pass on gRPC's own
# text, which names hosts and ports.
_GENERIC = {
    grpc.StatusCode.UNAVAILABLE: (
        "BACKEND_UNAVAILABLE",
        "The {backend} service is unavailable; retry shortly.",
    ),
    grpc.StatusCode.DEADLINE_EXCEEDED: (
        "BACKEND_TIMEOUT",
        "The {backend} service did not answer in time.",
    ),
    grpc.StatusCode.CANCELLED: ("CANCELLED", "The request was cancelled."),
    grpc.StatusCode.UNIMPLEMENTED: (
        "NOT_IMPLEMENTED",
        "The {backend} service does not implement this yet.",
    ),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (
        "BACKEND_OVERLOADED",
        "The {backend} service is overloaded; retry shortly.",
    ),
}


def from_rpc_error(err: grpc.aio.AioRpcError, backend: str) -> status_pb2.Status:
    """The status a backend sent, or a safe generic one when it sent no rich status."""
    status: status_pb2.Status | None = rpc_status.from_call(err)  # type: ignore[arg-type]
    if status is not None:
        return status
    code = err.code()
    reason, template = _GENERIC.get(code, ("INTERNAL", "internal error"))
    retry = (
        1.0 if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED) else None
    )
    generic = errors.AiopsError(
        reason,
        template.format(backend=backend),
        metadata={"backend": backend},
        retry_after_seconds=retry,
    )
    generic_status = errors.to_status(generic, DOMAIN)
    generic_status.code = code.value[0] if code in _GENERIC else grpc.StatusCode.INTERNAL.value[0]
    if retry is not None and not any(
        d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in generic_status.details
    ):
        info = error_details_pb2.RetryInfo()
        info.retry_delay.FromSeconds(1)
        generic_status.details.add().Pack(info)
    return generic_status


def response(
    status: status_pb2.Status, request_id: str, http_status: int | None = None
) -> web.Response:
    """The HTTP response for a non-OK status (`http_status` overrides the table)."""
    code = errors.CODE_BY_NUMBER.get(status.code, grpc.StatusCode.UNKNOWN)
    details: list[dict[str, Any]] = []
    headers: dict[str, str] = {}
    for detail in status.details:
        try:
            details.append(json_format.MessageToDict(detail))
        except (json_format.Error, TypeError, KeyError):
            continue  # a detail type we do not know: leave it out rather than fail
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            seconds = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
            headers["Retry-After"] = str(max(1, math.ceil(seconds)))
    if code is grpc.StatusCode.UNAUTHENTICATED:
        headers["WWW-Authenticate"] = 'Bearer realm="aiops"'
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
        headers.setdefault("Retry-After", "1")
    body = {
        "error": {
            "code": code.name,
            "message": status.message,
            "details": details,
            "request_id": request_id,
        }
    }
    return web.Response(
        status=http_status or errors.HTTP_STATUS.get(code, 500),
        text=json.dumps(body, separators=(",", ":")),
        content_type="application/json",
        headers=headers,
    )


def from_error(error: errors.AiopsError, request_id: str) -> web.Response:
    """The HTTP response for an error the gateway raised itself."""
    return response(errors.to_status(error, DOMAIN), request_id)
