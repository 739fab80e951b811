"""The REST API as one table: method, path, required role, backend RPC, request builder.

Paths are the runbook's public paths, kept exactly, plus resource-style ones for what the
runbook does not name. Role `None` means public.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from aiops.anomaly.v1 import anomaly_pb2 as an
from aiops.anomaly.v1 import anomaly_service_pb2 as an_svc
from aiops.common.v1 import common_pb2
from aiops.feedback.v1 import feedback_pb2 as fb
from aiops.feedback.v1 import feedback_service_pb2 as fb_svc
from aiops.remediation.v1 import remediation_pb2 as rem
from aiops.remediation.v1 import remediation_service_pb2 as rem_svc
from aiops.telemetry.v1 import telemetry_pb2 as tel
from aiops.telemetry.v1 import telemetry_service_pb2 as tel_svc
from google.protobuf.message import Message
from google.rpc import status_pb2

from gateway import batching, telemetry_routes, translate

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


def _suggest(
    query: Mapping[str, str], match: Mapping[str, str], body: bytes, headers: Mapping[str, str]
) -> Message:
    return translate.parse_body(body, rem_svc.SuggestRequest())


def _list_remediations(
    query: Mapping[str, str], match: Mapping[str, str], body: bytes, headers: Mapping[str, str]
) -> Message:
    request = rem_svc.ListRemediationsRequest(
        page_size=translate.query_int(query, "pageSize"), page_token=query.get("pageToken", "")
    )
    f = request.filter
    f.state = translate.query_enum(query, "state", rem.RemediationState, "REMEDIATION_STATE_")
    f.action = query.get("action", "")
    f.target_kind = translate.query_enum(query, "targetKind", rem.TargetKind, "TARGET_KIND_")
    f.target_namespace = query.get("targetNamespace", "")
    f.target_name = query.get("targetName", "")
    f.anomaly = query.get("anomaly", "")
    translate.query_time(query, "startTime", f.create_time_range.start_time)
    translate.query_time(query, "endTime", f.create_time_range.end_time)
    return request


def _get_remediation(
    query: Mapping[str, str], match: Mapping[str, str], body: bytes, headers: Mapping[str, str]
) -> Message:
    return rem_svc.GetRemediationRequest(name=f"remediations/{match['remediation']}")


def _approve(
    query: Mapping[str, str], match: Mapping[str, str], body: bytes, headers: Mapping[str, str]
) -> Message:
    request = translate.parse_body(body, rem_svc.ApproveRequest())
    request.name = f"remediations/{match['remediation']}"
    return request


def _list_actions(
    query: Mapping[str, str], match: Mapping[str, str], body: bytes, headers: Mapping[str, str]
) -> Message:
    return rem_svc.ListActionsRequest(
        page_size=translate.query_int(query, "pageSize"), page_token=query.get("pageToken", "")
    )


def _kill_switch(
    query: Mapping[str, str], match: Mapping[str, str], body: bytes, headers: Mapping[str, str]
) -> Message:
    return translate.parse_body(body, rem_svc.SetKillSwitchRequest())


def _reload_playbook(
    query: Mapping[str, str], match: Mapping[str, str], body: bytes, headers: Mapping[str, str]
) -> Message:
    return rem_svc.ReloadPlaybookRequest()


REMEDIATIONS = "/api/v1/aiops/remediations"


def _list_anomalies(
    query: Mapping[str, str], match: Mapping[str, str], body: bytes, headers: Mapping[str, str]
) -> Message:
    request = an_svc.ListAnomaliesRequest(
        page_size=translate.query_int(query, "pageSize"), page_token=query.get("pageToken", "")
    )
    f = request.filter
    f.series = query.get("series", "")
    f.state = translate.query_enum(query, "state", an.AnomalyState, "ANOMALY_STATE_")
    f.min_severity = translate.query_enum(query, "minSeverity", common_pb2.Severity, "SEVERITY_")
    f.detector = query.get("detector", "")
    translate.query_time(query, "startTime", f.start_time_range.start_time)
    translate.query_time(query, "endTime", f.start_time_range.end_time)
    return request


def _get_anomaly(
    query: Mapping[str, str], match: Mapping[str, str], body: bytes, headers: Mapping[str, str]
) -> Message:
    return an_svc.GetAnomalyRequest(name=f"anomalies/{match['anomaly']}")


def _acknowledge_anomaly(
    query: Mapping[str, str], match: Mapping[str, str], body: bytes, headers: Mapping[str, str]
) -> Message:
    request = an_svc.AcknowledgeAnomalyRequest()
    if body.strip():
        translate.parse_body(body, request)
    request.name = f"anomalies/{match['anomaly']}"
    return request


def _drift_status(
    query: Mapping[str, str], match: Mapping[str, str], body: bytes, headers: Mapping[str, str]
) -> Message:
    return an_svc.GetDriftStatusRequest(
        state=translate.query_enum(query, "state", an.DriftState, "DRIFT_STATE_"),
        series=query.get("series", ""),
        page_size=translate.query_int(query, "pageSize"),
        page_token=query.get("pageToken", ""),
    )


ANOMALIES = "/api/v1/aiops/anomalies"

_SERIES_PARAMS = (
    Param("metric", "string", "Only series of this metric."),
    Param("labels", "string", "Only series with these labels: comma-separated key=value pairs."),
    Param("kind", "SERIES_KIND_", "Only series of this kind.", tel.SeriesKind),
)
_QUERY_PARAMS = (
    Param("labels", "string", "With a metric name: only series with these key=value labels."),
    Param("startTime", "date-time", "Start of the range (RFC 3339); default: an hour ago."),
    Param("endTime", "date-time", "End of the range, exclusive (RFC 3339); default: now."),
    Param("step", "string", "Downsampling step such as 60s, 5m or 1h; default: raw points."),
    Param("aggregation", "AGGREGATION_", "How a step is combined; default AVG.", tel.Aggregation),
)
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
        "GET",
        "/api/v1/aiops/series",
        "viewer",
        "telemetry",
        "ListSeries",
        telemetry_routes.list_series,
        "List stored series ordered by key; filter by metric, labels and kind.",
        tel_svc.ListSeriesResponse,
        query=(*_SERIES_PARAMS, *_PAGE_PARAMS),
    ),
    Route(
        "GET",
        "/api/v1/aiops/series/{series}",
        "viewer",
        "telemetry",
        "QuerySeries",
        telemetry_routes.query_series,
        "Points of one series (by id, or by metric name), raw or per step; the last hour "
        "unless startTime/endTime say otherwise.",
        tel_svc.QuerySeriesResponse,
        query=_QUERY_PARAMS,
    ),
    Route(
        "POST",
        "/api/v1/aiops/points",
        "agent",
        "telemetry",
        "WritePoints",
        telemetry_routes.write_points,
        "Push a batch of samples (agents); each sample is accepted or counted as rejected.",
        tel_svc.WritePointsResponse,
        body=tel_svc.WritePointsRequest,
    ),
    Route(
        "POST",
        "/api/v1/aiops/alerts",
        "agent",
        "telemetry",
        "IngestAlerts",
        telemetry_routes.ingest_alerts,
        "Alertmanager webhook receiver: stores the alerts, deduplicated by fingerprint.",
        tel_svc.IngestAlertsResponse,
        body=tel_svc.IngestAlertsRequest,
    ),
    Route(
        "GET",
        "/api/v1/aiops/alerts",
        "viewer",
        "telemetry",
        "ListAlerts",
        telemetry_routes.list_alerts,
        "List stored Alertmanager alerts ordered by fingerprint.",
        tel_svc.ListAlertsResponse,
        query=(
            Param("state", "ALERT_STATE_", "Only alerts in this state.", tel.AlertState),
            *_PAGE_PARAMS,
        ),
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
    Route(
        "POST",
        "/api/v1/aiops/suggestions",
        "viewer",
        "remediation",
        "Suggest",
        _suggest,
        "Ranked remediation actions for an `anomaly` (name) or an inline `signature`.",
        rem_svc.SuggestResponse,
        body=rem_svc.SuggestRequest,
    ),
    Route(
        "GET",
        REMEDIATIONS,
        "viewer",
        "remediation",
        "ListRemediations",
        _list_remediations,
        "List remediations (the audit trail's latest state of each), newest first.",
        rem_svc.ListRemediationsResponse,
        query=(
            Param("state", "REMEDIATION_STATE_", "Only in this state.", rem.RemediationState),
            Param("action", "string", "Only of this action ID (e.g. `scale_up`)."),
            Param("targetKind", "TARGET_KIND_", "Only on this kind of target.", rem.TargetKind),
            Param("targetNamespace", "string", "Only on targets in this namespace."),
            Param("targetName", "string", "Only on targets with this name."),
            Param("anomaly", "string", "Only prompted by this anomaly, `anomalies/{id}`."),
            Param("startTime", "date-time", "Only requested at or after this RFC 3339 time."),
            Param("endTime", "date-time", "Only requested before this RFC 3339 time."),
            *_PAGE_PARAMS,
        ),
    ),
    Route(
        "GET",
        f"{REMEDIATIONS}/{{remediation}}",
        "viewer",
        "remediation",
        "GetRemediation",
        _get_remediation,
        "Get one remediation.",
        rem_svc.GetRemediationResponse,
    ),
    Route(
        "POST",
        f"{REMEDIATIONS}/{{remediation}}/approval",
        "admin",
        "remediation",
        "Approve",
        _approve,
        "Approve or deny a remediation pending approval (`decision`, optional `comment`).",
        rem_svc.ApproveResponse,
        body=rem_svc.ApproveRequest,
    ),
    Route(
        "GET",
        "/api/v1/aiops/actions",
        "viewer",
        "remediation",
        "ListActions",
        _list_actions,
        "List the remediation playbook's actions, ordered by name.",
        rem_svc.ListActionsResponse,
        query=_PAGE_PARAMS,
    ),
    Route(
        "POST",
        "/api/v1/aiops/auto-remediation/kill-switch",
        "admin",
        "remediation",
        "SetKillSwitch",
        _kill_switch,
        "Engage (`engaged: true`) or release the kill switch stopping all automatic actions.",
        rem_svc.SetKillSwitchResponse,
        body=rem_svc.SetKillSwitchRequest,
    ),
    Route(
        "POST",
        "/api/v1/aiops/playbook/reload",
        "admin",
        "remediation",
        "ReloadPlaybook",
        _reload_playbook,
        "Reload the remediation playbook file; a bad file is a 400 and the old one stays.",
        rem_svc.ReloadPlaybookResponse,
    ),
    Route(
        "GET",
        ANOMALIES,
        "viewer",
        "anomaly",
        "ListAnomalies",
        _list_anomalies,
        "List anomaly events, newest start time first.",
        an_svc.ListAnomaliesResponse,
        query=(
            Param("series", "string", "Only anomalies of the series with this key."),
            Param("state", "ANOMALY_STATE_", "Only anomalies in this state.", an.AnomalyState),
            Param(
                "minSeverity",
                "SEVERITY_",
                "Only anomalies at least this severe.",
                common_pb2.Severity,
            ),
            Param("detector", "string", "Only anomalies opened by this detector."),
            Param("startTime", "date-time", "Only anomalies starting at or after this time."),
            Param("endTime", "date-time", "Only anomalies starting before this time."),
            *_PAGE_PARAMS,
        ),
    ),
    Route(
        "GET",
        f"{ANOMALIES}/{{anomaly}}",
        "viewer",
        "anomaly",
        "GetAnomaly",
        _get_anomaly,
        "Get one anomaly event.",
        an_svc.GetAnomalyResponse,
    ),
    Route(
        "POST",
        f"{ANOMALIES}/{{anomaly}}/acknowledge",
        "operator",
        "anomaly",
        "AcknowledgeAnomaly",
        _acknowledge_anomaly,
        "Acknowledge an open anomaly, with an optional `comment`.",
        an_svc.AcknowledgeAnomalyResponse,
        body=an_svc.AcknowledgeAnomalyRequest,
    ),
    Route(
        "GET",
        "/api/v1/aiops/drift",
        "viewer",
        "anomaly",
        "GetDriftStatus",
        _drift_status,
        "Current distribution-drift state of every tracked series, by series key.",
        an_svc.GetDriftStatusResponse,
        query=(
            Param("state", "DRIFT_STATE_", "Only series in this drift state.", an.DriftState),
            Param("series", "string", "Only the series with this key."),
            *_PAGE_PARAMS,
        ),
    ),
)
