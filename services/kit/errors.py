"""Domain errors, and their one mapping to gRPC status codes and rich status details.

Each error carries a stable `reason` (e.g. `FEEDBACK_NOT_FOUND`), a one-sentence message
saying what to do, and optionally field violations. Messages never expose internals.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One invalid field: its path in the request (e.g. `feedback.comment`) and why."""

    field: str
    description: str


class AiopsError(Exception):
    """Base of every error a servicer may raise on purpose."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        reason: str,
        message: str,
        violations: Sequence[FieldViolation] = (),
        *,
        metadata: Mapping[str, str] | None = None,
        retry_after_seconds: float | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.violations = tuple(violations)
        self.metadata = dict(metadata or {})
        self.retry_after_seconds = retry_after_seconds

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


class InvalidArgument(AiopsError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class Unauthenticated(AiopsError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(AiopsError):
    code = grpc.StatusCode.PERMISSION_DENIED


class NotFound(AiopsError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(AiopsError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(AiopsError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(AiopsError):
    code = grpc.StatusCode.ABORTED


class ResourceExhausted(AiopsError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(AiopsError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(AiopsError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


def invalid(
    violations: Sequence[FieldViolation], reason: str = "INVALID_ARGUMENT"
) -> InvalidArgument:
    """An InvalidArgument whose message names every field at fault."""
    fields = ", ".join(v.field for v in violations)
    first = violations[0].description if violations else "the request is invalid"
    message = f"Invalid {fields}: {first}" if len(violations) == 1 else f"Invalid fields {fields}."
    return InvalidArgument(reason, message, violations)


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def to_status(error: AiopsError, domain: str) -> status_pb2.Status:
    """The `google.rpc.Status` for an error: always an ErrorInfo, plus BadRequest for field
    violations and RetryInfo for UNAVAILABLE and RESOURCE_EXHAUSTED."""
    status = status_pb2.Status(code=error.code.value[0], message=error.message)
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=domain)
    info.metadata.update(error.metadata)
    status.details.append(_pack(info))
    if error.violations:
        bad = error_details_pb2.BadRequest()
        for v in error.violations:
            bad.field_violations.add(field=v.field, description=v.description)
        status.details.append(_pack(bad))
    if error.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
        delay = error.retry_after_seconds if error.retry_after_seconds is not None else 1.0
        retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration())
        retry.retry_delay.FromNanoseconds(int(delay * 1e9))
        status.details.append(_pack(retry))
    return status


# Canonical gRPC -> HTTP mapping of google/rpc/code.proto (the one grpc-gateway uses).
HTTP_STATUS: Mapping[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}

CODE_BY_NUMBER: Mapping[int, grpc.StatusCode] = {c.value[0]: c for c in grpc.StatusCode}

# Codes that mean the server (not the caller) is at fault; alerts fire only on these.
SERVER_FAULT_CODES = frozenset(
    {
        code_pb2.UNKNOWN,
        code_pb2.INTERNAL,
        code_pb2.UNAVAILABLE,
        code_pb2.DEADLINE_EXCEEDED,
        code_pb2.DATA_LOSS,
        code_pb2.UNIMPLEMENTED,
    }
)
