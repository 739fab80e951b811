"""Peer adapters: the feedback and anomaly services behind the domain's ports."""

from __future__ import annotations

import grpc
from aiops.anomaly.v1 import anomaly_pb2 as an
from aiops.anomaly.v1 import anomaly_service_pb2 as an_svc
from aiops.anomaly.v1 import anomaly_service_pb2_grpc as an_grpc
from aiops.feedback.v1 import feedback_pb2 as fb
from aiops.feedback.v1 import feedback_service_pb2 as fb_svc
from aiops.feedback.v1 import feedback_service_pb2_grpc as fb_grpc

from services.kit import errors
from services.remediation import domain
from services.remediation import playbook as pb

FEEDBACK_SERVICE = "aiops.feedback.v1.FeedbackService"
ANOMALY_SERVICE = "aiops.anomaly.v1.AnomalyService"
_KINDS = (fb.TARGET_KIND_SUGGESTION, fb.TARGET_KIND_REMEDIATION)
_SEVERITY = {1: pb.Severity.INFO, 2: pb.Severity.WARNING, 3: pb.Severity.CRITICAL}


def _peer_error(err: grpc.aio.AioRpcError, peer: str) -> errors.AiopsError:
    if err.code() == grpc.StatusCode.NOT_FOUND:
        return errors.NotFound(f"{peer.upper()}_NOT_FOUND", f"The {peer} was not found.")
    if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
        return errors.InvalidArgument(f"{peer.upper()}_INVALID", f"The {peer} name is invalid.")
    return errors.Unavailable(
        f"{peer.upper()}_UNAVAILABLE",
        f"The {peer} service could not answer; retry shortly.",
        retry_after_seconds=1.0,
    )


class FeedbackClient:
    """Reads verdict counts for ranking and submits verification outcomes as feedback."""

    def __init__(self, stub: fb_grpc.FeedbackServiceStub, timeout_seconds: float) -> None:
        self._stub = stub
        self._timeout = timeout_seconds

    async def evidence(self, signature_key: str) -> list[tuple[str, int, int]]:
        try:
            reply: fb_svc.GetFeedbackStatsResponse = await self._stub.GetFeedbackStats(
                fb_svc.GetFeedbackStatsRequest(), timeout=self._timeout
            )  # type: ignore[misc]
        except grpc.aio.AioRpcError as err:
            raise _peer_error(err, "feedback") from err
        return [
            (g.action, int(g.helpful_count), int(g.not_helpful_count))
            for g in reply.groups
            if g.target_kind in _KINDS and g.signature == signature_key and g.action
        ]

    async def submit(self, rem: domain.Remediation, helpful: bool, comment: str) -> None:
        item = fb.Feedback(
            target=fb.Target(kind=fb.TARGET_KIND_REMEDIATION, id=rem.name[:128]),
            verdict=fb.VERDICT_HELPFUL if helpful else fb.VERDICT_NOT_HELPFUL,
            comment=comment,
            series=rem.series[:200],
            action=rem.action,
            signature=rem.signature[:200],
            labels={"source": "verification"},
        )
        try:
            await self._stub.SubmitFeedback(
                fb_svc.SubmitFeedbackRequest(feedback=item, idempotency_key=f"verify:{rem.id}"),
                timeout=self._timeout,
                metadata=(("x-aiops-subject", "remediation-verifier"),),
            )  # type: ignore[misc]
        except grpc.aio.AioRpcError as err:
            raise _peer_error(err, "feedback") from err


class AnomalyClient:
    """Resolves an anomaly's signature and observes it for verification."""

    def __init__(self, stub: an_grpc.AnomalyServiceStub, timeout_seconds: float) -> None:
        self._stub = stub
        self._timeout = timeout_seconds

    async def _get(self, name: str) -> an.Anomaly:
        try:
            reply: an_svc.GetAnomalyResponse = await self._stub.GetAnomaly(
                an_svc.GetAnomalyRequest(name=name), timeout=self._timeout
            )  # type: ignore[misc]
        except grpc.aio.AioRpcError as err:
            raise _peer_error(err, "anomaly") from err
        return reply.anomaly

    async def signature(self, name: str) -> pb.Signature:
        a = await self._get(name)
        return signature_of(a)

    async def observe(self, name: str) -> domain.Observation:
        a = await self._get(name)
        return domain.Observation(
            open=a.state != an.ANOMALY_STATE_CLOSED and not a.HasField("end_time"),
            severity=_SEVERITY.get(a.severity, pb.Severity.INFO),
            peak_score=a.peak_score,
        )


def signature_of(a: an.Anomaly) -> pb.Signature:
    """The ranking signature of a stored anomaly (its `{metric}:{direction}:{kind}`)."""
    parts = a.signature.split(":")
    try:
        direction = pb.Direction(parts[-2]) if len(parts) >= 3 else pb.Direction.UP
        kind = pb.AnomalyKind(parts[-1]) if len(parts) >= 3 else pb.AnomalyKind.SPIKE
    except ValueError:
        direction, kind = pb.Direction.UP, pb.AnomalyKind.SPIKE
    recent = a.labels.get("recent_deploy", "").lower() in ("1", "true", "yes")
    metric = ":".join(parts[:-2]) if len(parts) >= 3 else ""
    return pb.Signature(
        a.series, direction, kind, _SEVERITY.get(a.severity, pb.Severity.INFO), recent, metric
    )
