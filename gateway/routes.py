"""The REST API as one table: method, path, required role, backend RPC, request builder.

Paths are the runbook's public paths, kept exactly, plus resource-style ones for what the
runbook does not name. Role `None` means public.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from aiops.feedback.v1 import feedback_pb2 as fb
from aiops.feedback.v1 import feedback_service_pb2 as fb_svc
from aiops.remediation.v1 import remediation_service_pb2 as rem_svc
from aiops.telemetry.v1 import telemetry_service_pb2 as tel_svc
from google.protobuf.message import Message
from google.rpc import status_pb2

from gateway import batching, translate

if TYPE_CHECKING:
    from google.protobuf.internal.enum_type_wrapper import _EnumTypeWrapper

Builder = Callable[[Mapping[str, str], Mapping[str, str], bytes, Mapping[str, str]], Message]


@dataclass(frozen=True, slots=True)
class Param:
    """A query parameter, for validation and the OpenAPI document."""

    name: str
    kind: str  # "string", "integer", "boolean", "date-time", or an enum prefix like "VERDICT_"
    description: str
    enum: _EnumTypeWrapper[Any] | None = None


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    role: str | None
    backend: str
    rpc: str
    build: Builder
    summary: str
    response: type[Message]
    body: type[Message] | None = None
    query: tuple[Param, ...] = ()
    created_status: int = 200
    headers: tuple[str, ...] = field(default_factory=tuple)
    batch: batching.BatchSpec | None = None

    def known_query(self) -> frozenset[str]:
        return frozenset(p.name for p in self.query)


_FILTER_PARAMS = (
    Param("targetKind", "TARGET_KIND_", "Only feedback about this kind of target.", fb.TargetKind),
    Param("targetId", "string", "Only feedback about this target (needs targetKind)."),
    Param("verdict", "VERDICT_", "Only feedback with this verdict.", fb.Verdict),
    Param("startTime", "date-time", "Only feedback created at or after this RFC 3339 time."),
    Param("endTime", "date-time", "Only feedback created before this RFC 3339 time."),
)
_PAGE_PARAMS = (
    Param("pageSize", "integer", "Items per page: 0 means 50, at most 500."),
    Param("pageToken", "string", "The nextPageToken of the previous page."),
)


def _filter(query: Mapping[str, str], out: fb_svc.FeedbackFilter) -> None:
    out.target_kind = translate.query_enum(query, "targetKind", fb.TargetKind, "TARGET_KIND_")
    out.target_id = query.get("targetId", "")
    out.verdict = translate.query_enum(query, "verdict", fb.Verdict, "VERDICT_")
    translate.query_time(query, "startTime", out.create_time_range.start_time)
    translate.query_time(query, "endTime", out.create_time_range.end_time)


def _submit_feedback(
    query: Mapping[str, str], match: Mapping[str, str], body: bytes, headers: Mapping[str, str]
) -> Message:
    request = fb_svc.SubmitFeedbackRequest(idempotency_key=headers.get("Idempotency-Key", ""))
    translate.parse_body(body, request.feedback)
    return request


def _wrap_feedback(requests: Sequence[Message]) -> Message:
    return fb_svc.BatchSubmitFeedbackRequest(
        requests=[cast(fb_svc.SubmitFeedbackRequest, r) for r in requests]
    )


def _unwrap_feedback(reply: Message) -> list[batching.Outcome]:
    out: list[batching.Outcome] = []
    for item in cast(fb_svc.BatchSubmitFeedbackResponse, reply).results:
        if item.error_code:
            status = status_pb2.Status.FromString(item.error_status)
            status.code = status.code or item.error_code
            out.append(status)
        else:
            out.append(item.response)
    return out


def _list_feedback(
    query: Mapping[str, str], match: Mapping[str, str], body: bytes, headers: Mapping[str, str]
) -> Message:
    request = fb_svc.ListFeedbackRequest(
        page_size=translate.query_int(query, "pageSize"), page_token=query.get("pageToken", "")
    )
    _filter(query, request.filter)
    return request


def _get_feedback(
    query: Mapping[str, str], match: Mapping[str, str], body: bytes, headers: Mapping[str, str]
) -> Message:
    return fb_svc.GetFeedbackRequest(name=f"feedback/{match['feedback']}")


def _delete_feedback(
    query: Mapping[str, str], match: Mapping[str, str], body: bytes, headers: Mapping[str, str]
) -> Message:
    request = fb_svc.DeleteFeedbackRequest(
        name=f"feedback/{match['feedback']}" if "feedback" in match else query.get("name", ""),
        all=translate.query_bool(query, "all"),
    )
    flt = fb_svc.FeedbackFilter()
    _filter(query, flt)
    if flt.ByteSize():
        request.filter.CopyFrom(flt)
    return request


def _feedback_stats(
    query: Mapping[str, str], match: Mapping[str, str], body: bytes, headers: Mapping[str, str]
) -> Message:
    return fb_svc.GetFeedbackStatsRequest(
        target_kind=translate.query_enum(query, "targetKind", fb.TargetKind, "TARGET_KIND_")
    )


def _collect(
    query: Mapping[str, str], match: Mapping[str, str], body: bytes, headers: Mapping[str, str]
) -> Message:
    return tel_svc.CollectRequest()


def _remediate(
    query: Mapping[str, str], match: Mapping[str, str], body: bytes, headers: Mapping[str, str]
) -> Message:
    return translate.parse_body(body, rem_svc.RemediateRequest())


FEEDBACK = "/api/v1/aiops/feedback"

ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        FEEDBACK,
        "operator",
        "feedback",
        "SubmitFeedback",
        _submit_feedback,
        "Store a feedback (kept 7 days). Send `Idempotency-Key` to make retries safe.",
        fb_svc.SubmitFeedbackResponse,
        body=fb.Feedback,
        created_status=201,
        headers=("Idempotency-Key",),
        batch=batching.BatchSpec("BatchSubmitFeedback", _wrap_feedback, _unwrap_feedback),
    ),
    Route(
        "GET",
        FEEDBACK,
        "viewer",
        "feedback",
        "ListFeedback",
        _list_feedback,
        "List live feedback, newest first.",
        fb_svc.ListFeedbackResponse,
        query=(*_FILTER_PARAMS, *_PAGE_PARAMS),
    ),
    Route(
        "DELETE",
        FEEDBACK,
        "admin",
        "feedback",
        "DeleteFeedback",
        _delete_feedback,
        "Delete feedback by `name`, by filter, or all of it with `all=true`.",
        fb_svc.DeleteFeedbackResponse,
        query=(
            Param("name", "string", "Resource name `feedback/{id}` of one feedback."),
            *_FILTER_PARAMS,
            Param("all", "boolean", "Delete every feedback; must be set explicitly."),
        ),
    ),
    Route(
        "GET",
        f"{FEEDBACK}/stats",
        "viewer",
        "feedback",
        "GetFeedbackStats",
        _feedback_stats,
        "Verdict counts of live feedback by target kind, series, detector, action, signature.",
        fb_svc.GetFeedbackStatsResponse,
        query=(_FILTER_PARAMS[0],),
    ),
    Route(
        "GET",
        f"{FEEDBACK}/{{feedback}}",
        "viewer",
        "feedback",
        "GetFeedback",
        _get_feedback,
        "Get one feedback.",
        fb_svc.GetFeedbackResponse,
    ),
    Route(
        "DELETE",
        f"{FEEDBACK}/{{feedback}}",
        "admin",
        "feedback",
        "DeleteFeedback",
        _delete_feedback,
        "Delete one feedback.",
        fb_svc.DeleteFeedbackResponse,
    ),
    Route(
        "GET",
        "/api/v1/aiops/collect",
        "viewer",
        "telemetry",
        "Collect",
        _collect,
        "Collect the critical metrics now and return them against their SLO targets.",
        tel_svc.CollectResponse,
    ),
    Route(
        "POST",
        "/api/v1/aiops/remediate",
        "operator",
        "remediation",
        "Remediate",
        _remediate,
        "Run a remediation action (a dry run unless `execute` is true).",
        rem_svc.RemediateResponse,
        body=rem_svc.RemediateRequest,
    ),
)
