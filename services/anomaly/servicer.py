"""gRPC servicer of `aiops.anomaly.v1.AnomalyService`: shape checks and proto <-> domain."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import grpc
import numpy as np
from aiops.anomaly.v1 import anomaly_pb2 as an
from aiops.anomaly.v1 import anomaly_service_pb2 as an_svc
from aiops.anomaly.v1 import anomaly_service_pb2_grpc as an_grpc
from prometheus_client import Counter

from services.anomaly import (
    columns,
    convert,
    domain,
    drift,
    drift_loop,
    engine,
    learning,
    peers,
    scoring,
)
from services.kit import errors, protoconv

Context = grpc.aio.ServicerContext[Any, Any]
SUBJECT_METADATA = "x-aiops-subject"

POINTS_TOTAL = Counter(
    "aiops_anomaly_points_total",
    "Observations received for scoring, by result (scored, anomalous, or a reject reason).",
    ["result"],
)
EVENTS_OPENED = Counter(
    "aiops_anomaly_events_total",
    "Anomaly events opened by scoring.",
)
BATCHES_REJECTED = Counter(
    "aiops_anomaly_batches_rejected_total",
    "ScorePoints batches rejected whole, by reason (empty, oversized, batch_id, mixed, shape).",
    ["reason"],
)

_REJECT_PB = {
    domain.Reject.INVALID_SERIES: an.SCORE_REJECT_REASON_INVALID_SERIES,
    domain.Reject.MISSING_TIME: an.SCORE_REJECT_REASON_MISSING_TIME,
    domain.Reject.NON_FINITE_VALUE: an.SCORE_REJECT_REASON_NON_FINITE_VALUE,
    domain.Reject.NON_MONOTONIC_TIME: an.SCORE_REJECT_REASON_NON_MONOTONIC_TIME,
    domain.Reject.SERIES_LIMIT: an.SCORE_REJECT_REASON_SERIES_LIMIT,
    domain.Reject.INVALID_LABELS: an.SCORE_REJECT_REASON_INVALID_LABELS,
    domain.Reject.NOT_OWNER: an.SCORE_REJECT_REASON_NOT_OWNER,
}


_SCORED = POINTS_TOTAL.labels("scored")
_ANOMALOUS = POINTS_TOTAL.labels("anomalous")
_NO_LABELS: Mapping[str, str] = {}


def _finish(
    response: an_svc.ScorePointsResponse,
    points: int,
    anomalous: int,
    rejections: Mapping[domain.Reject, int],
    opened: Sequence[str],
) -> an_svc.ScorePointsResponse:
    """Sets the rejection counts and opened anomalies of a response and counts the batch in
    the metrics; one place for both request forms."""
    rejected = 0
    for reason, count in sorted(rejections.items(), key=lambda kv: _REJECT_PB[kv[0]]):
        if count:
            response.rejections.add(reason=_REJECT_PB[reason], count=count)
            POINTS_TOTAL.labels(reason.value).inc(count)
            rejected += count
    response.rejected_count = rejected
    _SCORED.inc(points - rejected)
    if anomalous:
        _ANOMALOUS.inc(anomalous)
    response.opened_anomalies.extend(opened)
    if opened:
        EVENTS_OPENED.inc(len(opened))
    return response


def subject(context: Context) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == SUBJECT_METADATA and isinstance(value, str) and value:
            return value[:256]
    return "anonymous"


def enum_value(table: Mapping[Any, Any], value: int, name: str) -> Any:
    if value == 0:
        return None
    if value not in table:
        raise errors.invalid([errors.FieldViolation(name, f"unknown value {value}")])
    return table[value]


def _columns(request: an_svc.ScorePointsRequest) -> scoring.Batch:
    series: list[str] = []
    times: list[float | None] = []
    values: list[float] = []
    labels: dict[int, dict[str, str]] = {}
    for i, o in enumerate(request.observations):
        series.append(o.series)
        ts = o.sample_time
        if ts.seconds or ts.nanos:
            times.append(ts.seconds + ts.nanos * 1e-9)
        else:
            times.append(None if not o.HasField("sample_time") else 0.0)
        values.append(o.value)
        if o.labels:
            labels[i] = dict(o.labels)
    return scoring.Batch(series, times, values, labels)


class AnomalyServicer(an_grpc.AnomalyServiceServicer):
    """Scoring, events; drift and thresholds are added by `server` through mixins."""

    def __init__(
        self,
        monitor: scoring.Monitor,
        book: domain.AnomalyBook,
        drifts: drift_loop.DriftTracker,
        thresholds: learning.Thresholds,
        max_batch: int,
    ) -> None:
        self._monitor = monitor
        self._book = book
        self._drifts = drifts
        self._thresholds = thresholds
        self._max_batch = max_batch

    async def ScorePoints(
        self, request_iterator: AsyncIterator[an_svc.ScorePointsRequest], context: Context
    ) -> AsyncIterator[an_svc.ScorePointsResponse]:
        async for request in request_iterator:
            if request.series_batches:
                entries = self._check_columns(request)
                done = await self._monitor.score_columns(entries)
                yield self._columns_response(request.batch_id, done)
            else:
                self._check_batch(request)
                result = await self._monitor.score(_columns(request))
                yield self._score_response(request.batch_id, result)

    def _check_columns(self, request: an_svc.ScorePointsRequest) -> list[columns.SeriesColumns]:
        """Shape checks of the columnar form (a bad shape fails the whole batch before any
        point is scored), and the entries as arrays."""
        self._check_batch_id(request.batch_id)
        if request.observations:
            BATCHES_REJECTED.labels("mixed").inc()
            raise errors.invalid(
                [errors.FieldViolation("observations", "set observations or series_batches")],
                "BATCH_FORM_INVALID",
            )
        violations = []
        entries = []
        total = 0
        for i, sb in enumerate(request.series_batches):
            n = len(sb.values)
            total += n
            if n == 0:
                violations.append(
                    errors.FieldViolation(f"series_batches[{i}].values", "must not be empty")
                )
            elif len(sb.sample_time_micros) != n:
                violations.append(
                    errors.FieldViolation(
                        f"series_batches[{i}].sample_time_micros",
                        "must have one entry per value",
                    )
                )
            if not violations:
                entries.append(
                    columns.SeriesColumns(
                        sb.series,
                        np.array(sb.sample_time_micros, dtype=np.int64),
                        np.array(sb.values, dtype=np.float64),
                        dict(sb.labels) if sb.labels else _NO_LABELS,
                    )
                )
        if total > self._max_batch:
            BATCHES_REJECTED.labels("oversized").inc()
            raise errors.invalid(
                [
                    errors.FieldViolation(
                        "series_batches", f"must hold 1 to {self._max_batch} points in all"
                    )
                ],
                "BATCH_SIZE_INVALID",
            )
        if violations:
            BATCHES_REJECTED.labels("shape").inc()
            raise errors.invalid(violations[:20], "SERIES_BATCH_INVALID")
        return entries

    def _check_batch_id(self, batch_id: str) -> None:
        if len(batch_id) > 64:
            BATCHES_REJECTED.labels("batch_id").inc()
            raise errors.invalid(
                [errors.FieldViolation("batch_id", "must be at most 64 characters")],
                "BATCH_ID_INVALID",
            )

    def _check_batch(self, request: an_svc.ScorePointsRequest) -> None:
        n = len(request.observations)
        reason = ""
        if n == 0:
            reason = "empty"
        elif n > self._max_batch:
            reason = "oversized"
        else:
            self._check_batch_id(request.batch_id)
        if reason:
            BATCHES_REJECTED.labels(reason).inc()
            raise errors.invalid(
                [
                    errors.FieldViolation(
                        "observations", f"must hold 1 to {self._max_batch} observations"
                    )
                ],
                "BATCH_SIZE_INVALID",
            )

    @staticmethod
    def _columns_response(batch_id: str, done: columns.ColumnsResult) -> an_svc.ScorePointsResponse:
        response = an_svc.ScorePointsResponse(batch_id=batch_id)
        add = response.series_scores.add
        names = engine.signal_names
        points = 0
        anomalous = 0
        for o in done.outcomes:
            out = add(
                series=o.series,
                scores=o.scores.tolist(),
                threshold=o.threshold,
                anomalous_indexes=o.anomalous.tolist(),
            )
            points += o.scores.shape[0]
            anomalous += o.anomalous.shape[0]
            if o.reject is not None:
                out.reject_reason = _REJECT_PB[o.reject]
            if o.details:
                detail = out.points.add
                for d in o.details:
                    if d.reject is not None:
                        detail(index=d.index, reject_reason=_REJECT_PB[d.reject])
                    else:
                        detail(
                            index=d.index, anomalous=d.anomalous, signals=names(d.flags),
                            threshold=d.threshold, anomaly=d.anomaly,
                        )  # fmt: skip
        return _finish(response, points, anomalous, done.rejections, done.opened)

    @staticmethod
    def _score_response(batch_id: str, result: scoring.BatchResult) -> an_svc.ScorePointsResponse:
        response = an_svc.ScorePointsResponse(batch_id=batch_id)
        point = an.PointScore
        names = engine.signal_names
        out = []
        anomalous = 0
        for score, flags, thr, anomaly, reject in zip(
            result.scores,
            result.flags,
            result.thresholds,
            result.anomalies,
            result.rejects,
            strict=True,
        ):
            if reject is not None:
                out.append(point(reject_reason=_REJECT_PB[reject]))
            elif score >= thr:
                anomalous += 1
                out.append(
                    point(score=score, anomalous=True, signals=names(flags), threshold=thr,
                          anomaly=anomaly)
                )  # fmt: skip
            elif flags or anomaly:
                out.append(point(score=score, signals=names(flags), threshold=thr, anomaly=anomaly))
            else:
                out.append(point(score=score, threshold=thr))
        response.scores.extend(out)
        return _finish(response, len(result.scores), anomalous, result.rejections, result.opened)

    async def ListAnomalies(
        self, request: an_svc.ListAnomaliesRequest, context: Context
    ) -> an_svc.ListAnomaliesResponse:
        f = request.filter
        rng = f.start_time_range
        flt = domain.AnomalyFilter(
            series=f.series,
            state=enum_value(convert.STATES, f.state, "filter.state"),
            min_severity=enum_value(convert.SEVERITIES, f.min_severity, "filter.min_severity"),
            start_after=protoconv.seconds(rng.start_time) if rng.HasField("start_time") else None,
            start_before=protoconv.seconds(rng.end_time) if rng.HasField("end_time") else None,
            detector=f.detector,
        )
        page = await self._book.list(flt, request.page_size, request.page_token)
        return an_svc.ListAnomaliesResponse(
            anomalies=[convert.anomaly_proto(a) for a in page.items],
            next_page_token=page.next_token,
        )

    async def GetAnomaly(
        self, request: an_svc.GetAnomalyRequest, context: Context
    ) -> an_svc.GetAnomalyResponse:
        return an_svc.GetAnomalyResponse(
            anomaly=convert.anomaly_proto(await self._book.get(request.name))
        )

    async def AcknowledgeAnomaly(
        self, request: an_svc.AcknowledgeAnomalyRequest, context: Context
    ) -> an_svc.AcknowledgeAnomalyResponse:
        item = await self._book.acknowledge(request.name, subject(context), request.comment)
        return an_svc.AcknowledgeAnomalyResponse(anomaly=convert.anomaly_proto(item))

    async def DetectDrift(
        self, request: an_svc.DetectDriftRequest, context: Context
    ) -> an_svc.DetectDriftResponse:
        tests, alpha, method = convert.drift_options(request)
        which = request.WhichOneof("input")
        if which == "samples":
            violations = [
                errors.FieldViolation(f"samples.{name}", "must hold 8 to 100,000 finite values")
                for name, values in (
                    ("reference", request.samples.reference),
                    ("current", request.samples.current),
                )
                if not drift.MIN_SAMPLE <= len(values) <= drift.MAX_SAMPLE
                or not all(math.isfinite(v) for v in values)
            ]
            if violations:
                raise errors.invalid(violations, "DRIFT_SAMPLES_INVALID")
            outcome = await self._drifts.detect_samples(
                request.samples.reference, request.samples.current, tests, alpha, method
            )
        elif which == "windows":
            w = request.windows
            violations = []
            if not w.series or len(w.series) > domain.MAX_SERIES_KEY:
                violations.append(errors.FieldViolation("windows.series", "is required"))
            for name in ("reference_range", "current_range"):
                rng = getattr(w, name)
                if not (rng.HasField("start_time") and rng.HasField("end_time")):
                    violations.append(
                        errors.FieldViolation(f"windows.{name}", "needs both start and end")
                    )
                elif protoconv.seconds(rng.end_time) <= protoconv.seconds(rng.start_time):
                    violations.append(
                        errors.FieldViolation(f"windows.{name}", "end must be after start")
                    )
            if violations:
                raise errors.invalid(violations, "DRIFT_WINDOWS_INVALID")
            outcome = await self._drifts.detect_windows(
                w.series,
                (
                    protoconv.seconds(w.reference_range.start_time),
                    protoconv.seconds(w.reference_range.end_time),
                ),
                (
                    protoconv.seconds(w.current_range.start_time),
                    protoconv.seconds(w.current_range.end_time),
                ),
                tests,
                alpha,
                method,
            )
        else:
            raise errors.invalid(
                [errors.FieldViolation("input", "set samples or windows")], "DRIFT_INPUT_MISSING"
            )
        return an_svc.DetectDriftResponse(
            results=[convert.test_proto(r) for r in outcome.results],
            decision=convert.decision_proto(outcome.decision),
            reference_count=outcome.reference_count,
            current_count=outcome.current_count,
        )

    async def GetDriftStatus(
        self, request: an_svc.GetDriftStatusRequest, context: Context
    ) -> an_svc.GetDriftStatusResponse:
        state = enum_value(convert.DRIFT_STATES, request.state, "state")
        page = await self._drifts.status(
            state, request.series, request.page_size, request.page_token
        )
        return an_svc.GetDriftStatusResponse(
            drift_statuses=[convert.status_proto(s) for s in page.items],
            next_page_token=page.next_token,
        )

    async def ListThresholds(
        self, request: an_svc.ListThresholdsRequest, context: Context
    ) -> an_svc.ListThresholdsResponse:
        f = request.filter
        page = self._thresholds.list(
            f.series, f.detector, f.adjusted_only, request.page_size, request.page_token
        )
        return an_svc.ListThresholdsResponse(
            thresholds=[convert.threshold_proto(t) for t in page.items],
            next_page_token=page.next_token,
        )

    async def ResetThreshold(
        self, request: an_svc.ResetThresholdRequest, context: Context
    ) -> an_svc.ResetThresholdResponse:
        item = await self._thresholds.reset(request.name, subject(context), request.reason)
        return an_svc.ResetThresholdResponse(threshold=convert.threshold_proto(item))

    async def ApplyFeedback(
        self, request: an_svc.ApplyFeedbackRequest, context: Context
    ) -> an_svc.ApplyFeedbackResponse:
        if not 1 <= len(request.feedback) <= 500:
            raise errors.invalid(
                [errors.FieldViolation("feedback", "must hold 1 to 500 items")],
                "FEEDBACK_BATCH_INVALID",
            )
        missing = [
            errors.FieldViolation(f"feedback[{i}].name", "is required")
            for i, item in enumerate(request.feedback)
            if not item.name
        ]
        if missing:
            raise errors.invalid(missing, "FEEDBACK_NAME_MISSING")
        done = await self._thresholds.apply([peers.lesson(item) for item in request.feedback])
        return an_svc.ApplyFeedbackResponse(
            applied_count=done.applied,
            duplicate_count=done.duplicates,
            ignored_count=done.ignored,
            thresholds=[convert.threshold_proto(t) for t in done.thresholds],
        )
