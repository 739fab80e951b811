"""gRPC servicer of `aiops.feedback.v1.FeedbackService`: shape checks and proto <-> domain."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import grpc
from aiops.feedback.v1 import feedback_pb2 as fb
from aiops.feedback.v1 import feedback_service_pb2 as fb_svc
from aiops.feedback.v1 import feedback_service_pb2_grpc as fb_grpc
from prometheus_client import Counter

from services.feedback import domain
from services.kit import errors, protoconv

Context = grpc.aio.ServicerContext[Any, Any]

_KINDS = {
    fb.TARGET_KIND_ANOMALY: domain.TargetKind.ANOMALY,
    fb.TARGET_KIND_REMEDIATION: domain.TargetKind.REMEDIATION,
    fb.TARGET_KIND_ALERT: domain.TargetKind.ALERT,
    fb.TARGET_KIND_SUGGESTION: domain.TargetKind.SUGGESTION,
}
_KIND_PB = {v: k for k, v in _KINDS.items()}
_VERDICTS = {
    fb.VERDICT_CONFIRMED: domain.Verdict.CONFIRMED,
    fb.VERDICT_FALSE_POSITIVE: domain.Verdict.FALSE_POSITIVE,
    fb.VERDICT_HELPFUL: domain.Verdict.HELPFUL,
    fb.VERDICT_NOT_HELPFUL: domain.Verdict.NOT_HELPFUL,
}
_VERDICT_PB = {v: k for k, v in _VERDICTS.items()}

FEEDBACK_TOTAL = Counter(
    "aiops_feedback_total",
    "Feedback submissions, by verdict and result (stored, replayed, invalid, unavailable).",
    ["verdict", "result"],
)

SUBJECT_METADATA = "x-aiops-subject"
DOMAIN = "aiops.feedback.v1"


class FeedbackServicer(fb_grpc.FeedbackServiceServicer):
    def __init__(self, book: domain.FeedbackBook) -> None:
        self._book = book

    async def SubmitFeedback(
        self, request: fb_svc.SubmitFeedbackRequest, context: Context
    ) -> fb_svc.SubmitFeedbackResponse:
        verdict = _VERDICTS.get(request.feedback.verdict)
        try:
            stored = await self._book.submit(
                _draft(request.feedback, "feedback"), _author(context), request.idempotency_key
            )
        except errors.AiopsError as exc:
            _count(verdict, exc)
            raise
        _count(verdict, stored)
        return _submitted(stored)

    async def BatchSubmitFeedback(
        self, request: fb_svc.BatchSubmitFeedbackRequest, context: Context
    ) -> fb_svc.BatchSubmitFeedbackResponse:
        if not 1 <= len(request.requests) <= domain.MAX_BATCH:
            raise errors.invalid(
                [errors.FieldViolation("requests", f"must hold 1 to {domain.MAX_BATCH} items")],
                "BATCH_SIZE_INVALID",
            )
        author = _author(context)
        results: list[domain.Stored | errors.AiopsError | None] = []
        ready: list[tuple[domain.Feedback, str]] = []
        # Each item answers for itself, so its field paths are those of a single
        # SubmitFeedbackRequest (the gateway hands them back to separate callers).
        for item in request.requests:
            try:
                violations = domain.validate_idempotency_key(
                    item.idempotency_key, "idempotency_key"
                )
                if violations:
                    raise errors.invalid(violations, "IDEMPOTENCY_KEY_INVALID")
                ready.append(
                    (
                        self._book.prepare(_draft(item.feedback, "feedback"), author),
                        item.idempotency_key,
                    )
                )
                results.append(None)
            except errors.AiopsError as exc:
                results.append(exc)
        stored = iter(await self._book.submit_many(ready)) if ready else iter(())
        response = fb_svc.BatchSubmitFeedbackResponse()
        for item, result in zip(request.requests, results, strict=True):
            outcome = next(stored) if result is None else result
            _count(_VERDICTS.get(item.feedback.verdict), outcome)
            entry = response.results.add()
            if isinstance(outcome, errors.AiopsError):
                status = errors.to_status(outcome, DOMAIN)
                entry.error_code = status.code
                entry.error_message = status.message
                entry.error_status = status.SerializeToString()
            else:
                _submitted(outcome, entry.response)
        return response

    async def GetFeedback(
        self, request: fb_svc.GetFeedbackRequest, context: Context
    ) -> fb_svc.GetFeedbackResponse:
        return fb_svc.GetFeedbackResponse(feedback=to_proto(await self._book.get(request.name)))

    async def ListFeedback(
        self, request: fb_svc.ListFeedbackRequest, context: Context
    ) -> fb_svc.ListFeedbackResponse:
        page = await self._book.list(_filter(request.filter), request.page_size, request.page_token)
        return fb_svc.ListFeedbackResponse(
            feedback=[to_proto(i) for i in page.items], next_page_token=page.next_token
        )

    async def DeleteFeedback(
        self, request: fb_svc.DeleteFeedbackRequest, context: Context
    ) -> fb_svc.DeleteFeedbackResponse:
        flt = _filter(request.filter) if request.HasField("filter") else None
        deleted = await self._book.delete(request.name, flt, request.all)
        return fb_svc.DeleteFeedbackResponse(deleted_count=deleted)

    async def GetFeedbackStats(
        self, request: fb_svc.GetFeedbackStatsRequest, context: Context
    ) -> fb_svc.GetFeedbackStatsResponse:
        kind = _enum(_KINDS, request.target_kind, "target_kind", required=False)
        groups = await self._book.stats(kind)
        return fb_svc.GetFeedbackStatsResponse(groups=[_counts(g) for g in groups])


_counters: dict[tuple[str, str], Any] = {}


def _count(verdict: domain.Verdict | None, outcome: domain.Stored | errors.AiopsError) -> None:
    if isinstance(outcome, domain.Stored):
        result = "replayed" if outcome.replayed else "stored"
    elif isinstance(outcome, errors.Unavailable):
        result = "unavailable"
    elif isinstance(outcome, errors.InvalidArgument):
        result = "invalid"
    else:
        result = "error"
    key = (verdict.value if verdict else "unknown", result)
    counter = _counters.get(key)
    if counter is None:  # a handful of label pairs: resolved once each
        counter = _counters[key] = FEEDBACK_TOTAL.labels(*key)
    counter.inc()


def _submitted(
    stored: domain.Stored, out: fb_svc.SubmitFeedbackResponse | None = None
) -> fb_svc.SubmitFeedbackResponse:
    out = fb_svc.SubmitFeedbackResponse() if out is None else out
    _fill(out.feedback, stored.feedback)
    out.replayed = stored.replayed
    return out


def _author(context: Context) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == SUBJECT_METADATA and isinstance(value, str) and value:
            return value[:256]
    return "anonymous"


K = TypeVar("K", bound=int)
E = TypeVar("E")


def _enum(table: Mapping[K, E], value: K, name: str, *, required: bool) -> E | None:
    if value == 0:
        if required:
            raise errors.invalid([errors.FieldViolation(name, "is required")], "FEEDBACK_INVALID")
        return None
    if value not in table:
        raise errors.invalid(
            [errors.FieldViolation(name, f"unknown value {value}")], "FEEDBACK_INVALID"
        )
    return table[value]


def _draft(msg: fb.Feedback, prefix: str) -> domain.Draft:
    # Unknown enum numbers are reported as field violations; unset ones by validate().
    kind = _enum(_KINDS, msg.target.kind, f"{prefix}.target.kind", required=False)
    verdict = _enum(_VERDICTS, msg.verdict, f"{prefix}.verdict", required=False)
    return domain.Draft(
        target_kind=kind,
        target_id=msg.target.id,
        verdict=verdict,
        rating=msg.rating,
        comment=msg.comment,
        series=msg.series,
        detector=msg.detector,
        action=msg.action,
        signature=msg.signature,
        labels=dict(msg.labels),
    )


def _filter(msg: Any) -> domain.Filter:
    time_range = msg.create_time_range
    return domain.Filter(
        target_kind=_enum(_KINDS, msg.target_kind, "filter.target_kind", required=False),
        target_id=msg.target_id,
        verdict=_enum(_VERDICTS, msg.verdict, "filter.verdict", required=False),
        start_time=protoconv.seconds(time_range.start_time)
        if time_range.HasField("start_time")
        else None,
        end_time=protoconv.seconds(time_range.end_time)
        if time_range.HasField("end_time")
        else None,
    )


def to_proto(item: domain.Feedback) -> fb.Feedback:
    return _fill(fb.Feedback(), item)


def _fill(out: fb.Feedback, item: domain.Feedback) -> fb.Feedback:
    """Writes `item` into `out` in place (no intermediate messages to copy)."""
    out.name = f"feedback/{item.id}"
    out.target.kind = _KIND_PB[item.target_kind]
    out.target.id = item.target_id
    out.verdict = _VERDICT_PB[item.verdict]
    out.rating = item.rating
    out.comment = item.comment
    out.series = item.series
    out.detector = item.detector
    out.action = item.action
    out.signature = item.signature
    if item.labels:
        out.labels.update(item.labels)
    out.author = item.author
    out.create_time.FromNanoseconds(round(item.create_time * 1e9))
    out.expire_time.FromNanoseconds(round(item.expire_time * 1e9))
    return out


def _counts(g: domain.GroupCounts) -> fb.VerdictCounts:
    return fb.VerdictCounts(
        target_kind=_KIND_PB[g.group.target_kind],
        series=g.group.series,
        detector=g.group.detector,
        action=g.group.action,
        signature=g.group.signature,
        confirmed_count=g.counts.get(domain.Verdict.CONFIRMED, 0),
        false_positive_count=g.counts.get(domain.Verdict.FALSE_POSITIVE, 0),
        helpful_count=g.counts.get(domain.Verdict.HELPFUL, 0),
        not_helpful_count=g.counts.get(domain.Verdict.NOT_HELPFUL, 0),
    )
